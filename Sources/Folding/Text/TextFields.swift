import Events

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A user's text attributes (email, name, location, …), each a last-writer-wins register,
/// packed into one byte buffer.
///
/// A state of twelve `Latest<String>?` fields takes ~480 bytes inline whether or not any
/// is set, plus a heap string per value over 15 bytes. Packed, a user with an email, a
/// name, a role, a city, a country and a timezone takes ~130 bytes, and one with none
/// takes 8. The fields written by one event share its stamp, so stamps are kept once in a
/// small table that the fields point into.
///
/// Layout (canonical, so that equal contents are equal bytes): the stamp count, the
/// stamps (time then offset, 8 bytes each, little endian) in order of first use, then
/// each present field in ``Field`` order as tag, stamp index, LEB128 length and UTF-8.
public struct TextFields: Sendable, Equatable {
    /// The text writes of one event, applied together (they share its stamp). Within one
    /// event the first value given for a field is the one written, as with separate
    /// last-writer-wins writes at the same stamp. Held inline, one slot per field: an
    /// event's writes cost no allocation.
    public struct Writes: Sendable {
        // 12 slots here and in `rebuild`: one per ``Field`` (a test keeps them in step).
        fileprivate var values = InlineArray<12, String?>(repeating: nil)
        /// Bit `f.rawValue`: field `f` is written.
        fileprivate var mask: UInt16 = 0
        /// Bit `f.rawValue`: field `f`'s value was cut to ``Field/storedLimitBytes``.
        public private(set) var capped: UInt16 = 0
        public init() {}
        public var isEmpty: Bool { mask == 0 }
        public mutating func add(_ field: Field, _ value: consuming String) {
            let bit: UInt16 = 1 << UInt16(field.rawValue)
            if mask & bit == 0 {
                mask |= bit
                let limit = field.storedLimitBytes
                if value.utf8.count > limit {
                    value = TextFields.prefix(value, bytes: limit)
                    capped |= bit
                }
                values[Int(field.rawValue)] = value
            }
        }
        fileprivate func has(_ raw: UInt8) -> Bool { mask & (1 << UInt16(raw)) != 0 }
        fileprivate func value(_ raw: UInt8) -> String { values[Int(raw)]! }
    }

    /// How many fields there are: raw values are 0 up to this, exclusive (a literal, so
    /// that the hot loop reads no lazily initialized global; a test keeps it in step).
    static let fieldCount: UInt8 = 12

    /// Slots of the inline storage of ``Writes`` and of `rebuild`, one per field.
    static let inlineSlots = InlineArray<12, UInt8>(repeating: 0).count

    public enum Field: UInt8, CaseIterable, Sendable {
        case email, name, role, phone, timezone, image
        case country, region, city, postalCode, countryCode, lastSubscription

        /// The most UTF-8 bytes a value of this field is stored with: four per character
        /// of what Foldspace accepts, and one character more. What is cut could never be
        /// sent (the projection truncates to the limit, or omits a value over it, and the
        /// value kept is still over it), so the body is the same; the state, and its
        /// changelog record, stay bounded whatever an event carries (a 1 MiB value was
        /// copied by every later event of its user).
        public var storedLimitBytes: Int { 4 * apiLimit + 4 }

        /// Foldspace's limit for the field, in characters.
        public var apiLimit: Int {
            switch self {
            case .email: return FoldspaceLimits.email
            case .name: return FoldspaceLimits.name
            case .role: return FoldspaceLimits.role
            case .phone: return FoldspaceLimits.phone
            case .timezone: return FoldspaceLimits.timezone
            case .image: return FoldspaceLimits.image
            case .country, .region, .city, .postalCode: return FoldspaceLimits.locationField
            case .countryCode: return FoldspaceLimits.countryCode
            case .lastSubscription: return FoldspaceLimits.subscriptionIdentifier
            }
        }

        /// The field's name in the body (and in `foldspace_sync_adjustments_total`).
        public var bodyName: String {
            switch self {
            case .email: return "email"
            case .name: return "name"
            case .role: return "role"
            case .phone: return "phone"
            case .timezone: return "timezone"
            case .image: return "image"
            case .country: return "location.country"
            case .region: return "location.region"
            case .city: return "location.city"
            case .postalCode: return "location.postalCode"
            case .countryCode: return "location.countryCode"
            case .lastSubscription: return "lastSubscriptionIdentifier"
            }
        }
    }

    /// The longest prefix of `s` of at most `bytes` UTF-8 bytes that ends on a character
    /// (scalar) boundary.
    static func prefix(_ s: String, bytes: Int) -> String {
        let u = s.utf8
        guard u.count > bytes else { return s }
        let kept = keptBytes(count: u.count, limit: bytes) { u[u.index(u.startIndex, offsetBy: $0)] }
        return String(decoding: u.prefix(kept), as: UTF8.self)
    }

    /// How many of a UTF-8 value's `count` bytes fit in `limit`: all, or `limit` backed
    /// off over continuation bytes (10xxxxxx) to the start of the scalar it cuts through.
    /// `byte(i)` is the value's byte at `i`.
    static func keptBytes(count: Int, limit: Int, byte: (Int) -> UInt8) -> Int {
        guard count > limit else { return count }
        var kept = limit
        while kept > 0, byte(kept) & 0xC0 == 0x80 { kept -= 1 }
        return kept
    }

    var buf: [UInt8] = []

    public init() {}

    /// Equal when every field holds the same value at the same stamp (stamps rewritten
    /// in place may leave the table with duplicates, so the bytes are not compared).
    public static func == (a: TextFields, b: TextFields) -> Bool {
        if a.buf == b.buf { return true }
        return Field.allCases.allSatisfy { a.get($0) == b.get($0) }
    }

    /// Bytes held on the heap (0 when no field is set): the array's header and the
    /// capacity malloc granted, which may exceed what was asked for by the allocator's
    /// rounding and, when it hands out a free chunk too small to split, a little more.
    public var heapBytes: Int { buf.capacity == 0 ? 0 : 32 + buf.capacity }

    /// Bytes of the packed encoding itself (what a rebuild asks malloc for).
    var packedBytes: Int { buf.count }

    /// The register of `field`, if set.
    public func get(_ field: Field) -> Latest<String>? {
        guard !buf.isEmpty else { return nil }
        return buf.withUnsafeBufferPointer { b in
            var r = Reader(b)
            guard let entry = r.find(field) else { return nil }
            return Latest(value: String(decoding: b[entry.value], as: UTF8.self), stamp: r.stamp(entry.stamp))
        }
    }

    /// Writes `value` if `stamp` is newer than the field's (or the field is unset);
    /// returns whether the value changed. A newer stamp with the same value still moves
    /// the stamp, so that an older event arriving late cannot overwrite it.
    public mutating func write(_ field: Field, _ value: String, at stamp: Stamp) -> Bool {
        var one = Writes()
        one.add(field, value)
        return apply(one, at: stamp)
    }

    /// Applies one event's writes at `stamp`; returns whether any value changed. When
    /// every write only moves the stamp (the same values again, the common case for
    /// repeated identify traits and page locations) and no other field shares the stamps
    /// being replaced, the stamps are rewritten in place.
    public mutating func apply(_ writes: Writes, at stamp: Stamp) -> Bool {
        guard !writes.isEmpty else { return false }
        if !buf.isEmpty {
            // nil: a value changes or a field is new (rebuild). Otherwise the stamp
            // entries to rewrite, and whether fields sharing them stay behind.
            let plan: (entries: UInt16, shared: Bool)? = buf.withUnsafeBufferPointer { b in
                var r = Reader(b)
                // Per stamp entry (at most 16): how many fields use it, and how many of
                // those this event rewrites, four bits each (at most 12 fields) in a
                // register. (A SIMD16 here was updated a byte at a time through the
                // stack, and each reload of the vector stalled on the store before it.)
                var refs: UInt64 = 0
                var moved: UInt64 = 0
                var pending = writes.mask.nonzeroBitCount
                while let e = r.next() {
                    guard e.stamp < 16 else { return nil }  // not written by rebuild: rebuild it
                    let nibble: UInt64 = 1 &<< (4 &* UInt64(e.stamp))
                    refs &+= nibble
                    guard writes.has(e.field) else { continue }
                    pending -= 1
                    guard r.stamp(e.stamp) < stamp else { continue }  // newer already: ignored
                    guard Self.same(writes.value(e.field), b, e.value) else { return nil }
                    moved &+= nibble
                }
                guard pending == 0 else { return nil }  // a new field
                var entries: UInt16 = 0  // bit i: stamp entry i is moved
                var shared = false
                for i in 0..<min(Int(b[0]), 16) {
                    let m = (moved &>> (4 &* UInt64(i))) & 0xF
                    guard m > 0 else { continue }
                    if m != (refs &>> (4 &* UInt64(i))) & 0xF { shared = true }
                    entries |= 1 << UInt16(i)
                }
                return (entries, shared)
            }
            if let plan, !plan.shared {
                // The same values again at a newer stamp, whose old stamps nothing else
                // uses: rewrite those stamps in place.
                buf.withUnsafeMutableBytes { raw in
                    var m = plan.entries
                    while m != 0 {
                        Self.store(stamp, entry: m.trailingZeroBitCount, into: raw)
                        m &= m &- 1
                    }
                }
                return false
            }
            if let plan, Int(buf[0]) < 15 {
                // The same values again, but other fields share their old stamps (an
                // identify's traits and location, then a page with the location only):
                // add the new stamp to the table and point the moved fields at it.
                let n = Int(buf[0])
                buf.insert(contentsOf: repeatElement(0, count: 16), at: 1 + 16 * n)
                buf[0] = UInt8(n + 1)
                buf.withUnsafeMutableBufferPointer { mb in
                    Self.store(stamp, entry: n, into: UnsafeMutableRawBufferPointer(mb))
                    // The reader is past an entry's stamp byte when it returns it.
                    var r = Reader(UnsafeBufferPointer(mb))
                    while true {
                        let at = r.pos
                        guard let e = r.next() else { break }
                        if plan.entries & (1 << UInt16(e.stamp)) != 0, writes.has(e.field) { mb[at + 1] = UInt8(n) }
                    }
                }
                return false
            }
        }
        return rebuild(writes, at: stamp)
    }

    /// Drops the fields in `clearing`, applies `writes` by the register rule (a cleared
    /// field takes its write whatever the stamps: that is `set`) and encodes the result
    /// in one pass over the old buffer and one allocation: the fields' places and stamps
    /// are kept on the stack.
    private mutating func rebuild(_ writes: Writes, at stamp: Stamp, clearing: UInt16 = 0) -> Bool {
        let fields = Field.allCases.count
        var changed = false
        var present: UInt16 = 0  // fields in the result
        var fromWrite: UInt16 = 0  // of which this event's writes
        var oldValue = InlineArray<12, Range<Int>>(repeating: 0..<0)
        var fieldStamp = InlineArray<12, UInt8>(repeating: 0)  // index into `stamps`
        var stamps = StampTable()
        var bytes = 1
        let old = buf
        buf = old.withUnsafeBufferPointer { b -> [UInt8] in
            var oldStamp = InlineArray<12, Stamp>(repeating: Stamp(timeMs: 0, offset: 0))
            if !b.isEmpty {
                var r = Reader(b)
                while let e = r.next() {
                    let f = Int(e.field)
                    present |= 1 << UInt16(f)
                    oldValue[f] = e.value
                    oldStamp[f] = r.stamp(e.stamp)
                }
            }
            present &= ~clearing
            for f in 0..<fields {
                let bit: UInt16 = 1 << UInt16(f)
                let s: Stamp
                let length: Int
                if writes.mask & bit != 0 && (present & bit == 0 || oldStamp[f] < stamp) {
                    let v = writes.value(UInt8(f))
                    if present & bit == 0 || !Self.same(v, b, oldValue[f]) { changed = true }
                    present |= bit
                    fromWrite |= bit
                    s = stamp
                    length = v.utf8.count
                } else if present & bit != 0 {
                    s = oldStamp[f]
                    length = oldValue[f].count
                } else {
                    continue
                }
                fieldStamp[f] = stamps.index(of: s)
                bytes += 2 + Self.lengthBytes(length) + length
            }
            guard present != 0 else { return [] }
            bytes += 16 * stamps.count
            return [UInt8](unsafeUninitializedCapacity: bytes) { out, count in
                var at = stamps.write(into: out)
                for f in 0..<fields where present & (1 << UInt16(f)) != 0 {
                    out[at] = UInt8(f)
                    out[at + 1] = fieldStamp[f]
                    at += 2
                    if fromWrite & (1 << UInt16(f)) != 0 {
                        var v = writes.value(UInt8(f))
                        v.withUTF8 { u in
                            at = Self.putLength(u.count, into: out, at: at)
                            if let src = u.baseAddress { (out.baseAddress! + at).update(from: src, count: u.count) }
                            at += u.count
                        }
                    } else {
                        let r = oldValue[f]
                        at = Self.putLength(r.count, into: out, at: at)
                        if !r.isEmpty { (out.baseAddress! + at).update(from: b.baseAddress! + r.lowerBound, count: r.count) }
                        at += r.count
                    }
                }
                count = at
            }
        }
        return changed
    }

    /// Whether `s` is exactly the bytes `b[r]`.
    @inline(__always)
    private static func same(_ s: String, _ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> Bool {
        let fast = s.utf8.withContiguousStorageIfAvailable { u -> Bool in
            u.count == r.count && (r.isEmpty || ByteRuns.equal(u.baseAddress!, b.baseAddress! + r.lowerBound, count: r.count))
        }
        return fast ?? s.utf8.elementsEqual(b[r])
    }

    /// Sets or clears a field outright (decoding a stored state, tests).
    public mutating func set(_ field: Field, _ register: Latest<String>?) {
        var one = Writes()
        if let register { one.add(field, register.value) }
        _ = rebuild(one, at: register?.stamp ?? Stamp(timeMs: 0, offset: 0), clearing: 1 << UInt16(field.rawValue))
    }
}
