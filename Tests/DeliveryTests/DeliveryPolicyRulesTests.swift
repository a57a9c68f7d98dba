import Delivery
import Testing

/// The decisions as values: an answer in, an action out, no engine and no I/O.
@Suite struct DeliveryPolicyRulesTests {
    let now: Int64 = 1_000
    let delay: Int64 = 250

    func action(_ o: DeliveryOutcome, settles: Bool = true, policy: UserNotFoundPolicy = .deadLetter, paused: Int64 = 0) -> DeliveryAction {
        DeliveryPolicy(onUserNotFound: policy).action(for: o, settles: settles, nowMs: now, backoffMs: delay, pausedUntilMs: paused)
    }

    @Test func anAcknowledgementSettles() {
        #expect(action(.acknowledged) == .settle)
    }

    @Test func aRejectionIsDeadLetteredEvenWithoutPerUserEvidence() {
        #expect(
            action(.rejected(status: 400, response: "bad"), settles: false) == .deadLetter(.rejectedUpdate, status: 400, response: "bad"))
    }

    @Test func anUnexpectedStatusSettlesOnlyOnPerUserEvidence() {
        #expect(action(.unexpected(status: 418, response: "r")) == .deadLetter(.rejectedUpdate, status: 418, response: "r"))
        #expect(
            action(.unexpected(status: 418, response: "r"), settles: false)
                == .retry(atMs: now + delay, reason: "418", unknownOutcome: false))
    }

    @Test func notFoundFollowsThePolicyOnlyOnPerUserEvidence() {
        #expect(action(.notFound(response: "x"), policy: .deadLetter) == .deadLetter(.userNotFound, status: 404, response: "x"))
        #expect(action(.notFound(response: "x"), policy: .drop) == .settle)
        #expect(action(.notFound(response: "x"), policy: .retry) == .retry(atMs: now + delay, reason: "404", unknownOutcome: false))
        for policy in UserNotFoundPolicy.allCases {
            #expect(
                action(.notFound(response: "x"), settles: false, policy: policy)
                    == .retry(atMs: now + delay, reason: "404", unknownOutcome: false))
        }
    }

    @Test func aRateLimitWaitsForThePauseAndNeverRetriesAtOnce() {
        #expect(action(.rateLimited(retryAfterMs: 5_000), paused: 6_000) == .retry(atMs: 6_000, reason: "429", unknownOutcome: false))
        #expect(action(.rateLimited(retryAfterMs: nil), paused: 0) == .retry(atMs: now + 1, reason: "429", unknownOutcome: false))
    }

    @Test func keyAndSystemicFailuresRetryAtOnceBehindTheBreaker() {
        #expect(action(.unauthorized(status: 401)) == .retry(atMs: now, reason: "401", unknownOutcome: false))
        #expect(action(.systemic(status: 400, response: "")) == .retry(atMs: now, reason: "400", unknownOutcome: false))
    }

    @Test func noAnswerOrAGatewaysIsAnUnknownOutcome() {
        for reason in ["timeout", "connection", "502", "504"] {
            #expect(action(.retryable(reason: reason)) == .retry(atMs: now + delay, reason: reason, unknownOutcome: true))
        }
        for reason in ["500", "503", "tls"] {
            #expect(action(.retryable(reason: reason)) == .retry(atMs: now + delay, reason: reason, unknownOutcome: false))
        }
    }

    @Test func backpressurePausesAboveEitherLimitAndResumesBelowEightyPercentOfBoth() {
        var b = Backpressure(maxDirtyUsers: 100, maxDeadLetterBacklogBytes: 1_000)
        func load(_ d: Int, _ bytes: Int) -> Bool { b.update(dirtyUsers: d, deadLetterBacklogBytes: bytes) }
        #expect(!load(100, 1_000))
        #expect(load(101, 0))
        #expect(load(85, 0), "resumed above 80 %")
        #expect(load(79, 900), "resumed with the backlog above 80 %")
        #expect(!load(79, 799))
        #expect(load(0, 1_001))
        #expect(!load(0, 0))
    }

    /// The smallest limits resume too: 80 % of 1 rounds down to 0, below which no count
    /// ever falls, so consuming paused for good at `max_dirty_users: 1`.
    @Test func backpressureWithTheSmallestLimitsResumes() {
        var b = Backpressure(maxDirtyUsers: 1, maxDeadLetterBacklogBytes: 1)
        func load(_ d: Int, _ bytes: Int) -> Bool { b.update(dirtyUsers: d, deadLetterBacklogBytes: bytes) }
        #expect(load(2, 0))
        #expect(!load(0, 0), "resumed with nothing pending")
        #expect(load(0, 2))
        #expect(!load(0, 0), "resumed with no backlog")
    }

    /// Limits are configuration: one at the top of Int's range must not trap when the
    /// resume threshold (80 % of it) is worked out.
    @Test func backpressureWithLimitsAtTheirMaximumDoesNotTrap() {
        var b = Backpressure(maxDirtyUsers: .max, maxDeadLetterBacklogBytes: .max)
        func load(_ d: Int, _ bytes: Int) -> Bool { b.update(dirtyUsers: d, deadLetterBacklogBytes: bytes) }
        #expect(!load(0, 0))
        var c = Backpressure(maxDirtyUsers: .max, maxDeadLetterBacklogBytes: 10)
        func loadC(_ d: Int, _ bytes: Int) -> Bool { c.update(dirtyUsers: d, deadLetterBacklogBytes: bytes) }
        #expect(loadC(0, 11))
        #expect(!loadC(0, 0), "resumed once the backlog is below 80 %")
    }

    @Test func theBreakerSaysWhenItOpensAndCloses() {
        var r = RateLimiter(ratePerSecond: 10, burst: 10, nowMs: 0)
        let ack = r.record(.acknowledged, wasProbe: false, nowMs: 0, backoffMs: 0)
        #expect(ack.breaker == nil)
        let refused = r.record(.unauthorized(status: 401), wasProbe: false, nowMs: 1, backoffMs: 0)
        #expect(refused.breaker == .opened(status: 401))
        let again = r.record(.unauthorized(status: 403), wasProbe: true, nowMs: 2, backoffMs: 0)
        #expect(again.breaker == nil, "already open")
        let answered = r.record(.acknowledged, wasProbe: true, nowMs: 3, backoffMs: 0)
        #expect(answered == .init(settles: true, breaker: .closed))
        let systemic = r.record(.systemic(status: 400, response: ""), wasProbe: false, nowMs: 4, backoffMs: 0)
        #expect(systemic.breaker == .opened(status: 400))
    }
}
