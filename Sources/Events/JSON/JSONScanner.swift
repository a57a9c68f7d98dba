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
        // and most producers send): a large share of this function's instructions were
        // `peek()`s and their checks (callgrind). Anything else takes the general way below
        // from where it started.
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
}

// MARK: Values

extension JSONScanner {
    /// Skips one value of any kind, checking its grammar and nesting.
    mutating func skipValue() throws(JSONError) {
        let startDepth = depth
        // Iterative, so hostile nesting cannot exhaust the stack; `expectValue` tracks
        // whether a value or a separator/closer comes next inside containers.
        var expectValue = true
        var inObjectStack: UInt64 = 0  // bit per level above startDepth: 1 = object
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

    mutating func readNull() throws(JSONError) {
        try expectLiteral("null")
    }

    /// The raw text of a byte range of the message.
    func text(_ r: Range<Int>) -> String {
        String(decoding: UnsafeBufferPointer(rebasing: bytes[r]), as: UTF8.self)
    }
}

enum JSONKind { case object, array, string, number, bool, null }

enum JSONError: Error, Equatable {
    case syntax
    /// Not well-formed UTF-8 (found inside a string; anywhere else a non-ASCII byte is a
    /// syntax error, and the decoder tells the two apart).
    case invalidUTF8
    case tooDeep
    case numberOutOfRange
    case invalidUnicode
}
