import Delivery
import Foundation
import Kafka
import TestSupport
import Testing

@testable import SyncService

/// Counts the requests it is asked to send and acknowledges them.
final class CountingSender: UserUpdateSender, @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    var sent: Int { lock.withLock { n } }
    func send(identifyId: String, body: [UInt8]) async -> DeliveryOutcome {
        lock.withLock { n += 1 }
        return .acknowledged
    }
}
