import Delivery
import Folding
import Foundation
import Kafka
import TestSupport
import Testing

@testable import SyncService

/// A changelog whose reads fail while `failing` is set.
final class FlakyStore: StateStore, @unchecked Sendable {
    let inner: MemoryStateStore
    private let lock = NSLock()
    private var failures = 0
    var failing: Bool {
        get { lock.withLock { _failing } }
        set { lock.withLock { _failing = newValue } }
    }
    private var _failing = true
    var readFailures: Int { lock.withLock { failures } }

    init(_ inner: MemoryStateStore) { self.inner = inner }

    var sourcePartitions: Int32 { inner.sourcePartitions }
    func statePartition(for sourcePartition: Int32) -> Int32 { inner.statePartition(for: sourcePartition) }
    func read(partition: Int32) throws -> [(key: [UInt8], value: [UInt8]?)] {
        try lock.withLock {
            if _failing {
                failures += 1
                throw TestError("the changelog is unavailable")
            }
        }
        return try inner.read(partition: partition)
    }
    func write(_ records: [(partition: Int32, key: [UInt8], value: [UInt8]?)]) throws { try inner.write(records) }
    func commit(_ offsets: [TopicPartition: Int64]) throws { try inner.commit(offsets) }
    func committedPastStart(_ tp: TopicPartition) throws -> Int64? { try inner.committedPastStart(tp) }
}
