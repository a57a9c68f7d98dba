import Delivery
import Events
import Folding

/// The engine's tunables; ``SyncConfiguration`` fills them from flags, environment and
/// file.
public struct EngineOptions: Sendable {
    public var debounceMs: Int64 = 5_000
    public var maxWaitMs: Int64 = 60_000
    public var maxDirtyUsers = 1_000_000
    public var maxInFlight = 16
    public var requestsPerSecond = 20.0
    public var burst = 40.0
    public var onUserNotFound = UserNotFoundPolicy.deadLetter
    /// How long a revocation or shutdown waits for Foldspace before giving up (the
    /// unsettled offsets then stay uncommitted, so nothing is lost).
    public var drainTimeoutMs: Int64 = 30_000
    /// The first wait before a failed restore is tried again (doubling to 30 s).
    public var restoreRetryMs: Int64 = 1_000
    /// While Foldspace refuses the key, one probe request goes out this often.
    public var breakerProbeIntervalMs: Int64 = 30_000
    /// Foldspace's base URL, for the breaker's log lines (the engine sends nothing itself).
    public var foldspaceURL = ""
    /// After a request without an answer is followed by an acknowledgement, how long until
    /// the newest state is sent once more (the pipeline sets twice the request timeout).
    public var unknownOutcomeResendMs: Int64 = 60_000
    /// Dead letters queued and not yet written, in bytes, above which consuming pauses
    /// (it resumes below 80 %).
    public var maxDeadLetterBacklogBytes = 64 << 20
    /// How long a durable checkpoint waits for the dead letters its offsets cover before
    /// it leaves the offsets to a later checkpoint (the state is written either way).
    public var deadLetterWaitMs: Int64 = 5_000
    /// Users whose last event is this much older than their partition's latest event
    /// (never past the wall clock) are dropped from memory and, in durable mode,
    /// tombstoned in the changelog; 0: never.
    public var inactiveUserTTLMs: Int64 = 0
    public var decoder = DecoderOptions()
    /// Threads that decode messages, the poll thread included (it folds, in order, and
    /// decodes the chunks no helper has taken yet); capped at the cores available.
    public var decodeThreads = 2
    /// Visits, key events, the PQL model, custom attributes.
    public var fold = FoldConfig()
    /// Durable mode: state is checkpointed to a changelog and offsets are committed
    /// once the state reflecting them is written (not when Foldspace acknowledges).
    public var durable = false
    /// Identity resolution (docs/identity.md): the `identity.*` keys.
    public var identity = IdentityOptions()

    /// The `identity.*` keys.
    public struct IdentityOptions: Sendable, Equatable {
        /// Merge the identities a call links (docs/identity.md); false: every identity is
        /// its own user.
        public var merge = false
        /// The most identities linked into one user (at most ``IdentityCodec/maxLinked``).
        public var maxLinked = IdentityGraph.defaultMaxLinked
        /// Send an identity that never saw a userId (as ANONYMOUS) before it is linked.
        public var sendAnonymous = true
        /// How `owner(id)` is computed: as the collectors' producers place keys.
        public var partitioner = KeyPartitioner.murmur2
        /// `<group>-repartition`: its messages are routed records, not Segment calls.
        public var repartitionTopic: String?
        /// Partitions of the source (and of every task's other topics).
        public var partitions: Int32 = 1
        /// `<group>-identities`: the graph's records.
        public var identitiesTopic = ""
        /// The most bytes of routed records held for their transactions' notices
        /// (``TransactionGate``); past it, a waiting partition is read again later.
        public var heldBytesCap = 64 << 20
        /// Hand a call to a task this instance holds in the process, not through
        /// `<group>-repartition` (docs/identity.md, "A hop that stays in the process");
        /// tests turn it off to route every call through Kafka as with two instances.
        public var inProcessHops = true

        public init() {}
    }

    public init() {}
}
