import Delivery
import Folding
import Foundation
import Kafka
import Logging
import Testing

@testable import SyncService

/// A changelog in memory, with a switch to make writes fail.
final class MemoryStateStore: StateStore, @unchecked Sendable {
    private let lock = NSLock()
    private var log: [Int32: [(key: [UInt8], value: [UInt8]?)]] = [:]
    private(set) var commits: [[TopicPartition: Int64]] = []
    var failWrites = false
    /// Called inside each write (before it fails or lands): lets a test move its clock.
    var duringWrite: (() -> Void)?
    let partitions: Int32
    var sourcePartitions: Int32 { partitions }
    var maxRecordBytes = 1_000_000 - 1_024

    init(partitions: Int32 = 1) { self.partitions = partitions }

    /// Each partition's end offset as ``endOffset(_:)`` reports it (none: unknown).
    var endOffsets: [TopicPartition: Int64] = [:]
    func endOffset(_ tp: TopicPartition) throws -> Int64? { lock.withLock { endOffsets[tp] } }

    func statePartition(for sourcePartition: Int32) -> Int32 { sourcePartition % partitions }
    func read(partition: Int32) throws -> [(key: [UInt8], value: [UInt8]?)] { lock.withLock { log[partition] ?? [] } }
    func write(_ records: [(partition: Int32, key: [UInt8], value: [UInt8]?)]) throws {
        duringWrite?()
        try lock.withLock {
            if failWrites { throw TestError("write failed") }
            // As Kafka: a record over the limit fails the write (MSG_SIZE_TOO_LARGE).
            if records.contains(where: { $0.key.count + ($0.value?.count ?? 0) > maxRecordBytes }) {
                throw TestError("message too large")
            }
            for r in records { log[r.partition, default: []].append((r.key, r.value)) }
        }
    }
    func commit(_ offsets: [TopicPartition: Int64]) throws { lock.withLock { commits.append(offsets) } }
    /// Records of other topics (identity resolution's), by topic and partition.
    private(set) var topics: [String: [Int32: [(key: [UInt8], value: [UInt8]?)]]] = [:]
    func read(topic: String, partitions: [Int32]) throws -> [Int32: PackedRecords] {
        lock.withLock {
            var out: [Int32: PackedRecords] = [:]
            for p in partitions { out[p] = PackedRecords(topics[topic]?[p] ?? []) }
            return out
        }
    }
    /// As a transactional store: a group's records, its other topics' records and its
    /// offsets land together or not at all.
    /// As a transactional store whose transactions fail from the group at this index on
    /// (once: the setting is cleared): the groups before it stay committed.
    var failGroupsFrom: Int?
    /// A crash in the middle of the next transactional group: only its first `tearAfter`
    /// records land, in the order ``KafkaStateStore`` writes them (the begin markers, every record, then the
    /// identities marker, then the changelog's markers), and are readable, as librdkafka's mock and tansu show an unfinished or
    /// aborted transaction's records. From then on the store is down (``torn``) until a
    /// test sets it up again.
    var tearAfter: Int?
    /// With ``tearAfter``: the crash comes in the group of this source partition (the
    /// groups before it commit), not in the first.
    var tearPartition: Int32?
    var torn = false
    func checkpoint(_ groups: [CheckpointGroup], deadline: DispatchTime?) throws {
        if torn { throw TestError("the process crashed") }
        guard groups.contains(where: { !$0.extra.isEmpty || !$0.extraOffsets.isEmpty }) else { return try writeThenCommit(groups) }
        var done: Set<TopicPartition> = []
        for (n, g) in groups.enumerated() {
            if let keep = tearAfter, tearPartition == nil || tearPartition == g.source.partition {
                tearAfter = nil
                tearPartition = nil
                torn = true
                let begins: [(topic: String?, partition: Int32, key: [UInt8], value: [UInt8]?)] =
                    g.records.filter { ChangelogMarker.isBegin(key: $0.key) }.map { (nil, $0.partition, $0.key, $0.value) }
                    + g.extra.filter { ChangelogMarker.isBegin(key: $0.key) }.map { ($0.topic, $0.partition, $0.key, $0.value) }
                let data: [(topic: String?, partition: Int32, key: [UInt8], value: [UInt8]?)] =
                    begins
                    + g.records.filter { !ChangelogMarker.isMarker(key: $0.key) }.map { (nil, $0.partition, $0.key, $0.value) }
                    + g.extra.filter { !ChangelogMarker.isMarker(key: $0.key) }.map { ($0.topic, $0.partition, $0.key, $0.value) }
                let ends = { (key: [UInt8]) in ChangelogMarker.isMarker(key: key) && !ChangelogMarker.isBegin(key: key) }
                let markers: [(topic: String?, partition: Int32, key: [UInt8], value: [UInt8]?)] =
                    g.extra.filter { ends($0.key) }.map { ($0.topic, $0.partition, $0.key, $0.value) }
                    + g.records.filter { ends($0.key) }.map { (nil, $0.partition, $0.key, $0.value) }
                lock.withLock {
                    for r in (data + markers).prefix(keep) {
                        if let topic = r.topic {
                            topics[topic, default: [:]][r.partition, default: []].append((r.key, r.value))
                        } else {
                            log[r.partition, default: []].append((r.key, r.value))
                        }
                    }
                }
                tornTotal = data.count + markers.count
                throw TestError("the process crashed mid-transaction")
            }
            if let from = failGroupsFrom, n >= from {
                failGroupsFrom = nil
                let error = TestError("transaction failed")
                if done.isEmpty { throw error }
                throw CheckpointIncomplete(committed: done, error: error)
            }
            try write(g.records)
            if g.extra.contains(where: { $0.key.count + ($0.value?.count ?? 0) > maxRecordBytes }) {
                throw TestError("message too large")
            }
            lock.withLock {
                for r in g.extra { topics[r.topic, default: [:]][r.partition, default: []].append((r.key, r.value)) }
                var offsets = g.extraOffsets
                if let o = g.offset { offsets[g.source] = o }
                if !offsets.isEmpty { commits.append(offsets) }
            }
            done.insert(g.source)
        }
    }
    /// How many records the torn transaction had.
    private(set) var tornTotal = 0
    /// Each source partition's first retained offset (0 unless a test says otherwise).
    var logStart: [TopicPartition: Int64] = [:]
    func committedPastStart(_ tp: TopicPartition) throws -> Int64? {
        guard let c = lastCommit[tp], c > (logStart[tp] ?? 0) else { return nil }
        return c
    }
    /// As an operator deleting the group's committed offsets.
    func forgetCommits() { lock.withLock { commits = [] } }
    /// Drops every record whose key passes `drop` (as a changelog written before a record kind existed).
    func removeRecords(where drop: ([UInt8]) -> Bool) { lock.withLock { for p in log.keys { log[p]!.removeAll { drop($0.key) } } } }
    var lastCommit: [TopicPartition: Int64] {
        lock.withLock { commits.reduce(into: [:]) { acc, c in for (k, v) in c { acc[k] = v } } }
    }
    /// The users' records (and tombstones) of a partition, oldest first: without the
    /// markers each offset commit writes beside them (``ChangelogMarker``).
    func userRecords(_ partition: Int32) -> [(key: [UInt8], value: [UInt8]?)] {
        lock.withLock { (log[partition] ?? []).filter { !ChangelogMarker.isMarker(key: $0.key) } }
    }
    var recordCount: Int { lock.withLock { log.values.reduce(0) { $0 + $1.count { !ChangelogMarker.isMarker(key: $0.key) } } } }
    var markerCount: Int { lock.withLock { log.values.reduce(0) { $0 + $1.count { ChangelogMarker.isMarker(key: $0.key) } } } }
}
