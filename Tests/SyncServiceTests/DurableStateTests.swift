import Delivery
import Folding
import Foundation
import Kafka
import Logging
import Testing

@testable import SyncService

struct TestError: Error {
    let m: String
    init(_ m: String) { self.m = m }
}

@Suite struct DurableStateTests {
    let tp = TopicPartition("events", 0)

    func engine(_ clock: ManualClock, _ store: StateStore) -> SyncEngine {
        var o = EngineOptions()
        o.debounceMs = 1_000
        o.maxWaitMs = 5_000
        o.requestsPerSecond = 1_000
        o.burst = 1_000
        o.durable = true
        o.fold.sendNumberOfVisits = true
        o.fold.keyEvents = [.init(name: "Paid")]
        let e = SyncEngine(
            options: o, deadLetters: RecordingDeadLetters(), logger: quietLogger, clock: clock.engineClock,
            links: EngineLinks(stateStore: store))
        e.partitionsAssigned([tp])
        return e
    }

    func events(_ range: Range<Int>) -> [(tp: TopicPartition, offset: Int64, json: String)] {
        range.map { i in
            // Two users; a new visit every 4 events (2 h apart), a key event every 3.
            let user = "u\(i % 2)"
            let t = 1_764_000_000_000 + Int64(i / 4) * 7_200_000 + Int64(i % 4) * 1000
            let body = i % 3 == 0 ? #""type":"track","event":"Paid""# : #""type":"page""#
            return (tp, Int64(i), #"{\#(body),"userId":"\#(user)","timestamp":\#(t)}"#)
        }
    }

    func body(_ e: SyncEngine, _ user: String) -> [String: Any] {
        try! JSONSerialization.jsonObject(with: Data(e.projection(of: user)!)) as! [String: Any]
    }

    @Test func checkpointWritesChangedUsersThenCommitsTheSnapshotPosition() {
        let clock = ManualClock()
        let store = MemoryStateStore()
        let e = engine(clock, store)
        feed(e, events(0..<10))
        #expect(e.checkpoint())
        #expect(store.recordCount == 2)
        #expect(store.lastCommit[tp] == 10)
        // Nothing changed: nothing written, nothing committed again.
        #expect(e.checkpoint())
        #expect(store.recordCount == 2)
        #expect(store.commits.count == 1)
        feed(e, events(10..<12))
        #expect(e.checkpoint())
        #expect(store.recordCount == 4)
        #expect(store.lastCommit[tp] == 12)
    }

    @Test func aFailedWriteCommitsNothingAndRetries() {
        let clock = ManualClock()
        let store = MemoryStateStore()
        let e = engine(clock, store)
        feed(e, events(0..<6))
        store.failWrites = true
        #expect(!e.checkpoint())
        #expect(store.commits.isEmpty)
        #expect(e.snapshot().checkpointFailures == 1)
        store.failWrites = false
        #expect(e.checkpoint())
        #expect(store.recordCount == 2)
        #expect(store.lastCommit[tp] == 6)
    }

    @Test func checkpointsAreCountedAndTimedInTheMetrics() {
        let clock = ManualClock()
        let store = MemoryStateStore()
        let e = engine(clock, store)
        store.duringWrite = { clock.advance(300) }
        feed(e, events(0..<6))
        store.failWrites = true
        #expect(!e.checkpoint())
        store.failWrites = false
        #expect(e.checkpoint())
        let lines = Set(MetricsText.render(e.snapshot(), lag: [], fetcherWakeups: 0, zstdBatchesSized: 0).split(separator: "\n"))
        for want in [
            #"foldspace_sync_checkpoints_total{result="ok"} 1"#, #"foldspace_sync_checkpoints_total{result="failed"} 1"#,
            "foldspace_sync_checkpoint_users_total 2",
            // Both took 0.3 s (the write), the failed one included.
            "foldspace_sync_checkpoint_duration_seconds_count 2", "foldspace_sync_checkpoint_duration_seconds_sum 0.600000",
            #"foldspace_sync_checkpoint_duration_seconds_bucket{le="0.25"} 0"#,
            #"foldspace_sync_checkpoint_duration_seconds_bucket{le="0.5"} 2"#,
            "foldspace_sync_restored_users_total 0", "foldspace_sync_restore_failures_total 0",
        ] {
            #expect(lines.contains(Substring(want)), "missing \(want)")
        }
        // The next owner's restore shows too.
        let next = engine(clock, store)
        let restored = MetricsText.render(next.snapshot(), lag: [], fetcherWakeups: 0, zstdBatchesSized: 0)
        #expect(restored.contains("\nfoldspace_sync_restored_users_total 2\n"))
    }

    @Test func restartFromTheChangelogCountsEverythingExactlyOnce() {
        let all = events(0..<40)
        // The reference: one engine folding everything once.
        let refClock = ManualClock()
        let reference = engine(refClock, MemoryStateStore())
        feed(reference, all)

        // A "crashed" instance: folds 0..<25, checkpoints after 20 (commit = 20).
        let clock = ManualClock()
        let store = MemoryStateStore()
        let first = engine(clock, store)
        feed(first, Array(all[0..<20]))
        #expect(first.checkpoint())
        feed(first, Array(all[20..<25]))  // folded, never checkpointed: lost with the crash

        // The next owner restores and re-reads from the committed offset (20); it also
        // sees the already-applied 15..<20 again (a replay from an older commit).
        let second = engine(clock, store)
        #expect(second.snapshot().restoredUsers == 2)
        feed(second, Array(all[15..<40]))
        #expect(second.snapshot().skippedReplays == 5)
        for u in ["u0", "u1"] {
            let got = body(second, u)
            let want = body(reference, u)
            #expect(got["numberOfVisits"] as? Int == want["numberOfVisits"] as? Int)
            #expect(got["firstVisitDate"] as? Int64 == want["firstVisitDate"] as? Int64)
            #expect(got["lastSeenDate"] as? Int64 == want["lastSeenDate"] as? Int64)
            #expect(got["pqlScore"] as? Double == want["pqlScore"] as? Double)  // key-event counts included
        }
        #expect(body(second, "u0")["numberOfVisits"] as? Int == 10)
    }

    @Test func restoredDirtyUsersAreFlushedAndAcknowledgedOnesAreNot() {
        let clock = ManualClock()
        let store = MemoryStateStore()
        let first = engine(clock, store)
        feed(first, [(tp, 0, #"{"type":"page","userId":"acked"}"#), (tp, 1, #"{"type":"page","userId":"pending"}"#)])
        clock.advance(1_000)
        guard case .send(let jobs) = first.takeDue(limit: 10) else {
            Issue.record("nothing due")
            return
        }
        for j in jobs where j.identifyId == "acked" { first.complete(j, outcome: .acknowledged) }
        for j in jobs where j.identifyId == "pending" { first.complete(j, outcome: .retryable(reason: "503")) }
        #expect(first.checkpoint())

        let second = engine(clock, store)
        #expect(second.snapshot().dirtyUsers == 1)
        clock.advance(60_000)
        guard case .send(let again) = second.takeDue(limit: 10) else {
            Issue.record("restored dirty user not due")
            return
        }
        #expect(again.map(\.identifyId) == ["pending"])
    }

    @Test func revocationCheckpointsCommitsAndDrops() {
        let clock = ManualClock()
        let store = MemoryStateStore()
        let e = engine(clock, store)
        feed(e, events(0..<8))
        e.partitionsRevoked([tp])
        #expect(store.lastCommit[tp] == 8)
        #expect(store.recordCount == 2)
        #expect(e.snapshot().users == 0)
    }

    @Test func restoreKeepsOnlyThisPartitionsUsersOfASharedChangelog() {
        let clock = ManualClock()
        let store = MemoryStateStore(partitions: 1)  // two source partitions share it
        let other = TopicPartition("events", 1)
        let a = engine(clock, store)
        a.partitionsAssigned([other])
        feed(a, [(tp, 0, #"{"type":"page","userId":"zero"}"#), (other, 0, #"{"type":"page","userId":"one"}"#)])
        #expect(a.checkpoint())
        let b = engine(clock, store)  // assigned partition 0 only
        #expect(b.snapshot().restoredUsers == 1)
        #expect(b.projection(of: "zero") != nil)
        #expect(b.projection(of: "one") == nil)
    }
}
