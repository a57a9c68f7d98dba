import Simulation
import Testing

@testable import Folding

/// The `<group>-identities` record format: round trips, its exact bytes, and refusal of
/// whatever else (Kafka's bytes are input: never a trap).
@Suite struct IdentityCodecTests {
    /// An identity of 1…`maxScalars` scalars from a mix of one- to four-byte ones.
    static func randomIdentity(_ rng: inout SplitMix64, maxScalars: Int = 40) -> String {
        let pool: [Unicode.Scalar] = ["a", "Z", "7", "-", "@", "\u{E9}", "\u{301}", "\u{4E2D}", "\u{1F600}", "\u{10FFFF}"]
        var s = String.UnicodeScalarView()
        for _ in 0..<Int.random(in: 1...maxScalars, using: &rng) { s.append(pool[Int.random(in: 0..<pool.count, using: &rng)]) }
        return String(s)
    }

    static func randomEntry(_ rng: inout SplitMix64) -> IdentityEntry {
        var e = IdentityEntry()
        if Bool.random(using: &rng) {
            e.linkedTo = IdentityLink(identity: randomIdentity(&rng), timeMs: Int64.random(in: .min ... .max, using: &rng))
        }
        let n = [0, 1, 2, Int.random(in: 0...120, using: &rng)][Int.random(in: 0..<4, using: &rng)]
        for _ in 0..<n { e.linked.append(randomIdentity(&rng)) }
        return e
    }

    @Test func randomEntriesRoundTrip() throws {
        var rng = SplitMix64(seed: 24)
        for _ in 0..<500 {
            let e = Self.randomEntry(&rng)
            let bytes = IdentityCodec.encode(e)
            #expect(try IdentityCodec.decode(bytes) == e)
            #expect(bytes.count <= IdentityCodec.maxValueBytes)
        }
    }

    /// The largest entry there can be: the most linked ids, each of 255 four-byte scalars.
    @Test func theLargestEntryRoundTripsWithinTheBound() throws {
        let longest = String(repeating: "\u{1F600}", count: 255)
        #expect(longest.utf8.count == IdentityCodec.maxIdentityBytes)
        var e = IdentityEntry(linkedTo: IdentityLink(identity: longest, timeMs: .min))
        for i in 0..<IdentityCodec.maxLinked {
            var id = String(repeating: "\u{1F600}", count: 254)
            id.unicodeScalars.append(Unicode.Scalar(0x1F600 + UInt32(i))!)
            e.linked.append(id)
        }
        #expect(e.linked.allSatisfy { $0.utf8.count == IdentityCodec.maxIdentityBytes })
        let bytes = IdentityCodec.encode(e)
        #expect(bytes.count <= IdentityCodec.maxValueBytes)
        #expect(try IdentityCodec.decode(bytes) == e)
        e.linked.append("one more")
        #expect(try IdentityCodec.decode(IdentityCodec.encode(e)).linked.count == IdentityCodec.maxLinked, "written cut at the bound")
    }

    /// How the writer builds a record may change, what it writes may not.
    @Test func theEncodingIsStableByteForByte() {
        let e = IdentityEntry(linkedTo: IdentityLink(identity: "u1", timeMs: -2), linked: ["a", "\u{E9}"])
        #expect(IdentityCodec.encode(e) == [0x01, 0x01, 0x02, 0x75, 0x31, 0x03, 0x02, 0x01, 0x61, 0x02, 0xC3, 0xA9])
        #expect(IdentityCodec.encode(IdentityEntry()) == [0x01, 0x00, 0x00])
        #expect(IdentityCodec.key("cafe\u{301}") == [0x63, 0x61, 0x66, 0x65, 0xCC, 0x81])
    }

    @Test func keysAreTheIdentitysBytes() throws {
        #expect(try IdentityCodec.identity(key: IdentityCodec.key("caf\u{E9}")).utf8.elementsEqual("caf\u{E9}".utf8))
        #expect(throws: IdentityCodec.DecodeError.invalidIdentity) { try IdentityCodec.identity(key: []) }
        #expect(throws: IdentityCodec.DecodeError.invalidIdentity) { try IdentityCodec.identity(key: [0x61, 0xFF]) }
        #expect(throws: IdentityCodec.DecodeError.invalidIdentity) {
            try IdentityCodec.identity(key: IdentityCodec.key(String(repeating: "\u{E9}", count: 256)))
        }
        let ascii256 = String(repeating: "x", count: 256)
        #expect(throws: IdentityCodec.DecodeError.invalidIdentity) { try IdentityCodec.identity(key: IdentityCodec.key(ascii256)) }
        let long255 = String(repeating: "\u{E9}", count: 255)  // 510 bytes, 255 characters: valid
        #expect(try IdentityCodec.identity(key: IdentityCodec.key(long255)) == long255)
    }

    @Test func everyTruncationIsRefusedAsTruncated() async {
        var rng = SplitMix64(seed: 7)
        var samples = [
            IdentityEntry(linkedTo: IdentityLink(identity: "u1", timeMs: 1_764_000_000_000), linked: ["a", "b\u{1F600}"]),
            IdentityEntry(linked: [String(repeating: "x", count: 200)]),
        ]
        for _ in 0..<20 { samples.append(Self.randomEntry(&rng)) }
        for e in samples {
            await Task.yield()  // CPU-bound: let the pool run other tests
            let bytes = IdentityCodec.encode(e)
            for n in 0..<bytes.count {
                #expect(throws: IdentityCodec.DecodeError.truncated) { try IdentityCodec.decode(Array(bytes.prefix(n))) }
            }
        }
    }

    @Test func malformedValuesAreRefusedByName() {
        typealias E = IdentityCodec.DecodeError
        #expect(throws: E.unsupportedVersion(0)) { try IdentityCodec.decode([0x00, 0x00, 0x00]) }
        #expect(throws: E.newerVersion(2)) { try IdentityCodec.decode([0x02, 0x00, 0x00]) }
        #expect(throws: E.badValue) { try IdentityCodec.decode([0x01, 0x02, 0x00]) }
        #expect(throws: E.trailingBytes) { try IdentityCodec.decode([0x01, 0x00, 0x00, 0x00]) }
        #expect(throws: E.invalidIdentity) { try IdentityCodec.decode([0x01, 0x00, 0x01, 0x00]) }  // empty id
        #expect(throws: E.invalidIdentity) { try IdentityCodec.decode([0x01, 0x00, 0x01, 0x01, 0xC0]) }  // not UTF-8
        #expect(throws: E.invalidIdentity) { try IdentityCodec.decode([0x01, 0x01, 0x02, 0xED, 0xA0, 0x00]) }  // a surrogate
        #expect(throws: E.invalidIdentity) { try IdentityCodec.decode([0x01, 0x01, 0xFD, 0x07]) }  // 1021 bytes: over any id
        #expect(throws: E.oversized) { try IdentityCodec.decode([0x01, 0x00, 0xE9, 0x07]) }  // 1001 linked ids
        #expect(throws: E.badValue) { try IdentityCodec.decode([0x01, 0x00] + [UInt8](repeating: 0xFF, count: 10) + [0x01]) }
        #expect(throws: E.oversized) { try IdentityCodec.decode([UInt8](repeating: 0x01, count: IdentityCodec.maxValueBytes + 1)) }
        // 256 two-byte characters: 512 bytes, valid UTF-8, one character too many.
        let tooLong = IdentityCodec.encode(IdentityEntry(linked: [String(repeating: "\u{E9}", count: 256)]))
        #expect(throws: E.invalidIdentity) { try IdentityCodec.decode(tooLong) }
    }

    /// Random bytes and mutated records: each is refused or read as an entry whose ids
    /// are all valid identities, and none traps.
    @Test func randomAndMutatedBytesNeverTrap() throws {
        var rng = SplitMix64(seed: 2024)
        let good = IdentityCodec.encode(
            IdentityEntry(
                linkedTo: IdentityLink(identity: "user-1", timeMs: 1_764_000_000_000), linked: ["anon-1", "\u{4E2D}\u{1F600}", "x"]))
        var decoded = 0
        for round in 0..<20_000 {
            var b: [UInt8]
            if round % 2 == 0 {
                b = (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                if Bool.random(using: &rng), !b.isEmpty { b[0] = 1 }  // past the version byte more often
            } else {
                b = good
                for _ in 0..<Int.random(in: 1...3, using: &rng) {
                    b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
                if Bool.random(using: &rng) { b = Array(b.prefix(Int.random(in: 0...b.count, using: &rng))) }
            }
            guard let e = try? IdentityCodec.decode(b) else { continue }
            decoded += 1
            for id in e.linked + (e.linkedTo.map { [$0.identity] } ?? []) {
                #expect(try IdentityCodec.identity(key: IdentityCodec.key(id)).utf8.elementsEqual(id.utf8))
            }
            #expect(try IdentityCodec.decode(IdentityCodec.encode(e)) == e)
        }
        #expect(decoded > 0, "some mutations leave a valid record (a changed letter of an id)")
    }
}
