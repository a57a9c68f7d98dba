/// A pull scanner over UTF-8 JSON bytes that validates everything it passes and
/// materialises only what its caller asks for.
///
/// The Segment decoder needs perhaps twenty fields out of a message that often carries
/// hundreds of bytes of `context` and `properties`. Building a full value tree (as
/// `JSONDecoder` or `JSONSerialization` do) costs tens of allocations per event; this
/// scanner walks the bytes once, checks the grammar and the nesting limit, and hands
/// out strings and numbers only for the keys the caller reads. Everything else is
/// skipped in place.
///
/// - Important: the buffer must stay valid for the scanner's lifetime. UTF-8 is checked
///   in strings as they are scanned; a non-ASCII byte elsewhere is a syntax error, which
///   the caller may want to report as invalid UTF-8 (``UTF8Check``).
struct JSONScanner: ~Copyable {
    let bytes: UnsafeBufferPointer<UInt8>
    var pos: Int = 0
    var depth: Int = 0
    let maxDepth: Int

    init(_ bytes: UnsafeBufferPointer<UInt8>, maxDepth: Int) {
        self.bytes = bytes
        self.maxDepth = maxDepth
    }

    // MARK: Structure

    @inline(__always)
    mutating func skipWhitespace() {
        while pos < bytes.count {
            let c = bytes[pos]
            if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { pos += 1 } else { return }
        }
    }

    @inline(__always)
    mutating func peek() -> UInt8? {
        skipWhitespace()
        return pos < bytes.count ? bytes[pos] : nil
    }

    /// The kind of the next value, without consuming it.
    mutating func peekKind() throws(JSONError) -> JSONKind {
        guard let c = peek() else { throw .syntax }
        switch c {
        case UInt8(ascii: "{"): return .object
        case UInt8(ascii: "["): return .array
        case UInt8(ascii: "\""): return .string
        case UInt8(ascii: "t"), UInt8(ascii: "f"): return .bool
        case UInt8(ascii: "n"): return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number
        default: throw .syntax
        }
    }

    mutating func beginObject() throws(JSONError) {
        guard peek() == UInt8(ascii: "{") else { throw .syntax }
        pos += 1
        depth += 1
        if depth > maxDepth { throw .tooDeep }
    }

    mutating func beginArray() throws(JSONError) {
        guard peek() == UInt8(ascii: "[") else { throw .syntax }
        pos += 1
        depth += 1
        if depth > maxDepth { throw .tooDeep }
    }

    /// Advances to the next key of the current object and consumes the `:` after it.
    /// Returns `nil` (and consumes the `}`) when the object ends. `first` tells whether
    /// this is the first call for this object, which decides whether a comma is due.
    mutating func nextKey(first: Bool) throws(JSONError) -> JSONKey? {
        // Compact JSON first (`,"key":` or `}` with no whitespace, what Segment's libraries
        // and most producers send): ~40 % of this function's instructions were `peek()`s
        // and their checks (callgrind). Anything else takes the general way below from
        // where it started.
        if let base = bytes.baseAddress {
            let n = bytes.count
            var p = pos
            guard p < n else { throw .syntax }
            if base[p] == UInt8(ascii: "}") {
                pos = p &+ 1
                depth -= 1
                return nil
            }
            var compact = true
            if !first {
                if base[p] == UInt8(ascii: ",") { p &+= 1 } else { compact = false }
            }
            if compact && p < n && base[p] == UInt8(ascii: "\"") {
                pos = p
                let key = try scanStringRaw()
                if pos < n && base[pos] == UInt8(ascii: ":") {
                    pos &+= 1
                } else {
                    guard peek() == UInt8(ascii: ":") else { throw .syntax }
                    pos += 1
                }
                return key
            }
        }
        return try nextKeyGeneral(first: first)
    }

    private mutating func nextKeyGeneral(first: Bool) throws(JSONError) -> JSONKey? {
        guard var c = peek() else { throw .syntax }
        if c == UInt8(ascii: "}") {
            pos += 1
            depth -= 1
            return nil
        }
        if !first {
            guard c == UInt8(ascii: ",") else { throw .syntax }
            pos += 1
            guard let n = peek() else { throw .syntax }
            c = n
        }
        guard c == UInt8(ascii: "\"") else { throw .syntax }
        let key = try scanStringRaw()
        guard peek() == UInt8(ascii: ":") else { throw .syntax }
        pos += 1
        return key
    }

    /// Advances to the next element of the current array. Returns `false` (and consumes
    /// the `]`) when the array ends.
    mutating func nextElement(first: Bool) throws(JSONError) -> Bool {
        guard let c = peek() else { throw .syntax }
        if c == UInt8(ascii: "]") {
            pos += 1
            depth -= 1
            return false
        }
        if !first {
            guard c == UInt8(ascii: ",") else { throw .syntax }
            pos += 1
        }
        return true
    }

    /// Fails unless only whitespace remains.
    mutating func expectEnd() throws(JSONError) {
        skipWhitespace()
        if pos != bytes.count { throw .syntax }
    }

    // MARK: Values

    /// Skips one value of any kind, checking its grammar and nesting.
    mutating func skipValue() throws(JSONError) {
        let startDepth = depth
        // Iterative, so hostile nesting cannot exhaust the stack; `expectValue` tracks
        // whether a value or a separator/closer comes next inside containers.
        var expectValue = true
        var inObjectStack: UInt64 = 0 // bit per level above startDepth: 1 = object
        var firstInContainer = false
        repeat {
            guard let c = peek() else { throw .syntax }
            if expectValue {
                switch c {
                case UInt8(ascii: "{"):
                    try beginObject()
                    let level = depth - startDepth - 1
                    if level < 64 { inObjectStack |= (1 << UInt64(level)) }
                    firstInContainer = true
                    expectValue = false
                    continue
                case UInt8(ascii: "["):
                    try beginArray()
                    let level = depth - startDepth - 1
                    if level < 64 { inObjectStack &= ~(1 << UInt64(level)) }
                    firstInContainer = true
                    expectValue = false
                    continue
                case UInt8(ascii: "\""):
                    _ = try scanStringRaw()
                case UInt8(ascii: "t"): try expectLiteral("true")
                case UInt8(ascii: "f"): try expectLiteral("false")
                case UInt8(ascii: "n"): try expectLiteral("null")
                default: _ = try scanNumberRaw()
                }
                expectValue = false
                firstInContainer = false
            } else {
                // After a value, or right after an opening bracket.
                if depth == startDepth { return }
                let level = depth - startDepth - 1
                let isObject = level < 64 && (inObjectStack & (1 << UInt64(level))) != 0
                if isObject {
                    if try nextKey(first: firstInContainer) == nil {
                        firstInContainer = false
                        continue
                    }
                } else {
                    if try !nextElement(first: firstInContainer) {
                        firstInContainer = false
                        continue
                    }
                }
                firstInContainer = false
                expectValue = true
            }
        } while depth > startDepth || expectValue
    }

    private mutating func expectLiteral(_ lit: StaticString) throws(JSONError) {
        let n = lit.utf8CodeUnitCount
        guard pos + n <= bytes.count else { throw .syntax }
        let p = lit.utf8Start
        for i in 0..<n where bytes[pos + i] != p[i] { throw .syntax }
        pos += n
    }

    /// Reads `true` or `false`.
    mutating func readBool() throws(JSONError) -> Bool {
        guard let c = peek() else { throw .syntax }
        if c == UInt8(ascii: "t") { try expectLiteral("true"); return true }
        if c == UInt8(ascii: "f") { try expectLiteral("false"); return false }
        throw .syntax
    }

    mutating func readNull() throws(JSONError) {
        try expectLiteral("null")
    }

    /// Scans a string token and returns its raw byte range (between the quotes), noting
    /// whether it holds escapes. Control characters inside are a syntax error.
    ///
    /// Inlined where it is called: the common string (plain ASCII, its closing quote the
    /// first special byte, or the first byte of the message's last few left unchecked) is
    /// stepped over here, and anything else continues in ``scanStringRest(start:)``. A call per string
    /// cost ~40 instructions of set-up and return, ~40 times an event (callgrind).
    @inline(__always)
    mutating func scanStringRaw() throws(JSONError) -> JSONKey {
        let start = pos &+ 1 // after the opening quote
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

    /// Scans a number token and returns its byte range; the grammar is RFC 8259's.
    mutating func scanNumberRaw() throws(JSONError) -> Range<Int> {
        skipWhitespace()
        let start = pos
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "-") { pos += 1 }
        guard pos < bytes.count else { throw .syntax }
        if bytes[pos] == UInt8(ascii: "0") {
            pos += 1
        } else if isDigit(bytes[pos]) {
            while pos < bytes.count, isDigit(bytes[pos]) { pos += 1 }
        } else {
            throw .syntax
        }
        if pos < bytes.count, bytes[pos] == UInt8(ascii: ".") {
            pos += 1
            guard pos < bytes.count, isDigit(bytes[pos]) else { throw .syntax }
            while pos < bytes.count, isDigit(bytes[pos]) { pos += 1 }
        }
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "e") || bytes[pos] == UInt8(ascii: "E") {
            pos += 1
            if pos < bytes.count, bytes[pos] == UInt8(ascii: "+") || bytes[pos] == UInt8(ascii: "-") { pos += 1 }
            guard pos < bytes.count, isDigit(bytes[pos]) else { throw .syntax }
            while pos < bytes.count, isDigit(bytes[pos]) { pos += 1 }
        }
        return start..<pos
    }

    /// Reads a number. Integers that fit in `Int64` come back exact; everything else as
    /// a `Double`, which must be finite.
    mutating func readNumber() throws(JSONError) -> JSONNumber {
        let r = try scanNumberRaw()
        var negative = false
        var i = r.lowerBound
        if bytes[i] == UInt8(ascii: "-") { negative = true; i += 1 }
        var value: Int64 = 0
        var isInteger = true
        while i < r.upperBound {
            let c = bytes[i]
            guard isDigit(c) else { isInteger = false; break }
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int64(c - 0x30))
            if o1 || o2 { isInteger = false; break }
            value = a
            i += 1
        }
        if isInteger { return .integer(negative ? -value : value, text: r) }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[r]), as: UTF8.self)
        guard let d = Double(text), d.isFinite else { throw .numberOutOfRange }
        return .double(d, text: r)
    }

    /// The raw text of a byte range of the message.
    func text(_ r: Range<Int>) -> String {
        String(decoding: UnsafeBufferPointer(rebasing: bytes[r]), as: UTF8.self)
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
            default: out.append(e) // " \ /
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

@inline(__always) func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

@inline(__always) func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case 0x30...0x39: return c - 0x30
    case 0x41...0x46: return c - 0x41 + 10
    case 0x61...0x66: return c - 0x61 + 10
    default: return nil
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

enum JSONKind { case object, array, string, number, bool, null }

enum JSONNumber {
    case integer(Int64, text: Range<Int>)
    case double(Double, text: Range<Int>)

    var asDouble: Double {
        switch self {
        case .integer(let v, _): return Double(v)
        case .double(let d, _): return d
        }
    }
}

enum JSONError: Error, Equatable {
    case syntax
    /// Not well-formed UTF-8 (found inside a string; anywhere else a non-ASCII byte is a
    /// syntax error, and the decoder tells the two apart).
    case invalidUTF8
    case tooDeep
    case numberOutOfRange
    case invalidUnicode
}

/// UTF-8 validation of a whole message, with an ASCII fast path eight bytes at a time
/// (also the changelog decoder's, which packs text fields straight from a record's bytes).
public enum UTF8Check {
    public static func isValid(_ b: UnsafeBufferPointer<UInt8>) -> Bool {
        var i = 0
        let n = b.count
        guard let base = b.baseAddress else { return true }
        while i < n {
            // Fast path: eight ASCII bytes at once.
            if i + 8 <= n {
                let word = UnsafeRawPointer(base + i).loadUnaligned(as: UInt64.self)
                if word & 0x8080_8080_8080_8080 == 0 { i += 8; continue }
            }
            if b[i] < 0x80 { i += 1; continue }
            guard let len = sequenceLength(b, at: i) else { return false }
            i += len
        }
        return true
    }

    /// The length of the well-formed UTF-8 sequence at `i` (whose first byte is not
    /// ASCII): no overlong forms, surrogates or scalars past U+10FFFF; `nil` if there is
    /// none.
    @inline(__always)
    static func sequenceLength(_ b: UnsafeBufferPointer<UInt8>, at i: Int) -> Int? {
        let c = b[i]
        let len: Int
        let minScalar: UInt32
        var scalar: UInt32
        switch c {
        case 0xC2...0xDF: len = 2; scalar = UInt32(c & 0x1F); minScalar = 0x80
        case 0xE0...0xEF: len = 3; scalar = UInt32(c & 0x0F); minScalar = 0x800
        case 0xF0...0xF4: len = 4; scalar = UInt32(c & 0x07); minScalar = 0x10000
        default: return nil
        }
        guard i + len <= b.count else { return nil }
        for k in 1..<len {
            let cc = b[i + k]
            guard cc & 0xC0 == 0x80 else { return nil }
            scalar = scalar << 6 | UInt32(cc & 0x3F)
        }
        if scalar < minScalar || scalar > 0x10FFFF || (0xD800...0xDFFF).contains(scalar) { return nil }
        return len
    }
}
