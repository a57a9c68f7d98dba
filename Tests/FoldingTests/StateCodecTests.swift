import Events
import Foundation
import Testing

@testable import Folding

@Suite struct StateCodecTests {
    func richState() -> UserState {
        var config = FoldConfig()
        config.keyEvents = [.init(name: "Signed Up"), .init(name: "Paid")]
        let folder = Folder(config: config)
        var s = UserState()
        var e = SegmentEvent(type: .identify, identity: "u", hasUserId: true)
        var t = Traits()
        t.email = "ann@example.com"
        t.name = "Ann Lee"
        t.role = "Admin"
        t.phone = "+33 1 23 45 67 89"
        t.timezone = "Europe/Paris"
        t.leadDate = 1_700_000_000_000
        t.createdAt = 1_690_000_000_000
        t.subscriptionId = "sub-1"
        t.userType = "lead"
        t.avatar = "https://img.example.com/a.png"
        t.pqlScore = 42.5
        t.address = Location(country: "France", region: "IDF", city: "Paris", postalCode: "75001", countryCode: "FR")
        t.custom = [CustomTrait(name: "plan", json: #""pro""#)]
        e.traits = t
        e.groupId = "acct-1"
        e.product = ProductRef(product: "P1", environment: 2)
        folder.fold(e, timeMs: 1_764_000_000_000, offset: 10, source: 77, into: &s)
        var tr = SegmentEvent(type: .track, identity: "u", hasUserId: true)
        tr.eventName = "Paid"
        tr.product = ProductRef(product: "P2", environment: nil)
        folder.fold(tr, timeMs: 1_764_000_000_000 + 3_600_000, offset: 11, source: 77, into: &s)
        folder.fold(tr, timeMs: 1_764_000_000_000 - 86_400_000 * 3, offset: 12, source: 77, into: &s)
        return s
    }

    @Test func roundTripsEveryField() throws {
        let stored = StoredUser(state: richState(), dirty: true, settledHash: 0xDEAD_BEEF_CAFE_F00D, sourcePartitions: 12)
        let bytes = StateCodec.encode(stored)
        let back = try StateCodec.decode(bytes)
        #expect(back == stored)
        #expect(back.state.visits == 3)
        #expect(back.state.keyEventCounts == [KeyEventCount(index: 1, count: 2)])
        #expect(bytes.count < 600, "\(bytes.count) bytes for a user with every field set")
    }

    /// The bytes of a rich user, one field longer than 127 bytes (a two-byte length):
    /// how the writer builds a record may change, what it writes may not.
    @Test func theEncodingIsStableByteForByte() throws {
        var s = richState()
        s.custom.append(
            Latest(
                value: CustomTrait(name: "notes", json: "\"" + String(repeating: "n", count: 150) + "\""),
                stamp: Stamp(timeMs: 1_764_000_000_000, offset: 10)))
        let bytes = StateCodec.encode(StoredUser(state: s, dirty: true, settledHash: 0x0102_0304_0506_0708, sourcePartitions: 4))
        let hex = bytes.map { String(format: "%02x", $0) }.joined()
        let before =
            "46530201080180a0bfe9d6661402010103170f616e6e406578616d706c652e636f6d80a0bfe9d66614040f07416e6e20"
            + "4c656580a0bfe9d66614050d0541646d696e80a0bfe9d666140619112b3333203120323320343520363720383980a0bf"
            + "e9d6661407140c4575726f70652f506172697380a0bfe9d6661408251d68747470733a2f2f696d672e6578616d706c65"
            + "2e636f6d2f612e706e6780a0bfe9d66614090680a0abfef9620a068090ccbdaf620b0680d0a6f2d4660c0680daf6ecd6"
            + "660d0e064672616e636580a0bfe9d666140e0b0349444680a0bfe9d666140f0d05506172697380a0bfe9d66614100d05"
            + "373530303180a0bfe9d66614110a02465280a0bfe9d66614120d057375622d3180a0bfe9d66614131c02057375622d31"
            + "80a0bfe9d6661406616363742d3180a0bfe9d666141417020250320080daf6ecd666160250310680a0bfe9d6661415ba"
            + "010204706c616e052270726f2280a0bfe9d66614056e6f746573980122"
        let after =
            "2280a0bfe9d66614160f000000000040454080a0bfe9d6661417010318250380d0a6f2d46680d0a6f2d46680a0bfe9d6"
            + "6680a0bfe9d66680daf6ecd66680daf6ecd666190b090000000000000080bf021a030101021c05014d180000280101290808"
            + "070605040302012a0104"
        #expect(hex == before + String(repeating: "6e", count: 150) + after)
        #expect(try StateCodec.decode(bytes).state.custom.count == 2)
    }

    @Test func emptyStateRoundTrips() throws {
        let stored = StoredUser(state: UserState(), dirty: false, settledHash: 0)
        #expect(try StateCodec.decode(StateCodec.encode(stored)) == stored)
        #expect(StateCodec.encode(stored).count == 3)
    }

    /// A version-1 record as written by the first release, kept byte for byte: every
    /// later version must still read it (version 2 changed the applied position's layout).
    @Test func readsTheVersionOneFixture() throws {
        let fixture: [UInt8] = [
            0x46, 0x53, 0x01,  // magic, version 1
            0x02, 0x01, 0x01,  // sawUserId
            0x03, 0x08, 0x05, 0x61, 0x40, 0x78, 0x2E, 0x69, 0x02, 0x0E,  // email "a@x.i" at time 1, offset 7
            0x0B, 0x02, 0xD0, 0x0F,  // firstVisit = 1000
            0x0C, 0x02, 0xA0, 0x1F,  // lastSeen = 2000
            0x17, 0x01, 0x02,  // visits = 2
            0x1B, 0x03, 0x05, 0x0E, 0x00,  // applied: source 5, offset 7
            0x28, 0x01, 0x01,  // dirty
        ]
        let u = try StateCodec.decode(fixture)
        #expect(u.state.sawUserId)
        #expect(u.state.email?.value == "a@x.i")
        #expect(u.state.firstVisitMs == 1000)
        #expect(u.state.lastSeenMs == 2000)
        #expect(u.state.visits == 2)
        // Version 1 skipped every call of the message at its offset: all of them count
        // as applied (call 0 would fold a replayed envelope's later calls again).
        #expect(u.state.appliedPositions == [AppliedPosition(source: 5, offset: 7, call: .max, kafkaSeconds: 0)])
        #expect(u.state.hasApplied(source: 5, offset: 7, call: 3))
        #expect(!u.state.hasApplied(source: 5, offset: 8, call: 0))
        // Read as version 2 writes it: the position now per source, with its call.
        #expect(try StateCodec.decode(StateCodec.encode(u)) == u)
        #expect(u.dirty)
        #expect(u.sourcePartitions == 0)  // absent: the default
    }

    /// Records crafted to hit each arithmetic the decoder does on what it reads: lengths
    /// past `Int.max`, a length that overflows the position, a product environment of
    /// `Int64.min`, string lengths past `Int.max`. Each must be an error, not a trap.
    @Test func craftedRecordsAreErrorsNotTraps() {
        let huge: [UInt8] = Array(repeating: 0xFF, count: 9) + [0x01]  // 2^64 - 1
        let intMax: [UInt8] = Array(repeating: 0xFF, count: 8) + [0x7F]  // Int.max
        let crafted: [[UInt8]] = [
            [0x46, 0x53, 0x01, 0x03] + huge,  // field length 2^64 - 1
            [0x46, 0x53, 0x01, 0x03] + intMax,  // position + Int.max
            [0x46, 0x53, 0x01, 0x03, 0x0C] + huge + [0x00, 0x00],  // email: string length 2^64 - 1
            [0x46, 0x53, 0x01, 0x03, 0x0A] + intMax + [0x00],  // email: position + Int.max
            [0x46, 0x53, 0x01, 0x14, 0x0F, 0x01, 0x01, 0x61] + huge + [0x00, 0x00],  // product environment Int64.min
            [0x46, 0x53, 0x01, 0x16, 0x0A] + Array(repeating: 0xFF, count: 8) + [0x00, 0x00],  // pqlTrait NaN
        ]
        for b in crafted {
            #expect(throws: StateCodec.DecodeError.self, "\(b)") { try StateCodec.decode(b) }
        }
    }

    /// Text is checked as UTF-8 where it is read (the decoder packs text fields from the
    /// record's bytes, without a `String` that would have checked them): a text field, a
    /// subscription id and a custom trait's name with bytes that are not UTF-8 (a lone
    /// continuation byte, an overlong form, a surrogate, a cut sequence) are errors.
    @Test func textThatIsNotUTF8IsAnError() {
        let bad: [[UInt8]] = [[0x80], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xE2, 0x82], [0x61, 0xFF]]
        for b in bad {
            let n = UInt8(b.count)
            let records: [[UInt8]] = [
                [0x46, 0x53, 0x02, 0x03, 3 + n, n] + b + [0x00, 0x00],  // email
                [0x46, 0x53, 0x02, 0x0F, 3 + n, n] + b + [0x00, 0x00],  // city
                [0x46, 0x53, 0x02, 0x13, 4 + n, 0x01, n] + b + [0x00, 0x00],  // a subscription
                [0x46, 0x53, 0x02, 0x15, 6 + n, 0x01, n] + b + [0x01, 0x31, 0x00, 0x00],  // a custom trait's name
            ]
            for r in records {
                #expect(throws: StateCodec.DecodeError.badValue, "\(r)") { try StateCodec.decode(r) }
            }
        }
        // The same records with UTF-8 decode, with the text where it was.
        let ok: [UInt8] = Array("Zoë 😀".utf8)
        let n = UInt8(ok.count)
        let u = try? StateCodec.decode([0x46, 0x53, 0x02, 0x03, 3 + n, n] + ok + [0x04, 0x02, 0x0F, 3 + n, n] + ok + [0x00, 0x00])
        #expect(u?.state.text.get(.email) == Latest(value: "Zoë 😀", stamp: Stamp(timeMs: 2, offset: 1)))
        #expect(u?.state.text.get(.city) == Latest(value: "Zoë 😀", stamp: Stamp(timeMs: 0, offset: 0)))
    }

    /// A text value over its field's stored limit (written before values were capped) is
    /// cut where a fold would cut it, at the start of the character the limit falls in:
    /// records built by hand (the encoder never writes one), with characters of two,
    /// three and four bytes across the limit.
    @Test func aStoredTextOverItsLimitIsCutAtACharacter() throws {
        func varint(_ n: Int) -> [UInt8] {
            var n = n
            var out: [UInt8] = []
            while n >= 0x80 {
                out.append(UInt8(n & 0x7F) | 0x80)
                n >>= 7
            }
            return out + [UInt8(n)]
        }
        let tags: [TextFields.Field: UInt8] = [
            .email: 3, .name: 4, .role: 5, .phone: 6, .timezone: 7, .image: 8, .country: 13,
            .region: 14, .city: 15, .postalCode: 16, .countryCode: 17, .lastSubscription: 18,
        ]
        for (field, tag) in tags {
            let limit = field.storedLimitBytes
            for character in ["é", "€", "😀"] {
                for lead in 0..<4 {  // every alignment of the characters against the limit
                    let value = String(repeating: "a", count: lead) + String(repeating: character, count: limit)
                    let text = varint(value.utf8.count) + Array(value.utf8) + [0x04, 0x02]  // stamp (2, 1)
                    let record: [UInt8] = [0x46, 0x53, StateCodec.version, tag] + varint(text.count) + text
                    let u = try StateCodec.decode(record)
                    let kept = try #require(u.state.text.get(field), "\(field)")
                    #expect(kept.value == TextFields.prefix(value, bytes: limit), "\(field) \(character) \(lead)")
                    #expect(kept.value.utf8.count <= limit && kept.value.utf8.count > limit - 4, "\(field)")
                    #expect(kept.stamp == Stamp(timeMs: 2, offset: 1))
                }
            }
        }
    }

    /// Any bytes: random ones, and records built from known tags with random lengths and
    /// extreme varints. Decoding either throws or returns; it never traps.
    @Test func decodingArbitraryBytesNeverTraps() async {
        var rng = SystemRandomNumberGenerator()
        let extremes: [[UInt8]] = [
            [0x00], [0x01], [0x7F], [0x80, 0x01], Array(repeating: 0xFF, count: 9) + [0x01],
            Array(repeating: 0xFF, count: 8) + [0x7F], Array(repeating: 0x80, count: 9) + [0x01], [0xFE, 0xFF, 0xFF, 0xFF, 0x0F],
        ]
        for round in 0..<20_000 {
            if round % 1_000 == 0 { await Task.yield() }  // CPU-bound: let the pool run other tests
            var b: [UInt8] = [0x46, 0x53, UInt8.random(in: 1...StateCodec.version, using: &rng)]
            if round % 4 == 0 {
                for _ in 0..<Int.random(in: 0..<64, using: &rng) { b.append(UInt8.random(in: 0...255, using: &rng)) }
            } else {
                for _ in 0..<Int.random(in: 1..<8, using: &rng) {
                    b.append(UInt8.random(in: 1...44, using: &rng))
                    var body: [UInt8] = []
                    for _ in 0..<Int.random(in: 0..<6, using: &rng) {
                        body += Bool.random(using: &rng) ? extremes.randomElement(using: &rng)! : [UInt8.random(in: 0...255, using: &rng)]
                    }
                    b += Bool.random(using: &rng) ? [UInt8(body.count)] : extremes.randomElement(using: &rng)!
                    b += body
                }
            }
            _ = try? StateCodec.decode(b)
        }
    }

    /// A record of a format version this build does not know is a distinct error naming
    /// that version (a newer writer), so that a restore can stop on it instead of
    /// skipping it.
    @Test func aNewerFormatVersionIsReportedAsSuch() {
        let newer = StateCodec.version &+ 1
        var bytes = StateCodec.encode(StoredUser(state: richState(), dirty: false, settledHash: 1))
        bytes[2] = newer
        do {
            _ = try StateCodec.decode(bytes)
            Issue.record("a newer version was decoded")
        } catch {
            #expect("\(error)" == "newerVersion(\(newer))")
        }
        #expect(throws: StateCodec.DecodeError.unsupportedVersion(0)) { try StateCodec.decode([0x46, 0x53, 0x00]) }
    }

    @Test func skipsFieldsItDoesNotKnow() throws {
        var bytes = StateCodec.encode(StoredUser(state: richState(), dirty: false, settledHash: 1))
        bytes += [0xC8, 0x03, 0xAA, 0xBB, 0xCC]  // tag 200, three bytes: a future field
        let u = try StateCodec.decode(bytes)
        #expect(u.state == richState())
    }

    @Test func rejectsGarbageWithoutTrapping() {
        #expect(throws: StateCodec.DecodeError.badMagic) { try StateCodec.decode([0x00, 0x01, 0x02]) }
        #expect(throws: StateCodec.DecodeError.newerVersion(9)) { try StateCodec.decode([0x46, 0x53, 0x09]) }
        #expect(throws: StateCodec.DecodeError.truncated) { try StateCodec.decode([0x46, 0x53, 0x01, 0x03, 0x50, 0x01]) }
        var rng = SystemRandomNumberGenerator()
        let good = StateCodec.encode(StoredUser(state: richState(), dirty: true, settledHash: 9))
        for _ in 0..<2000 {
            var b = good
            for _ in 0..<3 { b[Int.random(in: 3..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            _ = try? StateCodec.decode(b)  // must not trap
            _ = try? StateCodec.decode(Array(b.prefix(Int.random(in: 0..<b.count, using: &rng))))
        }
    }

    /// A merging task's marker keeps the first hops it took and sent (docs/identity.md, "A
    /// hop that stays in the process"), and says it knows them even when it sent none; a
    /// marker without them (an older build's) does not.
    @Test func aMarkerKeepsTheFirstHopsTakenAndSent() throws {
        let taken = [HopMark(task: 0, offset: 12, call: 3), HopMark(task: 15, offset: .max, call: .max)]
        let sent = [HopMark(task: 7, offset: 0, call: 0)]
        let txn = StoredUser.MarkerTxn(epoch: 5, seq: 2)
        let m = try StateCodec.decode(
            StateCodec.encodeMarker(committedOffset: 40, sourcePartitions: 16, txn: txn, hopsTaken: taken, hopsSent: sent))
        #expect(m.markerOffset == 40 && m.markerTxn == txn && m.hopsTaken == taken && m.hopsSent == sent && m.hopsKnown)
        let none = try StateCodec.decode(StateCodec.encodeMarker(committedOffset: 40, sourcePartitions: 16, txn: txn))
        #expect(none.hopsTaken.isEmpty && none.hopsSent.isEmpty && none.hopsKnown)
        let old = try StateCodec.decode(StateCodec.encodeMarker(committedOffset: 40, sourcePartitions: 16))
        #expect(!old.hopsKnown)
        // A negative offset is no position.
        var bad = StoredUser(state: UserState(), dirty: false, settledHash: 0, markerOffset: 1)
        bad.hopsTaken = [HopMark(task: 1, offset: -1, call: 0)]
        #expect(throws: StateCodec.DecodeError.badValue) { try StateCodec.decode(StateCodec.encode(bad)) }
    }
}
