/// Parsing of the time forms Segment libraries send: ISO-8601 (`2024-05-01T12:00:00Z`,
/// with or without a fraction, `Z` or a numeric offset) and epoch milliseconds.
public enum Timestamp {
    /// 2000-01-01T00:00:00Z: anything earlier is implausible for product analytics.
    public static let earliestPlausibleMs: Int64 = 946_684_800_000
    /// How far ahead of the wall clock an event time may be before it is implausible.
    public static let maxFutureSkewMs: Int64 = 24 * 3600 * 1000

    /// Whether `ms` is a believable event time when the wall clock reads `nowMs`.
    public static func isPlausible(_ ms: Int64, nowMs: Int64) -> Bool {
        ms >= earliestPlausibleMs && ms <= nowMs &+ maxFutureSkewMs
    }

    /// Parses an ISO-8601 date-time into epoch milliseconds. Accepts `YYYY-MM-DD`,
    /// `YYYY-MM-DDTHH:MM[:SS[.fraction]]` with `T`, `t` or a space, and an optional `Z`
    /// or `±HH[:MM]` offset (no offset means UTC). Returns `nil` for anything else,
    /// including out-of-range fields.
    public static func parseISO8601<S: StringProtocol>(_ text: S) -> Int64? {
        var utf8 = Array(text.utf8)
        return utf8.withUnsafeMutableBufferPointer { parseISO8601(UnsafeBufferPointer($0)) }
    }

    public static func parseISO8601(_ b: UnsafeBufferPointer<UInt8>) -> Int64? {
        if b.count == 24, let ms = canonical(b) { return ms }
        return general(b)
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, the form Segment's libraries send, read straight from
    /// fixed positions; `nil` for anything else (which ``general(_:)`` then reads, or
    /// rejects). The same result as ``general(_:)`` wherever it gives one.
    @inline(__always)
    static func canonical(_ b: UnsafeBufferPointer<UInt8>) -> Int64? {
        guard let p = b.baseAddress, b.count == 24, p[4] == 0x2D, p[7] == 0x2D, p[10] == 0x54, p[13] == 0x3A,
            p[16] == 0x3A, p[19] == 0x2E, p[23] == 0x5A
        else { return nil }
        @inline(__always) func d(_ i: Int) -> Int { Int(p[i]) &- 0x30 }
        // Every digit position (bit i of the mask: 0-3, 5-6, 8-9, 11-12, 14-15, 17-18,
        // 20-22): a byte outside 0-9 makes its value negative or over 9.
        var any = 0
        var digits: UInt32 = 0x76_DB6F
        while digits != 0 {
            let i = digits.trailingZeroBitCount
            any |= d(i) | (9 &- d(i))
            digits &= digits &- 1
        }
        guard any >= 0 else { return nil }
        let year = d(0) * 1000 + d(1) * 100 + d(2) * 10 + d(3)
        let month = d(5) * 10 + d(6)
        let day = d(8) * 10 + d(9)
        let hour = d(11) * 10 + d(12)
        let minute = d(14) * 10 + d(15)
        let second = d(17) * 10 + d(18)
        let millis = d(20) * 100 + d(21) * 10 + d(22)
        return epochMs(year: year, month: month, day: day, hour: hour, minute: minute, second: second, millis: millis)
    }

    /// Epoch milliseconds of a date and time at a UTC offset, or `nil` when a field is
    /// out of range (the one check and sum of both parsers).
    @inline(__always)
    static func epochMs(
        year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int, millis: Int,
        offsetSeconds: Int = 0
    ) -> Int64? {
        guard (1...12).contains(month), day >= 1, day <= daysInMonth(year: year, month: month),
            hour <= 23, minute <= 59, second <= 60
        else { return nil }
        let days = daysFromCivil(year: year, month: month, day: day)
        let secs = Int64(days) * 86400 + Int64(hour * 3600 + minute * 60 + second) - Int64(offsetSeconds)
        return secs * 1000 + Int64(millis)
    }

    /// Every form the parser accepts (see the `StringProtocol` overload).
    static func general(_ b: UnsafeBufferPointer<UInt8>) -> Int64? {
        var i = 0
        func digits(_ n: Int) -> Int? {
            guard i + n <= b.count else { return nil }
            var v = 0
            for k in 0..<n {
                let c = b[i + k]
                guard c >= 0x30 && c <= 0x39 else { return nil }
                v = v * 10 + Int(c - 0x30)
            }
            i += n
            return v
        }
        func expect(_ c: UInt8) -> Bool {
            guard i < b.count, b[i] == c else { return false }
            i += 1
            return true
        }
        guard let year = digits(4), expect(UInt8(ascii: "-")),
            let month = digits(2), expect(UInt8(ascii: "-")),
            let day = digits(2)
        else { return nil }
        var hour = 0
        var minute = 0
        var second = 0
        var millis = 0
        var offsetSeconds = 0
        if i < b.count {
            guard b[i] == UInt8(ascii: "T") || b[i] == UInt8(ascii: "t") || b[i] == UInt8(ascii: " ") else { return nil }
            i += 1
            guard let h = digits(2), expect(UInt8(ascii: ":")), let m = digits(2) else { return nil }
            hour = h
            minute = m
            if expect(UInt8(ascii: ":")) {
                guard let s = digits(2) else { return nil }
                second = s
                if i < b.count, b[i] == UInt8(ascii: ".") || b[i] == UInt8(ascii: ",") {
                    i += 1
                    var n = 0
                    var frac = 0
                    while i < b.count, b[i] >= 0x30, b[i] <= 0x39 {
                        if n < 3 { frac = frac * 10 + Int(b[i] - 0x30) }
                        n += 1
                        i += 1
                    }
                    guard n > 0 else { return nil }
                    for _ in n..<max(n, 3) { frac *= 10 }
                    millis = frac
                }
            }
            if i < b.count {
                if b[i] == UInt8(ascii: "Z") || b[i] == UInt8(ascii: "z") {
                    i += 1
                } else if b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") {
                    let sign = b[i] == UInt8(ascii: "-") ? -1 : 1
                    i += 1
                    guard let oh = digits(2) else { return nil }
                    var om = 0
                    if expect(UInt8(ascii: ":")) {
                        guard let m2 = digits(2) else { return nil }
                        om = m2
                    } else if i < b.count {
                        guard let m2 = digits(2) else { return nil }
                        om = m2
                    }
                    guard oh <= 23, om <= 59 else { return nil }
                    offsetSeconds = sign * (oh * 3600 + om * 60)
                } else {
                    return nil
                }
            }
            guard i == b.count else { return nil }
        }
        return epochMs(
            year: year, month: month, day: day, hour: hour, minute: minute, second: second, millis: millis,
            offsetSeconds: offsetSeconds)
    }

    /// Formats epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
    public static func formatISO8601(_ ms: Int64) -> String {
        let (secsTotal, millis) = ms.quotientAndRemainder(dividingBy: 1000)
        var secs = secsTotal
        var msPart = millis
        if msPart < 0 {
            msPart += 1000
            secs -= 1
        }
        var days = secs / 86400
        var rem = secs % 86400
        if rem < 0 {
            rem += 86400
            days -= 1
        }
        let (y, m, d) = civilFromDays(Int(days))
        func pad(_ v: Int, _ n: Int) -> String {
            let s = String(v)
            return s.count >= n ? s : String(repeating: "0", count: n - s.count) + s
        }
        return
            "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2))T\(pad(Int(rem / 3600), 2)):\(pad(Int(rem % 3600 / 60), 2)):\(pad(Int(rem % 60), 2)).\(pad(Int(msPart), 3))Z"
    }

    static func isLeap(_ y: Int) -> Bool { (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 }

    static func daysInMonth(year: Int, month: Int) -> Int {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civilFromDays(_ z0: Int) -> (Int, Int, Int) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (m <= 2 ? y + 1 : y, m, d)
    }
}
