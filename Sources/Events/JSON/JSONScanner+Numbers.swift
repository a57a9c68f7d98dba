/// Numbers: the RFC 8259 grammar, read exactly into `Int64` where they fit.
extension JSONScanner {
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
        if bytes[i] == UInt8(ascii: "-") {
            negative = true
            i += 1
        }
        // A negative number is summed downwards: Int64.min has no positive counterpart.
        var value: Int64 = 0
        var isInteger = true
        while i < r.upperBound {
            let c = bytes[i]
            guard isDigit(c) else {
                isInteger = false
                break
            }
            let digit = Int64(c - 0x30)
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (a, o2) = negative ? m.subtractingReportingOverflow(digit) : m.addingReportingOverflow(digit)
            if o1 || o2 {
                isInteger = false
                break
            }
            value = a
            i += 1
        }
        if isInteger { return .integer(value, text: r) }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[r]), as: UTF8.self)
        guard let d = Double(text), d.isFinite else { throw .numberOutOfRange }
        return .double(d, text: r)
    }
}

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

@inline(__always) func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
