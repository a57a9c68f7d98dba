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
    /// last-writer-wins writes at the same stamp.
    public struct Writes: Sendable {
        fileprivate var items: [(Field, String)] = []
        public init() {}
        public init(capacity: Int) { items.reserveCapacity(capacity) }
        public var isEmpty: Bool { items.isEmpty }
        public mutating func add(_ field: Field, _ value: String) {
            if !items.contains(where: { $0.0 == field }) { items.append((field, value)) }
        }
    }

    public enum Field: UInt8, CaseIterable, Sendable {
        case email, name, role, phone, timezone, image
        case country, region, city, postalCode, countryCode, lastSubscription
    }

    private var buf: [UInt8] = []

    public init() {}

    /// Equal when every field holds the same value at the same stamp (stamps rewritten
    /// in place may leave the table with duplicates, so the bytes are not compared).
    public static func == (a: TextFields, b: TextFields) -> Bool {
        if a.buf == b.buf { return true }
        return Field.allCases.allSatisfy { a.get($0) == b.get($0) }
    }

    /// Bytes held on the heap (0 when no field is set).
    public var heapBytes: Int { buf.capacity == 0 ? 0 : 32 + buf.capacity }

    /// Reads the buffer's first and last cache lines, so that a caller can start their
    /// loads for many users before folding into any (the value means nothing).
    @inline(__always)
    public var warm: Int { buf.isEmpty ? 0 : Int(buf[0]) &+ Int(buf[buf.count - 1]) }

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
                // those this event rewrites. On the stack.
                var refs = SIMD16<UInt8>()
                var moved = SIMD16<UInt8>()
                // Which fields this event writes, and where each write sits: one pass
                // over the writes instead of a search per field (no copies of values).
                var written: UInt16 = 0
                var at = SIMD16<UInt8>()
                for i in writes.items.indices {
                    let f = writes.items[i].0
                    written |= 1 << UInt16(f.rawValue)
                    at[Int(f.rawValue)] = UInt8(i)
                }
                var pending = writes.items.count
                while let e = r.next() {
                    refs[Int(e.stamp)] &+= 1
                    guard written & (1 << UInt16(e.field.rawValue)) != 0 else { continue }
                    pending -= 1
                    guard r.stamp(e.stamp) < stamp else { continue } // newer already: ignored
                    guard Self.same(writes.items[Int(at[Int(e.field.rawValue)])].1, b, e.value) else { return nil }
                    moved[Int(e.stamp)] &+= 1
                }
                guard pending == 0 else { return nil } // a new field
                var entries: UInt16 = 0 // bit i: stamp entry i is moved
                var shared = false
                for i in 0..<Int(b[0]) where moved[i] > 0 {
                    if moved[i] != refs[i] { shared = true }
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
                buf.withUnsafeMutableBytes { Self.store(stamp, entry: n, into: $0) }
                var positions: [Int] = []
                buf.withUnsafeBufferPointer { b in
                    var r = Reader(b)
                    while true {
                        let at = r.pos
                        guard let e = r.next() else { break }
                        if plan.entries & (1 << UInt16(e.stamp)) != 0,
                           writes.items.contains(where: { $0.0 == e.field }) { positions.append(at + 1) }
                    }
                }
                for p in positions { buf[p] = UInt8(n) }
                return false
            }
        }
        // Decode once, apply every write by the register rule, encode once.
        var entries = decodedEntries()
        var changed = false
        for (f, v) in writes.items {
            let bytes = Array(v.utf8)
            if let i = entries.firstIndex(where: { $0.0 == f }) {
                guard entries[i].1 < stamp else { continue }
                if entries[i].2 != bytes { changed = true }
                entries[i] = (f, stamp, bytes)
            } else {
                Self.insertInOrder((f, stamp, bytes), into: &entries)
                changed = true
            }
        }
        buf = Self.encode(entries)
        return changed
    }

    /// Whether `s` is exactly the bytes `b[r]`.
    @inline(__always)
    private static func same(_ s: String, _ b: UnsafeBufferPointer<UInt8>, _ r: Range<Int>) -> Bool {
        let fast = s.utf8.withContiguousStorageIfAvailable { u -> Bool in
            u.count == r.count && (r.isEmpty || memcmp(u.baseAddress!, b.baseAddress! + r.lowerBound, r.count) == 0)
        }
        return fast ?? s.utf8.elementsEqual(b[r])
    }

    private func decodedEntries() -> [(Field, Stamp, [UInt8])] {
        guard !buf.isEmpty else { return [] }
        return buf.withUnsafeBufferPointer { b in
            var out: [(Field, Stamp, [UInt8])] = []
            var r = Reader(b)
            while let e = r.next() { out.append((e.field, r.stamp(e.stamp), Array(b[e.value]))) }
            return out
        }
    }

    /// Sets or clears a field outright (decoding a stored state, tests).
    public mutating func set(_ field: Field, _ register: Latest<String>?) {
        var entries = decodedEntries()
        entries.removeAll { $0.0 == field }
        if let register { Self.insertInOrder((field, register.stamp, Array(register.value.utf8)), into: &entries) }
        buf = Self.encode(entries)
    }

    /// Fields are kept in ``Field`` order.
    private static func insertInOrder(_ e: (Field, Stamp, [UInt8]), into entries: inout [(Field, Stamp, [UInt8])]) {
        let at = entries.firstIndex { $0.0.rawValue > e.0.rawValue } ?? entries.count
        entries.insert(e, at: at)
    }

    /// Writes `stamp` as stamp table entry `entry` (time then offset, little endian).
    private static func store(_ stamp: Stamp, entry: Int, into raw: UnsafeMutableRawBufferPointer) {
        raw.storeBytes(of: UInt64(bitPattern: stamp.timeMs).littleEndian, toByteOffset: 1 + 16 * entry, as: UInt64.self)
        raw.storeBytes(of: UInt64(bitPattern: stamp.offset).littleEndian, toByteOffset: 9 + 16 * entry, as: UInt64.self)
    }

    private static func encode(_ entries: [(Field, Stamp, [UInt8])]) -> [UInt8] {
        guard !entries.isEmpty else { return [] }
        var stamps: [Stamp] = []
        var index: [UInt8] = []
        for e in entries {
            if let i = stamps.firstIndex(of: e.1) {
                index.append(UInt8(i))
            } else {
                index.append(UInt8(stamps.count))
                stamps.append(e.1)
            }
        }
        var out = [UInt8](repeating: 0, count: 1 + stamps.count * 16)
        out.reserveCapacity(out.count + entries.reduce(0) { $0 + 4 + $1.2.count })
        out[0] = UInt8(stamps.count)
        out.withUnsafeMutableBytes { raw in
            for (i, s) in stamps.enumerated() { store(s, entry: i, into: raw) }
        }
        for (i, e) in entries.enumerated() {
            out.append(e.0.rawValue)
            out.append(index[i])
            var n = e.2.count
            while n >= 0x80 {
                out.append(UInt8(n & 0x7F) | 0x80)
                n >>= 7
            }
            out.append(UInt8(n))
            out.append(contentsOf: e.2)
        }
        return out
    }

    /// Walks a buffer written by ``encode(_:)``.
    private struct Reader {
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

        mutating func next() -> (field: Field, stamp: UInt8, value: Range<Int>)? {
            guard pos < b.count, let field = Field(rawValue: b[pos]) else { return nil }
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

        mutating func find(_ field: Field) -> (field: Field, stamp: UInt8, value: Range<Int>)? {
            while let e = next() {
                if e.field == field { return e }
                if e.field.rawValue > field.rawValue { return nil }
            }
            return nil
        }
    }
}
