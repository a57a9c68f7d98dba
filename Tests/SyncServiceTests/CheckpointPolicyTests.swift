import Testing

@testable import SyncService

/// When the checkpoint loop checkpoints, writes notices alone, or waits
/// (``Checkpoints/decide(_:intervalMs:merging:)``).
@Suite struct CheckpointPolicyTests {
    typealias C = Checkpoints
    static let interval: Int64 = 5_000

    static func decide(
        since: Int64, notices: Int64 = 10_000, quiet: Int64 = 0, waiting: Int = 0, users: Int = 0, owed: Int = 0,
        failed: Bool = false, heldBack: Bool = false, merging: Bool = true
    ) -> C.Action {
        C.decide(
            .init(
                sinceMs: since, sinceNoticesMs: notices, quietMs: quiet, waiting: waiting, users: users, noticesOwed: owed,
                failed: failed, heldBack: heldBack),
            intervalMs: interval, merging: merging)
    }

    @Test func withoutIdentityResolutionOnlyTheInterval() {
        #expect(Self.decide(since: 4_999, waiting: 50_000, owed: 3, merging: false) == .wait)
        #expect(Self.decide(since: 5_000, merging: false) == .checkpoint)
    }

    /// A busy fold (calls read within the last half second): routed records that a
    /// checkpoint would mostly write (or one of fewer than 10,000 users) go when 10,000
    /// wait, or after a second; a few beside many busy users wait for the interval (rewriting those users every second halved the fold),
    /// and their notices go alone after a second.
    @Test func aBusyFoldCheckpointsForRoutedRecordsOnlyWhenTheyAreMostOfIt() {
        #expect(Self.decide(since: 300, waiting: 10_000, users: 9_000) == .checkpoint)
        #expect(Self.decide(since: 300, waiting: 10_000, users: 12_000) == .wait)
        #expect(Self.decide(since: 300, waiting: 9_999, users: 9_000) == .wait)
        #expect(Self.decide(since: 1_000, waiting: 300, users: 200) == .checkpoint)
        #expect(Self.decide(since: 1_000, waiting: 300, users: 9_000) == .checkpoint)
        #expect(Self.decide(since: 999, waiting: 300, users: 200) == .wait)
        #expect(Self.decide(since: 4_000, waiting: 300, users: 50_000) == .wait)
        #expect(Self.decide(since: 4_000, notices: 1_000, waiting: 300, users: 50_000, owed: 2) == .notices)
        #expect(Self.decide(since: 4_000, notices: 999, waiting: 300, users: 50_000, owed: 2) == .wait)
        #expect(Self.decide(since: 999, notices: 5_000, owed: 2) == .wait)
        #expect(Self.decide(since: 5_000, waiting: 300, users: 50_000) == .checkpoint)
    }

    /// An idle fold (nothing read for half a second) checkpoints whatever waits (routed
    /// records, or notices owed, which the engine counts among them) every 200 ms:
    /// rewriting its users slows nothing, and each hop of a routed call would otherwise
    /// wait a second for the checkpoint and another for the notice. Before, an idle fold
    /// waited a second for both. Not after a checkpoint that held tasks back for their
    /// dead letters (it would try them again five times a second).
    @Test func anIdleFoldWritesWhatWaitsWithinAFifthOfASecond() {
        #expect(Self.decide(since: 200, quiet: 500, waiting: 1, users: 90_000) == .checkpoint)
        #expect(Self.decide(since: 200, quiet: 500, waiting: 2, users: 90_000, owed: 2) == .checkpoint)
        #expect(Self.decide(since: 199, quiet: 500, waiting: 1, users: 90_000) == .wait)
        #expect(Self.decide(since: 200, quiet: 499, waiting: 1, users: 90_000) == .wait)
        #expect(Self.decide(since: 200, quiet: 500) == .wait)
        #expect(Self.decide(since: 200, quiet: 500, waiting: 2, users: 90_000, owed: 2, heldBack: true) == .wait)
        #expect(Self.decide(since: 1_000, quiet: 500, waiting: 2, users: 90_000, owed: 2, heldBack: true) == .notices)
    }

    /// After a failed checkpoint only the interval: records that cannot be written yet
    /// would otherwise start one every 200 ms.
    @Test func afterAFailureOnlyTheInterval() {
        #expect(Self.decide(since: 4_000, quiet: 5_000, waiting: 50_000, owed: 3, failed: true) == .wait)
        #expect(Self.decide(since: 5_000, failed: true) == .checkpoint)
    }
}
