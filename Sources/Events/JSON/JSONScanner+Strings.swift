/// Strings: scanning a string token (quotes, escapes, UTF-8 inside it) and decoding its
/// text.
extension JSONScanner {
    /// Scans a string token and returns its raw byte range (between the quotes), noting
    /// whether it holds escapes. Control characters inside are a syntax error.
    ///
    /// Inlined where it is called: the common string (plain ASCII, its closing quote the
    /// first special byte, or the first byte of the message's last few left unchecked) is
    /// stepped over here, and anything else continues in ``scanStringRest(start:)``. A call
    /// per string cost instructions of set-up and return for each of the many strings of
    /// an event (callgrind).
    @inline(__always)
    mutating func scanStringRaw() throws(JSONError) -> JSONKey {
        let start = pos &+ 1  // after the opening quote
        if let base = bytes.baseAddress {
            let n = bytes.count
            let p = Self.skipPlain(base, from: start, count: n)
            if p < n && base[p] == UInt8(ascii: "\"") {
                pos = p &+ 1
                return JSONKey(base: base, start: start, end: p, escaped: false)
            }
            pos = p
        } else {
            pos = start
        }
        return try scanStringRest(start: start)
    }

    /// Steps over plain text eight bytes at a time from `p`: returns the first quote,
    /// backslash, control or non-ASCII byte found in a word, or, if none is, where fewer
    /// than eight bytes are left (bytes from there on are unchecked).
    @inline(__always)
    static func skipPlain(_ base: UnsafePointer<UInt8>, from p: Int, count n: Int) -> Int {
        var p = p
        while p &+ 8 <= n {
            let special = specialBytes(UnsafeRawPointer(base + p).loadUnaligned(as: UInt64.self))
            if special != 0 { return p &+ (special.trailingZeroBitCount &>> 3) }
            p &+= 8
        }
        return p
    }

    /// The rest of ``scanStringRaw()`` from `pos`, for strings with escapes, non-ASCII
    /// text or control characters, and those near the message's end.
    @inline(never)
    private mutating func scanStringRest(start: Int) throws(JSONError) -> JSONKey {
        var escaped = false
        while pos < bytes.count {
            if let base = bytes.baseAddress {
                pos = Self.skipPlain(base, from: pos, count: bytes.count)
                guard pos < bytes.count else { break }
            }
            let c = bytes[pos]
            if c == UInt8(ascii: "\"") {
                let key = JSONKey(base: bytes.baseAddress!, start: start, end: pos, escaped: escaped)
                pos += 1
                return key
            }
            if c == UInt8(ascii: "\\") {
                escaped = true
                pos += 1
                guard pos < bytes.count else { throw .syntax }
                switch bytes[pos] {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"),
                    UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                    pos += 1
                case UInt8(ascii: "u"):
                    let unit = try hexEscape(at: pos + 1)
                    pos += 5
                    // Surrogates must come in escaped pairs: a lone one is not Unicode, and
                    // copying it into a body (custom attributes keep raw JSON text) would
                    // make that body invalid JSON for strict parsers.
                    if (0xDC00...0xDFFF).contains(unit) { throw .invalidUnicode }
                    if (0xD800...0xDBFF).contains(unit) {
                        guard pos + 1 < bytes.count, bytes[pos] == UInt8(ascii: "\\"), bytes[pos + 1] == UInt8(ascii: "u")
                        else { throw .invalidUnicode }
                        let low = try hexEscape(at: pos + 2)
                        guard (0xDC00...0xDFFF).contains(low) else { throw .invalidUnicode }
                        pos += 6
                    }
                default:
                    throw .syntax
                }
                continue
            }
            if c >= 0x80 {
                pos += try Self.utf8Sequence(bytes, at: pos)
                continue
            }
            if c < 0x20 { throw .syntax }
            pos += 1
        }
        throw .syntax
    }

    /// The length of the well-formed UTF-8 sequence at `at` (whose first byte is not
    /// ASCII), or `.invalidUTF8`.
    @inline(__always)
    static func utf8Sequence(_ b: UnsafeBufferPointer<UInt8>, at i: Int) throws(JSONError) -> Int {
        guard let len = UTF8Check.sequenceLength(b, at: i) else { throw .invalidUTF8 }
        return len
    }

    /// Flags the bytes of the little-endian word `x` that are `"`, `\\`, below 0x20 or
    /// not ASCII (UTF-8 is checked where it can occur, inside strings):
    /// zero when there are none, else the lowest set bit is the high bit of the first
    /// one (the classic "has a zero byte" trick: a borrow only starts at a flagged byte,
    /// so bytes above it may be flagged wrongly, never the ones below).
    @inline(__always)
    static func specialBytes(_ x: UInt64) -> UInt64 {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highs: UInt64 = 0x8080_8080_8080_8080
        func zeroBytes(_ v: UInt64) -> UInt64 { (v &- ones) & ~v & highs }
        let quote = zeroBytes(x ^ (ones &* 0x22))
        let backslash = zeroBytes(x ^ (ones &* 0x5C))
        let control = (x &- ones &* 0x20) & ~x & highs
        return quote | backslash | control | (x & highs)
    }

    /// The value of the four hex digits at `at` (after `\u`).
    private func hexEscape(at: Int) throws(JSONError) -> UInt32 {
        guard at + 4 <= bytes.count else { throw .syntax }
        var v: UInt32 = 0
        for i in 0..<4 {
            guard let h = hexValue(bytes[at + i]) else { throw .syntax }
            v = v << 4 | UInt32(h)
        }
        return v
    }

    /// Reads a string value and decodes its escapes.
    mutating func readString() throws(JSONError) -> String {
        guard peek() == UInt8(ascii: "\"") else { throw .syntax }
        return try scanStringRaw().text()
    }
}

/// A string token's place in the message: the bytes between its quotes. It carries the
/// message's base address, so that keys are matched without reading the scanner (whose
/// position was just stored: reading the whole scanner back stalled on it).
struct JSONKey {
    let base: UnsafePointer<UInt8>
    var start: Int
    var end: Int
    var escaped: Bool

    /// Whether the key equals an ASCII literal. Escaped keys are compared after
    /// decoding, so `"e\u006dail"` is still `email`.
    @inline(__always)
    func `is`(_ lit: StaticString) -> Bool {
        let n = lit.utf8CodeUnitCount
        if !escaped {
            guard end - start == n else { return false }
            return ByteRuns.equal(base + start, lit.utf8Start, count: n)
        }
        guard let s = try? text() else { return false }
        return s.utf8.elementsEqual(UnsafeBufferPointer(start: lit.utf8Start, count: n))
    }
}

extension JSONKey {
    /// The token's bytes, between its quotes.
    var bytes: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(start: base + start, count: end - start) }

    /// The token's text, escapes decoded.
    func text() throws(JSONError) -> String {
        let slice = bytes
        if !escaped {
            return String(decoding: slice, as: UTF8.self)
        }
        var out: [UInt8] = []
        out.reserveCapacity(slice.count)
        var i = 0
        while i < slice.count {
            let c = slice[i]
            if c != UInt8(ascii: "\\") {
                out.append(c)
                i += 1
                continue
            }
            let e = slice[i + 1]
            i += 2
            switch e {
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = hex4(slice, i)
                i += 4
                if (0xD800...0xDBFF).contains(scalar) {
                    // A high surrogate must be followed by an escaped low surrogate.
                    guard i + 6 <= slice.count, slice[i] == UInt8(ascii: "\\"), slice[i + 1] == UInt8(ascii: "u")
                    else { throw .invalidUnicode }
                    let low = hex4(slice, i + 2)
                    guard (0xDC00...0xDFFF).contains(low) else { throw .invalidUnicode }
                    i += 6
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    throw .invalidUnicode
                }
                guard let us = Unicode.Scalar(scalar) else { throw .invalidUnicode }
                out.append(contentsOf: UTF8.encode(us)!)
            default: out.append(e)  // " \ /
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private func hex4(_ s: UnsafeBufferPointer<UInt8>, _ at: Int) -> UInt32 {
        var v: UInt32 = 0
        for k in 0..<4 { v = v << 4 | UInt32(hexValue(s[at + k]) ?? 0) }
        return v
    }
}

@inline(__always) func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case 0x30...0x39: return c - 0x30
    case 0x41...0x46: return c - 0x41 + 10
    case 0x61...0x66: return c - 0x61 + 10
    default: return nil
    }
}
