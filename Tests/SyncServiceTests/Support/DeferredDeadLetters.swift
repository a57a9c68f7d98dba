import Delivery
import Folding
import Foundation
import Kafka
import Logging
import TestSupport
import Testing

@testable import SyncService

/// A sink that keeps each letter's `delivered` until the test lets it go.
final class DeferredDeadLetters: DeadLetterSink, @unchecked Sendable {
    private let lock = NSLock()
    private var pending: [@Sendable () -> Void] = []
    var backlog = 0
    var backlogBytes: Int { lock.withLock { backlog } }
    var count: Int { lock.withLock { pending.count } }
    func deadLetter(
        kind: DeadLetterKind, key: [UInt8]?, value: [UInt8], headers: [(String, String)],
        delivered: @escaping @Sendable () -> Void
    ) {
        lock.withLock { pending.append(delivered) }
    }
    /// Calls every `delivered` kept so far.
    func deliverAll() {
        let all = lock.withLock { () -> [@Sendable () -> Void] in
            defer { pending = [] }
            return pending
        }
        for d in all { d() }
    }
    func setBacklog(_ n: Int) { lock.withLock { backlog = n } }
    /// Calls the oldest `delivered` kept.
    func deliverFirst() {
        let first = lock.withLock { pending.isEmpty ? nil : pending.removeFirst() }
        first?()
    }
}
