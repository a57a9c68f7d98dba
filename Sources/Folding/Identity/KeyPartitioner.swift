/// The partition a key belongs to, computed as Kafka producers compute it, so that the
/// daemon can tell which task owns an identity (`owner(id)` in docs/identity.md) without
/// asking a producer: a collector that keys its messages by identity with the same
/// partitioner has already put every event on its owner's partition.
///
/// Pure and allocation-free; the raw values are the names configuration uses
/// (`identity.partitioner: murmur2 | crc32`).
public enum KeyPartitioner: String, Sendable, CaseIterable {
    /// The Java client's default partitioner and librdkafka's `murmur2_random`:
    /// `(murmur2(key) & 0x7fffffff) % count`, with Kafka's murmur2 (seed `0x9747b28c`).
    case murmur2
    /// librdkafka's default, `consistent_random` (and `consistent`): `crc32(key) % count`,
    /// with the CRC-32 of zlib (reflected polynomial `0xEDB88320`), taken as unsigned.
    case crc32

    /// The value of librdkafka's `partitioner` property that places keyed messages as this
    /// does (and keyless ones at random).
    public var librdkafkaPartitioner: String {
        switch self {
        case .murmur2: "murmur2_random"
        case .crc32: "consistent_random"
        }
    }

    /// The partition of `key` among `count` partitions, in `0..<count`.
    ///
    /// - An empty key is hashed like any other (murmur2: the Java client's partition for an
    ///   empty key; crc32: partition 0, as librdkafka's `consistent`). Producers differ
    ///   there (librdkafka's `*_random` partitioners place a NULL key, and
    ///   `consistent_random` an empty one, at random), so callers should never route by an
    ///   empty key; an identity never is one.
    /// - A `count` of 0 or less returns 0: a topic without partitions has no owner to find,
    ///   and the caller's metadata is wrong, not the key.
    public func partition(of key: UnsafeRawBufferPointer, count: Int32) -> Int32 {
        guard count > 0 else { return 0 }
        let h: UInt32
        switch self {
        case .murmur2: h = Self.murmur2Hash(key) & 0x7fff_ffff
        case .crc32: h = Self.crc32Hash(key)
        }
        // The remainder is below `count`, which fits in Int32.
        return Int32(truncatingIfNeeded: h % UInt32(truncatingIfNeeded: count))
    }

    /// As ``partition(of:count:)-(UnsafeRawBufferPointer,_)``, for a key in an array.
    public func partition(of key: [UInt8], count: Int32) -> Int32 {
        key.withUnsafeBytes { partition(of: $0, count: count) }
    }

    /// As ``partition(of:count:)-(UnsafeRawBufferPointer,_)``, for the UTF-8 bytes of
    /// `key` (what a producer sends for a string key). Reads a native string's bytes where
    /// they are; only a string that is not contiguous UTF-8 (a bridged one) is copied.
    public func partition(of key: String, count: Int32) -> Int32 {
        var key = key
        return key.withUTF8 { partition(of: UnsafeRawBufferPointer($0), count: count) }
    }

    /// As ``partition(of:count:)-(String,_)``, for a slice of a string (an id cut out of a
    /// larger text) without copying it out first.
    public func partition(of key: Substring, count: Int32) -> Int32 {
        var key = key
        return key.withUTF8 { partition(of: UnsafeRawBufferPointer($0), count: count) }
    }

    /// The 32-bit hash this partitioner takes the remainder of (before murmur2's sign bit is
    /// cleared): Kafka's murmur2, or zlib's CRC-32. The Java client's `Utils.murmur2`
    /// returns the same bits as a signed `int`.
    public func hash(_ key: UnsafeRawBufferPointer) -> UInt32 {
        switch self {
        case .murmur2: Self.murmur2Hash(key)
        case .crc32: Self.crc32Hash(key)
        }
    }

    // MARK: The hashes

    /// MurmurHash2 (Austin Appleby's, 32-bit) as Kafka defines it: seed `0x9747b28c`, the
    /// input read as little-endian 32-bit words whatever the machine, the 1 to 3 bytes
    /// left over folded in as one little-endian partial word before the final mix.
    static func murmur2Hash(_ key: UnsafeRawBufferPointer) -> UInt32 {
        let m: UInt32 = 0x5bd1_e995
        let n = key.count
        // The length enters as a 32-bit value (Java's `int`, librdkafka's cast).
        var h: UInt32 = 0x9747_b28c ^ UInt32(truncatingIfNeeded: n)
        var i = 0
        while n - i >= 4 {
            var k = UInt32(littleEndian: key.loadUnaligned(fromByteOffset: i, as: UInt32.self))
            k &*= m
            k ^= k >> 24
            k &*= m
            h &*= m
            h ^= k
            i += 4
        }
        switch n - i {
        case 3:
            h ^= UInt32(key[i + 2]) << 16
            fallthrough
        case 2:
            h ^= UInt32(key[i + 1]) << 8
            fallthrough
        case 1:
            h ^= UInt32(key[i])
            h &*= m
        default:
            break
        }
        h ^= h >> 13
        h &*= m
        h ^= h >> 15
        return h
    }

    /// CRC-32 as zlib's `crc32(0, key, len)` computes it (the ISO-HDLC CRC: reflected
    /// polynomial `0xEDB88320`, initial and final value inverted), one table step a byte.
    static func crc32Hash(_ key: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0xffff_ffff
        crc32Table.withUnsafeBufferPointer { table in
            for byte in key {
                crc = table[Int((crc ^ UInt32(byte)) & 0xff)] ^ (crc >> 8)
            }
        }
        return ~crc
    }

    /// The remainder of every byte value, shifted through the polynomial eight times.
    private static let crc32Table: [UInt32] = (0..<256).map { (byte: UInt32) in
        var c = byte
        for _ in 0..<8 { c = c & 1 != 0 ? 0xedb8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }
}
