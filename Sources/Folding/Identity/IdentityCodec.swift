import Events

/// The record format of `<group>-identities`, a compacted topic: the key is the
/// identity's UTF-8 bytes, the value its ``IdentityEntry``, a tombstone its removal.
///
/// Value layout, version 1:
///
///     version (1 byte, 1) · flags (1 byte; bit 0: linked to an identity)
///     [ the identity linked to · the link's event time (zigzag varint) ]   if bit 0
///     count of linked ids (varint) · each linked id
///
/// An identity is its UTF-8 length (varint) then its bytes. Integers are LEB128
/// varints, as in the changelog (``StateCodec``, whose writer this reuses). Nothing may
/// follow the last linked id: a field added later comes with a new version, which this
/// build refuses (``DecodeError/newerVersion(_:)``), so readers are upgraded first.
///
/// Bounds, checked before anything is kept: an identity is valid as the event decoder
/// takes it (non-empty, valid UTF-8, at most 255 characters, so at most 1020 bytes); at
/// most ``maxLinked`` linked ids, so a value is at most ``maxValueBytes``. Decoding never
/// traps, whatever the bytes.
public enum IdentityCodec {
    public static let version: UInt8 = 1

    /// The most linked ids a record holds, and so the highest `identity.max_linked`:
    /// a record of that many longest ids (about 920 kB) still fits librdkafka's default
    /// `message.max.bytes` (1,000,000; at 1000 ids the largest record did not).
    public static let maxLinked = 900

    /// The longest identity in bytes: 255 characters (`identity-too-long`), of at most
    /// four bytes each.
    public static let maxIdentityBytes = 255 * 4

    /// The largest value a valid entry encodes to.
    public static let maxValueBytes = 2 + (2 + maxIdentityBytes) + 10 + 2 + maxLinked * (2 + maxIdentityBytes)

    static let linkedFlag: UInt8 = 1

    public enum DecodeError: Error, Equatable {
        /// Version 0: never written.
        case unsupportedVersion(UInt8)
        /// Written by a later format version than this build reads.
        case newerVersion(UInt8)
        /// The bytes end inside a field (or there are none).
        case truncated
        /// Longer than any entry encodes to, or more linked ids than ``maxLinked``.
        case oversized
        /// An identity (a key, the link's target or a linked id) that is empty, not
        /// valid UTF-8, or over 255 characters.
        case invalidIdentity
        /// A flag this version does not know, or a varint longer than 64 bits.
        case badValue
        /// Bytes after the last linked id.
        case trailingBytes
    }

    // MARK: Keys

    /// The record key of `id`: its UTF-8 bytes.
    public static func key(_ id: String) -> [UInt8] { Array(id.utf8) }

    /// The identity a record key names, checked as an identity.
    public static func identity(key: [UInt8]) throws(DecodeError) -> String {
        try key.withUnsafeBufferPointer { (b) throws(DecodeError) -> String in
            guard isIdentity(b) else { throw .invalidIdentity }
            return String(decoding: b, as: UTF8.self)
        }
    }

    /// Whether `b` is a valid identity: non-empty UTF-8 of at most 255 characters (by
    /// the event decoder's rule: over 255 bytes, its scalars are counted).
    static func isIdentity(_ b: UnsafeBufferPointer<UInt8>) -> Bool {
        guard !b.isEmpty, b.count <= maxIdentityBytes, UTF8Check.isValid(b) else { return false }
        guard b.count > 255 else { return true }
        var scalars = 0
        for byte in b where byte & 0xC0 != 0x80 { scalars &+= 1 }
        return scalars <= 255
    }

    // MARK: Encoding

    /// The value of `entry`'s record. Its ids are valid identities (as the graph's are);
    /// linked ids past ``maxLinked`` are left out, as no reader would take them.
    public static func encode(_ entry: IdentityEntry) -> [UInt8] {
        var w = StateCodec.Writer()
        w.u8(version)
        if let link = entry.linkedTo {
            w.u8(linkedFlag)
            w.string(link.identity)
            w.zigzag(link.timeMs)
        } else {
            w.u8(0)
        }
        let linked = entry.linked.prefix(maxLinked)
        w.varint(UInt64(linked.count))
        for id in linked { w.string(id) }
        return w.bytes
    }

    // MARK: Decoding

    public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> IdentityEntry {
        try bytes.withUnsafeBufferPointer { (b) throws(DecodeError) -> IdentityEntry in try decode(b) }
    }

    /// As ``decode(_:)-([UInt8])``, from bytes held elsewhere (read only during the call).
    public static func decode(_ bytes: UnsafeBufferPointer<UInt8>) throws(DecodeError) -> IdentityEntry {
        guard bytes.count <= maxValueBytes else { throw .oversized }
        var r = Input(bytes: bytes)
        let v = try r.u8()
        guard v >= 1 else { throw .unsupportedVersion(v) }
        guard v <= version else { throw .newerVersion(v) }
        let flags = try r.u8()
        guard flags & ~linkedFlag == 0 else { throw .badValue }
        var entry = IdentityEntry()
        if flags & linkedFlag != 0 {
            let to = try r.identity()
            entry.linkedTo = IdentityLink(identity: to, timeMs: try r.zigzag())
        }
        let n = try r.varint()
        guard n <= UInt64(maxLinked) else { throw .oversized }
        if n > 0 {
            entry.linked.reserveCapacity(min(Int(n), r.remaining / 2))  // each id takes two bytes at least
            for _ in 0..<n { entry.linked.append(try r.identity()) }
        }
        guard r.remaining == 0 else { throw .trailingBytes }
        return entry
    }

    /// Reads the bytes in order, with the changelog codec's reader (every read checks its
    /// length first); its errors are said in this codec's terms.
    struct Input {
        private var r: StateCodec.Reader

        init(bytes: UnsafeBufferPointer<UInt8>) { r = StateCodec.Reader(bytes: bytes) }

        var remaining: Int { r.end - r.pos }

        private static func mapped(_ e: StateCodec.DecodeError) -> DecodeError { e == .truncated ? .truncated : .badValue }

        mutating func u8() throws(DecodeError) -> UInt8 {
            do { return try r.u8() } catch { throw Self.mapped(error) }
        }

        mutating func varint() throws(DecodeError) -> UInt64 {
            do { return try r.varint() } catch { throw Self.mapped(error) }
        }

        mutating func zigzag() throws(DecodeError) -> Int64 {
            do { return try r.zigzag() } catch { throw Self.mapped(error) }
        }

        /// A length-prefixed identity. A length past the longest identity is refused as
        /// one before it is compared with what is left.
        mutating func identity() throws(DecodeError) -> String {
            let n = try varint()
            guard n <= UInt64(maxIdentityBytes) else { throw .invalidIdentity }
            guard n <= UInt64(remaining) else { throw .truncated }
            let b = UnsafeBufferPointer(rebasing: r.bytes[r.pos..<(r.pos + Int(n))])
            guard isIdentity(b) else { throw .invalidIdentity }
            r.pos += Int(n)
            return String(decoding: b, as: UTF8.self)
        }
    }
}
