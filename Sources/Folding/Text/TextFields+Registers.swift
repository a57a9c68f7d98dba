extension TextFields {
    /// Registers with a stamp each (a stored state's fields, decoded one by one), packed
    /// by ``init(_:from:)`` in one pass and one allocation, straight from the bytes they
    /// were decoded from: setting them one at a time rebuilt the buffer once per field,
    /// and a `String` per field was most of the rest of decoding a changelog record.
    public struct Registers: Sendable {
        /// Bit `f.rawValue`: field `f` is set.
        fileprivate var mask: UInt16 = 0
        /// Where each set field's value is in the source bytes.
        fileprivate var starts = InlineArray<12, Int>(repeating: 0)
        fileprivate var counts = InlineArray<12, Int>(repeating: 0)
        fileprivate var stamps = InlineArray<12, Stamp>(repeating: Stamp(timeMs: 0, offset: 0))
        public init() {}

        /// Field `field` holds `source[bytes]` (valid UTF-8, which the caller checked) at
        /// `stamp`; the last register given for a field is the one kept. A value over the
        /// field's ``Field/storedLimitBytes`` is cut there, at the start of the scalar cut
        /// through (as ``TextFields/Writes/add(_:_:)`` cuts it).
        public mutating func set(_ field: Field, bytes: Range<Int>, of source: UnsafeBufferPointer<UInt8>, stamp: Stamp) {
            let f = Int(field.rawValue)
            let count = TextFields.keptBytes(count: bytes.count, limit: field.storedLimitBytes) { source[bytes.lowerBound + $0] }
            mask |= 1 << UInt16(f)
            starts[f] = bytes.lowerBound
            counts[f] = count
            stamps[f] = stamp
        }
    }

    /// The fields of `registers`, whose values are in `source`: the same bytes as setting
    /// each in turn.
    public init(_ registers: Registers, from source: UnsafeBufferPointer<UInt8>) {
        guard registers.mask != 0, let src = source.baseAddress else { return }
        let fields = Int(Self.fieldCount)
        var fieldStamp = InlineArray<12, UInt8>(repeating: 0)  // index into `stamps`
        var stamps = StampTable()
        var bytes = 1
        let has = { (f: Int) in registers.mask & (1 << UInt16(f)) != 0 }
        // Stamps in order of first use, fields in ``Field`` order: the canonical layout.
        for f in 0..<fields where has(f) {
            fieldStamp[f] = stamps.index(of: registers.stamps[f])
            let length = registers.counts[f]
            precondition(registers.starts[f] + length <= source.count, "registers packed from other bytes than they were set from")
            bytes += 2 + Self.lengthBytes(length) + length
        }
        bytes += 16 * stamps.count
        buf = [UInt8](unsafeUninitializedCapacity: bytes) { out, count in
            var at = stamps.write(into: out)
            for f in 0..<fields where has(f) {
                out[at] = UInt8(f)
                out[at + 1] = fieldStamp[f]
                at += 2
                let n = registers.counts[f]
                at = Self.putLength(n, into: out, at: at)
                (out.baseAddress! + at).update(from: src + registers.starts[f], count: n)
                at += n
            }
            count = at
        }
    }
}
