import Events
import Testing

@testable import Folding

/// The applied position at the fold: per source partition, per call of a message, bounded.
@Suite struct AppliedPositionFoldTests {
    let folder: Folder = {
        var c = FoldConfig()
        c.keyEvents = [.init(name: "Paid", cap: 1_000)]
        return Folder(config: c)
    }()

    func paid() -> SegmentEvent {
        var e = SegmentEvent(type: .track, identity: "u", hasUserId: true)
        e.eventName = "Paid"
        return e
    }

    func count(_ s: UserState) -> UInt32 { s.keyEventCounts.first?.count ?? 0 }

    @Test func callsOfOneMessageAreEachFoldedOnceAndReplaysOfThemSkipped() {
        var s = UserState()
        for call in 0..<3 { folder.fold(paid(), timeMs: 1_000 + Int64(call), offset: 7, call: UInt32(call), into: &s) }
        #expect(count(s) == 3)
        for call in 0..<3 { folder.fold(paid(), timeMs: 1_000 + Int64(call), offset: 7, call: UInt32(call), into: &s) }
        folder.fold(paid(), timeMs: 999, offset: 6, call: 9, into: &s)  // an earlier message, whatever its call
        #expect(count(s) == 3)
        folder.fold(paid(), timeMs: 1_010, offset: 8, call: 0, into: &s)
        #expect(count(s) == 4)
        #expect(s.appliedPositions == [AppliedPosition(source: 0, offset: 8, call: 0)])
    }

    @Test func eachSourcePartitionKeepsItsOwnPosition() {
        var s = UserState()
        folder.fold(paid(), timeMs: 1, offset: 5, source: 1, into: &s)
        folder.fold(paid(), timeMs: 2, offset: 9, source: 2, into: &s)
        folder.fold(paid(), timeMs: 3, offset: 6, source: 1, into: &s)
        // Replays from either partition.
        folder.fold(paid(), timeMs: 2, offset: 9, source: 2, into: &s)
        folder.fold(paid(), timeMs: 1, offset: 5, source: 1, into: &s)
        #expect(count(s) == 3)
        #expect(s.appliedPositions.map(\.source) == [1, 2])  // the latest source first
        #expect(s.appliedPosition(source: 2)?.offset == 9)
    }

    @Test func positionsAreBoundedKeepingTheMostRecentSources() {
        var s = UserState()
        let n = UserState.maxAppliedSources + 3
        for i in 0..<n {
            #expect(s.wouldForgetASource(recording: UInt32(i)) == (i >= UserState.maxAppliedSources))
            folder.fold(paid(), timeMs: Int64(i), offset: 100, source: UInt32(i), into: &s)
        }
        #expect(s.appliedPositions.count == UserState.maxAppliedSources)
        #expect(s.appliedPositions.map(\.source) == (0..<n).reversed().prefix(UserState.maxAppliedSources).map(UInt32.init))
        // A kept source's replay is skipped; a forgotten one's is folded again (documented).
        folder.fold(paid(), timeMs: 0, offset: 100, source: UInt32(n - 1), into: &s)
        #expect(count(s) == UInt32(n))
        folder.fold(paid(), timeMs: 0, offset: 100, source: 0, into: &s)
        #expect(count(s) == UInt32(n) + 1)
    }

    @Test func manyPositionsSurviveTheCodec() throws {
        var s = UserState()
        for i in 0..<4 {
            folder.fold(
                paid(), timeMs: Int64(i), offset: Int64(10 * i), source: UInt32(i), call: UInt32(i), kafkaMs: 1_000 + Int64(i), into: &s)
        }
        let back = try StateCodec.decode(StateCodec.encode(StoredUser(state: s, dirty: false, settledHash: 0)))
        #expect(back.state == s)
        #expect(back.state.appliedPositions.first == AppliedPosition(source: 3, offset: 30, call: 3, kafkaMs: 1_003))
        #expect(back.state.appliedPositions.count == 4)
    }

    @Test func coversComparesEverySource() {
        var a = UserState()
        var b = UserState()
        a.recordApplied(AppliedPosition(source: 1, offset: 5))
        a.recordApplied(AppliedPosition(source: 2, offset: 3, call: 1))
        b.recordApplied(AppliedPosition(source: 2, offset: 3))
        #expect(a.covers(b))
        #expect(!b.covers(a))
        b.recordApplied(AppliedPosition(source: 1, offset: 6))
        #expect(!a.covers(b) && !b.covers(a))  // each has applied something the other has not
        #expect(UserState().covers(UserState()) && a.covers(UserState()))
    }
}
