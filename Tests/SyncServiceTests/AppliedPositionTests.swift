import Delivery
import Folding
import Foundation
import Kafka
import Simulation
import TestSupport
import Testing

@testable import SyncService

/// Feeds messages to the engine as the poll thread would, each with its own Kafka time.
func feedTimed(_ engine: SyncEngine, _ messages: [(tp: TopicPartition, offset: Int64, kafkaMs: Int64, json: String)]) {
    let buffers = messages.map { m -> UnsafeMutableBufferPointer<UInt8> in
        let b = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(1, m.json.utf8.count))
        _ = b.initialize(from: m.json.utf8)
        return b
    }
    defer { buffers.forEach { $0.deallocate() } }
    let batch = zip(messages, buffers).map { m, b in
        ConsumedMessage(
            topicPartition: m.tp, offset: m.offset, timestampMs: m.kafkaMs,
            key: UnsafeBufferPointer(start: nil, count: 0),
            value: UnsafeBufferPointer(start: b.baseAddress, count: m.json.utf8.count))
    }
    engine.consume(batch)
}

/// The applied position that makes replays harmless: per source partition, per message
/// and per call within a batch envelope (SPEC §6), and a recreated topic said so.
@Suite struct AppliedPositionTests {
    let p0 = TopicPartition("events", 0)
    let p1 = TopicPartition("events", 1)

    func engine(
        _ clock: ManualClock, _ store: StateStore?, assign: [TopicPartition],
        highWatermark: (@Sendable (TopicPartition) -> Int64?)? = nil
    ) -> SyncEngine {
        var o = EngineOptions()
        o.debounceMs = 1_000
        o.maxWaitMs = 5_000
        o.requestsPerSecond = 1_000
        o.burst = 1_000
        o.durable = store != nil
        o.fold.sendNumberOfVisits = true
        o.fold.keyEvents = [.init(name: "Paid", weight: 10, cap: 1_000)]
        o.fold.pql.visitWeight = 0
        o.fold.pql.dayWeight = 0
        o.fold.pql.k = 1_000
        o.fold.pql.halfLifeDays = 1e9
        let e = SyncEngine(
            options: o, deadLetters: RecordingDeadLetters(), logger: quietLogger, clock: clock.engineClock,
            links: EngineLinks(stateStore: store, highWatermark: highWatermark))
        e.partitionsAssigned(assign)
        return e
    }

    func body(_ e: SyncEngine, _ user: String) -> [String: Any] {
        guard let b = e.projection(of: user) else { return [:] }
        return (try? JSONSerialization.jsonObject(with: Data(b)) as? [String: Any]) ?? [:]
    }

    /// The score of `n` "Paid" events under the test's model (no visits, no days).
    func score(_ n: Int) -> Double { (100 * (1 - exp(-10 * Double(n) / 1_000)) * 10).rounded() / 10 }

    // MARK: Defect 1: batch envelopes

    @Test func everyCallOfABatchEnvelopeIsFolded() {
        let clock = ManualClock()
        let e = engine(clock, nil, assign: [p0])
        // The issue's reproduction: identify at 2025-11-20, track at 2025-11-21, one message.
        let envelope =
            #"{"batch":[{"type":"identify","userId":"u1","timestamp":"2025-11-20T10:00:00Z","traits":{"email":"a@x.io"}},"#
            + #"{"type":"track","userId":"u1","event":"Paid","timestamp":"2025-11-21T10:00:00Z"},"#
            + #"{"type":"track","userId":"u1","event":"Paid","timestamp":"2025-11-21T10:01:00Z"}]}"#
        feed(e, [(p0, 0, envelope)])
        let b = body(e, "u1")
        #expect(b["lastSeenDate"] as? Int64 == 1_763_719_260_000, "\(b)")
        #expect(b["pqlScore"] as? Double == score(2), "\(b)")
        #expect(e.snapshot().skippedReplays == 0)
        // The same envelope read again (a replay) changes nothing.
        feed(e, [(p0, 0, envelope)])
        #expect(e.snapshot().skippedReplays == 3)
        #expect(body(e, "u1")["pqlScore"] as? Double == score(2))
    }

    /// The issue's reproduction through the whole pipeline: Kafka (mock cluster), the
    /// engine, the Foldspace sandbox.
    @Test func aBatchEnvelopeThroughThePipelineDeliversItsLastCall() async throws {
        let h = try await PipelineHarness(partitions: 1)
        let day: Int64 = 86_400_000
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let first = now - 2 * day
        let second = now - day
        let envelope =
            #"{"batch":[{"type":"identify","userId":"u1","timestamp":"\#(iso8601(first))","traits":{"email":"a@x.io"}},"#
            + #"{"type":"track","userId":"u1","event":"Paid","timestamp":"\#(iso8601(second))"}]}"#
        try h.produce([("u1", envelope)])
        try h.start { c in c.engine.fold.keyEvents = [.init(name: "Paid")] }
        #expect(await eventually(.seconds(30)) { h.sandbox.latestAcknowledged()["u1"] != nil })
        let b = h.sandbox.latestAcknowledged()["u1"]?.json ?? [:]
        #expect(b["firstVisitDate"] as? Int64 == first, "\(b)")
        #expect(b["lastSeenDate"] as? Int64 == second, "\(b)")
        try await h.stop()
    }

    @Test func aReplayedEnvelopeAfterARestoreCountsNothingTwice() {
        let clock = ManualClock()
        let store = MemoryStateStore()
        let envelope = { (first: Int) in
            #"{"batch":["#
                + (first..<(first + 3)).map { i in
                    #"{"type":"track","userId":"u","event":"Paid","timestamp":"2025-11-21T10:0\#(i):00Z"}"#
                }.joined(separator: ",") + "]}"
        }
        let a = engine(clock, store, assign: [p0])
        feed(a, [(p0, 0, envelope(0)), (p0, 1, envelope(3))])
        #expect(a.checkpoint())
        let b = engine(clock, store, assign: [p0])
        feed(b, [(p0, 1, envelope(3)), (p0, 2, envelope(6))])  // offset 1 again: a replay
        #expect(body(b, "u")["pqlScore"] as? Double == score(9), "\(body(b, "u"))")
        #expect(b.snapshot().skippedReplays == 3)
    }

    // MARK: Defect 7: two source partitions

    @Test func aReplayFromTheOtherPartitionIsNotCountedTwice() {
        let clock = ManualClock()
        let e = engine(clock, nil, assign: [p0, p1])
        let paid = { (m: Int) in #"{"type":"track","userId":"u","event":"Paid","timestamp":"2025-11-21T10:\#(10 + m):00Z"}"# }
        feed(e, [(p0, 5, paid(0)), (p1, 9, paid(1)), (p0, 6, paid(2))])
        #expect(body(e, "u")["pqlScore"] as? Double == score(3))
        // Partition 1 is read again from offset 9 (its commit lagged): already applied.
        feed(e, [(p1, 9, paid(1))])
        #expect(body(e, "u")["pqlScore"] as? Double == score(3), "\(body(e, "u"))")
        #expect(e.snapshot().skippedReplays == 1)
    }

    @Test func aRestoreDoesNotOverwriteNewerStateOfTheSameUser() {
        let clock = ManualClock()
        let store = MemoryStateStore(partitions: 2)
        let paid = { (m: Int) in #"{"type":"track","userId":"u","event":"Paid","timestamp":"2025-11-21T10:\#(10 + m):00Z"}"# }
        // Owner of both partitions: u is first seen on partition 1 (its record goes to
        // changelog partition 1), then on partition 0 (the newer record, partition 0).
        let a = engine(clock, store, assign: [p0, p1])
        feed(a, [(p1, 0, paid(0))])
        #expect(a.checkpoint())
        feed(a, [(p0, 0, paid(1)), (p0, 1, paid(2))])
        #expect(a.checkpoint())
        // The next owner restores partition 0, then partition 1 (the older record, kept
        // out). Assigned one after the other: restores of one assignment run in parallel,
        // in either order.
        let b = engine(clock, store, assign: [p0])
        b.partitionsAssigned([p1])
        #expect(body(b, "u")["pqlScore"] as? Double == score(3), "\(body(b, "u"))")
        #expect(b.snapshot().restoreKeptNewer == 1)
        feed(b, [(p0, 2, paid(3))])
        #expect(body(b, "u")["pqlScore"] as? Double == score(4))
        // The other order: the older record first, then replaced by the newer one.
        let c = engine(clock, store, assign: [p1])
        c.partitionsAssigned([p0])
        #expect(body(c, "u")["pqlScore"] as? Double == score(3), "\(body(c, "u"))")
        #expect(c.snapshot().restoreKeptNewer == 0)
        // Both in one assignment, whichever loads first: the newer state.
        let d = engine(clock, store, assign: [p0, p1])
        #expect(body(d, "u")["pqlScore"] as? Double == score(3), "\(body(d, "u"))")
    }

    @Test func aUserOnMorePartitionsThanItKeepsIsCounted() {
        let clock = ManualClock()
        let parts = (0..<Int32(UserState.maxAppliedSources + 2)).map { TopicPartition("events", $0) }
        let e = engine(clock, nil, assign: parts)
        feed(e, parts.map { ($0, 0, #"{"type":"track","userId":"u","event":"Paid","timestamp":"2025-11-21T10:00:00Z"}"#) })
        let s = e.snapshot()
        #expect(s.appliedSourcesForgotten == 2)
        #expect(
            MetricsText.render(s, lag: [], fetcherWakeups: 0, zstdBatchesSized: 0)
                .contains("\nfoldspace_sync_applied_sources_forgotten_total 2\n"))
        // The most recent partitions' replays are still skipped.
        feed(e, [(parts.last!, 0, #"{"type":"track","userId":"u","event":"Paid","timestamp":"2025-11-21T10:00:00Z"}"#)])
        #expect(e.snapshot().skippedReplays == 1)
    }

    // MARK: Defect 8: a recreated source topic

    @Test func aRecreatedTopicIsDetectedAndItsEventsAreFolded() {
        let clock = ManualClock()
        let store = MemoryStateStore()
        let day: Int64 = 86_400_000
        let t0: Int64 = 1_764_000_000_000
        let paid = { (m: Int) in #"{"type":"track","userId":"u","event":"Paid","timestamp":"2025-11-24T10:\#(10 + m):00Z"}"# }
        let a = engine(clock, store, assign: [p0])
        feedTimed(a, (0..<5).map { (p0, Int64($0), t0 + Int64($0), paid($0)) })
        #expect(a.checkpoint())
        // The topic is deleted and created again under the same name: offsets restart at
        // 0, the events are new (Kafka times a day later), and the log is shorter than
        // the offsets users applied (high watermark 3 ≤ 4).
        let b = engine(clock, store, assign: [p0], highWatermark: { _ in 3 })
        feedTimed(b, (0..<3).map { (p0, Int64($0), t0 + day + Int64($0), paid(10 + $0)) })
        #expect(body(b, "u")["pqlScore"] as? Double == score(8), "\(body(b, "u"))")
        let s = b.snapshot()
        #expect(s.recreatedSources == 1)
        #expect(s.skippedReplays == 0)
        let metrics = MetricsText.render(s, lag: [], fetcherWakeups: 0, zstdBatchesSized: 0)
        #expect(metrics.contains("\nfoldspace_sync_source_recreated_total 1\n"))
        // A genuine replay (the same Kafka times) is still skipped.
        feedTimed(b, [(p0, 2, t0 + day + 2, paid(12))])
        #expect(b.snapshot().skippedReplays == 1)
        #expect(body(b, "u")["pqlScore"] as? Double == score(8))
    }

    /// Newer by Kafka time alone is no proof: producers that stamp CreateTime with event
    /// times make a replay's earlier offsets look newer. While the log is longer than
    /// the applied offsets, such calls are skipped (never counted twice) and said.
    @Test func aReplayWithNewerKafkaTimesIsSkippedAndSaid() {
        let clock = ManualClock()
        let store = MemoryStateStore()
        let day: Int64 = 86_400_000
        let t0: Int64 = 1_764_000_000_000
        let paid = { (m: Int) in #"{"type":"track","userId":"u","event":"Paid","timestamp":"2025-11-24T10:\#(10 + m):00Z"}"# }
        // Offsets 0-2 stamped a day after offsets 3-4 (a backfill wrote the later ones).
        let times = [t0 + day, t0 + day + 1, t0 + day + 2, t0, t0 + 1]
        let a = engine(clock, store, assign: [p0])
        feedTimed(a, (0..<5).map { (p0, Int64($0), times[$0], paid($0)) })
        #expect(a.checkpoint())
        // A restart before the commit took: the same five messages again.
        let b = engine(clock, store, assign: [p0], highWatermark: { _ in 5 })
        feedTimed(b, (0..<5).map { (p0, Int64($0), times[$0], paid($0)) })
        #expect(body(b, "u")["pqlScore"] as? Double == score(5), "\(body(b, "u"))")
        let s = b.snapshot()
        #expect(s.recreatedSources == 0)
        #expect(s.suspectedRecreations == 1)
        #expect(s.skippedReplays == 5)
    }
}
