import Delivery
import Events
import Foundation
import Kafka
import Logging
import Testing

@testable import SyncService

/// Feeds messages to the engine as the poll thread would, each with the same Kafka time.
func feed(_ engine: SyncEngine, _ messages: [(tp: TopicPartition, offset: Int64, json: String)]) {
    feedTimed(engine, messages.map { ($0.tp, $0.offset, 1_764_000_000_000, $0.json) })
}

@Suite struct EngineTests {
    let tp = TopicPartition("events", 0)

    func makeEngine(
        _ clock: ManualClock, dl: DeadLetterSink = RecordingDeadLetters(),
        configure: (inout EngineOptions) -> Void = { _ in }
    ) -> (SyncEngine, OffsetLog) {
        var o = EngineOptions()
        o.debounceMs = 1_000
        o.maxWaitMs = 10_000
        o.requestsPerSecond = 1_000
        o.burst = 1_000
        configure(&o)
        let log = OffsetLog()
        let e = SyncEngine(
            options: o, deadLetters: dl, logger: quietLogger, clock: clock.engineClock,
            links: EngineLinks(storeOffsets: { log.store($0) }))
        e.partitionsAssigned([tp])
        return (e, log)
    }

    func jobs(_ next: SyncEngine.Next) -> [FlushJob] {
        if case .send(let j) = next { return j }
        return []
    }

    @Test func burstCoalescesIntoOnePutAfterTheQuietPeriod() {
        let clock = ManualClock()
        let (engine, offsets) = makeEngine(clock)
        feed(
            engine,
            (0..<20).map {
                (tp, Int64($0), #"{"type":"track","userId":"u1","timestamp":"2025-11-24T10:00:\#(String(format: "%02d", $0))Z"}"#)
            })
        #expect(jobs(engine.takeDue(limit: 10)).isEmpty)
        #expect(offsets[tp] == 0)  // nothing settled yet: the commit stays at the first event
        clock.advance(1_000)
        let out = jobs(engine.takeDue(limit: 10))
        #expect(out.count == 1)
        let body = try! JSONSerialization.jsonObject(with: Data(out[0].body)) as! [String: Any]
        #expect(body["lastSeenDate"] as? Int64 == 1_763_978_419_000)
        #expect(body["firstVisitDate"] as? Int64 == 1_763_978_400_000)
        engine.complete(out[0], outcome: .acknowledged)
        #expect(offsets[tp] == 20)
        #expect(engine.snapshot().dirtyUsers == 0)
    }

    @Test func aCatchUpIsReportedOncePerAssignmentWithItsSpan() {
        let clock = ManualClock()
        let (engine, _) = makeEngine(clock)  // assigned at t0
        let track = { (i: Int) in (self.tp, Int64(i), #"{"type":"track","userId":"u\#(i % 7)","timestamp":"2025-11-24T10:00:00Z"}"#) }
        #expect(engine.awaitingCatchUp)
        // A look before the first fetch, with a backlog ahead, does not end the wait.
        #expect(engine.takeCatchUp(backlog: 400) == nil)
        #expect(engine.awaitingCatchUp)
        clock.advance(200)  // the restore, the first fetch
        feed(engine, (0..<300).map(track))  // three chunks, at t0+200
        clock.advance(500)
        feed(engine, (300..<400).map(track))  // at t0+700
        feed(engine, [(tp, 400, "{not json")])  // not folded, not counted
        clock.advance(100)
        let c = engine.takeCatchUp()
        #expect(c == SyncEngine.CaughtUp(events: 400, foldSeconds: 0.5, sinceAssignmentSeconds: 0.8))
        #expect(!engine.awaitingCatchUp)
        #expect(engine.takeCatchUp() == nil)  // once
        feed(engine, (401..<410).map(track))
        #expect(engine.takeCatchUp() == nil)
        // A new assignment starts over; with nothing folded since, nothing to report.
        engine.partitionsAssigned([TopicPartition("events", 1)])
        #expect(engine.awaitingCatchUp)
        #expect(engine.takeCatchUp() == nil)
        #expect(!engine.awaitingCatchUp)
    }

    @Test func sendLatenessIsTheTimeFromDueToSent() {
        let clock = ManualClock()
        let (engine, _) = makeEngine(clock)
        feed(engine, [(tp, 0, #"{"type":"track","userId":"on-time"}"#)])
        clock.advance(1_000)  // exactly due
        let first = jobs(engine.takeDue(limit: 10))
        #expect(first.count == 1)
        feed(engine, [(tp, 1, #"{"type":"track","userId":"late"}"#)])
        clock.advance(1_300)  // due 300 ms ago
        let second = jobs(engine.takeDue(limit: 10))
        #expect(second.map(\.identifyId) == ["late"])
        let h = engine.snapshot().sendLateness
        #expect(h.count == 2)
        #expect(h.fraction(atMost: 0.001) == 0.5)  // on time
        #expect(h.fraction(atMost: 0.25) == 0.5)  // the late one is over 250 ms...
        #expect(h.fraction(atMost: 0.5) == 1.0)  // ...and under 500 ms
        #expect(h.quantileBound(0.5) == 0.001)
        #expect(h.quantileBound(0.99) == 0.5)
    }

    @Test func oldestDirtyAgeFollowsTransitionsWithoutAWalk() throws {
        let clock = ManualClock()
        let (engine, _) = makeEngine(clock) {
            $0.debounceMs = 1_000
            $0.maxWaitMs = 1_000
        }
        #expect(engine.snapshot().oldestDirtyMs == 0)
        feed(engine, [(tp, 0, #"{"type":"track","userId":"a"}"#)])
        clock.advance(600)
        feed(engine, [(tp, 1, #"{"type":"track","userId":"b"}"#)])
        clock.advance(300)
        // a dirty for 900 ms, b for 300: the oldest is a's, to the 100 ms bucket.
        var s = engine.snapshot()
        #expect(s.dirtyUsers == 2)
        #expect((900...999).contains(s.oldestDirtyMs), "\(s.oldestDirtyMs)")
        clock.advance(100)
        let a = jobs(engine.takeDue(limit: 10))
        #expect(a.map(\.identifyId) == ["a"])
        let sentA = try #require(a.first)
        // In flight still counts as unacknowledged; a change meanwhile makes a dirty
        // again from that change once the request settles.
        clock.advance(200)
        feed(engine, [(tp, 2, #"{"type":"track","userId":"a","timestamp":"2025-11-24T10:00:05Z"}"#)])
        clock.advance(300)
        engine.complete(sentA, outcome: .acknowledged)
        s = engine.snapshot()
        #expect(s.dirtyUsers == 2)
        #expect((900...999).contains(s.oldestDirtyMs), "b's age: \(s.oldestDirtyMs)")
        clock.advance(200)  // b due (1 s), a not yet (its change was 500 ms ago)
        let b = jobs(engine.takeDue(limit: 10))
        #expect(b.map(\.identifyId) == ["b"])
        engine.complete(try #require(b.first), outcome: .acknowledged)
        s = engine.snapshot()
        #expect(s.dirtyUsers == 1)
        #expect((500...599).contains(s.oldestDirtyMs), "a's second change: \(s.oldestDirtyMs)")
        clock.advance(500)
        let a2 = jobs(engine.takeDue(limit: 10))
        #expect(a2.map(\.identifyId) == ["a"])
        engine.complete(try #require(a2.first), outcome: .acknowledged)
        s = engine.snapshot()
        #expect(s.dirtyUsers == 0)
        #expect(s.oldestDirtyMs == 0)
    }

    @Test func offsetsWaitForTheSlowestUser() {
        let clock = ManualClock()
        let (engine, offsets) = makeEngine(clock)
        feed(
            engine,
            [
                (tp, 0, #"{"type":"page","userId":"a"}"#), (tp, 1, #"{"type":"page","userId":"b"}"#),
                (tp, 2, #"{"type":"page","userId":"a"}"#),
            ])
        clock.advance(1_000)
        let out = jobs(engine.takeDue(limit: 10))
        #expect(Set(out.map(\.identifyId)) == ["a", "b"])
        let b = out.first { $0.identifyId == "b" }!
        let a = out.first { $0.identifyId == "a" }!
        engine.complete(b, outcome: .acknowledged)
        #expect(offsets[tp] == 0)  // a (offset 0) is not settled
        engine.complete(a, outcome: .retryable(reason: "503"))
        #expect(offsets[tp] == 0)
        clock.advance(31_000)
        let retry = jobs(engine.takeDue(limit: 10))
        #expect(retry.map(\.identifyId) == ["a"])
        engine.complete(retry[0], outcome: .acknowledged)
        #expect(offsets[tp] == 3)
    }

    @Test func noOpBodiesAreNotSent() {
        let clock = ManualClock()
        let (engine, offsets) = makeEngine(clock)
        let e = #"{"type":"identify","userId":"u","timestamp":"2025-11-24T10:00:00Z","traits":{"email":"a@x.io"}}"#
        feed(engine, [(tp, 0, e)])
        clock.advance(1_000)
        let first = jobs(engine.takeDue(limit: 10))
        engine.complete(first[0], outcome: .acknowledged)
        // The same event replayed: state unchanged, nothing sent, offset still advances.
        feed(engine, [(tp, 1, e)])
        clock.advance(5_000)
        #expect(jobs(engine.takeDue(limit: 10)).isEmpty)
        #expect(offsets[tp] == 2)
        #expect(engine.snapshot().requestTotal == 1)
    }

    /// A request that timed out may still be applied by Foldspace, after the newer one
    /// that was acknowledged: the newest state goes once more, though unchanged, a quiet
    /// period after that acknowledgement.
    @Test func aTimedOutRequestIsFollowedByOneMoreSendOfTheNewestState() {
        let clock = ManualClock()
        let (engine, _) = makeEngine(clock)
        feed(engine, [(tp, 0, #"{"type":"identify","userId":"u","traits":{"email":"a@x.io"},"timestamp":"2025-11-24T10:00:00Z"}"#)])
        clock.advance(1_000)
        let first = jobs(engine.takeDue(limit: 10))
        engine.complete(first[0], outcome: .retryable(reason: "timeout"))
        feed(engine, [(tp, 1, #"{"type":"identify","userId":"u","traits":{"email":"b@x.io"},"timestamp":"2025-11-24T10:00:01Z"}"#)])
        clock.advance(31_000)
        let second = jobs(engine.takeDue(limit: 10))
        #expect(second.count == 1)
        engine.complete(second[0], outcome: .acknowledged)
        clock.advance(59_000)
        // Not before the unanswered request could have landed (twice the request
        // timeout: 60 s by default).
        #expect(jobs(engine.takeDue(limit: 10)).isEmpty)
        clock.advance(1_000)
        let third = jobs(engine.takeDue(limit: 10))
        #expect(third.map(\.body) == second.map(\.body))  // the same, newest body
        engine.complete(third[0], outcome: .acknowledged)
        clock.advance(60_000)
        #expect(jobs(engine.takeDue(limit: 10)).isEmpty)  // once, not for ever
        #expect(engine.snapshot().dirtyUsers == 0)
        // An answer (even an error) is no unknown outcome.
        feed(engine, [(tp, 2, #"{"type":"identify","userId":"u","traits":{"email":"c@x.io"},"timestamp":"2025-11-24T10:00:02Z"}"#)])
        clock.advance(1_000)
        let fourth = jobs(engine.takeDue(limit: 10))
        engine.complete(fourth[0], outcome: .retryable(reason: "503"))
        clock.advance(31_000)
        let fifth = jobs(engine.takeDue(limit: 10))
        engine.complete(fifth[0], outcome: .acknowledged)
        clock.advance(60_000)
        #expect(jobs(engine.takeDue(limit: 10)).isEmpty)
    }

    @Test func changesDuringAFlightAreSentAfterIt() {
        let clock = ManualClock()
        let (engine, offsets) = makeEngine(clock)
        feed(engine, [(tp, 0, #"{"type":"identify","userId":"u","traits":{"email":"a@x.io"},"timestamp":"2025-11-24T10:00:00Z"}"#)])
        clock.advance(1_000)
        let first = jobs(engine.takeDue(limit: 10))
        feed(engine, [(tp, 1, #"{"type":"identify","userId":"u","traits":{"email":"b@x.io"},"timestamp":"2025-11-24T10:00:01Z"}"#)])
        clock.advance(2_000)
        #expect(jobs(engine.takeDue(limit: 10)).isEmpty)  // one request per user in flight
        engine.complete(first[0], outcome: .acknowledged)
        #expect(offsets[tp] == 1)  // offset 1 is not in the acknowledged body
        let second = jobs(engine.takeDue(limit: 10))
        #expect(second.count == 1)
        let body = try! JSONSerialization.jsonObject(with: Data(second[0].body)) as! [String: Any]
        #expect(body["email"] as? String == "b@x.io")
        engine.complete(second[0], outcome: .acknowledged)
        #expect(offsets[tp] == 2)
    }

    @Test func rejectedUpdatesAreDeadLetteredAndNotResent() {
        let clock = ManualClock()
        let dl = RecordingDeadLetters()
        let (engine, offsets) = makeEngine(clock, dl: dl)
        feed(engine, [(tp, 0, #"{"type":"page","userId":"u"}"#)])
        clock.advance(1_000)
        let j = jobs(engine.takeDue(limit: 10))
        engine.complete(j[0], outcome: .rejected(status: 400, response: "nope"))
        #expect(offsets[tp] == 1)
        #expect(dl.all.count == 1)
        #expect(dl.all[0].kind == "rejected-update")
        #expect(dl.all[0].key == Array("u".utf8))
        #expect(dl.all[0].value == j[0].body)
        #expect(dl.all[0].headers.contains { $0 == ("status", "400") })
        #expect(dl.all[0].headers.contains { $0 == ("response", "nope") })
        clock.advance(60_000)
        #expect(jobs(engine.takeDue(limit: 10)).isEmpty)
    }

    @Test func invalidInputIsDeadLetteredAndCommitted() {
        let clock = ManualClock()
        let dl = RecordingDeadLetters()
        let (engine, offsets) = makeEngine(clock, dl: dl)
        feed(engine, [(tp, 0, "garbage"), (tp, 1, "[1]"), (tp, 2, #"{"type":"page"}"#), (tp, 3, #"{"type":"flush","userId":"x"}"#)])
        #expect(offsets[tp] == 4)
        let s = engine.snapshot()
        #expect(s.invalid == [.notJSON: 1, .notObject: 1, .missingIdentity: 1])
        #expect(s.ignored == 1)
        #expect(dl.all.map(\.kind) == ["invalid-event", "invalid-event", "invalid-event"])
        #expect(dl.all[0].value == Array("garbage".utf8))
        #expect(dl.all[0].headers.contains { $0 == ("reason", "not-json") })
        #expect(dl.all[0].headers.contains { $0 == ("source.offset", "0") })
        #expect(dl.all[0].headers.contains { $0 == ("source.topic", "events") })
    }

    @Test func decodingAheadFoldsInOrderAcrossChunks() {
        // One batch of 1,000 messages is eight decode chunks: with a helper decoding ahead
        // (on 2+ cores) every user must end exactly as with decoding on the poll thread
        // alone. Folding a later chunk first would skip the earlier one's events as
        // replays (offsets at or below the applied one) and lose visits and emails.
        let base: Int64 = 1_763_978_400_000
        let messages: [(tp: TopicPartition, offset: Int64, json: String)] = (0..<1_000).map { i in
            let u = i % 50
            let t = base + Int64(i) * 60_000  // per user, events 50 minutes apart: a new visit each
            if i % 37 == 0 { return (tp, Int64(i), "not json \(i)") }
            if i % 5 == 0 {
                return (tp, Int64(i), #"{"type":"identify","userId":"u\#(u)","timestamp":\#(t),"traits":{"email":"e\#(i)@x.io"}}"#)
            }
            return (tp, Int64(i), #"{"type":"page","userId":"u\#(u)","timestamp":\#(t),"context":{"location":{"city":"C\#(i % 7)"}}}"#)
        }
        func run(decodeThreads: Int) -> (bodies: [String: [UInt8]], deadLetterOffsets: [String], committed: Int64?) {
            let clock = ManualClock()
            let dl = RecordingDeadLetters()
            let (engine, offsets) = makeEngine(clock, dl: dl) {
                $0.decodeThreads = decodeThreads
                $0.requestsPerSecond = 100_000
                $0.burst = 100_000
            }
            feed(engine, messages)
            clock.advance(20_000)
            var bodies: [String: [UInt8]] = [:]
            for j in jobs(engine.takeDue(limit: 1_000)) {
                bodies[j.identifyId] = j.body
                engine.complete(j, outcome: .acknowledged)
            }
            let dlOffsets = dl.all.compactMap { $0.headers.first { $0.0 == "source.offset" }?.1 }
            return (bodies, dlOffsets, offsets[tp])
        }
        let alone = run(decodeThreads: 1)
        let ahead = run(decodeThreads: 2)
        #expect(alone.bodies.count == 50)
        #expect(ahead.bodies == alone.bodies)
        #expect(ahead.deadLetterOffsets == alone.deadLetterOffsets)
        #expect(alone.deadLetterOffsets == stride(from: 0, to: 1_000, by: 37).map(String.init))
        #expect(ahead.committed == 1_000)
        #expect(alone.committed == 1_000)
        // And that shared outcome is the fold of every event: the last email and time win.
        let u5 = try! JSONSerialization.jsonObject(with: Data(alone.bodies["u5"]!)) as! [String: Any]
        #expect(u5["email"] as? String == "e955@x.io")
        #expect(u5["lastSeenDate"] as? Int64 == base + 955 * 60_000)
        #expect(u5["firstVisitDate"] as? Int64 == base + 5 * 60_000)
    }

    @Test func notFoundPolicies() {
        for policy in UserNotFoundPolicy.allCases {
            let clock = ManualClock()
            let dl = RecordingDeadLetters()
            let (engine, offsets) = makeEngine(clock, dl: dl) { $0.onUserNotFound = policy }
            // Another user's 2xx first: it proves the endpoint, so a 404 is u's own.
            feed(engine, [(tp, 0, #"{"type":"page","userId":"known"}"#), (tp, 1, #"{"type":"page","userId":"u"}"#)])
            clock.advance(1_000)
            let j = jobs(engine.takeDue(limit: 10))
            #expect(j.map(\.identifyId) == ["known", "u"])
            engine.complete(j[0], outcome: .acknowledged)
            engine.complete(j[1], outcome: .notFound(response: ""))
            switch policy {
            case .deadLetter:
                #expect(dl.all.map(\.kind) == ["user-not-found"])
                #expect(offsets[tp] == 2)
            case .drop:
                #expect(dl.all.isEmpty)
                #expect(offsets[tp] == 2)
            case .retry:
                #expect(offsets[tp] == 1)
                clock.advance(31_000)
                #expect(jobs(engine.takeDue(limit: 10)).count == 1)
            }
        }
        // With nothing proven yet, a 404 settles no one under any policy: the user is
        // tried again.
        for policy in UserNotFoundPolicy.allCases {
            let clock = ManualClock()
            let dl = RecordingDeadLetters()
            let (engine, offsets) = makeEngine(clock, dl: dl) { $0.onUserNotFound = policy }
            feed(engine, [(tp, 0, #"{"type":"page","userId":"u"}"#)])
            clock.advance(1_000)
            let j = jobs(engine.takeDue(limit: 10))
            engine.complete(j[0], outcome: .notFound(response: ""))
            #expect(dl.all.isEmpty)
            #expect(offsets[tp] == 0)
            clock.advance(31_000)
            #expect(jobs(engine.takeDue(limit: 10)).map(\.identifyId) == ["u"])
        }
    }

    @Test func unauthorizedOpensTheBreakerAndNothingIsDropped() {
        let clock = ManualClock()
        let (engine, offsets) = makeEngine(clock)
        feed(engine, [(tp, 0, #"{"type":"page","userId":"a"}"#), (tp, 1, #"{"type":"page","userId":"b"}"#)])
        clock.advance(1_000)
        let j = jobs(engine.takeDue(limit: 1))
        engine.complete(j[0], outcome: .unauthorized(status: 401))
        #expect(engine.snapshot().breakerOpen)
        #expect(engine.snapshot().ready)  // a metric and an alert, not unreadiness
        clock.advance(10_000)
        #expect(jobs(engine.takeDue(limit: 10)).isEmpty)  // breaker open
        clock.advance(20_000)
        let probe = jobs(engine.takeDue(limit: 10))
        #expect(probe.count == 1 && probe[0].isProbe)
        engine.complete(probe[0], outcome: .acknowledged)
        #expect(!engine.snapshot().breakerOpen)
        let rest = jobs(engine.takeDue(limit: 10))
        #expect(rest.count == 1)
        engine.complete(rest[0], outcome: .acknowledged)
        #expect(offsets[tp] == 2)
    }

    @Test func pausesAboveMaxDirtyUsersAndResumesBelowEightyPercent() {
        let clock = ManualClock()
        let (engine, _) = makeEngine(clock) { $0.maxDirtyUsers = 10 }
        feed(engine, (0..<11).map { (tp, Int64($0), #"{"type":"page","userId":"u\#($0)"}"#) })
        #expect(engine.wantsPause)
        clock.advance(1_000)
        let j = jobs(engine.takeDue(limit: 3))
        for x in j { engine.complete(x, outcome: .acknowledged) }
        #expect(engine.snapshot().dirtyUsers == 8)
        #expect(engine.wantsPause)  // 8 is not below 80 % of 10
        let k = jobs(engine.takeDue(limit: 1))
        engine.complete(k[0], outcome: .acknowledged)
        #expect(!engine.wantsPause)
    }

    @Test func revocationFlushesStoresAndDropsTheUsers() async {
        let clock = ManualClock()
        let (engine, offsets) = makeEngine(clock) { $0.drainTimeoutMs = 60_000 }
        feed(engine, [(tp, 0, #"{"type":"page","userId":"a"}"#), (tp, 1, #"{"type":"page","userId":"b"}"#)])
        // A stand-in flusher acknowledges whatever the drain makes due.
        let stop = Flag()
        let flusher = Task.detached {
            while !stop.isSet {
                if case .send(let js) = engine.takeDue(limit: 10) {
                    for j in js { engine.complete(j, outcome: .acknowledged) }
                }
                try? await Task.sleep(for: .milliseconds(2))
            }
        }
        engine.partitionsRevoked([tp])
        stop.set()
        await flusher.value
        #expect(offsets[tp] == 2)
        #expect(engine.snapshot().users == 0)
        #expect(engine.snapshot().requestTotal == 2)
        #expect(engine.snapshot().unsettledAtLastRevocation == 0)
    }

    @Test func aRevocationThatCannotSettleSaysHowManyUsersItLetGo() {
        let clock = ManualClock()
        let (engine, offsets) = makeEngine(clock) { $0.drainTimeoutMs = 50 }
        feed(
            engine,
            [
                (tp, 0, #"{"type":"page","userId":"a"}"#), (tp, 1, #"{"type":"page","userId":"b"}"#),
                (tp, 2, #"{"type":"page","userId":"c"}"#),
            ])
        // Nobody sends: the drain waits out its timeout on the test's clock, moved by a
        // thread of its own (a task could wait behind tests blocking the shared pool).
        let stop = Flag()
        let stopped = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            while !stop.isSet {
                clock.advance(10)
                Thread.sleep(forTimeInterval: 0.002)
            }
            stopped.signal()
        }
        engine.partitionsRevoked([tp])
        stop.set()
        stopped.wait()
        let s = engine.snapshot()
        #expect(s.users == 0 && s.dirtyUsers == 0)
        #expect(s.unsettledAtLastRevocation == 3)
        #expect((offsets[tp] ?? 0) == 0)  // nothing past the first event committed: read again
    }
}

final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var v = false
    var isSet: Bool { lock.withLock { v } }
    func set() { lock.withLock { v = true } }
}
