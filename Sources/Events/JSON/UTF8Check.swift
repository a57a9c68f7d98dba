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
                if word & 0x8080_8080_8080_8080 == 0 {
                    i += 8
                    continue
                }
            }
            if b[i] < 0x80 {
                i += 1
                continue
            }
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
        case 0xC2...0xDF:
            len = 2
            scalar = UInt32(c & 0x1F)
            minScalar = 0x80
        case 0xE0...0xEF:
            len = 3
            scalar = UInt32(c & 0x0F)
            minScalar = 0x800
        case 0xF0...0xF4:
            len = 4
            scalar = UInt32(c & 0x07)
            minScalar = 0x10000
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
