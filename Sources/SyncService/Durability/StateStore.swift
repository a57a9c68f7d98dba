import Folding
import FoldspaceAPI
import Foundation
import Kafka
import Logging

/// Where durable user state lives: a compacted changelog topic co-partitioned with the
/// source (partition p of the changelog holds the users of source partition p).
public protocol StateStore: Sendable {
    /// Every record of changelog partition `partition`, oldest first.
    func read(partition: Int32) throws -> [(key: [UInt8], value: [UInt8]?)]
    /// As ``read(partition:)`` for several partitions at once, each packed in one buffer
    /// (what restores read).
    func read(partitions: [Int32]) throws -> [Int32: PackedRecords]
    /// Every record of partitions of another topic of the group (`<group>-identities`),
    /// oldest first, each partition packed in one buffer.
    func read(topic: String, partitions: [Int32]) throws -> [Int32: PackedRecords]
    /// The changelog partition holding a source partition's users.
    func statePartition(for sourcePartition: Int32) -> Int32
    /// The source topic's partition count, recorded in each record.
    var sourcePartitions: Int32 { get }
    /// Writes records (a nil value: a tombstone) and returns once all are acknowledged.
    func write(_ records: [(partition: Int32, key: [UInt8], value: [UInt8]?)]) throws
    /// Commits source offsets (the next offset to read, per partition).
    func commit(_ offsets: [TopicPartition: Int64]) throws
    /// Whether the store's writer hit a fatal error: nothing more can be written.
    var hasFatalError: Bool { get }
    /// The largest record (key and value) a checkpoint may write.
    var maxRecordBytes: Int { get }
    /// Takes over source partitions before their state is restored: with transactions,
    /// fences every former owner's writer first (its open transaction aborted), so that
    /// the restore reads all that will ever be committed for them.
    func claim(_ partitions: [TopicPartition]) throws
    /// Lets partitions go (after their last checkpoint).
    func relinquish(_ partitions: [TopicPartition])
    /// Writes each group's records and commits its source offset: with transactions,
    /// atomically per group (a group fails or commits whole); without, every write, then
    /// every commit. With a `deadline` (a revocation, inside the rebalance callback), no
    /// group is begun after it and no call waits past it; the groups not committed by
    /// then fail the checkpoint (their offsets stay where they were).
    func checkpoint(_ groups: [CheckpointGroup], deadline: DispatchTime?) throws
    /// The group's committed offset of a source partition (the next to read) when events
    /// were consumed from it: committed by foldspace-sync (``commitMetadata``), or by
    /// someone else past the partition's first retained offset. nil when none is
    /// committed, or an operator reset it to the log's start (to fold the history again).
    /// Asked when a partition's changelog holds nothing for it.
    func committedPastStart(_ tp: TopicPartition) throws -> Int64?
    /// The offset after a partition's last message (its high watermark), nil when unknown.
    /// Asked of a restored task's changelog markers: a partition that ends below one was
    /// recreated.
    func endOffset(_ tp: TopicPartition) throws -> Int64?
}

extension StateStore {
    public func endOffset(_ tp: TopicPartition) throws -> Int64? { nil }
}

/// A transactional checkpoint that failed after some of its groups committed: those
/// groups' records are written and their offsets committed, whatever `error` says of the
/// rest. The engine queues only the others again (identity resolution's routed records,
/// written twice, would be read twice).
public struct CheckpointIncomplete: Error, CustomStringConvertible {
    public var committed: Set<TopicPartition>
    public var error: any Error
    public var description: String { "\(error) (\(committed.count) partitions committed beside it)" }
}

/// One source partition's share of a checkpoint.
public struct CheckpointGroup: Sendable {
    public var source: TopicPartition
    public var records: [(partition: Int32, key: [UInt8], value: [UInt8]?)]
    /// The source offset to commit (the next to read), if it moved.
    public var offset: Int64?
    /// Identity resolution (docs/identity.md): the task's records for other topics
    /// (`<group>-identities`, `<group>-repartition`) and the offsets of its other input
    /// (its repartition partition), in the same transaction.
    public var extra: [(topic: String, partition: Int32, key: [UInt8], value: [UInt8]?)] = []
    public var extraOffsets: [TopicPartition: Int64] = [:]

    public init(source: TopicPartition, records: [(partition: Int32, key: [UInt8], value: [UInt8]?)], offset: Int64?) {
        self.source = source
        self.records = records
        self.offset = offset
    }

    var isEmpty: Bool { records.isEmpty && offset == nil && extra.isEmpty && extraOffsets.isEmpty }
}

extension StateStore {
    public func read(partitions: [Int32]) throws -> [Int32: PackedRecords] {
        var out: [Int32: PackedRecords] = [:]
        for p in partitions { out[p] = PackedRecords(try read(partition: p)) }
        return out
    }
    public func read(topic: String, partitions: [Int32]) throws -> [Int32: PackedRecords] { [:] }
    public var hasFatalError: Bool { false }
    public var maxRecordBytes: Int { 1_000_000 - 1_024 }
    public func claim(_ partitions: [TopicPartition]) throws {}
    public func relinquish(_ partitions: [TopicPartition]) {}
    public func checkpoint(_ groups: [CheckpointGroup], deadline: DispatchTime?) throws { try writeThenCommit(groups) }
    public func committedPastStart(_ tp: TopicPartition) throws -> Int64? { nil }

    /// A checkpoint without transactions: every group's records, then every offset.
    /// Identity resolution needs transactions (its records are written with the offsets
    /// or not at all): a group holding any is refused.
    public func writeThenCommit(_ groups: [CheckpointGroup]) throws {
        if groups.contains(where: { !$0.extra.isEmpty || !$0.extraOffsets.isEmpty }) {
            throw KafkaError(message: "identity resolution's records need a transactional checkpoint", isRetriable: false)
        }
        let records = groups.flatMap(\.records)
        if !records.isEmpty { try write(records) }
        var offsets: [TopicPartition: Int64] = [:]
        for g in groups { if let o = g.offset { offsets[g.source] = o } }
        if !offsets.isEmpty { try commit(offsets) }
    }
}
