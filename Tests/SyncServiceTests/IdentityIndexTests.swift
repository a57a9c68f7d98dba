import Testing

@testable import SyncService

/// The engine's identity → slot index: lookups must survive collisions, growth and
/// removals in the middle of a probe run (a lost record would fold a user's events into
/// a fresh, empty state; a stale one into someone else's).
@Suite struct IdentityIndexTests {
    /// A model of the engine's use: identities per slot, hashes chosen by the test.
    struct Model {
        var index = IdentityIndex(seed: IdentityHash(k0: 1, k1: 2))
        var keys: [String] = []
        var hashes: [UInt64] = []

        func find(_ key: String, _ h: UInt64) -> Int32? { index.find(h) { keys[Int($0)] == key } }

        mutating func add(_ key: String, _ h: UInt64) {
            keys.append(key)
            hashes.append(h)
            let hs = hashes
            index.insert(h, slot: Int32(keys.count - 1)) { hs[Int($0)] }
        }

        mutating func remove(_ key: String) {
            let slot = keys.firstIndex(of: key)!
            let hs = hashes
            index.remove(hashes[slot], slot: Int32(slot)) { hs[Int($0)] }
        }
    }

    @Test func theCandidateIsTheMatchWhenTagsDiffer() {
        // The fold fetches the entry of `candidate` before looking up: with distinct
        // 32-bit tags it is the slot the lookup finds, and nothing for a missing key.
        var m = Model()
        let seed = IdentityHash(k0: 3, k1: 4)
        for i in 0..<3000 { m.add("user-\(i)", seed.hash("user-\(i)")) }
        let tags = Set(m.hashes.map { $0 >> 32 })
        #expect(tags.count == 3000)  // distinct, as 32-bit tags of 3000 keys almost surely are
        for i in 0..<3000 {
            let h = m.hashes[i]
            #expect(m.index.candidate(h) == m.find("user-\(i)", h))
        }
        var missing = 0
        for i in 3000..<6000 where m.index.candidate(seed.hash("user-\(i)")) == nil { missing += 1 }
        #expect(missing > 2900)  // a stranger's tag rarely matches one on its probe run
    }

    @Test func collidingHashesStayApartAndSurviveGrowth() {
        var m = Model()
        // 200 keys over 5 hash values: long probe runs, the same 32-bit tags, and the
        // table doubles several times (16 buckets at first).
        for i in 0..<200 { m.add("k\(i)", UInt64(i % 5) &* 0x1_0000_0001) }
        #expect(m.index.count == 200)
        #expect(m.index.capacity >= 256)
        for i in 0..<200 { #expect(m.find("k\(i)", UInt64(i % 5) &* 0x1_0000_0001) == Int32(i)) }
        #expect(m.find("k200", 0) == nil)
        #expect(m.find("k0", 7) == nil)
    }

    @Test func reservingRoomKeepsEveryKeyAndGrowsNoMore() {
        // A restore sizes the index once for all it loads: the keys already in it are
        // still found (rehashed into the larger table), and adding up to the reserved
        // count does not grow it again (a growth would show as a larger capacity).
        var m = Model()
        for i in 0..<100 { m.add("k\(i)", UInt64(i % 7) &* 0x1_0000_0001 &+ UInt64(i)) }
        let hs = m.hashes
        m.index.reserve(5_000) { hs[Int($0)] }
        let reserved = m.index.capacity
        #expect(reserved >= 5_000 * 4 / 3)
        for i in 0..<100 { #expect(m.find("k\(i)", UInt64(i % 7) &* 0x1_0000_0001 &+ UInt64(i)) == Int32(i)) }
        for i in 100..<5_000 { m.add("k\(i)", UInt64(i % 7) &* 0x1_0000_0001 &+ UInt64(i)) }
        #expect(m.index.capacity == reserved)
        for i in 0..<5_000 { #expect(m.find("k\(i)", UInt64(i % 7) &* 0x1_0000_0001 &+ UInt64(i)) == Int32(i)) }
        // Reserving less than is held changes nothing.
        let all = m.hashes
        m.index.reserve(10) { all[Int($0)] }
        #expect(m.index.capacity == reserved)
    }

    @Test func removingFromTheMiddleOfARunKeepsEveryOtherKeyFindable() {
        var rng = SystemRandomNumberGenerator()
        for trial in 0..<60 {
            var m = Model()
            // 40 keys in 64 buckets: homes crowded into the last four buckets (one long
            // run wrapping round the table's end), or spread (many short runs).
            let n = 40
            for i in 0..<n {
                let home = trial % 2 == 0 ? 60 + UInt64.random(in: 0..<4, using: &rng) : UInt64.random(in: 0..<64, using: &rng)
                m.add("u\(i)", home | (UInt64(i % 3) << 32))
            }
            #expect(m.index.capacity == 64)
            var gone = Set<Int>()
            for i in (0..<n).shuffled(using: &rng).prefix(25) {
                m.remove("u\(i)")
                gone.insert(i)
                for j in 0..<n {
                    let found = m.find("u\(j)", m.hashes[j])
                    #expect(found == (gone.contains(j) ? nil : Int32(j)), "u\(j) after removing \(gone.sorted())")
                }
            }
            #expect(m.index.count == n - 25)
        }
    }

    @Test func theHashIsKeyedAndReadsEveryByte() {
        let a = IdentityHash(k0: 1, k1: 2)
        let b = IdentityHash(k0: 3, k1: 4)
        // Lengths around the 8- and 16-byte steps: each byte and the length count.
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40] {
            let s = String(repeating: "x", count: n)
            #expect(a.hash(s) != a.hash(s + "\0"), "length \(n)")
            #expect(a.hash(s) != b.hash(s), "seed, length \(n)")
            for i in 0..<n {
                var bytes = Array(s.utf8)
                bytes[i] = UInt8(ascii: "y")
                #expect(a.hash(String(decoding: bytes, as: UTF8.self)) != a.hash(s), "byte \(i) of \(n)")
            }
        }
        // A bridged or non-contiguous string hashes as its bytes do.
        #expect(a.hash("user-12345678901234567890") == Array("user-12345678901234567890".utf8).withUnsafeBufferPointer { a.hash($0) })
    }
}
