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
    /// Any other status: treated as final, like 400.
    case unexpected(status: Int, response: String)

    /// A label for metrics: the status code, or the failure kind.
    public var codeLabel: String {
        switch self {
        case .acknowledged: return "2xx"
        case .rejected(let s, _), .unexpected(let s, _): return String(s)
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
        case 501: return .unexpected(status: status, response: response)
        case 500..<600: return .retryable(reason: String(status))
        default: return .unexpected(status: status, response: response)
        }
    }
}

/// Sends one user update. The engine is written against this protocol; the real
/// implementation is ``FoldspaceClient``.
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

/// Parses `Retry-After`: delta-seconds or an HTTP-date (IMF-fixdate). Returns
/// milliseconds from `nowEpochMs`, never negative.
public func parseRetryAfter(_ value: String, nowEpochMs: Int64) -> Int64? {
    let v = value.trimmingCharactersInSet()
    if let secs = Int64(v), secs >= 0 { return min(secs, 86_400) * 1000 }
    // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
    let parts = v.split(separator: " ")
    guard parts.count == 6, parts[5] == "GMT",
          let day = Int(parts[1]), let year = Int(parts[3]) else { return nil }
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    guard let mi = months.firstIndex(of: String(parts[2])) else { return nil }
    let hms = parts[4].split(separator: ":").compactMap { Int($0) }
    guard hms.count == 3 else { return nil }
    let y = mi + 1 <= 2 ? year - 1 : year
    let era = (y >= 0 ? y : y - 399) / 400
    let yoe = y - era * 400
    let mp = (mi + 1 + 9) % 12
    let doy = (153 * mp + 2) / 5 + day - 1
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    let days = era * 146_097 + doe - 719_468
    let epochMs = (Int64(days) * 86400 + Int64(hms[0] * 3600 + hms[1] * 60 + hms[2])) * 1000
    return max(0, epochMs - nowEpochMs)
}

extension String {
    fileprivate func trimmingCharactersInSet() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return String(s)
    }
}
