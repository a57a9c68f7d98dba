import Delivery
import Folding
import Foundation
import Kafka
import TestSupport
import Testing

@testable import SyncService

/// A changelog whose first (and second) read block until let go, and whose reads of one
/// partition can fail.
final class GatedStore: StateStore, @unchecked Sendable {
    let inner: MemoryStateStore
    private let lock = NSLock()
    let firstGate = DispatchSemaphore(value: 0)
    let secondGate = DispatchSemaphore(value: 0)
    var blockFirst = true
    var blockSecond = false
    var failing: Int32?
    private var count = 0
    var reads: Int { lock.withLock { count } }
    init(_ inner: MemoryStateStore) { self.inner = inner }
    var sourcePartitions: Int32 { inner.sourcePartitions }
    func statePartition(for sourcePartition: Int32) -> Int32 { inner.statePartition(for: sourcePartition) }
    func read(partition: Int32) throws -> [(key: [UInt8], value: [UInt8]?)] {
        let (n, fail, first, second) = lock.withLock { () -> (Int, Bool, Bool, Bool) in
            count += 1
            return (count, failing == partition, blockFirst, blockSecond)
        }
        if fail { throw TestError("the partition's changelog is damaged") }
        if n == 1 && first { firstGate.wait() }
        if n == 2 && second { secondGate.wait() }
        return try inner.read(partition: partition)
    }
    func write(_ records: [(partition: Int32, key: [UInt8], value: [UInt8]?)]) throws { try inner.write(records) }
    func commit(_ offsets: [TopicPartition: Int64]) throws { try inner.commit(offsets) }
    func committedPastStart(_ tp: TopicPartition) throws -> Int64? { try inner.committedPastStart(tp) }
}
