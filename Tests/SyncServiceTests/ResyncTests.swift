import Delivery
import Events
import Foundation
import Kafka
import Testing

@testable import SyncService

/// Feeds one control record (key `foldspace-sync.control`) as the poll thread would.
func feedControl(_ engine: SyncEngine, _ tp: TopicPartition, _ offset: Int64, _ json: String) {
    let key = ResyncRequest.key
    let value = Array(json.utf8)
    key.withUnsafeBufferPointer { k in
        value.withUnsafeBufferPointer { v in
            engine.consume([ConsumedMessage(topicPartition: tp, offset: offset, timestampMs: 1_764_000_000_000, key: k, value: v)])
        }
    }
}

/// `foldspace-sync resync` (issue "Deploy and operate it"): a control record on the source
/// topic makes each partition's owner send its users' current state again, through the
/// debouncer and the rate limiter, without committing past the request until every
/// user is queued.
@Suite struct ResyncTests {
    let p0 = TopicPartition("events", 0)
    let p1 = TopicPartition("events", 1)

    func engine(
        _ clock: ManualClock, store: StateStore? = nil, rate: Double = 1_000,
        configure: (inout EngineOptions) -> Void = { _ in }
    ) -> (SyncEngine, OffsetLog, RecordingDeadLetters) {
        var o = EngineOptions()
        o.debounceMs = 1_000
        o.maxWaitMs = 5_000
        o.requestsPerSecond = rate
        o.burst = 1_000_000
        o.durable = store != nil
        configure(&o)
        let dl = RecordingDeadLetters()
        let log = OffsetLog()
        let e = SyncEngine(
            options: o, deadLetters: dl, logger: quietLogger, clock: clock.engineClock,
            links: EngineLinks(stateStore: store, storeOffsets: { log.store($0) }))
        e.partitionsAssigned([p0, p1])
        return (e, log, dl)
    }

    /// Sends everything due, acknowledging each request; returns the users sent, in order.
    @discardableResult
    func settleAll(_ e: SyncEngine, _ clock: ManualClock) -> [String] {
        clock.advance(10_000)
        var sent: [String] = []
        while case .send(let jobs) = e.takeDue(limit: 10_000) {
            for j in jobs {
                sent.append(j.identifyId)
                e.complete(j, outcome: .acknowledged)
            }
        }
        return sent
    }

    func track(_ user: String, _ second: Int) -> String {
        #"{"type":"track","event":"Step","userId":"\#(user)","timestamp":"2025-11-20T10:00:\#(String(format: "%02d", second))Z"}"#
    }

    @Test func aResyncSendsEachUserOfItsPartitionOnceMoreAndHoldsItsOffsetUntilThen() {
        let clock = ManualClock()
        let (e, offsets, _) = engine(clock)
        feed(e, [(p0, 0, track("a", 1)), (p0, 1, track("b", 2)), (p1, 0, track("c", 3))])
        #expect(Set(settleAll(e, clock)) == ["a", "b", "c"])
        let acknowledged = ["a": e.projection(of: "a"), "b": e.projection(of: "b")]
        feedControl(e, p0, 2, #"{"foldspace_sync":"resync","all":true,"request_id":"r1"}"#)
        #expect(e.snapshot().resyncRequests == 1)
        #expect(e.snapshot().resyncPendingPartitions == 1)
        #expect(offsets[p0] == 2, "not committed past a request whose users are not queued")
        // Unchanged users: without the resync nothing would be sent.
        #expect(settleAll(e, clock).isEmpty)
        e.sweep()
        #expect(e.snapshot().resyncUsers == 2)
        #expect(e.snapshot().resyncPendingPartitions == 0)
        #expect(offsets[p0] == 2, "the users queued hold it until they are settled")
        clock.advance(10_000)
        guard case .send(let jobs) = e.takeDue(limit: 100) else {
            Issue.record("nothing sent")
            return
        }
        #expect(Set(jobs.map(\.identifyId)) == ["a", "b"], "only the partition's users, each once")
        for j in jobs {
            #expect(j.body == acknowledged[j.identifyId]!, "the current state, unchanged")
            e.complete(j, outcome: .acknowledged)
        }
        #expect(offsets[p0] == 3)
        #expect(settleAll(e, clock).isEmpty, "once")
    }

    @Test func listedUsersAreSentByTheirHomePartitionsOwnerOnly() {
        let clock = ManualClock()
        let (e, offsets, _) = engine(clock)
        feed(e, [(p0, 0, track("a", 1)), (p0, 1, track("b", 2)), (p1, 0, track("c", 3))])
        settleAll(e, clock)
        // The command writes the same list to every partition.
        let request = #"{"foldspace_sync":"resync","ids":["a","c","nobody"],"request_id":"r2"}"#
        feedControl(e, p0, 2, request)
        feedControl(e, p1, 1, request)
        #expect(e.snapshot().resyncUsers == 2)
        #expect(e.snapshot().resyncPendingPartitions == 0)
        #expect(settleAll(e, clock).sorted() == ["a", "c"])
        #expect(offsets[p0] == 3)
        #expect(offsets[p1] == 2)
    }

    @Test func aRoundQueuesOneSecondOfRequestsPerStep() {
        let clock = ManualClock()
        // 100 requests/s: each step (one a second) queues 100 users, whatever awaits.
        let (e, offsets, _) = engine(clock, rate: 100)
        feed(e, (0..<250).map { (p0, Int64($0), track("u\($0)", $0 % 60)) })
        #expect(settleAll(e, clock).count == 250)
        feedControl(e, p0, 250, #"{"foldspace_sync":"resync","all":true}"#)
        e.sweep()
        #expect(e.snapshot().resyncUsers == 100)
        e.sweep()
        #expect(e.snapshot().resyncUsers == 200)
        var sent = settleAll(e, clock)
        #expect(offsets[p0] == 250, "held until every user of the partition is queued")
        e.sweep()
        #expect(e.snapshot().resyncUsers == 250)
        #expect(e.snapshot().resyncPendingPartitions == 0)
        sent += settleAll(e, clock)
        #expect(sent.count == 250)
        #expect(Set(sent).count == 250, "every user once")
        #expect(offsets[p0] == 251)
    }

    @Test func aRoundWaitsWhileHalfOfMaxDirtyUsersAwaitAndNeverPausesConsumption() {
        let clock = ManualClock()
        let (e, _, _) = engine(clock, rate: 10) { $0.maxDirtyUsers = 40 }
        feed(e, (0..<30).map { (p0, Int64($0), track("u\($0)", $0 % 60)) })
        settleAll(e, clock)
        feedControl(e, p0, 30, #"{"foldspace_sync":"resync","all":true}"#)
        for _ in 0..<5 { e.sweep() }
        #expect(e.snapshot().resyncUsers == 20, "queued while fewer than 20 await")
        #expect(!e.wantsPause)
        settleAll(e, clock)
        e.sweep()
        #expect(e.snapshot().resyncUsers == 30)
        #expect(e.snapshot().resyncPendingPartitions == 0)
    }

    @Test func usersThatNeverSettleDoNotStallARound() {
        let clock = ManualClock()
        let (e, _, _) = engine(clock, rate: 100) { $0.onUserNotFound = .retry }
        feed(e, (0..<300).map { (p0, Int64($0), track("u\($0)", $0 % 60)) })
        settleAll(e, clock)
        feedControl(e, p0, 300, #"{"foldspace_sync":"resync","all":true}"#)
        for _ in 0..<5 {
            e.sweep()
            clock.advance(600_000)
            while case .send(let jobs) = e.takeDue(limit: 10_000) {
                for j in jobs { e.complete(j, outcome: .notFound(response: "")) }
            }
        }
        #expect(e.snapshot().resyncUsers == 300)
        #expect(e.snapshot().resyncPendingPartitions == 0)
    }

    @Test func aUserInFlightWhenAskedIsSentAgainAfterItsAnswer() {
        let clock = ManualClock()
        let (e, _, _) = engine(clock)
        feed(e, [(p0, 0, track("a", 1))])
        clock.advance(10_000)
        guard case .send(let jobs) = e.takeDue(limit: 10) else {
            Issue.record("nothing sent")
            return
        }
        // The request went out before the resync was read (maybe before Foldspace's restore).
        feedControl(e, p0, 1, #"{"foldspace_sync":"resync","ids":["a"]}"#)
        for j in jobs { e.complete(j, outcome: .acknowledged) }
        #expect(settleAll(e, clock) == ["a"])
        #expect(settleAll(e, clock).isEmpty)
    }

    @Test func aRevocationsDrainPublishesNothingPastAnUnqueuedRequest() {
        let clock = ManualClock()
        final class History: @unchecked Sendable {
            let lock = NSLock()
            var stored: [Int64] = []
        }
        let history = History()
        var o = EngineOptions()
        o.debounceMs = 1_000
        o.maxWaitMs = 5_000
        o.requestsPerSecond = 1_000
        o.burst = 1_000_000
        o.drainTimeoutMs = 5_000
        let p0 = self.p0
        let e = SyncEngine(
            options: o, deadLetters: RecordingDeadLetters(), logger: quietLogger, clock: clock.engineClock,
            links: EngineLinks(storeOffsets: { m in history.lock.withLock { if let v = m[p0] { history.stored.append(v) } } }))
        e.partitionsAssigned([p0])
        feed(e, [(p0, 0, track("a", 1)), (p0, 1, track("b", 2))])
        settleAll(e, clock)
        feedControl(e, p0, 2, #"{"foldspace_sync":"resync","all":true}"#)
        feed(e, [(p0, 3, track("a", 3))])  // a changes: the drain sends it, releasing offset 3
        // A flusher answers while the revocation drains.
        let flusher = Thread {
            while e.snapshot().dirtyUsers > 0 || history.lock.withLock({ history.stored.isEmpty }) {
                if case .send(let jobs) = e.takeDue(limit: 100) {
                    for j in jobs { e.complete(j, outcome: .acknowledged) }
                }
                Thread.sleep(forTimeInterval: 0.005)
            }
        }
        flusher.start()
        e.partitionsRevoked([p0])
        let stored = history.lock.withLock { history.stored }
        #expect(!stored.isEmpty)
        #expect(stored.allSatisfy { $0 <= 2 }, "an offset past the request was published (auto-commit may commit it): \(stored)")
    }

    @Test func aMalformedControlRecordIsDeadLetteredAndTheRestGoesOn() {
        let clock = ManualClock()
        let (e, offsets, dl) = engine(clock)
        feed(e, [(p0, 0, track("a", 1))])
        settleAll(e, clock)
        feedControl(e, p0, 1, #"{"foldspace_sync":"resync"}"#)
        feedControl(e, p0, 2, #"{"foldspace_sync":"resync","all":true,"ids":["a"]}"#)
        feedControl(e, p0, 3, "not json")
        feedControl(e, p0, 4, #"{"foldspace_sync":"resync","ids":[1]}"#)
        #expect(e.snapshot().invalid[.invalidControl] == 4)
        #expect(dl.all.count == 4)
        #expect(dl.all.allSatisfy { $0.headers.contains { $0 == ("reason", "invalid-control") } })
        #expect(e.snapshot().resyncRequests == 0)
        feed(e, [(p0, 5, track("a", 2))])
        #expect(settleAll(e, clock) == ["a"])
        #expect(offsets[p0] == 6)
    }

    @Test func aDurableCheckpointCommitsUpToAnUnqueuedRequestAndStoresQueuedUsersUnsettled() throws {
        let clock = ManualClock()
        let store = MemoryStateStore(partitions: 2)
        let (e, _, _) = engine(clock, store: store)
        feed(e, [(p0, 0, track("a", 1)), (p0, 1, track("b", 2))])
        settleAll(e, clock)
        #expect(e.checkpoint())
        feedControl(e, p0, 2, #"{"foldspace_sync":"resync","all":true}"#)
        feed(e, [(p0, 3, track("b", 3))])
        #expect(e.checkpoint())
        #expect(store.lastCommit[p0] == 2, "a crash now reads the request again")
        e.sweep()
        #expect(e.checkpoint())
        #expect(store.lastCommit[p0] == 4)
        // A crash before they are sent: a new owner restores them as still to send.
        let (next, _, _) = engine(clock, store: store)
        #expect(Set(settleAll(next, clock)) == ["a", "b"])
    }

    @Test func aRevokedPartitionsUnqueuedRequestStaysUncommitted() {
        let clock = ManualClock()
        let (e, offsets, _) = engine(clock) { $0.drainTimeoutMs = 50 }  // no flusher runs here
        feed(e, [(p0, 0, track("a", 1)), (p1, 0, track("c", 1))])
        settleAll(e, clock)
        feedControl(e, p0, 1, #"{"foldspace_sync":"resync","all":true}"#)
        feed(e, [(p0, 2, track("a", 2))])
        e.partitionsRevoked([p0])
        #expect((offsets[p0] ?? 0) <= 1, "the next owner reads the request again")
        #expect(e.snapshot().resyncPendingPartitions == 0)
    }

    @Test func theRequestRoundTripsThroughItsEncoding() throws {
        for scope in [ResyncRequest.Scope.all, .ids(["x", "ü/ 1"])] {
            let r = ResyncRequest(scope: scope, requestId: "id-1")
            let bytes = r.encoded()
            let parsed = bytes.withUnsafeBufferPointer { ResyncRequest(value: $0) }
            #expect(parsed == r)
        }
        let tooMany = #"{"foldspace_sync":"resync","ids":[\#((0...ResyncRequest.maxIds).map { "\"\($0)\"" }.joined(separator: ","))]}"#
        #expect(Array(tooMany.utf8).withUnsafeBufferPointer { ResyncRequest(value: $0) } == nil)
    }
}
