import Events

/// The client-wide sending policy as a state machine: a token bucket, an adaptive rate
/// (multiplicative decrease on 429, additive recovery), the `Retry-After` pause, and the
/// circuit breaker for faults that are not any one user's. Time is injected (monotonic
/// milliseconds).
///
/// The breaker opens on 401/403 (the key), on a ``DeliveryOutcome/systemic(status:response:)``
/// status (a redirect, 405, 407, 501: the URL or a proxy), and when one final status that
/// could be a user's own (404, 409, any other 4xx but 400) comes back for
/// ``systemicRun`` different users in a row with no success between. Such a status
/// settles a user only once the endpoint is proven (a 2xx or a 400 since the start, or
/// since a systemic fault): a wrong base URL answering 404 to everyone settles nobody.
///
/// Foldspace limits requests per subscription, so one of these serves every user of an
/// instance; with several instances on one key, ``share`` scales the rate by this
/// instance's share of the partitions.
public struct RateLimiter: Sendable {
    /// The configured rate and burst for the whole API key.
    public var configuredRate: Double
    public var burst: Double
    /// This instance's share of the key (assigned partitions / all partitions), 0…1.
    public private(set) var share: Double = 1
    /// The adaptive factor applied after 429s (1 = full rate).
    public private(set) var factor: Double = 1
    private var tokens: Double
    private var lastRefillMs: Int64
    /// No request before this time (Retry-After, or 429 backoff), client-wide.
    public private(set) var pausedUntilMs: Int64 = 0
    /// The breaker: open means no request except one probe per `probeIntervalMs`.
    public private(set) var breakerOpen = false
    /// The status that opened the breaker (401, 403, or a systemic one).
    public private(set) var breakerStatus = 0
    /// Whether a 2xx or 400 showed that the endpoint and the key work, since the start or
    /// since the last systemic fault: only then does a final status settle a user.
    public private(set) var endpointProven = false
    /// Different users in a row that got the same final status (no success between)
    /// that make it systemic.
    public var systemicRun = 20
    private var runStatus = 0
    private var runUsers: Set<UInt64> = []
    public private(set) var nextProbeMs: Int64 = 0
    public var probeIntervalMs: Int64 = 30_000
    private var probeInFlight = false
    /// Lowest factor after repeated 429s, and the additive step back per second.
    public var minFactor = 0.05
    public var recoveryPerSecond = 0.05

    public init(ratePerSecond: Double, burst: Double, nowMs: Int64) {
        configuredRate = max(ratePerSecond, 0.001)
        self.burst = max(burst, 1)
        tokens = self.burst
        lastRefillMs = nowMs
    }

    /// The rate this instance sends at now.
    public var currentRate: Double { configuredRate * share * factor }

    /// The burst this instance may use (its share of the key's burst, at least one).
    var effectiveBurst: Double { max(1, burst * share) }

    public mutating func setShare(_ s: Double, nowMs: Int64) {
        refill(nowMs)
        share = min(1, max(0.001, s))
        tokens = min(tokens, effectiveBurst)
    }

    private mutating func refill(_ nowMs: Int64) {
        let dt = Double(max(0, nowMs - lastRefillMs)) / 1000
        lastRefillMs = nowMs
        if factor < 1 { factor = min(1, factor + recoveryPerSecond * dt) }
        tokens = min(effectiveBurst, tokens + dt * currentRate)
    }

    /// What the flusher may do now.
    public enum Permit: Equatable, Sendable {
        /// Send one request.
        case send
        /// Send one request as the breaker's probe.
        case probe
        /// Wait until this time before asking again.
        case waitUntil(Int64)
    }

    /// Asks to send one request; on `.send`/`.probe` a token is taken.
    public mutating func acquire(nowMs: Int64) -> Permit {
        refill(nowMs)
        if nowMs < pausedUntilMs { return .waitUntil(pausedUntilMs) }
        if breakerOpen {
            if probeInFlight || nowMs < nextProbeMs { return .waitUntil(max(nextProbeMs, nowMs + 100)) }
            probeInFlight = true
            nextProbeMs = nowMs + probeIntervalMs
            return .probe
        }
        if tokens >= 1 {
            tokens -= 1
            return .send
        }
        let waitMs = Int64(((1 - tokens) / max(currentRate, 0.001) * 1000).rounded(.up))
        return .waitUntil(nowMs + max(1, waitMs))
    }

    /// Gives back a token taken by ``acquire(nowMs:)`` that found nothing to send.
    public mutating func refund(_ permit: Permit) {
        switch permit {
        case .send: tokens = min(effectiveBurst, tokens + 1)
        case .probe:
            probeInFlight = false
            nextProbeMs = 0
        case .waitUntil: break
        }
    }

    /// Records an answer for the user whose id hashes to `user`. `retryAfterMs` applies
    /// to 429s. Returns whether a final status (400, 404, or another 4xx) may settle that
    /// user: false while the breaker is open or the endpoint is not proven, and for the
    /// answer that makes a run of them systemic.
    @discardableResult
    public mutating func record(
        _ outcome: DeliveryOutcome, wasProbe: Bool, nowMs: Int64, backoffMs: Int64,
        user: UInt64 = 0
    ) -> Recorded {
        let wasOpen = breakerOpen
        let settles = apply(outcome, wasProbe: wasProbe, nowMs: nowMs, backoffMs: backoffMs, user: user)
        let change: BreakerChange? = breakerOpen == wasOpen ? nil : breakerOpen ? .opened(status: breakerStatus) : .closed
        return Recorded(settles: settles, breaker: change)
    }

    /// What ``record(_:wasProbe:nowMs:backoffMs:user:)`` found.
    public struct Recorded: Sendable, Equatable {
        /// Whether a final status may settle the user.
        public var settles: Bool
        /// The breaker opened or closed with this answer (nil: as it was).
        public var breaker: BreakerChange?

        public init(settles: Bool, breaker: BreakerChange?) {
            self.settles = settles
            self.breaker = breaker
        }
    }

    public enum BreakerChange: Sendable, Equatable {
        /// Sending pauses, one probe per ``probeIntervalMs``: the key is refused (401,
        /// 403) or every user gets the same final status (`status`).
        case opened(status: Int)
        case closed
    }

    private mutating func apply(
        _ outcome: DeliveryOutcome, wasProbe: Bool, nowMs: Int64, backoffMs: Int64,
        user: UInt64
    ) -> Bool {
        if wasProbe { probeInFlight = false }
        switch outcome {
        case .rateLimited(let retryAfter):
            refill(nowMs)
            factor = max(minFactor, factor * 0.5)
            tokens = min(tokens, 0)
            pausedUntilMs = max(pausedUntilMs, nowMs.adding(saturating: retryAfter ?? backoffMs))
            return false
        case .unauthorized(let status):
            open(status, nowMs: nowMs)
            return false
        case .systemic(let status, _):
            open(status, nowMs: nowMs)
            endpointProven = false
            return false
        case .acknowledged, .rejected:
            // The key and the endpoint work.
            close()
            endpointProven = true
            runUsers.removeAll()
            return true
        case .notFound, .unexpected:
            let status: Int
            if case .unexpected(let s, _) = outcome { status = s } else { status = 404 }
            if breakerOpen {
                // An answer past authentication: a key breaker closes, a systemic one
                // waits for a success.
                guard breakerStatus == 401 || breakerStatus == 403 else { return false }
                close()
            }
            if status != runStatus {
                runStatus = status
                runUsers.removeAll()
            }
            runUsers.insert(user)
            if runUsers.count >= systemicRun {
                open(status, nowMs: nowMs)
                endpointProven = false
                runUsers.removeAll()
                return false
            }
            return endpointProven
        case .retryable:
            return false
        }
    }

    private mutating func open(_ status: Int, nowMs: Int64) {
        breakerStatus = status
        if !breakerOpen {
            breakerOpen = true
            nextProbeMs = nowMs + probeIntervalMs
        }
    }

    private mutating func close() {
        if breakerOpen {
            breakerOpen = false
            probeInFlight = false
        }
    }

    /// Lets the next probe go now (after SIGHUP re-read the key).
    public mutating func probeSoon(nowMs: Int64) {
        if breakerOpen { nextProbeMs = nowMs }
    }
}
