import Events

/// The bytes of a record: a writer and a reader of its primitives.
extension StateCodec {
    struct Writer {
        var bytes: [UInt8] = []

        mutating func u8(_ v: UInt8) { bytes.append(v) }

        mutating func u64(_ v: UInt64) {
            for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
        }

        mutating func varint(_ v: UInt64) {
            var x = v
            while x >= 0x80 {
                bytes.append(UInt8(x & 0x7F) | 0x80)
                x >>= 7
            }
            bytes.append(UInt8(x))
        }

        mutating func zigzag(_ v: Int64) { varint(UInt64(bitPattern: (v << 1) ^ (v >> 63))) }

        mutating func string(_ s: String) {
            varint(UInt64(s.utf8.count))
            bytes.append(contentsOf: s.utf8)
        }

        mutating func stamp(_ s: Stamp) {
            zigzag(s.timeMs)
            zigzag(s.offset)
        }

        /// The tag, the body's length, the body. The body is written in place after a
        /// one-byte length; the rare body of 128 bytes or more then moves over for the
        /// longer varint (no buffer per field: a checkpoint encodes every changed user).
        mutating func field(_ tag: Tag, _ body: (inout Writer) -> Void) {
            u8(tag.rawValue)
            let lengthAt = bytes.count
            bytes.append(0)
            body(&self)
            let length = bytes.count - lengthAt - 1
            if length < 0x80 {
                bytes[lengthAt] = UInt8(length)
            } else {
                var prefix = Writer()
                prefix.varint(UInt64(length))
                bytes.replaceSubrange(lengthAt..<lengthAt + 1, with: prefix.bytes)
            }
        }

        mutating func latest(_ tag: Tag, _ v: Latest<String>?) {
            guard let v else { return }
            field(tag) { f in
                f.string(v.value)
                f.stamp(v.stamp)
            }
        }
    }

    /// Reads within `pos..<end` of `bytes`: every read checks its length against `end`
    /// first, and `end` never passes the buffer's count.
    struct Reader {
        let bytes: UnsafeBufferPointer<UInt8>
        var pos = 0
        var end: Int

        init(bytes: UnsafeBufferPointer<UInt8>, pos: Int = 0, end: Int? = nil) {
            self.bytes = bytes
            self.pos = pos
            self.end = end ?? bytes.count
        }

        var atEnd: Bool { pos >= end }

        mutating func u8() throws(DecodeError) -> UInt8 {
            guard pos < end else { throw .truncated }
            defer { pos += 1 }
            return bytes[pos]
        }

        mutating func u64() throws(DecodeError) -> UInt64 {
            guard pos + 8 <= end else { throw .truncated }
            var v: UInt64 = 0
            for i in 0..<8 { v |= UInt64(bytes[pos + i]) << (8 * UInt64(i)) }
            pos += 8
            return v
        }

        mutating func varint() throws(DecodeError) -> UInt64 {
            var v: UInt64 = 0
            var shift: UInt64 = 0
            while true {
                let b = try u8()
                v |= UInt64(b & 0x7F) << shift
                if b & 0x80 == 0 { return v }
                shift += 7
                if shift > 63 { throw .badValue }
            }
        }

        mutating func zigzag() throws(DecodeError) -> Int64 {
            let u = try varint()
            return Int64(bitPattern: (u >> 1) ^ (0 &- (u & 1)))
        }

        mutating func count(limit: Int) throws(DecodeError) -> Int {
            let n = try varint()
            guard n <= UInt64(limit) else { throw .badValue }
            return Int(n)
        }

        /// A length prefix: at most what is left to read (so no sum with it can overflow).
        mutating func length() throws(DecodeError) -> Int {
            let n = try varint()
            guard n <= UInt64(end - pos) else { throw .truncated }
            return Int(n)
        }

        /// Where a length-prefixed UTF-8 string's bytes are in ``bytes``.
        mutating func utf8() throws(DecodeError) -> Range<Int> {
            let n = try length()
            let range = pos..<(pos + n)
            guard UTF8Check.isValid(UnsafeBufferPointer(rebasing: bytes[range])) else { throw .badValue }
            pos += n
            return range
        }

        mutating func string() throws(DecodeError) -> String {
            String(decoding: UnsafeBufferPointer(rebasing: bytes[try utf8()]), as: UTF8.self)
        }

        /// A text field's register (string then stamp), set in `registers` as where its
        /// bytes are in ``bytes``.
        mutating func text(_ field: TextFields.Field, into registers: inout TextFields.Registers) throws(DecodeError) {
            let value = try utf8()
            registers.set(field, bytes: value, of: bytes, stamp: try stamp())
        }

        mutating func stamp() throws(DecodeError) -> Stamp {
            Stamp(timeMs: try zigzag(), offset: try zigzag())
        }

    }
}
