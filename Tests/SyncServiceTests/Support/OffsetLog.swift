import Delivery
import Events
import Foundation
import Kafka
import Logging
import Testing

@testable import SyncService

final class OffsetLog: @unchecked Sendable {
    private let lock = NSLock()
    private var latest: [TopicPartition: Int64] = [:]
    func store(_ m: [TopicPartition: Int64]) {
        lock.withLock {
            for (k, v) in m {
                precondition(v >= (latest[k] ?? 0), "offsets must only move forward")
                latest[k] = v
            }
        }
    }
    subscript(tp: TopicPartition) -> Int64? { lock.withLock { latest[tp] } }
}
