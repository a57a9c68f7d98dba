import Delivery
import Folding
import Foundation
import Kafka
import TestSupport
import Testing

@testable import SyncService

/// A changelog recreated empty (or deleted and auto-created, or a new `state_topic`)
/// under the group's committed offsets (issue "Exactly-once state", item 2): consuming
/// from the committed offset with no state would send regressed bodies (visits reset, a
/// later first visit) and checkpoint them over what was lost. The partition is held
/// instead, with an error that says so, until an operator decides.
@Suite struct ChangelogLossTests {
    let p0 = TopicPartition("events", 0)

    func engine(_ store: StateStore, log: CapturedLog? = nil) -> (SyncEngine, Released) {
        var o = EngineOptions()
        o.durable = true
        o.restoreRetryMs = 20
        o.fold.keyEvents = [.init(name: "Step", weight: 10, cap: 1_000)]
        let released = Released()
        let e = SyncEngine(
            options: o, deadLetters: RecordingDeadLetters(), logger: log?.logger(.text) ?? quietLogger,
            clock: ManualClock().engineClock,
            links: EngineLinks(
                stateStore: store, restored: { released.add($0) }))
        return (e, released)
    }

    /// Folds `events` on p0 into `store` and checkpoints (committing their offsets).
    func fold(into store: MemoryStateStore, _ events: [String]) {
        var o = EngineOptions()
        o.durable = true
        let e = SyncEngine(
            options: o, deadLetters: RecordingDeadLetters(), logger: quietLogger, clock: ManualClock().engineClock,
            links: EngineLinks(stateStore: store))
        e.partitionsAssigned([p0])
        feed(e, events.enumerated().map { (p0, Int64($0.offset), $0.element) })
        _ = e.checkpoint()
    }

    let step = #"{"type":"track","event":"Step","userId":"a","timestamp":"2025-11-20T10:00:01Z"}"#

    @Test func aChangelogRecreatedEmptyUnderCommittedOffsetsHoldsThePartition() async throws {
        let old = MemoryStateStore()
        fold(into: old, [step])
        let commits = old.lastCommit
        #expect(commits[p0] == 1)
        // The changelog is gone; the group's offsets are not.
        let recreated = MemoryStateStore()
        try recreated.commit(commits)
        let log = CapturedLog()
        let (e, released) = engine(recreated, log: log)
        e.partitionsAssigned([p0])
        #expect(await eventually(.seconds(10)) { e.snapshot().restoreFailures >= 2 })
        #expect(released.all.isEmpty, "consumed with no state")
        #expect(!e.snapshot().ready)
        #expect(e.snapshot().changelogMissing >= 1)
        #expect(log.lines.contains { $0.contains("holds nothing for this partition") }, "\(log.lines.suffix(3))")
        // Nothing is checkpointed or committed for it meanwhile.
        #expect(e.checkpoint())
        #expect(recreated.recordCount == 0)
        // The operator deletes the group's offsets (to accept the loss): the partition
        // starts as a new one.
        recreated.forgetCommits()
        #expect(await eventually(.seconds(10)) { released.all == [p0] })
        #expect(e.snapshot().ready)
    }

    @Test func offsetsResetToTheEarliestReleaseALostChangelogsPartition() async throws {
        let old = MemoryStateStore()
        fold(into: old, [step, step])
        let recreated = MemoryStateStore()
        try recreated.commit(old.lastCommit)
        let (e, released) = engine(recreated)
        e.partitionsAssigned([p0])
        #expect(await eventually(.seconds(10)) { e.snapshot().changelogMissing >= 1 })
        #expect(released.all.isEmpty)
        // `kafka-consumer-groups --reset-offsets --to-earliest`: the committed offset is
        // the partition's first retained one (here 1: offset 0 is gone), so the
        // partition's retained history is folded again.
        recreated.logStart[p0] = 1
        try recreated.commit([p0: 1])
        #expect(await eventually(.seconds(10)) { released.all == [p0] })
    }

    @Test func aChangelogWrittenBeforeMarkersWhosePartitionHoldsOnlyTombstonesIsRestored() async throws {
        // Every user of the partition expired (tombstones), written by an earlier version.
        let store = MemoryStateStore()
        fold(into: store, [step])
        store.removeRecords { $0.first == 0xFF }
        try store.write([(0, Array("a".utf8), nil)])
        let (e, released) = engine(store)
        e.partitionsAssigned([p0])
        #expect(await eventually(.seconds(10)) { released.all == [p0] })
        #expect(e.snapshot().changelogMissing == 0)
    }

    @Test func aQuietPartitionSharingAChangelogPartitionGetsItsMarkerAtItsFirstCheckpoint() async throws {
        // Two source partitions in one changelog partition (a changelog with fewer
        // partitions than the source); p1's events made no user.
        let p1 = TopicPartition("events", 1)
        let store = MemoryStateStore(partitions: 1)
        do {
            var o = EngineOptions()
            o.durable = true
            let e = SyncEngine(
                options: o, deadLetters: RecordingDeadLetters(), logger: quietLogger, clock: ManualClock().engineClock,
                links: EngineLinks(stateStore: store))
            e.partitionsAssigned([p0, p1])
            feed(e, [(p0, 0, step), (p1, 0, "not json")])
            _ = e.checkpoint()
        }
        // As written before markers existed.
        store.removeRecords { $0.first == 0xFF }
        // An upgraded instance restores both (no marker anywhere: written before them);
        // only p0's offset moves afterwards.
        let (upgraded, released) = engine(store)
        upgraded.partitionsAssigned([p0, p1])
        #expect(await eventually(.seconds(10)) { Set(released.all) == [p0, p1] })
        feed(upgraded, [(p0, 1, step)])
        #expect(upgraded.checkpoint())
        upgraded.partitionsRevoked([p0, p1])
        // The next restore finds p0's marker; p1 must have one too, or it reads as lost.
        let (next, again) = engine(store)
        next.partitionsAssigned([p0, p1])
        #expect(await eventually(.seconds(10)) { Set(again.all) == [p0, p1] })
        #expect(next.snapshot().changelogMissing == 0)
    }

    @Test func aMarkerReadsAsAnEmptyUserOfNoPartitionToBuildsThatPredateIt() throws {
        // Earlier builds skip the field they do not know: what they decode must be a user
        // they never restore (its applied source matches no partition) and a record that
        // names the source's partition count (checked at start).
        let value = ChangelogMarker.value(offset: 42, sourcePartitions: 6)
        let stored = try StateCodec.decode(value)
        #expect(stored.markerOffset == 42)
        #expect(stored.sourcePartitions == 6)
        #expect(stored.state == UserState())
        #expect(stored.state.appliedSource == 0)
        #expect(!stored.dirty)
    }

    @Test func aPartitionWhoseEventsMadeNoUsersIsRestoredAfterARestart() async throws {
        // Offsets committed, but nothing of the partition's events made a user.
        let store = MemoryStateStore()
        fold(into: store, ["not json", #"{"type":"track","timestamp":"2025-11-20T10:00:01Z"}"#])
        #expect(store.lastCommit[p0] == 2)
        let (e, released) = engine(store)
        e.partitionsAssigned([p0])
        #expect(await eventually(.seconds(10)) { released.all == [p0] })
        #expect(e.snapshot().restoreFailures == 0)
    }

    @Test func aChangelogWrittenBeforeMarkersIsRestored() async throws {
        let store = MemoryStateStore()
        fold(into: store, [step])
        // As a changelog written by an earlier version: users only.
        store.removeRecords { $0.first == 0xFF }
        #expect(store.recordCount == 1)
        let (e, released) = engine(store)
        e.partitionsAssigned([p0])
        #expect(await eventually(.seconds(10)) { released.all == [p0] })
        #expect(e.snapshot().restoredUsers == 1)
    }

    @Test func aNewPartitionStartsWithNoState() async throws {
        let (e, released) = engine(MemoryStateStore())
        e.partitionsAssigned([p0])
        #expect(await eventually(.seconds(10)) { released.all == [p0] })
        #expect(e.snapshot().restoreFailures == 0)
    }
}

/// What counts as "consumed" when the changelog holds nothing, asked of a (mock) broker:
/// an offset foldspace-sync committed, wherever the log starts (retention can catch up
/// with a quiet partition's committed offset); someone else's only past the log's start
/// (`kafka-consumer-groups --reset-offsets --to-earliest` writes no metadata).
@Suite struct CommittedPastStartTests {
    final class Idle: ConsumerHandler, @unchecked Sendable {
        func consume(_ batch: [ConsumedMessage]) {}
        func partitionsAssigned(_ partitions: [TopicPartition]) {}
        func partitionsRevoked(_ partitions: [TopicPartition]) {}
        var wantsPause: Bool { false }
    }

    @Test func anOffsetCommittedByFoldspaceSyncCountsAsConsumedAtTheLogStart() async throws {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic("events", partitions: 1)
        try cluster.createTopic("state", partitions: 1)
        let config = KafkaClientConfig(["bootstrap.servers": cluster.bootstrapServers, "group.id": "g", "log_level": "3"])
        let consumer = try KafkaConsumer(config: config, topics: ["events"], handler: Idle(), logger: quietLogger)
        // Started (a consumer destroyed unstarted trips an assertion in librdkafka 2.0.2).
        consumer.start()
        defer { consumer.stop() }
        #expect(await eventually(.seconds(30)) { !consumer.assignment.isEmpty }, "joined the group")
        let store = try KafkaStateStore(
            topic: "state", partitions: 1, sourcePartitions: 1, config: config, logger: quietLogger, groupConsumer: { consumer })
        defer { store.close() }
        let tp = TopicPartition("events", 0)
        #expect(try store.committedPastStart(tp) == nil, "nothing committed")
        // Someone else's commit at the log's start (an operator's reset to the earliest).
        try consumer.commitSync([tp: 0], metadata: nil)
        #expect(try store.committedPastStart(tp) == nil)
        // Ours at the same offset: consumed.
        try consumer.commitSync([tp: 0])
        #expect(try store.committedPastStart(tp) == 0)
    }
}
