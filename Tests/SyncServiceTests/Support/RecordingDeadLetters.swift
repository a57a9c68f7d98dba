import Delivery
import Events
import Foundation
import Kafka
import Logging
import Testing

@testable import SyncService

final class RecordingDeadLetters: DeadLetterSink, @unchecked Sendable {
    private let lock = NSLock()
    private var items: [(kind: String, key: [UInt8]?, value: [UInt8], headers: [(String, String)])] = []
    func deadLetter(
        kind: DeadLetterKind, key: [UInt8]?, value: [UInt8], headers: [(String, String)],
        delivered: @escaping @Sendable () -> Void
    ) {
        lock.withLock { items.append((kind.rawValue, key, value, headers)) }
        delivered()
    }
    var all: [(kind: String, key: [UInt8]?, value: [UInt8], headers: [(String, String)])] { lock.withLock { items } }
}
