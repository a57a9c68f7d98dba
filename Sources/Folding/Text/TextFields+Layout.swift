/// The packed layout's pieces: LEB128 lengths, the stamp table, and a reader of a
/// packed buffer.
extension TextFields {
    /// Bytes of the LEB128 encoding of `n`.
    static func lengthBytes(_ n: Int) -> Int {
        var k = 1
        var v = n >> 7
        while v > 0 {
            k += 1
            v >>= 7
        }
        return k
    }

    static func putLength(_ n: Int, into out: UnsafeMutableBufferPointer<UInt8>, at: Int) -> Int {
        var n = n
        var at = at
        while n >= 0x80 {
            out[at] = UInt8(n & 0x7F) | 0x80
            n >>= 7
            at += 1
        }
        out[at] = UInt8(n)
        return at + 1
    }

    /// The stamps of a buffer being written, in order of first use (at most one per field).
    struct StampTable {
        private var stamps = InlineArray<12, Stamp>(repeating: Stamp(timeMs: 0, offset: 0))
        private(set) var count = 0

        /// The entry of `s`, added if new.
        mutating func index(of s: Stamp) -> UInt8 {
            var i = 0
            while i < count && stamps[i] != s { i += 1 }
            if i == count {
                stamps[i] = s
                count += 1
            }
            return UInt8(i)
        }

        /// Writes the count and the table at the buffer's start; returns where fields begin.
        func write(into out: UnsafeMutableBufferPointer<UInt8>) -> Int {
            out[0] = UInt8(count)
            let raw = UnsafeMutableRawBufferPointer(out)
            for i in 0..<count { TextFields.store(stamps[i], entry: i, into: raw) }
            return 1 + 16 * count
        }
    }

    /// Writes `stamp` as stamp table entry `entry` (time then offset, little endian).
    static func store(_ stamp: Stamp, entry: Int, into raw: UnsafeMutableRawBufferPointer) {
        raw.storeBytes(of: UInt64(bitPattern: stamp.timeMs).littleEndian, toByteOffset: 1 + 16 * entry, as: UInt64.self)
        raw.storeBytes(of: UInt64(bitPattern: stamp.offset).littleEndian, toByteOffset: 9 + 16 * entry, as: UInt64.self)
    }

    /// Walks a buffer written by ``rebuild(_:at:clearing:)``.
    struct Reader {
        let b: UnsafeBufferPointer<UInt8>
        var pos: Int

        init(_ b: UnsafeBufferPointer<UInt8>) {
            self.b = b
            pos = 1 + 16 * Int(b[0])
        }

        func stamp(_ i: UInt8) -> Stamp {
            Stamp(timeMs: int64(1 + 16 * Int(i)), offset: int64(9 + 16 * Int(i)))
        }

        private func int64(_ at: Int) -> Int64 {
            Int64(bitPattern: UInt64(littleEndian: UnsafeRawPointer(b.baseAddress! + at).loadUnaligned(as: UInt64.self)))
        }

        /// The next field: its ``Field`` raw value (checked; the enum itself was built by
        /// a call per field, in the fold's hottest loop), stamp index and value bytes.
        mutating func next() -> (field: UInt8, stamp: UInt8, value: Range<Int>)? {
            guard pos < b.count else { return nil }
            let field = b[pos]
            guard field < TextFields.fieldCount else { return nil }
            let stamp = b[pos + 1]
            pos += 2
            var n = 0
            var shift = 0
            while true {
                let c = b[pos]
                pos += 1
                n |= Int(c & 0x7F) << shift
                if c < 0x80 { break }
                shift += 7
            }
            let value = pos..<(pos + n)
            pos += n
            return (field, stamp, value)
        }

        mutating func find(_ field: Field) -> (field: UInt8, stamp: UInt8, value: Range<Int>)? {
            while let e = next() {
                if e.field == field.rawValue { return e }
                if e.field > field.rawValue { return nil }
            }
            return nil
        }
    }
}
