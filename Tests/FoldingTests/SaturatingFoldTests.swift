import Events
import Testing

@testable import Folding

/// A state that already holds extreme times or counts (written before times were
/// checked, or crafted into the changelog) must not trap the fold.
@Suite struct SaturatingFoldTests {
    let folder = Folder(config: FoldConfig())

    func page() -> SegmentEvent { SegmentEvent(type: .page, identity: "u", hasUserId: true) }

    @Test func timesAtTheEndsOfTheRangeDoNotTrap() {
        var s = UserState()
        // Near Int64.max: the next event's `end + gap` overflowed.
        folder.fold(page(), timeMs: .max - 1, offset: 0, into: &s)
        folder.fold(page(), timeMs: .max - 1, offset: 1, into: &s)
        folder.fold(page(), timeMs: .max, offset: 2, into: &s)
        // A late event far before them, then near Int64.min: `start - gap` and the
        // day of a negative time overflowed.
        folder.fold(page(), timeMs: 1_764_000_000_000, offset: 3, into: &s)
        folder.fold(page(), timeMs: .min + 1, offset: 4, into: &s)
        folder.fold(page(), timeMs: .min, offset: 5, into: &s)
        #expect(s.visits == 3)
        #expect(s.firstVisitMs == .min)
        #expect(s.lastSeenMs == .max)
        // The projection of such a state does not trap either.
        var adjustments = Adjustments()
        _ = Projector(config: FoldConfig()).body(identifyId: "u", state: s, nowMs: 1_764_000_000_000, adjustments: &adjustments)
    }

    @Test func visitsStayAtTheirMaximum() {
        var s = UserState()
        folder.fold(page(), timeMs: 1_000_000_000_000, offset: 0, into: &s)
        s.visits = .max
        folder.fold(page(), timeMs: 1_100_000_000_000, offset: 1, into: &s)  // a new visit
        #expect(s.visits == .max)
    }

    @Test func mergingSpansOfAStateWithNoVisitsCountedStaysAtZero() {
        var s = UserState()
        let gap: Int64 = 30 * 60_000
        folder.fold(page(), timeMs: 1_000_000_000_000, offset: 0, into: &s)
        folder.fold(page(), timeMs: 1_000_000_000_000 + 19 * gap / 10, offset: 1, into: &s)
        s.visits = 0  // crafted: spans without visits
        // A late event bridging both spans merges them: one visit less, not below zero.
        folder.fold(page(), timeMs: 1_000_000_000_000 + 95 * gap / 100, offset: 2, into: &s)
        #expect(s.visits == 0)
    }
}
