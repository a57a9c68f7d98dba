import Delivery
import Events
import Folding

/// Counters for metrics and the demo's summary.
public struct EngineStats: Sendable {
    public var folded = 0
    /// Calls forwarded to the task that owns their identity, and identities whose state was
    /// merged into the user they were linked to (identity resolution).
    public var forwarded = 0
    /// Calls handed to another task this instance holds, in the process (their first hop
    /// not written to the repartition topic).
    public var handedInProcess = 0
    public var identitiesMerged = 0
    /// Links whose identity's state was not moved: it is homed on another task's
    /// partitions (written before `identity.merge` was turned on; docs/identity.md), or
    /// its merge record would be over the broker's message limit.
    public var handOversRefused = 0
    /// Routed records held for their transaction's notice (a gauge), and those dropped
    /// because their transaction did not commit (``TransactionGate``).
    public var heldRoutedRecords = 0
    public var droppedRoutedRecords = 0
    /// Repartition partitions read again because their records were let go over the cap.
    public var routedRereads = 0
    /// The graph's decisions, summed over the tasks this instance holds and has held.
    public var identity = IdentityCounters()
    /// The graphs held now: users with at least one identity linked into them, the
    /// identities linked into them, and the most linked into one (gauges).
    public var usersWithLinks = 0
    public var linkedIdentities = 0
    public var mostLinked = 0
    /// Bodies of anonymous identities not sent (`identity.send_anonymous: false`).
    public var anonymousHeldBack = 0
    public var ignored = 0
    public var invalid: [InvalidReason: Int] = [:]
    public var implausibleTime = 0
    /// Trait dates (`leadDate`, `signUpDate`, `createdAt`) ignored as implausible.
    public var implausibleTraitDates = 0
    /// Events at or below a user's applied offset: replays, skipped.
    public var skippedReplays = 0
    /// Source partitions detected as recreated (offsets restarted under the same name):
    /// events at or below a user's applied offset with a newer Kafka time, folded.
    public var recreatedSources = 0
    /// Calls that looked newer than users' applied positions by Kafka time while the log
    /// was longer than those positions: skipped as replays, and said.
    public var suspectedRecreations = 0
    /// Applied positions a user forgot because its events came from more than
    /// ``UserState/maxAppliedSources`` source partitions.
    public var appliedSourcesForgotten = 0
    /// Restored records not loaded because the user in memory had applied as much or more.
    public var restoreKeptNewer = 0
    /// Durable mode: checkpoints that wrote and committed (or had nothing to), users
    /// written by them, and checkpoints that failed (nothing committed, retried).
    public var checkpoints = 0
    public var checkpointRecords = 0
    public var checkpointFailures = 0
    /// From a checkpoint's snapshot to Kafka's acknowledgement of its writes and commit.
    public var checkpointDuration = Histogram()
    public var restoredUsers = 0
    public var restoreFailures = 0
    /// Restores refused because the changelog holds nothing for a source partition whose
    /// offsets are committed (the changelog was deleted or recreated; see ``ChangelogMarker``).
    public var changelogMissing = 0
    /// Resync control records applied (one per partition of a request), users queued to
    /// be sent again by them, and partitions whose all-users resync is not through yet.
    /// Durable mode: user states left out of a checkpoint because their record exceeds
    /// what the changelog accepts (dead-lettered as `state-too-large`).
    public var oversizedStates = 0
    public var resyncRequests = 0
    public var resyncUsers = 0
    public var resyncPendingPartitions = 0
    /// Users still waiting for Foldspace when the latest revocation let them go: their
    /// offsets stay uncommitted (memory) or their state carries them (durable), so the
    /// next owner sends them.
    public var unsettledAtLastRevocation = 0
    /// Answers from Foldspace by status code; failures without one (timeout,
    /// connection, tls) in `requestErrors` by kind.
    public var requests: [String: Int] = [:]
    public var requestErrors: [String: Int] = [:]
    public var retries: [String: Int] = [:]
    public var deadLetters: [DeadLetterKind: Int] = [:]
    public var suppressed = 0
    public var adjustments = Adjustments()
    public var requestDuration = Histogram()
    /// How long after it was due (its debounce, max wait or retry time passed) each
    /// request was handed to the HTTP client: the daemon's own scheduling delay.
    public var sendLateness = Histogram(bounds: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])
    public var users = 0
    /// Users by the type their body would carry (ANONYMOUS, LEAD, USER), as of the last
    /// complete sweep of the user table.
    public var usersByType: [UserType: Int] = [:]
    /// Users dropped (and tombstoned) by `inactive_user_ttl`.
    public var expiredUsers = 0
    public var dirtyUsers = 0
    public var oldestDirtyMs: Int64 = 0
    public var breakerOpen = false
    /// The status that opened the breaker (0 while it is closed).
    public var breakerStatus = 0
    public var rateLimit = 0.0
    public var ready = false

    public var invalidTotal: Int { invalid.values.reduce(0, +) }
    /// Every request sent: answered (any status) or not.
    public var requestTotal: Int { requests.values.reduce(0, +) + requestErrors.values.reduce(0, +) }
}

/// Identity resolution's counters (docs/identity.md): what the graphs of every task decided.
public struct IdentityCounters: Sendable, Equatable {
    /// Identities linked to a user.
    public var links: UInt64 = 0
    /// Links refused: the identity was linked to another user first (a shared device).
    public var conflicts: UInt64 = 0
    /// Second ids not linked: their user had `identity.max_linked` already.
    public var capReached: UInt64 = 0
    /// Links refused as a cycle (two aliases racing in opposite directions).
    public var cycles: UInt64 = 0
    /// Calls, link requests or merge records stopped after 16 forwards.
    public var hopLimitReached: UInt64 = 0

    public init() {}

    mutating func add(_ r: IdentityRouter) {
        let c = r.graph.counts
        links &+= c.links
        conflicts &+= c.conflicts
        capReached &+= c.capReached
        cycles &+= c.cycles
        hopLimitReached &+= r.hopLimitReached
    }
}
