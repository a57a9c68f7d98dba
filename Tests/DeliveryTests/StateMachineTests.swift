import Testing

@testable import Delivery

@Suite struct DebouncerTests {
    /// Users by key, the way the engine keeps them.
    struct World {
        var d = Debouncer<String>(debounceMs: 5_000, maxWaitMs: 60_000)
        var users: [String: DeliveryState] = [:]

        mutating func change(_ k: String, at t: Int64) {
            var s = users[k] ?? DeliveryState()
            d.changed(k, &s, nowMs: t)
            users[k] = s
        }

        mutating func due(at t: Int64, force: Bool = false) -> [String] {
            let u = users
            return d.popDue(nowMs: t, limit: 100, force: force) { u[$0] }
        }

        mutating func send(_ k: String) {
            var s = users[k]!
            d.willSend(&s)
            users[k] = s
        }

        mutating func ack(_ k: String, at t: Int64, hash: UInt64 = 1) -> Bool {
            var s = users[k]!
            let clean = d.settled(k, &s, hash: hash, nowMs: t)
            users[k] = s
            return clean
        }
    }

    @Test func quietPeriodThenFlush() {
        var w = World()
        w.change("a", at: 1_000)
        let v1 = w.due(at: 5_999)
        #expect(v1.isEmpty)
        let v2 = w.due(at: 6_000)
        #expect(v2 == ["a"])
    }

    @Test func everyChangeRestartsTheQuietPeriod() {
        var w = World()
        w.change("a", at: 0)
        w.change("a", at: 4_000)
        let v3 = w.due(at: 5_000)
        #expect(v3.isEmpty)
        let v4 = w.due(at: 8_999)
        #expect(v4.isEmpty)
        let v5 = w.due(at: 9_000)
        #expect(v5 == ["a"])
    }

    @Test func maxWaitCapsABusyUser() {
        var w = World()
        var t: Int64 = 1_000
        var flushedAt: Int64? = nil
        while t <= 70_000 {
            w.change("a", at: t)
            if !w.due(at: t).isEmpty {
                flushedAt = t
                break
            }
            t += 1_000
        }
        #expect(flushedAt == 61_000)  // first change at 1 000 + max wait
    }

    @Test func oneRequestInFlightPerUser() {
        var w = World()
        w.change("a", at: 0)
        let first = w.due(at: 5_000)
        #expect(first == ["a"])
        w.send("a")
        w.change("a", at: 5_100)  // a change while the request is out
        let during = w.due(at: 9_000)
        #expect(during.isEmpty)  // not due again while the request is out
        let clean = w.ack("a", at: 9_000)
        #expect(!clean)  // still dirty: it changed during the flight
        let early = w.due(at: 10_099)
        #expect(early.isEmpty)  // its own quiet period still applies
        let again = w.due(at: 10_100)
        #expect(again == ["a"])
        w.send("a")
        let done = w.ack("a", at: 11_000)
        #expect(done)
        #expect(!w.users["a"]!.isDirty)
    }

    @Test func retryWaitsForBackoff() {
        var w = World()
        w.change("a", at: 0)
        _ = w.due(at: 5_000)
        w.send("a")
        var s = w.users["a"]!
        w.d.failed("a", &s, retryAtMs: 7_000)
        w.users["a"] = s
        let v12 = w.due(at: 6_999)
        #expect(v12.isEmpty)
        let v13 = w.due(at: 7_000)
        #expect(v13 == ["a"])
        #expect(w.users["a"]!.attempts == 1)
    }

    @Test func forceIgnoresDebounceButNotBackoff() {
        var w = World()
        w.change("a", at: 0)
        w.change("b", at: 0)
        var s = w.users["b"]!
        s.notBeforeMs = 10_000
        w.users["b"] = s
        w.d.rescheduleAll(at: 1)
        let v14 = w.due(at: 1, force: true)
        #expect(v14 == ["a"])
    }
}

@Suite struct OffsetTrackerTests {
    @Test func commitsOnlyWhatIsSettled() {
        var t = OffsetTracker()
        t.activate(0)
        let v15 = t.committable(0)
        #expect(v15 == nil)
        for o: Int64 in 0...9 { t.saw(0, offset: o) }
        t.hold(0, offset: 3)  // user A dirty since offset 3
        t.hold(0, offset: 6)  // user B since 6
        let v16 = t.committable(0)
        #expect(v16 == 3)
        t.release(0, offset: 6)
        let v17 = t.committable(0)
        #expect(v17 == 3)
        t.release(0, offset: 3)
        let v18 = t.committable(0)
        #expect(v18 == 10)
    }

    @Test func sharedOffsetsAreRefcounted() {
        var t = OffsetTracker()
        t.activate(0)
        t.saw(0, offset: 5)
        t.hold(0, offset: 5)
        t.hold(0, offset: 5)  // two users in one batch envelope
        t.release(0, offset: 5)
        let v19 = t.committable(0)
        #expect(v19 == 5)
        t.release(0, offset: 5)
        let v20 = t.committable(0)
        #expect(v20 == 6)
    }

    /// Durable mode never asks for the committable offset (the checkpoint commits what
    /// was consumed), so released holds must not pile up in the heap until it is.
    @Test func theHeapStaysBoundedWhenCommittableIsNeverAsked() {
        var t = OffsetTracker()
        t.activate(0)
        t.hold(0, offset: 0)  // one user that never settles
        for o: Int64 in 1...100_000 {
            t.saw(0, offset: o)
            t.hold(0, offset: o)
            t.release(0, offset: o)
        }
        #expect(t.holdCount(0) == 1)
        #expect(t.partitions[0].heap.count <= 64, "\(t.partitions[0].heap.count) heap entries for one hold")
        let c = t.committable(0)
        #expect(c == 0)
        t.release(0, offset: 0)
        let c2 = t.committable(0)
        #expect(c2 == 100_001)
    }

    @Test func advancedReportsOnlyForwardMoves() {
        var t = OffsetTracker()
        t.activate(0)
        t.activate(1)
        t.saw(0, offset: 1)
        t.saw(1, offset: 4)
        t.hold(1, offset: 2)
        let first = t.advanced()
        #expect(first.count == 2)
        #expect(first.contains { $0 == (0, 2) })
        #expect(first.contains { $0 == (1, 2) })
        let v21 = t.advanced()
        #expect(v21.isEmpty)
        t.release(1, offset: 2)
        let second = t.advanced()
        #expect(second.count == 1 && second[0] == (1, 5))
    }

    @Test func holdsKeepTheLowestOffsetPerPartition() {
        var h = Holds()
        let v22 = h.add(0, 5)
        #expect(v22)
        let v23 = h.add(0, 9)
        #expect(!v23)
        let v24 = h.add(2, 7)
        #expect(v24)
        var seen: [(Int32, Int64)] = []
        h.forEach { seen.append(($0, $1)) }
        #expect(seen.count == 2 && seen[0] == (0, 5) && seen[1] == (2, 7))
    }
}

@Suite struct RateLimiterTests {
    @Test func tokenBucketNeverExceedsRatePlusBurst() {
        var r = RateLimiter(ratePerSecond: 20, burst: 40, nowMs: 0)
        var sent: [Int64] = []
        var t: Int64 = 0
        while t < 10_000 {
            if case .send = r.acquire(nowMs: t) { sent.append(t) }
            t += 5
        }
        // Over any one-second window: at most rate + burst.
        for (i, s) in sent.enumerated() {
            let inWindow = sent[i...].prefix { $0 < s + 1000 }.count
            #expect(inWindow <= 60)
        }
        #expect(sent.count >= 40 + 9 * 20 && sent.count <= 40 + 10 * 20 + 1)
    }

    @Test func retryAfterPausesTheWholeClient() {
        var r = RateLimiter(ratePerSecond: 100, burst: 100, nowMs: 0)
        let v25 = r.acquire(nowMs: 0)
        #expect(v25 == .send)
        r.record(.rateLimited(retryAfterMs: 2_000), wasProbe: false, nowMs: 10, backoffMs: 200)
        #expect(r.factor == 0.5)
        let v26 = r.acquire(nowMs: 1_000)
        #expect(v26 == .waitUntil(2_010))
        let v27 = r.acquire(nowMs: 2_010)
        #expect(v27 != .waitUntil(2_010))
    }

    @Test func multiplicativeDecreaseAdditiveRecovery() {
        var r = RateLimiter(ratePerSecond: 20, burst: 40, nowMs: 0)
        r.record(.rateLimited(retryAfterMs: nil), wasProbe: false, nowMs: 0, backoffMs: 100)
        r.record(.rateLimited(retryAfterMs: nil), wasProbe: false, nowMs: 0, backoffMs: 100)
        #expect(r.currentRate == 5)
        _ = r.acquire(nowMs: 10_000)  // 10 s later: +0.5
        #expect(abs(r.factor - 0.75) < 1e-9)
        _ = r.acquire(nowMs: 100_000)
        #expect(r.factor == 1)
    }

    @Test func breakerProbesOncePerInterval() {
        var r = RateLimiter(ratePerSecond: 100, burst: 100, nowMs: 0)
        r.record(.unauthorized(status: 401), wasProbe: false, nowMs: 0, backoffMs: 0)
        #expect(r.breakerOpen)
        let v28 = r.acquire(nowMs: 1_000)
        #expect(v28 == .waitUntil(30_000))
        let v29 = r.acquire(nowMs: 30_000)
        #expect(v29 == .probe)
        let v30 = r.acquire(nowMs: 30_001)
        #expect(v30 != .probe)  // one probe at a time
        r.record(.unauthorized(status: 401), wasProbe: true, nowMs: 30_050, backoffMs: 0)
        let v31 = r.acquire(nowMs: 40_000)
        #expect(v31 == .waitUntil(60_000))
        r.probeSoon(nowMs: 41_000)  // key re-read
        let v32 = r.acquire(nowMs: 41_000)
        #expect(v32 == .probe)
        r.record(.acknowledged, wasProbe: true, nowMs: 41_010, backoffMs: 0)
        #expect(!r.breakerOpen)
        let v33 = r.acquire(nowMs: 41_020)
        #expect(v33 == .send)
    }

    @Test func shareScalesTheRate() {
        var r = RateLimiter(ratePerSecond: 20, burst: 40, nowMs: 0)
        r.setShare(0.25, nowMs: 0)
        #expect(r.currentRate == 5)
    }
}

@Suite struct UnknownOutcomeTests {
    /// After an unknown outcome and the next acknowledgement, the user goes once more
    /// after the resend wait; a drain (shutdown, revocation) sends it at once.
    @Test func theResendWaitsButNotForADrain() {
        var d = Debouncer<String>(debounceMs: 100, maxWaitMs: 1_000)
        d.unknownOutcomeResendMs = 60_000
        var s = DeliveryState()
        d.changed("u", &s, nowMs: 0)
        #expect(d.popDue(nowMs: 100, limit: 10) { _ in s } == ["u"])
        d.willSend(&s)
        d.failed("u", &s, retryAtMs: 300, unknownOutcome: true)
        #expect(s.settledHash == 0)
        #expect(d.popDue(nowMs: 300, limit: 10) { _ in s } == ["u"])
        d.willSend(&s)
        #expect(!d.settled("u", &s, hash: 42, nowMs: 400))  // not clean: once more to go
        #expect(s.settledHash == 0)
        #expect(d.popDue(nowMs: 30_000, limit: 10) { _ in s }.isEmpty)
        d.rescheduleAll(at: 30_000)  // as a drain does
        #expect(d.popDue(nowMs: 30_000, limit: 10, force: true) { _ in s } == ["u"])
        d.willSend(&s)
        #expect(d.settled("u", &s, hash: 42, nowMs: 30_100))
        #expect(!s.resendScheduled)
    }
}

@Suite struct HTTPPolicyTests {
    @Test func classification() {
        #expect(DeliveryOutcome.classify(status: 200, response: "", retryAfterMs: nil) == .acknowledged)
        #expect(DeliveryOutcome.classify(status: 400, response: "bad", retryAfterMs: nil) == .rejected(status: 400, response: "bad"))
        #expect(DeliveryOutcome.classify(status: 401, response: "", retryAfterMs: nil) == .unauthorized(status: 401))
        #expect(DeliveryOutcome.classify(status: 403, response: "", retryAfterMs: nil) == .unauthorized(status: 403))
        #expect(DeliveryOutcome.classify(status: 404, response: "x", retryAfterMs: nil) == .notFound(response: "x"))
        #expect(DeliveryOutcome.classify(status: 429, response: "", retryAfterMs: 1000) == .rateLimited(retryAfterMs: 1000))
        #expect(DeliveryOutcome.classify(status: 408, response: "", retryAfterMs: nil) == .retryable(reason: "408"))
        #expect(DeliveryOutcome.classify(status: 503, response: "", retryAfterMs: nil) == .retryable(reason: "503"))
        #expect(DeliveryOutcome.classify(status: 409, response: "", retryAfterMs: nil) == .unexpected(status: 409, response: ""))
        // Statuses about the URL or a proxy, never about one user.
        for status in [301, 302, 303, 307, 308, 405, 407, 501] {
            #expect(DeliveryOutcome.classify(status: status, response: "", retryAfterMs: nil) == .systemic(status: status, response: ""))
        }
    }

    /// A redirect, 405, 407 or 501 opens the breaker at once and settles no one; only a
    /// success closes it.
    @Test func systemicStatusesOpenTheBreaker() {
        var r = RateLimiter(ratePerSecond: 100, burst: 100, nowMs: 0)
        #expect(rec(&r, .acknowledged, wasProbe: false, nowMs: 0, backoffMs: 0))
        #expect(!rec(&r, .systemic(status: 307, response: ""), wasProbe: false, nowMs: 10, backoffMs: 0, user: 1))
        #expect(r.breakerOpen && r.breakerStatus == 307)
        #expect(acq(&r, 20) == .waitUntil(30_010))
        #expect(acq(&r, 30_010) == .probe)
        // A user's own status on the probe is no proof the URL is right again.
        #expect(!rec(&r, .notFound(response: ""), wasProbe: true, nowMs: 30_020, backoffMs: 0, user: 2))
        #expect(r.breakerOpen)
        #expect(acq(&r, 60_020) == .probe)
        #expect(rec(&r, .acknowledged, wasProbe: true, nowMs: 60_030, backoffMs: 0, user: 3))
        #expect(!r.breakerOpen)
    }

    /// 404 (or another 4xx but 400) settles a user only once the endpoint is proven, and
    /// the same status for `systemicRun` different users in a row opens the breaker.
    @Test func aFinalStatusSettlesOnlyOnPerUserEvidence() {
        var r = RateLimiter(ratePerSecond: 100, burst: 100, nowMs: 0)
        r.systemicRun = 3
        // A wrong base URL: 404 for everyone from the start. Nobody settles; the third
        // user opens the breaker.
        #expect(!rec(&r, .notFound(response: ""), wasProbe: false, nowMs: 0, backoffMs: 0, user: 1))
        #expect(!rec(&r, .notFound(response: ""), wasProbe: false, nowMs: 1, backoffMs: 0, user: 1))  // the same user again
        #expect(!r.breakerOpen)
        #expect(!rec(&r, .notFound(response: ""), wasProbe: false, nowMs: 2, backoffMs: 0, user: 2))
        #expect(!rec(&r, .notFound(response: ""), wasProbe: false, nowMs: 3, backoffMs: 0, user: 3))
        #expect(r.breakerOpen && r.breakerStatus == 404)
        // A success proves the endpoint: then 404 is that user's.
        #expect(rec(&r, .acknowledged, wasProbe: true, nowMs: 4, backoffMs: 0, user: 4))
        #expect(!r.breakerOpen)
        #expect(rec(&r, .notFound(response: ""), wasProbe: false, nowMs: 5, backoffMs: 0, user: 5))
        #expect(rec(&r, .unexpected(status: 409, response: ""), wasProbe: false, nowMs: 6, backoffMs: 0, user: 6))
        #expect(rec(&r, .notFound(response: ""), wasProbe: false, nowMs: 7, backoffMs: 0, user: 7))
        // Successes between them break the run.
        #expect(rec(&r, .acknowledged, wasProbe: false, nowMs: 8, backoffMs: 0, user: 8))
        #expect(rec(&r, .notFound(response: ""), wasProbe: false, nowMs: 9, backoffMs: 0, user: 9))
        #expect(rec(&r, .notFound(response: ""), wasProbe: false, nowMs: 10, backoffMs: 0, user: 10))
        // ...but a third in a row is systemic, and the endpoint must be proven again.
        #expect(!rec(&r, .notFound(response: ""), wasProbe: false, nowMs: 11, backoffMs: 0, user: 11))
        #expect(r.breakerOpen && !r.endpointProven)
        // A 401 breaker closes on any answer past authentication.
        var k = RateLimiter(ratePerSecond: 100, burst: 100, nowMs: 0)
        k.record(.acknowledged, wasProbe: false, nowMs: 0, backoffMs: 0)
        k.record(.unauthorized(status: 401), wasProbe: false, nowMs: 1, backoffMs: 0)
        #expect(rec(&k, .notFound(response: ""), wasProbe: true, nowMs: 2, backoffMs: 0, user: 1))
        #expect(!k.breakerOpen)
    }

    @Test func backoffIsBoundedFullJitter() {
        let b = Backoff()
        var rng = SystemRandomNumberGenerator()
        for attempt in 0..<40 {
            let d = b.delayMs(attempt: attempt, using: &rng)
            #expect(d >= 200 && d <= 30_000)
        }
        #expect(b.ceilingMs(attempt: 0) == 200)
        #expect(b.ceilingMs(attempt: 3) == 1600)
        #expect(b.ceilingMs(attempt: 30) == 30_000)
    }
}

/// `record` and `acquire` through a function, for use inside `#expect`.
private func rec(_ r: inout RateLimiter, _ o: DeliveryOutcome, wasProbe: Bool, nowMs: Int64, backoffMs: Int64, user: UInt64 = 0) -> Bool {
    r.record(o, wasProbe: wasProbe, nowMs: nowMs, backoffMs: backoffMs, user: user).settles
}
private func acq(_ r: inout RateLimiter, _ nowMs: Int64) -> RateLimiter.Permit { r.acquire(nowMs: nowMs) }
