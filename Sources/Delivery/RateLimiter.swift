/// The client-wide sending policy as a state machine: a token bucket, an adaptive rate
/// (multiplicative decrease on 429, additive recovery), the `Retry-After` pause, and the
/// 401/403 circuit breaker. Time is injected (monotonic milliseconds).
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

    /// Records an answer. `retryAfterMs` applies to 429s.
    public mutating func record(_ outcome: DeliveryOutcome, wasProbe: Bool, nowMs: Int64, backoffMs: Int64) {
        if wasProbe { probeInFlight = false }
        switch outcome {
        case .rateLimited(let retryAfter):
            refill(nowMs)
            factor = max(minFactor, factor * 0.5)
            tokens = min(tokens, 0)
            let until = nowMs + (retryAfter ?? backoffMs)
            pausedUntilMs = max(pausedUntilMs, until)
        case .unauthorized:
            if !breakerOpen {
                breakerOpen = true
                nextProbeMs = nowMs + probeIntervalMs
            }
        case .acknowledged, .rejected, .notFound, .unexpected:
            // Any answer that proves the key works closes the breaker.
            if breakerOpen {
                breakerOpen = false
                probeInFlight = false
            }
        case .retryable:
            break
        }
    }

    /// Lets the next probe go now (after SIGHUP re-read the key).
    public mutating func probeSoon(nowMs: Int64) {
        if breakerOpen { nextProbeMs = nowMs }
    }
}
