/// Runs of bytes compared in line, a word at a time: the runs compared on the hot path
/// (keys against their names, a field's value against the one stored) are short, and a
/// call to libc's `memcmp` or a byte loop cost more than the comparison.
public enum ByteRuns {
    /// Whether the `count` bytes at `a` and `b` are equal. Compared by the widest words
    /// that fit (8, 4 or 2 bytes), the last one overlapping the one before it, so nothing
    /// outside either run is read. With `count` a literal's length the width is chosen
    /// at compile time.
    @inlinable @inline(__always)
    public static func equal(_ a: UnsafePointer<UInt8>, _ b: UnsafePointer<UInt8>, count n: Int) -> Bool {
        if n >= 8 {
            var i = 0
            while i &+ 8 < n {
                if word(a, i, UInt64.self) != word(b, i, UInt64.self) { return false }
                i &+= 8
            }
            return word(a, n &- 8, UInt64.self) == word(b, n &- 8, UInt64.self)
        }
        if n >= 4 {
            return word(a, 0, UInt32.self) == word(b, 0, UInt32.self)
                && word(a, n &- 4, UInt32.self) == word(b, n &- 4, UInt32.self)
        }
        if n >= 2 {
            return word(a, 0, UInt16.self) == word(b, 0, UInt16.self)
                && word(a, n &- 2, UInt16.self) == word(b, n &- 2, UInt16.self)
        }
        return n <= 0 || a[0] == b[0]
    }

    @inlinable @inline(__always)
    static func word<T: FixedWidthInteger>(_ p: UnsafePointer<UInt8>, _ at: Int, _: T.Type) -> T {
        UnsafeRawPointer(p + at).loadUnaligned(as: T.self)
    }
}
