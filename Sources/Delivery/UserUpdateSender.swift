/// How Foldspace answered one `PUT /v1/user/{identifyId}`, classified by the delivery
/// policy.
public enum DeliveryOutcome: Sendable, Equatable {
    /// 2xx.
    case acknowledged
    /// 400: the body was refused; final. Carries the status and the response text.
    case rejected(status: Int, response: String)
    /// 404.
    case notFound(response: String)
    /// 401 or 403: the key is wrong or revoked.
    case unauthorized(status: Int)
    /// 429, with `Retry-After` in milliseconds when the answer had one.
    case rateLimited(retryAfterMs: Int64?)
    /// 408, 5xx except 501, a timeout or a connection error: retried.
    case retryable(reason: String)
    /// Any other status: final for the user, like 400, once Foldspace has shown that the
    /// endpoint works (see ``RateLimiter``); until then, and when it repeats across
    /// users, it is taken for a systemic fault.
    case unexpected(status: Int, response: String)
    /// A status that says the endpoint, not the user, is wrong: a redirect (redirects
    /// are not followed: the base URL is wrong, or an `http://` URL redirects), 405 or 501
    /// (the URL does not take `PUT`), 407 (an egress proxy wants credentials). Opens the
    /// breaker like 401; nothing is settled by it.
    case systemic(status: Int, response: String)

    /// A label for metrics: the status code, or the failure kind.
    public var codeLabel: String {
        switch self {
        case .acknowledged: return "2xx"
        case .rejected(let s, _), .unexpected(let s, _), .systemic(let s, _): return String(s)
        case .notFound: return "404"
        case .unauthorized(let s): return String(s)
        case .rateLimited: return "429"
        case .retryable(let r): return r
        }
    }

    /// Classifies an HTTP status. `retryAfterMs` is the parsed `Retry-After`, if any.
    public static func classify(status: Int, response: String, retryAfterMs: Int64?) -> DeliveryOutcome {
        switch status {
        case 200..<300: return .acknowledged
        case 400: return .rejected(status: status, response: response)
        case 401, 403: return .unauthorized(status: status)
        case 404: return .notFound(response: response)
        case 429: return .rateLimited(retryAfterMs: retryAfterMs)
        case 408: return .retryable(reason: "408")
        case 300..<400, 405, 407, 501: return .systemic(status: status, response: response)
        case 500..<600: return .retryable(reason: String(status))
        default: return .unexpected(status: status, response: response)
        }
    }
}

/// Sends one user update. The engine is written against this protocol; the real
/// implementation is `FoldspaceClient` (module FoldspaceAPI).
public protocol UserUpdateSender: Sendable {
    func send(identifyId: String, body: [UInt8]) async -> DeliveryOutcome
}

/// Exponential backoff with full jitter: a uniformly random wait between zero and
/// `min(cap, base · 2^attempt)`.
public struct Backoff: Sendable {
    public var baseMs: Int64 = 200
    public var capMs: Int64 = 30_000

    public init(baseMs: Int64 = 200, capMs: Int64 = 30_000) {
        self.baseMs = baseMs
        self.capMs = capMs
    }

    /// The ceiling for attempt `n` (0-based).
    public func ceilingMs(attempt n: Int) -> Int64 {
        let shift = min(n, 20)
        return min(capMs, baseMs << Int64(shift))
    }

    /// A jittered delay: at least `baseMs`, so a retry never spins.
    public func delayMs<G: RandomNumberGenerator>(attempt n: Int, using g: inout G) -> Int64 {
        let ceiling = ceilingMs(attempt: n)
        return max(baseMs, Int64.random(in: 0...ceiling, using: &g))
    }
}
