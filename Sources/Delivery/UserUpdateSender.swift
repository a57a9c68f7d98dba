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

/// The longest pause a `Retry-After` can impose, whichever its form: one hour. Foldspace
/// limits per subscription and per second; a longer value is a mistake upstream, and
/// folding goes on meanwhile, so the pause costs only latency. Each later 429 pauses again.
public let retryAfterCapMs: Int64 = 3_600_000

/// Parses `Retry-After` (RFC 9110 §10.2.3): delta-seconds, or an HTTP-date in any of its
/// three forms (IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, and the obsolete RFC 850
/// `Sunday, 06-Nov-94 08:49:37 GMT` and asctime `Sun Nov  6 08:49:37 1994`). Returns
/// milliseconds from `nowEpochMs`, from 0 to ``retryAfterCapMs``; nil when the value is
/// none of these. No value traps: every field is range-checked before arithmetic.
public func parseRetryAfter(_ value: String, nowEpochMs: Int64) -> Int64? {
    let v = value.trimmingCharactersInSet()
    if !v.isEmpty, v.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) {
        // Digits only: any count of them (a huge one is simply capped).
        guard let secs = Int64(v) else { return retryAfterCapMs }
        return min(secs, retryAfterCapMs / 1000) * 1000
    }
    guard let epochMs = parseHTTPDate(v) else { return nil }
    let (delta, overflow) = epochMs.subtractingReportingOverflow(nowEpochMs)
    if overflow { return nowEpochMs > 0 ? 0 : retryAfterCapMs }
    return min(max(0, delta), retryAfterCapMs)
}

/// An HTTP-date in epoch milliseconds, or nil.
func parseHTTPDate(_ v: String) -> Int64? {
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    let parts = v.split(separator: " ")
    var day: Int?, month: Int?, year: Int?, time: Substring?
    if parts.count == 6, parts[5] == "GMT", parts[0].hasSuffix(",") {
        // IMF-fixdate
        day = Int(parts[1]); month = months.firstIndex(of: String(parts[2])); year = Int(parts[3]); time = parts[4]
        if parts[3].count != 4 { return nil }
    } else if parts.count == 4, parts[3] == "GMT", parts[0].hasSuffix(",") {
        // RFC 850: a two-digit year; one more than 50 years ahead is taken for the past.
        let dmy = parts[1].split(separator: "-")
        guard dmy.count == 3, dmy[2].count == 2, let yy = Int(dmy[2]) else { return nil }
        day = Int(dmy[0]); month = months.firstIndex(of: String(dmy[1])); time = parts[2]
        year = yy < 70 ? 2000 + yy : 1900 + yy
    } else if parts.count == 5 {
        // asctime (the day of month space-padded: split drops the padding)
        month = months.firstIndex(of: String(parts[1])); day = Int(parts[2]); time = parts[3]; year = Int(parts[4])
        if parts[4].count != 4 { return nil }
    }
    guard let day, let month, let year, let time, (1...31).contains(day), (1970...9999).contains(year) else { return nil }
    let hms = time.split(separator: ":", omittingEmptySubsequences: false)
    guard hms.count == 3, hms.allSatisfy({ $0.count == 2 }), let h = Int(hms[0]), let m = Int(hms[1]), let sec = Int(hms[2]),
          (0...23).contains(h), (0...59).contains(m), (0...60).contains(sec) else { return nil }
    // Days from the civil date (Howard Hinnant's algorithm); all values are small here.
    let y = month + 1 <= 2 ? year - 1 : year
    let era = y / 400
    let yoe = y - era * 400
    let mp = (month + 1 + 9) % 12
    let doy = (153 * mp + 2) / 5 + day - 1
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    let days = era * 146_097 + doe - 719_468
    return (Int64(days) * 86_400 + Int64(h * 3600 + m * 60 + sec)) * 1000
}

extension String {
    fileprivate func trimmingCharactersInSet() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return String(s)
    }
}
