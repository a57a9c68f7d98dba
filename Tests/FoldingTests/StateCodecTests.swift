import Events
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

    @Test func emptyStateRoundTrips() throws {
        let stored = StoredUser(state: UserState(), dirty: false, settledHash: 0)
        #expect(try StateCodec.decode(StateCodec.encode(stored)) == stored)
        #expect(StateCodec.encode(stored).count == 3)
    }

    /// A version-1 record as written by this release, kept byte for byte: every later
    /// version must still read it.
    @Test func readsTheVersionOneFixture() throws {
        let fixture: [UInt8] = [
            0x46, 0x53, 0x01,                                     // magic, version 1
            0x02, 0x01, 0x01,                                     // sawUserId
            0x03, 0x08, 0x05, 0x61, 0x40, 0x78, 0x2E, 0x69, 0x02, 0x0E, // email "a@x.i" at time 1, offset 7
            0x0B, 0x02, 0xD0, 0x0F,                               // firstVisit = 1000
            0x0C, 0x02, 0xA0, 0x1F,                               // lastSeen = 2000
            0x17, 0x01, 0x02,                                     // visits = 2
            0x1B, 0x03, 0x05, 0x0E, 0x00,                         // applied: source 5, offset 7
            0x28, 0x01, 0x01,                                     // dirty
        ]
        let u = try StateCodec.decode(fixture)
        #expect(u.state.sawUserId)
        #expect(u.state.email?.value == "a@x.i")
        #expect(u.state.firstVisitMs == 1000)
        #expect(u.state.lastSeenMs == 2000)
        #expect(u.state.visits == 2)
        #expect(u.state.appliedSource == 5 && u.state.appliedOffset == 7)
        #expect(u.dirty)
        #expect(u.sourcePartitions == 0) // absent: the default
    }

    @Test func skipsFieldsItDoesNotKnow() throws {
        var bytes = StateCodec.encode(StoredUser(state: richState(), dirty: false, settledHash: 1))
        bytes += [0xC8, 0x03, 0xAA, 0xBB, 0xCC] // tag 200, three bytes: a future field
        let u = try StateCodec.decode(bytes)
        #expect(u.state == richState())
    }

    @Test func rejectsGarbageWithoutTrapping() {
        #expect(throws: StateCodec.DecodeError.badMagic) { try StateCodec.decode([0x00, 0x01, 0x02]) }
        #expect(throws: StateCodec.DecodeError.unsupportedVersion(9)) { try StateCodec.decode([0x46, 0x53, 0x09]) }
        #expect(throws: StateCodec.DecodeError.truncated) { try StateCodec.decode([0x46, 0x53, 0x01, 0x03, 0x50, 0x01]) }
        var rng = SystemRandomNumberGenerator()
        let good = StateCodec.encode(StoredUser(state: richState(), dirty: true, settledHash: 9))
        for _ in 0..<2000 {
            var b = good
            for _ in 0..<3 { b[Int.random(in: 3..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            _ = try? StateCodec.decode(b) // must not trap
            _ = try? StateCodec.decode(Array(b.prefix(Int.random(in: 0..<b.count, using: &rng))))
        }
    }
}
