import CPrefetch

/// The map from a user's identity to its slot in the engine's table of users: an
/// open-addressing hash table of 8-byte records (linear probing, backward-shift
/// deletion), with the identities themselves kept by the caller next to the entries.
///
/// Why not `[String: Int32]`: a lookup there is a chain of dependent loads (bucket
/// bitmap, key, maybe the key's heap bytes) that no caller can start early. Here the
/// hash is computed first, so the fold can load the buckets of a whole chunk of events
/// before it looks any up, and the cache misses overlap. A record holds 32 bits of the
/// hash besides the slot, so a probe compares identities almost only on the real match.
///
/// The hash is keyed with a per-process random seed (identities come from clients; a
/// fixed hash would let crafted ids collide on purpose).
struct IdentityIndex {
    /// `(tag << 32) | (slot + 1)`; 0 is an empty bucket.
    private var buckets: [UInt64]
    private var mask: Int
    private(set) var count = 0
    let seed: IdentityHash

    init(seed: IdentityHash = IdentityHash()) {
        self.seed = seed
        buckets = [UInt64](repeating: 0, count: 16)
        mask = 15
    }

    var capacity: Int { buckets.count }

    @inline(__always)
    private static func tag(_ hash: UInt64) -> UInt64 { (hash >> 32) << 32 }

    @inline(__always)
    private static func record(_ hash: UInt64, _ slot: Int32) -> UInt64 { tag(hash) | UInt64(UInt32(slot) + 1) }

    @inline(__always)
    private static func slot(of record: UInt64) -> Int32 { Int32(truncatingIfNeeded: record & 0xFFFF_FFFF) - 1 }

    /// Starts loading the bucket where a lookup of `hash` starts, without waiting.
    @inline(__always)
    func prefetch(_ hash: UInt64) {
        buckets.withUnsafeBufferPointer { fs_prefetch($0.baseAddress! + (Int(truncatingIfNeeded: hash) & mask)) }
    }

    /// The first slot filed under `hash`'s tag: the likely match, before any identity is
    /// compared (so that its entry can be fetched early).
    @inline(__always)
    func candidate(_ hash: UInt64) -> Int32? { find(hash) { _ in true } }

    /// The slot stored for `hash` whose identity `matches`, if any.
    @inline(__always)
    func find(_ hash: UInt64, matches: (Int32) -> Bool) -> Int32? {
        let tag = Self.tag(hash)
        var b = Int(truncatingIfNeeded: hash) & mask
        while true {
            let r = buckets[b]
            if r == 0 { return nil }
            if r & 0xFFFF_FFFF_0000_0000 == tag, matches(Self.slot(of: r)) { return Self.slot(of: r) }
            b = (b + 1) & mask
        }
    }

    /// Adds `slot` under `hash` (the caller checked it is not there). `rehash` gives the
    /// hash of a stored slot, for growing.
    mutating func insert(_ hash: UInt64, slot: Int32, rehash: (Int32) -> UInt64) {
        if (count + 1) * 4 > buckets.count * 3 { grow(rehash: rehash) }
        place(Self.record(hash, slot), at: Int(truncatingIfNeeded: hash) & mask)
        count += 1
    }

    private mutating func place(_ record: UInt64, at start: Int) {
        var b = start
        while buckets[b] != 0 { b = (b + 1) & mask }
        buckets[b] = record
    }

    /// Makes room for `count` records in all without growing (a restore sizes the
    /// index once for every user it loads: growing by doubling rehashed every identity
    /// again at each step).
    mutating func reserve(_ count: Int, rehash: (Int32) -> UInt64) {
        var size = buckets.count
        while count * 4 > size * 3 { size *= 2 }
        if size > buckets.count { grow(to: size, rehash: rehash) }
    }

    private mutating func grow(rehash: (Int32) -> UInt64) { grow(to: buckets.count * 2, rehash: rehash) }

    private mutating func grow(to size: Int, rehash: (Int32) -> UInt64) {
        let old = buckets
        buckets = [UInt64](repeating: 0, count: size)
        mask = buckets.count - 1
        for r in old where r != 0 {
            place(r, at: Int(truncatingIfNeeded: rehash(Self.slot(of: r))) & mask)
        }
    }

    /// Removes `slot`, stored under `hash`. Later records of the probe run move back so
    /// that every lookup still finds its record before an empty bucket. `rehash` gives
    /// the hash of a stored slot.
    mutating func remove(_ hash: UInt64, slot: Int32, rehash: (Int32) -> UInt64) {
        let record = Self.record(hash, slot)
        var hole = Int(truncatingIfNeeded: hash) & mask
        while buckets[hole] != record {
            guard buckets[hole] != 0 else { return }
            hole = (hole + 1) & mask
        }
        buckets[hole] = 0
        count -= 1
        var b = (hole + 1) & mask
        while buckets[b] != 0 {
            let r = buckets[b]
            let home = Int(truncatingIfNeeded: rehash(Self.slot(of: r))) & mask
            // The record may fill the hole if its home is not in (hole, b], cyclically.
            let fits = hole <= b ? (home <= hole || home > b) : (home <= hole && home > b)
            if fits {
                buckets[hole] = r
                buckets[b] = 0
                hole = b
            }
            b = (b + 1) & mask
        }
    }
}

/// A keyed 64-bit hash of identities' UTF-8 bytes: 16 bytes a step folded with a
/// full-width multiply (as wyhash does), keyed by two random words per process.
struct IdentityHash: Sendable {
    let k0: UInt64
    let k1: UInt64

    init() {
        var g = SystemRandomNumberGenerator()
        k0 = g.next() | 1
        k1 = g.next() | 1
    }

    init(k0: UInt64, k1: UInt64) {
        self.k0 = k0 | 1
        self.k1 = k1 | 1
    }

    @inline(__always)
    private static func mix(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let r = a.multipliedFullWidth(by: b)
        return r.high ^ r.low
    }

    func hash(_ s: String) -> UInt64 {
        if let h = s.utf8.withContiguousStorageIfAvailable({ hash($0) }) { return h }
        return Array(s.utf8).withUnsafeBufferPointer { hash($0) }
    }

    func hash(_ p: UnsafeBufferPointer<UInt8>) -> UInt64 {
        let n = p.count
        var h = k0 ^ UInt64(n) &* 0x9E37_79B9_7F4A_7C15
        guard let base = p.baseAddress else { return Self.mix(h ^ k1, k0) }
        let raw = UnsafeRawPointer(base)
        var i = 0
        while i + 16 <= n {
            let a = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            let b = raw.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self)
            h = Self.mix(a ^ k0 ^ h, b ^ k1)
            i += 16
        }
        if i < n {
            // The last 1…15 bytes, zero-padded into two words (the length is in `h`).
            var a: UInt64 = 0
            var b: UInt64 = 0
            let rest = n - i
            withUnsafeMutableBytes(of: &a) { $0.copyMemory(from: UnsafeRawBufferPointer(start: raw + i, count: min(rest, 8))) }
            if rest > 8 {
                withUnsafeMutableBytes(of: &b) { $0.copyMemory(from: UnsafeRawBufferPointer(start: raw + i + 8, count: rest - 8)) }
            }
            h = Self.mix(a ^ k0 ^ h, b ^ k1)
        }
        // A fixed odd multiplier: keyed with `n ^ k0`, a length equal to k0 zeroed it.
        return Self.mix(h ^ k1, UInt64(n) ^ 0xA076_1D64_78BD_642F)
    }
}
