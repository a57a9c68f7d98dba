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
    var day: Int?
    var month: Int?
    var year: Int?
    var time: Substring?
    if parts.count == 6, parts[5] == "GMT", parts[0].hasSuffix(",") {
        // IMF-fixdate
        day = Int(parts[1])
        month = months.firstIndex(of: String(parts[2]))
        year = Int(parts[3])
        time = parts[4]
        if parts[3].count != 4 { return nil }
    } else if parts.count == 4, parts[3] == "GMT", parts[0].hasSuffix(",") {
        // RFC 850: a two-digit year; one more than 50 years ahead is taken for the past.
        let dmy = parts[1].split(separator: "-")
        guard dmy.count == 3, dmy[2].count == 2, let yy = Int(dmy[2]) else { return nil }
        day = Int(dmy[0])
        month = months.firstIndex(of: String(dmy[1]))
        time = parts[2]
        year = yy < 70 ? 2000 + yy : 1900 + yy
    } else if parts.count == 5 {
        // asctime (the day of month space-padded: split drops the padding)
        month = months.firstIndex(of: String(parts[1]))
        day = Int(parts[2])
        time = parts[3]
        year = Int(parts[4])
        if parts[4].count != 4 { return nil }
    }
    guard let day, let month, let year, let time, (1...31).contains(day), (1970...9999).contains(year) else { return nil }
    let hms = time.split(separator: ":", omittingEmptySubsequences: false)
    guard hms.count == 3, hms.allSatisfy({ $0.count == 2 }), let h = Int(hms[0]), let m = Int(hms[1]), let sec = Int(hms[2]),
        (0...23).contains(h), (0...59).contains(m), (0...60).contains(sec)
    else { return nil }
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
