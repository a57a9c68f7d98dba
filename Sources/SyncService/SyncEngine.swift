import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

/// Clocks, injectable for tests: a monotonic one for timers and the wall clock for
/// event-time plausibility and `Retry-After` dates.
public struct EngineClock: Sendable {
    public var monotonicMs: @Sendable () -> Int64
    public var epochMs: @Sendable () -> Int64

    public init(monotonicMs: @escaping @Sendable () -> Int64, epochMs: @escaping @Sendable () -> Int64) {
        self.monotonicMs = monotonicMs
        self.epochMs = epochMs
    }

    public static let system = EngineClock(
        monotonicMs: { Int64(DispatchTime.now().uptimeNanoseconds / 1_000_000) },
        epochMs: { Int64(Date().timeIntervalSince1970 * 1000) })
}

/// What to do when Foldspace answers 404 for a user.
public enum UserNotFoundPolicy: String, Sendable, CaseIterable {
    case deadLetter = "dead-letter"
    case retry
    case drop
}

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

    public init() {}
}

/// Where dead letters go: a Kafka topic, or (with none configured) a count and a log
/// line without PII.
public protocol DeadLetterSink: Sendable {
    /// Queues a dead letter without blocking; `delivered` is called once it is written
    /// (at once by a sink that writes nothing). Never called with the engine's lock held.
    func deadLetter(kind: String, key: [UInt8]?, value: [UInt8], headers: [(String, String)],
                    delivered: @escaping @Sendable () -> Void)
    /// Bytes of dead letters queued and not yet written: consuming pauses above
    /// ``EngineOptions/maxDeadLetterBacklogBytes``.
    var backlogBytes: Int { get }
}

extension DeadLetterSink {
    public func deadLetter(kind: String, key: [UInt8]?, value: [UInt8], headers: [(String, String)]) {
        deadLetter(kind: kind, key: key, value: value, headers: headers, delivered: {})
    }
    public var backlogBytes: Int { 0 }
}

/// Counters for metrics and the demo's summary.
public struct EngineStats: Sendable {
    public var folded = 0
    public var ignored = 0
    public var invalid: [String: Int] = [:]
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
    public var deadLetters: [String: Int] = [:]
    public var suppressed = 0
    public var adjustments = Adjustments()
    public var requestDuration = Histogram()
    /// How long after it was due (its debounce, max wait or retry time passed) each
    /// request was handed to the HTTP client: the daemon's own scheduling delay.
    public var sendLateness = Histogram(bounds: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])
    public var users = 0
    /// Users by the type their body would carry (ANONYMOUS, LEAD, USER), as of the last
    /// complete sweep of the user table.
    public var usersByType: [String: Int] = [:]
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

/// A Prometheus histogram with fixed buckets (seconds).
public struct Histogram: Sendable {
    public static let bounds: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
    public let bounds: [Double]
    /// Cumulative counts per bound, then +Inf.
    public private(set) var counts: [Int]
    public private(set) var sum = 0.0
    public private(set) var count = 0

    public init(bounds: [Double] = Histogram.bounds) {
        self.bounds = bounds
        counts = [Int](repeating: 0, count: bounds.count + 1)
    }

    public mutating func observe(_ v: Double) {
        for (i, b) in bounds.enumerated() where v <= b { counts[i] += 1 }
        counts[bounds.count] += 1
        sum += v
        count += 1
    }

    /// The smallest bound holding at least the fraction `q` of the observations (nil if
    /// none, +infinity if only the overflow bucket does).
    public func quantileBound(_ q: Double) -> Double? {
        guard count > 0 else { return nil }
        let need = Int((Double(count) * q).rounded(.up))
        for (i, b) in bounds.enumerated() where counts[i] >= need { return b }
        return .infinity
    }

    /// The fraction of observations at or below `bound` (which must be one of the bounds).
    public func fraction(atMost bound: Double) -> Double {
        guard count > 0, let i = bounds.firstIndex(of: bound) else { return 0 }
        return Double(counts[i]) / Double(count)
    }
}

/// One request the flusher is to make.
public struct FlushJob: Sendable {
    public var identifyId: String
    public var body: [UInt8]
    public var hash: UInt64
    public var isProbe: Bool
}

/// The heart of the daemon: per-user state, debouncing and offset safety, behind one
/// lock.
///
/// The Kafka poll thread hands over batches (``consume(_:)``), decodes them outside the
/// lock and folds them inside it; the ``Flusher`` takes due users (``takeDue(limit:)``)
/// and reports answers (``complete(_:outcome:)``). Offsets become committable only when
/// every user holding them is settled, and are handed to `storeOffsets`.
public final class SyncEngine: ConsumerHandler, @unchecked Sendable {
    /// Users by identity: an index from identity to a slot of one dense array of entries
    /// (each entry carries its identity). Growing the index then moves 8-byte records
    /// rather than whole entries, and the entries carry none of the index's spare
    /// capacity.
    struct UserTable {
        private var index: IdentityIndex
        /// Free slots hold an empty entry (empty identity; identities are never empty).
        private var entries: ContiguousArray<UserEntry> = []
        private var free: [Int32] = []

        init(seed: IdentityHash) { index = IdentityIndex(seed: seed) }

        var count: Int { index.count }

        /// The hash the index files `key` under (computed once per event, before the
        /// lookups of a chunk).
        func hash(_ key: String) -> UInt64 { index.seed.hash(key) }

        private func find(_ key: String, hash h: UInt64) -> Int32? {
            entries.withUnsafeBufferPointer { e in index.find(h) { e[Int($0)].identity == key } }
        }

        subscript(key: String) -> UserEntry? {
            get { find(key, hash: hash(key)).map { entries[Int($0)] } }
            set {
                guard !key.isEmpty else { return } // no event has an empty identity
                let h = hash(key)
                if var newValue {
                    newValue.identity = key
                    let (i, _) = slot(key, hash: h)
                    entries[i] = newValue
                } else if let i = find(key, hash: h) {
                    let seed = index.seed
                    entries.withUnsafeBufferPointer { e in
                        index.remove(h, slot: i) { seed.hash(e[Int($0)].identity) }
                    }
                    entries[Int(i)] = UserEntry() // releases what the entry held
                    free.append(i)
                }
            }
        }

        /// Makes room for `more` users beyond those held, so that adding them neither
        /// grows the index nor copies the entries.
        mutating func reserve(_ more: Int) {
            let total = entries.count + max(0, more - free.count)
            // At least doubled when it grows (as appending would): assignments arrive in
            // increments, and an exact size would copy the whole table at each.
            if total > entries.capacity { entries.reserveCapacity(max(total, 2 * entries.capacity)) }
            let seed = index.seed
            entries.withUnsafeBufferPointer { e in
                index.reserve(total) { seed.hash(e[Int($0)].identity) }
            }
        }

        /// The slot of `key`, with an empty entry created if there was none.
        mutating func slot(_ key: String) -> (index: Int, isNew: Bool) { slot(key, hash: hash(key)) }

        /// As ``slot(_:)``, with the key's ``hash(_:)`` computed already.
        mutating func slot(_ key: String, hash h: UInt64) -> (index: Int, isNew: Bool) {
            if let i = find(key, hash: h) { return (Int(i), false) }
            let i: Int32
            if let f = free.popLast() {
                i = f
                entries[Int(i)].identity = key
            } else {
                i = Int32(entries.count)
                var e = UserEntry()
                e.identity = key
                entries.append(e)
            }
            let seed = index.seed
            entries.withUnsafeBufferPointer { e in
                index.insert(h, slot: i) { seed.hash(e[Int($0)].identity) }
            }
            return (Int(i), true)
        }

        mutating func modify<R>(_ slot: Int, _ body: (inout UserEntry) -> R) -> R { body(&entries[slot]) }

        /// Mutates `key`'s entry in place, if there is one (no copy out and back).
        mutating func modify<R>(_ key: String, _ body: (inout UserEntry) -> R) -> R? {
            guard let i = find(key, hash: hash(key)) else { return nil }
            return body(&entries[Int(i)])
        }

        // Prefetch hints for a chunk of events, each pass over the whole chunk in one
        // call (a call per event copied the table, retaining its three arrays each time).

        /// Starts loading the index bucket each lookup of `hashes` starts at.
        func prefetchBuckets(_ hashes: some Collection<UInt64>) {
            for h in hashes { index.prefetch(h) }
        }

        /// Starts loading the first line of the entry each of `hashes` most likely leads
        /// to (the first slot under its tag): the identity, which the lookup compares.
        func prefetchEntries(_ hashes: some Collection<UInt64>) {
            entries.withUnsafeBufferPointer { e in
                for h in hashes {
                    guard let slot = index.candidate(h) else { continue }
                    fs_prefetch(UnsafeRawPointer(e.baseAddress! + Int(slot)))
                }
            }
        }

        /// Starts loading the rest of the entry at `slot` (a negative slot `s` stands for
        /// `~s`): an entry spans four or five cache lines, the first read by the lookup.
        func prefetchEntryRest(_ slot: Int32) {
            entries.withUnsafeBufferPointer { e in
                let p = UnsafeRawPointer(e.baseAddress! + Int(slot < 0 ? ~slot : slot))
                fs_prefetch(p + 64)
                fs_prefetch(p + 128)
                fs_prefetch(p + 192)
            }
        }

        /// Starts loading the heap storage the entry at `slot` points to, read in place
        /// (the entry itself should be on its way: this reads its pointers).
        func prefetchStorage(_ slot: Int32) {
            let offset = MemoryLayout<UserEntry>.offset(of: \UserEntry.state)!
            entries.withUnsafeBufferPointer { e in
                let entry = UnsafeRawPointer(e.baseAddress! + Int(slot < 0 ? ~slot : slot))
                UserState.prefetch((entry + offset).assumingMemoryBound(to: UserState.self))
            }
        }

        /// Every user, as (identity, entry) pairs (a snapshot: the table may change while
        /// it is walked).
        var all: [(String, UserEntry)] { entries.compactMap { $0.identity.isEmpty ? nil : ($0.identity, $0) } }

        /// Calls `body` for the users in slots `cursor ..< cursor + limit`; returns where
        /// the next call should start (0 once the table was walked to its end).
        func scan(from cursor: Int, limit: Int, _ body: (UserEntry) -> Void) -> Int {
            let end = min(entries.count, cursor + limit)
            guard cursor < end else { return 0 }
            for i in cursor..<end where !entries[i].identity.isEmpty { body(entries[i]) }
            return end == entries.count ? 0 : end
        }

        /// As ``scan(from:limit:_:)``, with each entry mutable in place; stops early, at
        /// the slot after the one for which `body` returned false.
        mutating func scanModifying(from cursor: Int, limit: Int, _ body: (inout UserEntry) -> Bool) -> Int {
            let end = min(entries.count, cursor + limit)
            guard cursor < end else { return 0 }
            for i in cursor..<end where !entries[i].identity.isEmpty {
                if !body(&entries[i]) { return i + 1 == entries.count ? 0 : i + 1 }
            }
            return end == entries.count ? 0 : end
        }

        func forEachEntry(_ body: (UserEntry) -> Void) {
            for e in entries where !e.identity.isEmpty { body(e) }
        }
    }

    struct UserEntry {
        // In this order the entry has no padding (one per user).
        /// The user's identity (empty in a free slot of the table).
        var identity = ""
        var state = UserState()
        var delivery = DeliveryState()
        /// The partition this user's events last came from.
        var home: OffsetTracker.PartitionIndex = 0
        /// Durable mode: the state changed since the last checkpoint.
        var checkpointPending = false
        /// Lowest unsettled offsets from before the request in flight (or of now).
        var holds = Holds()
        /// Offsets of changes that arrived while a request was in flight: rare, so boxed
        /// (8 bytes instead of 24 per user). The box is immutable; copies of an entry
        /// never share a change.
        private var flightBox: FlightHolds?

        var flightHolds: Holds {
            get { flightBox?.holds ?? Holds() }
            set { flightBox = newValue.isEmpty ? nil : FlightHolds(newValue) }
        }
    }

    final class FlightHolds: Sendable {
        let holds: Holds
        init(_ holds: Holds) { self.holds = holds }
    }

    /// Bytes of one user's entry stored inline in the table (heap buffers not counted).
    public static var userEntryInlineBytes: Int { MemoryLayout<UserEntry>.stride }

    public let options: EngineOptions
    private let logger: Logger
    private let clock: EngineClock
    private let decoder: SegmentDecoder
    private let folder: Folder
    private let projector: Projector
    private let deadLetters: DeadLetterSink
    private let backoff = Backoff()

    // Everything below is guarded by `lock`.
    private let lock = NSLock()
    private var users: UserTable
    /// The user table's hash key, immutable: decode helpers hash identities with it
    /// outside the lock.
    private let identitySeed = IdentityHash()
    private var debouncer: Debouncer<String>
    private var offsets = OffsetTracker()
    private var partitionIndex: [TopicPartition: OffsetTracker.PartitionIndex] = [:]
    private var partitionsByIndex: [TopicPartition] = []
    /// A stable 32-bit id per partition (FNV-1a of topic and partition), stored in user
    /// state with the applied offset; the index above is only this process's.
    private var sourceIds: [UInt32] = []
    private var assigned: Set<OffsetTracker.PartitionIndex> = []
    private var limiter: RateLimiter
    private var stats = EngineStats()
    /// The users awaiting delivery (dirty, in flight included), and since when.
    private var dirty = DirtyTally()
    private var pausedForCapacity = false
    private var draining = false
    /// The state store was fenced (another instance owns our partitions) or failed
    /// fatally: what this instance holds may be stale, so nothing more is sent.
    private var halted = false
    private var sendGate: (@Sendable () -> Bool)?
    private var rng = SystemRandomNumberGenerator()
    private var storeOffsets: (@Sendable ([TopicPartition: Int64]) -> Void)?
    private var hasBeenAssigned = false
    /// From the latest assignment until the consumer has caught up: what was folded and
    /// when, for the log line that says how fast the backlog was read.
    private var catchUp: (assignedMs: Int64, folded: Int, firstFoldMs: Int64?, lastFoldMs: Int64)?
    /// Durable mode: users to write at the next checkpoint, per partition index.
    private var pendingCheckpoint: [OffsetTracker.PartitionIndex: [String]] = [:]
    /// Durable mode: users expired by `inactive_user_ttl`, to tombstone at the next
    /// checkpoint, by the partition they lived in.
    private var pendingTombstones: [OffsetTracker.PartitionIndex: [String]] = [:]
    /// Dead letters decided and not yet written, by sequence number, with what each keeps
    /// from being committed: the offset of an invalid message, or (memory mode) the
    /// offsets a rejected user's body covered. A durable checkpoint waits for those
    /// decided before its snapshot.
    /// `user`: durable mode, a rejected user's letter; until it is written the user is
    /// checkpointed as dirty with no settled body (``pendingUserLetters``), so that a
    /// crash before the letter lands sends the body again (and so dead-letters it again).
    private enum DeadLetterHold { case offset(OffsetTracker.PartitionIndex, Int64), holds(Holds), user(String), none }
    private var deadLetterSeq: UInt64 = 0
    private var undeliveredDeadLetters: [UInt64: DeadLetterHold] = [:]
    private var pendingUserLetters: [String: Int] = [:]
    /// Per partition, the latest event time folded (the partition's "stream time"):
    /// `inactive_user_ttl` counts from it, not from the wall clock, so a backlog of old
    /// events being read does not expire its users as it goes.
    private var streamTimeMs: [Int64] = []
    /// Where the next sweep of the user table starts, and the user types counted so far
    /// in this round of sweeps (published when a round ends).
    private var sweepCursor = 0
    private var typeTally = [0, 0, 0]
    private var usersByType = [0, 0, 0]
    private var lastCommitted: [OffsetTracker.PartitionIndex: Int64] = [:]
    /// Restored partitions whose changelog marker has not been written since: the next
    /// checkpoint writes it even if their offset has not moved (a quiet partition that
    /// shares a changelog partition with a busy one must not read as lost).
    private var markerDue: Set<OffsetTracker.PartitionIndex> = []
    /// Durable mode: partitions assigned and not restored yet, by the assignment's
    /// generation (a revocation, or a new assignment, makes a restore under way stale).
    /// They are not in `assigned` until restored: never checkpointed, never committed.
    private var restoringGeneration: [TopicPartition: UInt64] = [:]
    private var assignGeneration: UInt64 = 0
    private var restoredSink: (@Sendable ([TopicPartition]) -> Void)?
    /// One restore attempt at a time: an old assignment's claim never races a new one's.
    private let restoreLock = NSLock()
    /// Partitions whose changelog writer is being claimed right now: a revocation waits
    /// for the claim to end before letting the partition go, so that a late claim never
    /// fences the partition's next owner.
    private var claiming: Set<TopicPartition> = []
    /// Partitions whose replay skipping / recreation was logged since their assignment.
    private var replayNoted: Set<OffsetTracker.PartitionIndex> = []
    private var recreationNoted: Set<OffsetTracker.PartitionIndex> = []
    private var recreationSuspected: Set<OffsetTracker.PartitionIndex> = []
    private var highWatermark: (@Sendable (TopicPartition) -> Int64?)?
    /// All-users resyncs requested and not started, and those of the round under way: by
    /// partition, the offset of the control record, held (uncommitted) until the round
    /// has queued every user of the partition. ``resyncCursor``: the round's next slot.
    private var resyncQueued: [OffsetTracker.PartitionIndex: Int64] = [:]
    private var resyncRound: [OffsetTracker.PartitionIndex: Int64] = [:]
    private var resyncCursor = 0
    /// Memory mode, while partitions are being revoked: their unfinished resyncs' offsets,
    /// which no offset published meanwhile may pass (their holds were released so that
    /// the drain can end).
    private var revokingFloors: [OffsetTracker.PartitionIndex: Int64] = [:]
    private var stateStore: StateStore?
    /// Serializes checkpoints, so commits of one partition never go backwards.
    private let checkpointLock = NSLock()
    private var partitionTotal: (@Sendable () -> Int)?
    private var lastBreakerLogMs: Int64 = 0

    /// The decoded calls of the batch being consumed and the message each came from;
    /// only the poll thread touches them. Kept between batches for their capacity.
    private var scratch: [DecodedCalls] = []
    private var scratchMessage: [[Int32]] = []
    /// The identity hash of each call of a chunk (0 for non-events), computed by whichever
    /// thread decoded it.
    private var scratchHash: [[UInt64]] = []
    /// The slot of each call of the chunk being folded (`~slot` for a new user,
    /// ``noSlot`` for a call that is not an event).
    private var slotScratch: [Int32] = []
    private static let noSlot = Int32.min
    /// Threads decoding a batch, the poll thread included (``EngineOptions/decodeThreads``,
    /// at most the cores).
    private let decodeParallelism: Int

    public init(options: EngineOptions, deadLetters: DeadLetterSink, logger: Logger, clock: EngineClock = .system) {
        self.options = options
        self.logger = logger
        self.clock = clock
        self.deadLetters = deadLetters
        decodeParallelism = max(1, min(options.decodeThreads, ProcessInfo.processInfo.activeProcessorCount))
        users = UserTable(seed: identitySeed)
        var decoderOptions = options.decoder
        decoderOptions.customAttributes = options.fold.customAttributes
        decoder = SegmentDecoder(options: decoderOptions)
        folder = Folder(config: options.fold)
        projector = Projector(config: options.fold)
        debouncer = Debouncer(debounceMs: options.debounceMs, maxWaitMs: options.maxWaitMs)
        debouncer.unknownOutcomeResendMs = options.unknownOutcomeResendMs
        limiter = RateLimiter(ratePerSecond: options.requestsPerSecond, burst: options.burst, nowMs: clock.monotonicMs())
        limiter.probeIntervalMs = options.breakerProbeIntervalMs
    }

    /// Tells the engine how many partitions the subscribed topics have in all, so that
    /// its share of the API key's rate follows its share of the partitions.
    public func setPartitionTotal(_ total: @escaping @Sendable () -> Int) {
        lock.withLock { partitionTotal = total }
    }

    /// Where a source partition's high watermark is read (the consumer's cached one):
    /// the proof that a topic was recreated.
    public func setHighWatermarkSource(_ source: @escaping @Sendable (TopicPartition) -> Int64?) {
        lock.withLock { highWatermark = source }
    }

    /// Recomputes this instance's share of the rate from its assignment. Called on the
    /// poll thread after each rebalance (the metadata call happens outside the lock).
    private func updateRateShare() {
        guard let total = lock.withLock({ partitionTotal }) else { return }
        let n = total()
        let now = clock.monotonicMs()
        lock.withLock {
            guard n > 0 else { return }
            let share = Double(max(assigned.count, 1)) / Double(n)
            limiter.setShare(share, nowMs: now)
            logger.info("rate share updated", metadata: [
                "assigned": .stringConvertible(assigned.count), "partitions": .stringConvertible(n),
                "requests_per_second": .stringConvertible((limiter.currentRate * 100).rounded() / 100),
            ])
        }
    }

    /// Durable mode: where state is checkpointed and restored from.
    public func setStateStore(_ store: StateStore) {
        lock.withLock { stateStore = store }
    }

    /// Called with the lock held: queue the user for the next checkpoint.
    private func markForCheckpoint(_ key: String, _ entry: inout UserEntry) {
        guard options.durable, !entry.checkpointPending else { return }
        entry.checkpointPending = true
        pendingCheckpoint[entry.home, default: []].append(key)
    }

    /// Walks the next `limit` slots of the user table: counts users by type (published
    /// when a round of sweeps ends) and, with `inactive_user_ttl`, drops users whose last
    /// event is that much older than their partition's latest one, if nothing of theirs
    /// is pending: not dirty, no request in
    /// flight, no offset held. In durable mode each gets a tombstone at the next
    /// checkpoint. Cheap enough to call every second: the whole table is walked in
    /// rounds, never under the lock at once.
    public func sweep(limit: Int = 65_536) {
        let nowEpoch = clock.epochMs()
        lock.withLock {
            let ttl = options.inactiveUserTTLMs
            // Per partition: its stream time (never past the wall clock) less the TTL.
            let cutoffs = streamTimeMs.map { t in
                ttl > 0 && t != .min ? min(t, nowEpoch).subtracting(saturating: ttl) : Int64.min
            }
            var expired: [(String, OffsetTracker.PartitionIndex)] = []
            let next = users.scan(from: sweepCursor, limit: max(1, limit)) { e in
                if ttl > 0, Int(e.home) < cutoffs.count, e.state.lastSeenMs < cutoffs[Int(e.home)], !e.delivery.isDirty,
                   !e.delivery.inFlight, e.holds.isEmpty, e.flightHolds.isEmpty, pendingUserLetters[e.identity] == nil {
                    expired.append((e.identity, e.home))
                    return
                }
                switch projector.userType(e.state) {
                case .anonymous: typeTally[0] += 1
                case .lead: typeTally[1] += 1
                case .user: typeTally[2] += 1
                }
            }
            for (key, home) in expired {
                users[key] = nil
                if options.durable { pendingTombstones[home, default: []].append(key) }
            }
            stats.expiredUsers += expired.count
            resyncStep(nowMono: clock.monotonicMs(), slots: max(1, limit))
            if next == 0 {
                usersByType = typeTally
                typeTally = [0, 0, 0]
            }
            sweepCursor = next
        }
    }

    /// Writes every user changed since the last checkpoint (of `partitions`, or of all
    /// assigned ones), waits until Kafka acknowledged them, then commits the source
    /// positions consumed at the moment of the snapshot. On failure nothing is
    /// committed and the users stay queued.
    @discardableResult
    public func checkpoint(partitions: [OffsetTracker.PartitionIndex]? = nil, deadline: DispatchTime? = nil) -> Bool {
        guard options.durable else { return true }
        // Fenced or stopped past its session: what it holds is not to be written.
        if lock.withLock({ halted }) { return false }
        checkpointLock.lock()
        defer { checkpointLock.unlock() }
        guard let store = lock.withLock({ stateStore }) else { return false }
        let started = clock.monotonicMs()
        // Under the lock, only a copy of each changed user's state is taken (a few
        // retains; copy-on-write keeps it intact while folding goes on); encoding happens
        // after, outside the lock. Encoding under it stalled the poll thread for the
        // whole checkpoint: ~0.2 s for 100k changed users.
        var snapshot: [(partition: Int32, key: String, stored: StoredUser)] = []
        var keys: [(OffsetTracker.PartitionIndex, String)] = []
        // Per source partition of the scope: its users' records (from `start`) and
        // tombstones, and the offset to commit with them.
        var groups: [(source: TopicPartition, index: OffsetTracker.PartitionIndex, start: Int, tombstones: Int)] = []
        var commit: [TopicPartition: Int64] = [:]
        var positions: [(OffsetTracker.PartitionIndex, Int64)] = []
        var tombstones: [(partition: Int32, key: String, home: OffsetTracker.PartitionIndex)] = []
        var deadLetterBarrier: UInt64 = 0
        lock.withLock {
            deadLetterBarrier = deadLetterSeq
            let scope = partitions ?? Array(assigned)
            // Asked of the store once, not per user.
            let statePartitions = partitionsByIndex.map { store.statePartition(for: $0.partition) }
            let sourcePartitions = store.sourcePartitions
            let pending = scope.map { pendingCheckpoint[$0]?.count ?? 0 }.reduce(0, +)
            snapshot.reserveCapacity(pending)
            keys.reserveCapacity(pending)
            for p in scope {
                groups.append((partitionsByIndex[Int(p)], p, snapshot.count, tombstones.count))
                for key in pendingCheckpoint.removeValue(forKey: p) ?? [] {
                    let taken: (Int32, StoredUser, OffsetTracker.PartitionIndex)? = users.modify(key) { entry in
                        guard entry.checkpointPending else { return nil }
                        entry.checkpointPending = false
                        // A rejected body whose dead letter is not written yet: stored as
                        // not settled, so that a crash before the letter lands sends it again.
                        let letterPending = pendingUserLetters[key] != nil
                        return (statePartitions[Int(entry.home)],
                                StoredUser(state: entry.state, dirty: entry.delivery.isDirty || letterPending,
                                           settledHash: letterPending ? 0 : entry.delivery.settledHash,
                                           sourcePartitions: sourcePartitions),
                                entry.home)
                    } ?? nil
                    guard let (partition, stored, _) = taken else { continue }
                    snapshot.append((partition, key, stored))
                    keys.append((p, key))
                }
                // Expired users: a tombstone, unless an event brought the user back.
                for key in pendingTombstones.removeValue(forKey: p) ?? [] where users[key] == nil {
                    tombstones.append((statePartitions[Int(p)], key, p))
                }
                // Not past a resync that has not queued every user yet.
                if var pos = offsets.consumedPosition(p) {
                    if let floor = resyncFloor(p) { pos = min(pos, floor) }
                    guard pos > (lastCommitted[p] ?? -1) else { continue }
                    commit[partitionsByIndex[Int(p)]] = pos
                    positions.append((p, pos))
                }
            }
        }
        // Encoded outside the lock; a record over what the changelog accepts is left out
        // (one user must never hold back every commit) and dead-lettered.
        var encoded: [[(partition: Int32, key: [UInt8], value: [UInt8]?)]] = []
        var oversized: [(key: String, bytes: Int, source: TopicPartition)] = []
        let maxRecordBytes = store.maxRecordBytes
        for (g, group) in groups.enumerated() {
            let end = g + 1 < groups.count ? groups[g + 1].start : snapshot.count
            let tombstonesEnd = g + 1 < groups.count ? groups[g + 1].tombstones : tombstones.count
            var records: [(partition: Int32, key: [UInt8], value: [UInt8]?)] = []
            records.reserveCapacity(end - group.start + tombstonesEnd - group.tombstones)
            // By index: `for s in snapshot` copied (retained) every state once more.
            for i in group.start..<end {
                let key = Array(snapshot[i].key.utf8)
                let value = StateCodec.encode(snapshot[i].stored)
                if key.count + value.count > maxRecordBytes {
                    oversized.append((snapshot[i].key, value.count, group.source))
                    continue
                }
                records.append((snapshot[i].partition, key, value))
            }
            for t in tombstones[group.tombstones..<tombstonesEnd] { records.append((t.partition, Array(t.key.utf8), nil)) }
            encoded.append(records)
        }
        snapshot = []
        if !oversized.isEmpty {
            var seqs: [UInt64] = []
            lock.withLock {
                stats.oversizedStates += oversized.count
                stats.deadLetters["state-too-large", default: 0] += oversized.count
                for _ in oversized { seqs.append(reserveDeadLetter(.none)) }
                deadLetterBarrier = deadLetterSeq
            }
            for (o, seq) in zip(oversized, seqs) {
                // No PII in the log: the partition and the size say enough to find it.
                logger.error("a user's state is larger than the changelog accepts; it is not checkpointed (dead-lettered)", metadata: [
                    "partition": "\(o.source)", "bytes": .stringConvertible(o.bytes), "limit": .stringConvertible(maxRecordBytes),
                ])
                deadLetters.deadLetter(kind: "state-too-large", key: Array(o.key.utf8), value: [], headers: [
                    ("reason", "state-too-large"), ("bytes", String(o.bytes)), ("source.topic", o.source.topic),
                    ("source.partition", String(o.source.partition)),
                ]) { [weak self] in self?.deadLetterDelivered(seq) }
            }
        }
        // The dead letters of what these offsets cover are written first; if they are not
        // yet, the offsets wait for a later checkpoint (the users are written now).
        let letters = commit.isEmpty || waitForDeadLetters(below: deadLetterBarrier, timeoutMs: options.deadLetterWaitMs)
        if !letters {
            logger.warning("dead letters not written yet; source offsets are committed by a later checkpoint",
                           metadata: ["partitions": .stringConvertible(commit.count)])
        }
        var batches: [CheckpointGroup] = []
        var recordCount = 0
        let due = lock.withLock { markerDue }
        var marked: [OffsetTracker.PartitionIndex] = []
        for (g, group) in groups.enumerated() {
            var records = encoded[g]
            let offset = letters ? commit[group.source] : nil
            guard !records.isEmpty || offset != nil || due.contains(group.index) else { continue }
            recordCount += records.count
            if offset != nil || due.contains(group.index) {
                // -1: written at an assignment's first checkpoint, with no offset.
                records.append((store.statePartition(for: group.source.partition), ChangelogMarker.key(group.source),
                                ChangelogMarker.value(offset: offset ?? -1, sourcePartitions: store.sourcePartitions)))
                marked.append(group.index)
            }
            batches.append(CheckpointGroup(source: group.source, records: records, offset: offset))
        }
        do {
            try store.checkpoint(batches, deadline: deadline)
            lock.withLock {
                if letters { for (p, pos) in positions { lastCommitted[p] = max(lastCommitted[p] ?? -1, pos) } }
                markerDue.subtract(marked)
                stats.checkpoints += 1
                stats.checkpointRecords += recordCount
                stats.checkpointDuration.observe(Double(clock.monotonicMs() - started) / 1000)
            }
            return true
        } catch {
            let storeFailed = store.hasFatalError
            lock.withLock {
                if storeFailed { halted = true }
                stats.checkpointFailures += 1
                stats.checkpointDuration.observe(Double(clock.monotonicMs() - started) / 1000)
                for t in tombstones where users[t.key] == nil { pendingTombstones[t.home, default: []].append(t.key) }
                for (p, key) in keys {
                    guard var entry = users[key] else { continue }
                    if !entry.checkpointPending {
                        entry.checkpointPending = true
                        // Under the partition whose list it came from, and its home if
                        // that is another: revoking either must write it first.
                        pendingCheckpoint[p, default: []].append(key)
                        if entry.home != p { pendingCheckpoint[entry.home, default: []].append(key) }
                        users[key] = entry
                    }
                }
            }
            logger.error("checkpoint failed; offsets not committed, will retry", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// Restores assigned partitions (durable mode): each is claimed (with transactions
    /// this fences its former owners) and its users loaded from the changelog. With
    /// `retry`, a partition that fails is tried again, 1 s later, then twice as long each
    /// time up to 30 s, until it is restored or no longer assigned; each restored one is
    /// handed to `ready` (the consumer resumes it). Without, one attempt each (the
    /// partitions that fail stay unassigned: never consumed, never checkpointed).
    ///
    /// One attempt at a time in the process (`restoreLock`, held for one partition's
    /// attempt, never across a wait): an old assignment's claim never races a new one's,
    /// and a partition that keeps failing does not hold back the others.
    private func runRestores(_ partitions: [TopicPartition], generation: UInt64, retry: Bool,
                             ready: (@Sendable ([TopicPartition]) -> Void)?) {
        guard let store = lock.withLock({ stateStore }) else { return }
        var pending = partitions
        var delayMs = max(1, options.restoreRetryMs)
        while true {
            let retryText: Logger.MetadataValue = retry ? .stringConvertible(delayMs) : "never"
            var failed: [TopicPartition] = []
            var claimed: [TopicPartition] = []
            for tp in pending {
                switch claimForRestore(tp, generation: generation, store: store, retryText: retryText) {
                case .claimed: claimed.append(tp)
                case .stale: break
                case .failed: failed.append(tp)
                }
            }
            // Their changelog partitions in one read: one client for all of them, each
            // read to its high watermark (one partition after the other paid the
            // client's round trips each time).
            if !claimed.isEmpty {
                let statePartitions = Array(Set(claimed.map { store.statePartition(for: $0.partition) })).sorted()
                do {
                    let records = try store.read(partitions: statePartitions)
                    let partitions = claimed
                    // Each changelog partition's last value per key (once, however many
                    // source partitions share it), then the table sized once for the
                    // users expected, then each source partition decoded and loaded.
                    let slots = ParallelSlots(count: statePartitions.count, ChangelogView())
                    DispatchQueue.concurrentPerform(iterations: statePartitions.count) { i in
                        slots[i] = ChangelogView(records[statePartitions[i]] ?? PackedRecords())
                    }
                    let views = Dictionary(uniqueKeysWithValues: zip(statePartitions, slots.all))
                    lock.withLock { users.reserve(Self.expectedUsers(partitions, views: views, store: store)) }
                    // Decoded on every core, a partition each (loading into the table
                    // takes the engine's lock, a partition at a time): decoding on one
                    // thread bounded the restore at half the raw read.
                    let outcomes = ParallelSlots(count: partitions.count, RestoreOutcome.stale)
                    DispatchQueue.concurrentPerform(iterations: partitions.count) { i in
                        let view = views[store.statePartition(for: partitions[i].partition)] ?? ChangelogView()
                        outcomes[i] = restore(partitions[i], generation: generation, view: view, store: store, ready: ready)
                    }
                    for (tp, outcome) in zip(claimed, outcomes.all) {
                        switch outcome {
                        case .restored, .stale: break
                        case .failed(let reason):
                            logger.error("state restore failed; the partition is not consumed until it succeeds", metadata: [
                                "partition": "\(tp)", "reason": "\(reason)", "retry_in_ms": retryText,
                            ])
                            lock.withLock { stats.restoreFailures += 1 }
                            failed.append(tp)
                        }
                    }
                } catch {
                    logger.error("state restore failed; the partitions are not consumed until it succeeds", metadata: [
                        "partitions": "\(claimed.map(\.description).joined(separator: ","))",
                        "reason": "reading the changelog failed: \(error)", "retry_in_ms": retryText,
                    ])
                    lock.withLock { stats.restoreFailures += 1 }
                    failed += claimed
                }
            }
            pending = failed
            guard retry, !pending.isEmpty else { return }
            // Real time (a test's manual clock would never get there), in slices: a
            // revocation ends the wait.
            let until = DispatchTime.now().uptimeNanoseconds + UInt64(delayMs) * 1_000_000
            while DispatchTime.now().uptimeNanoseconds < until {
                if lock.withLock({ halted || pending.allSatisfy { restoringGeneration[$0] != generation } }) { return }
                Thread.sleep(forTimeInterval: 0.05)
            }
            delayMs = min(delayMs * 2, 30_000)
        }
    }

    enum ClaimOutcome { case claimed, stale, failed }

    /// The results of work run in parallel, one slot each.
    final class ParallelSlots<T>: @unchecked Sendable {
        private let lock = NSLock()
        private var items: [T]
        init(count: Int, _ empty: T) { items = Array(repeating: empty, count: count) }
        subscript(i: Int) -> T {
            get { lock.withLock { items[i] } }
            set { lock.withLock { items[i] = newValue } }
        }
        var all: [T] { lock.withLock { items } }
    }

    /// Claims `tp`'s changelog writer for the assignment `generation` (`.claimed`: and the
    /// assignment still current). One claim at a time in the process
    /// (`restoreLock`): an old assignment's claim never races a new one's.
    private func claimForRestore(_ tp: TopicPartition, generation: UInt64, store: StateStore,
                                 retryText: Logger.MetadataValue) -> ClaimOutcome {
        restoreLock.lock()
        defer { restoreLock.unlock() }
        // Revoked (or assigned again) meanwhile, or the process is stopping: nothing to do.
        let current = lock.withLock {
            let ok = !halted && restoringGeneration[tp] == generation
            if ok { claiming.insert(tp) }
            return ok
        }
        guard current else { return .stale }
        do {
            try store.claim([tp])
        } catch {
            lock.withLock {
                claiming.remove(tp)
                stats.restoreFailures += 1
            }
            logger.error("could not claim the changelog writer of an assigned partition; it is not consumed until it succeeds", metadata: [
                "partition": "\(tp)", "error": "\(error)", "retry_in_ms": retryText,
            ])
            return .failed
        }
        // Revoked while being claimed: the writer goes again (the revocation waited for
        // this claim to end, so it cannot have let it go itself).
        let stillCurrent = lock.withLock {
            claiming.remove(tp)
            return restoringGeneration[tp] == generation
        }
        guard stillCurrent else {
            store.relinquish([tp])
            return .stale
        }
        return .claimed
    }

    enum RestoreOutcome { case restored, stale, failed(String) }

    /// Users loaded per burst of prefetch hints in a restore.
    static let restoreChunk = 256

    static func newerVersion(_ v: UInt8) -> String {
        "the changelog holds records of format version \(v), written by a newer foldspace-sync (this one reads up to \(StateCodec.version)): upgrade this instance"
    }

    /// What restores read of a changelog partition, once for all the source partitions
    /// it holds: its records, the last one of each user key, and each source partition's
    /// marker.
    struct ChangelogView: Sendable {
        var records = PackedRecords()
        /// The last record of each user key (an index into ``records``), in the records'
        /// order: decoded in a hash table's order, each record's first byte was a cache
        /// miss, half of decoding. Keys are told apart by their bytes, as the user table
        /// tells identities apart (``RawKey``).
        var latest: [(key: String, record: Int)] = []
        /// How many of those are users: a value (not a tombstone) under a key no event
        /// has (empty).
        var users = 0
        /// Each marker's last value, by its key (nil: a tombstone).
        var markers: [[UInt8]: [UInt8]?] = [:]

        init() {}

        init(_ records: PackedRecords) {
            self.records = records
            var last: [RawKey: Int] = [:]
            last.reserveCapacity(records.count)
            records.bytes.withUnsafeBufferPointer { b in
                for i in 0..<records.count {
                    let key = UnsafeBufferPointer(rebasing: b[records.keyRange(i)])
                    if ChangelogMarker.isMarker(key: key) {
                        markers.updateValue(records.valueRange(i).map { Array(b[$0]) }, forKey: Array(key))
                        continue
                    }
                    last[RawKey(String(decoding: key, as: UTF8.self))] = i
                }
            }
            var keyAt = [String?](repeating: nil, count: records.count)
            for (key, i) in last { keyAt[i] = key.string }
            latest.reserveCapacity(last.count)
            for (i, key) in keyAt.enumerated() {
                guard let key else { continue }
                latest.append((key, i))
                if !key.isEmpty && records.valueRange(i) != nil { users += 1 }
            }
        }

        /// Source partition `tp`'s marker, if the changelog partition holds one.
        func marker(of tp: TopicPartition) -> [UInt8]? { markers[ChangelogMarker.key(tp)] ?? nil }
    }

    /// A key compared and hashed as its UTF-8 bytes, as the user table compares
    /// identities' hashes: `String` equality is canonical equivalence, under which "é" as
    /// one scalar and "e" with a combining accent are one key (and two users' records
    /// were taken for one).
    struct RawKey: Hashable {
        let string: String
        init(_ string: String) { self.string = string }
        static func == (a: RawKey, b: RawKey) -> Bool {
            var x = a.string, y = b.string
            return x.withUTF8 { p in y.withUTF8 { q in p.count == q.count && (p.isEmpty || memcmp(p.baseAddress!, q.baseAddress!, p.count) == 0) } }
        }
        func hash(into h: inout Hasher) {
            var s = string
            s.withUTF8 { h.combine(bytes: UnsafeRawBufferPointer($0)) }
        }
    }

    /// How many users a restore of `partitions` is likely to load: each changelog
    /// partition's users, shared in proportion among the source
    /// partitions it holds, of which only the ones restored here count. (Counting every
    /// key for each source partition of a shared changelog partition sized the table for
    /// users that other instances own.)
    static func expectedUsers(_ partitions: [TopicPartition], views: [Int32: ChangelogView], store: StateStore) -> Int {
        var restoring: [Int32: Int] = [:]
        for tp in partitions { restoring[store.statePartition(for: tp.partition), default: 0] += 1 }
        var sharing: [Int32: Int] = [:]
        for s in 0..<max(0, store.sourcePartitions) { sharing[store.statePartition(for: s), default: 0] += 1 }
        var total = 0
        for (p, n) in restoring {
            let keys = views[p]?.users ?? 0
            total += keys * n / max(n, sharing[p] ?? 0, 1)
        }
        return total
    }

    /// Loads a partition's users from the changelog and makes the partition consumable;
    /// returns why not, if it cannot. Every record of the partition's source must decode:
    /// one that does not (a newer format version, or damage) fails the restore, since
    /// consuming without that user's state would send a regressed body (visits reset, a
    /// later first visit) and the next checkpoint would overwrite the record.
    private func restore(_ tp: TopicPartition, generation: UInt64, view: ChangelogView,
                         store: StateStore, ready: (@Sendable ([TopicPartition]) -> Void)? = nil) -> RestoreOutcome {
        let start = clock.monotonicMs()
        let (latest, marker, markers, records) = (view.latest, view.marker(of: tp), !view.markers.isEmpty, view.records.count)
        // Decoded outside the lock: folding goes on meanwhile.
        let source = stableSourceId(tp)
        var decoded: [(key: String, stored: StoredUser)] = []
        decoded.reserveCapacity(latest.count)
        var undecodable = 0
        var newer: UInt8?
        view.records.bytes.withUnsafeBufferPointer { b in
            for (key, i) in latest {
                // A tombstone (or a key no event has).
                guard let value = view.records.valueRange(i), !key.isEmpty else { continue }
                do {
                    let stored = try StateCodec.decode(UnsafeBufferPointer(rebasing: b[value]))
                    // A changelog partition shared by several source partitions holds
                    // others' users too: only this partition's are ours.
                    if stored.state.appliedSource == source { decoded.append((key, stored)) }
                } catch StateCodec.DecodeError.newerVersion(let v) {
                    newer = v
                    return
                } catch {
                    undecodable += 1
                }
            }
        }
        if let newer { return .failed(Self.newerVersion(newer)) }
        if let marker {
            do {
                if try StateCodec.decode(marker).markerOffset == nil { undecodable += 1 }
            } catch StateCodec.DecodeError.newerVersion(let v) {
                return .failed(Self.newerVersion(v))
            } catch {
                undecodable += 1
            }
        }
        if undecodable > 0 {
            return .failed("\(undecodable) changelog records cannot be decoded (damaged, or not written by foldspace-sync); see docs/operations.md")
        }
        // Nothing of this partition in a changelog partition that holds markers (or
        // nothing): a new partition, unless the group has consumed from it (see
        // ``ChangelogMarker``). Records and no marker at all: written before markers.
        if marker == nil && decoded.isEmpty && (markers || records == 0) {
            let committed: Int64?
            do {
                committed = try store.committedPastStart(tp)
            } catch {
                return .failed("the changelog holds nothing for this partition and its committed offset could not be read: \(error)")
            }
            if let committed {
                lock.withLock { stats.changelogMissing += 1 }
                return .failed("the changelog holds nothing for this partition, but the group has consumed it up to offset \(committed): "
                    + "the changelog was deleted or recreated, or state_topic changed. Consuming on would send regressed users. "
                    + "To fold the partition's retained events again, reset the group's offsets to the earliest; to accept the loss, "
                    + "delete them (docs/operations.md, \"A lost changelog\")")
            }
        }
        let now = clock.monotonicMs()
        var restored = 0
        var dirty = 0
        // Hashed outside the lock; inside, each chunk's index buckets are requested before
        // its lookups (prefetch hints), so that their cache misses overlap.
        let hashes = decoded.map { identitySeed.hash($0.key) }
        let loaded: Bool = lock.withLock {
            // Revoked (or assigned again) meanwhile: this restore is stale.
            guard restoringGeneration[tp] == generation else { return false }
            let pidx = index(of: tp)
            for (j, (key, stored)) in decoded.enumerated() {
                if j % Self.restoreChunk == 0 {
                    let chunk = hashes[j..<min(hashes.count, j + Self.restoreChunk)]
                    users.prefetchBuckets(chunk)
                    users.prefetchEntries(chunk)
                }
                // One lookup per user: a new one is filled in its slot (three lookups and
                // a copy of the entry out and back were a third of the load).
                let (slot, isNew) = users.slot(key, hash: hashes[j])
                if isNew {
                    let isDirty = users.modify(slot) { (entry: inout UserEntry) -> Bool in
                        entry.state = stored.state
                        entry.home = pidx
                        entry.delivery.settledHash = stored.settledHash
                        guard stored.dirty else { return false }
                        debouncer.changed(key, &entry.delivery, nowMs: now)
                        self.dirty.became(since: entry.delivery.dirtySinceMs)
                        return true
                    }
                    if isDirty { dirty += 1 }
                    restored += 1
                    continue
                }
                let replaced = users.modify(slot) { (old: inout UserEntry) -> Bool in
                    // A user already in memory (restored from another partition's
                    // changelog, or folded meanwhile) keeps its state unless the record has
                    // applied everything it has: an older record must never overwrite a
                    // newer state.
                    guard stored.state.covers(old.state) else { return false }
                    // A live entry (its events also came from another partition): the
                    // restored state replaces its state only; its delivery bookkeeping (a
                    // request in flight, holds) stays, and the restored state is sent
                    // (after any request in flight, which went out with the older one).
                    let wasDirty = old.delivery.isDirty
                    // Queued under its old home already: under the new one too, so that
                    // revoking either writes it first.
                    if old.checkpointPending && old.home != pidx { pendingCheckpoint[pidx, default: []].append(key) }
                    old.state = stored.state
                    old.home = pidx
                    old.delivery.settledHash = 0
                    if old.delivery.inFlight { old.delivery.resendAfterFlight = true }
                    debouncer.changed(key, &old.delivery, nowMs: now)
                    if !wasDirty { self.dirty.became(since: old.delivery.dirtySinceMs) }
                    markForCheckpoint(key, &old)
                    return true
                }
                if replaced {
                    dirty += 1
                    restored += 1
                } else {
                    stats.restoreKeptNewer += 1
                }
            }
            stats.restoredUsers += restored
            restoringGeneration[tp] = nil
            assigned.insert(pidx)
            markerDue.insert(pidx)
            // Released under the lock, while this assignment is known current: a later
            // revocation clears the release, and no stale one can follow.
            ready?([tp])
            return true
        }
        guard loaded else { return .stale }
        updateRateShare()
        logger.info("partition restored", metadata: [
            "partition": "\(tp)", "records": .stringConvertible(records), "users": .stringConvertible(restored),
            "dirty": .stringConvertible(dirty), "ms": .stringConvertible(clock.monotonicMs() - start),
        ])
        return .restored
    }

    /// Where restored partitions go to be fetched (the consumer's ``KafkaConsumer/release(_:)``).
    /// Set, restores run in the background and their partitions are held paused until
    /// then; unset (tests, tools), they run inside ``partitionsAssigned(_:)``, once.
    public func setRestoredSink(_ sink: @escaping @Sendable ([TopicPartition]) -> Void) {
        lock.withLock { restoredSink = sink }
    }

    public func partitionsToHold(_ partitions: [TopicPartition]) -> [TopicPartition] {
        lock.withLock { partitions.filter { restoringGeneration[$0] != nil } }
    }

    /// Where committable offsets go (the consumer's offset store).
    public func setOffsetSink(_ sink: @escaping @Sendable ([TopicPartition: Int64]) -> Void) {
        lock.withLock { storeOffsets = sink }
    }

    // MARK: Kafka side (poll thread)

    public func consume(_ batch: [ConsumedMessage]) {
        let nowEpoch = clock.epochMs()
        // Decoding is pure and the larger share of an event's cost; folding must stay in
        // order on this thread. So the batch is cut into chunks that helper threads
        // decode ahead, outside the lock, into reused scratch arrays, while this thread
        // folds each chunk as soon as it is decoded (decoding the next one itself when
        // no helper has taken it yet).
        let chunks = max(1, (batch.count + Self.decodeChunk - 1) / Self.decodeChunk)
        while scratch.count < chunks {
            scratch.append(DecodedCalls())
            scratchMessage.append([])
            scratchHash.append([])
        }
        // Chunks this batch does not reach still hold an earlier batch's leftovers.
        for c in chunks..<scratch.count where scratch[c].count > 0 { scratch[c].removeAll() }
        let decoder = self.decoder
        var invalid: [(Int, DecodeFailure, UInt64)] = []
        let seed = identitySeed
        scratch.withUnsafeMutableBufferPointer { calls in
            scratchMessage.withUnsafeMutableBufferPointer { origins in
                scratchHash.withUnsafeMutableBufferPointer { hashes in
                    nonisolated(unsafe) let calls = calls
                    nonisolated(unsafe) let origins = origins
                    nonisolated(unsafe) let hashes = hashes
                    // Each chunk writes only its own scratch arrays; the messages are read-only.
                    nonisolated(unsafe) let batch = batch
                    let decodeChunk: @Sendable (Int) -> Void = { c in
                        // The previous batch's leftovers of this chunk are dropped here, by the
                        // decoding thread: the poll thread, the busier one, only folds them.
                        calls[c].removeAll()
                        origins[c].removeAll(keepingCapacity: true)
                        for i in (c * Self.decodeChunk)..<min(batch.count, (c + 1) * Self.decodeChunk) {
                            let before = calls[c].count
                            if ResyncRequest.isControl(key: batch[i].key) {
                                calls[c].append(.ignored(Self.controlMarker))
                                origins[c].append(Int32(truncatingIfNeeded: i))
                                continue
                            }
                            decoder.decode(batch[i].value, nowMs: nowEpoch, into: &calls[c])
                            calls[c].resolveTimes(from: before, kafkaMs: batch[i].timestampMs, nowMs: nowEpoch)
                            if calls[c].count == before { calls[c].append(.ignored("")) }
                            for _ in before..<calls[c].count { origins[c].append(Int32(truncatingIfNeeded: i)) }
                        }
                        // Identities are hashed here too (the table's key is immutable), for
                        // the same reason.
                        hashes[c].removeAll(keepingCapacity: true)
                        for j in 0..<calls[c].count { hashes[c].append(calls[c].identity(j).map { seed.hash($0) } ?? 0) }
                    }
                    let progress = ChunkProgress(chunks: chunks)
                    let helpers = min(decodeParallelism - 1, chunks - 1)
                    for _ in 0..<max(0, helpers) {
                        DispatchQueue.global().async {
                            while let c = progress.claim() {
                                decodeChunk(c)
                                progress.finish(c)
                            }
                        }
                    }
                    for k in 0..<chunks {
                        // Chunk k must be decoded before it is folded: decode whatever is
                        // unclaimed meanwhile, then wait for the helper that has it.
                        while !progress.isDone(k) {
                            if let c = progress.claim() {
                                decodeChunk(c)
                                progress.finish(c)
                            } else {
                                progress.wait(for: k)
                            }
                        }
                        foldChunk(&calls[k], origins[k], hashes[k], batch: batch, nowEpoch: nowEpoch, last: k == chunks - 1,
                                  invalid: &invalid)
                    }
                }
            }
        }
        for (i, f, seq) in invalid {
            let m = batch[i]
            var headers = [
                ("reason", f.reason.rawValue),
                ("source.topic", m.topicPartition.topic),
                ("source.partition", String(m.topicPartition.partition)),
                ("source.offset", String(m.offset)),
            ]
            if let field = f.field { headers.append(("field", field)) }
            deadLetters.deadLetter(kind: "invalid-event", key: m.key.isEmpty ? nil : Array(m.key),
                                   value: Array(m.value), headers: headers) { [weak self] in self?.deadLetterDelivered(seq) }
        }
    }

    /// Events per decode chunk: small enough that folding starts soon after a batch
    /// arrives, large enough that handing chunks between threads costs little.
    static let decodeChunk = 128
    /// What the decode puts for a control record (``ResyncRequest/key``): the fold
    /// applies it in order with the events around it.
    static let controlMarker = "foldspace-sync.control"
    /// How many events ahead of the fold a user's storage is requested (its entry's
    /// other lines twice as far ahead, so that its pointers are there to be read).
    static let prefetchAhead = 4

    /// Folds one decoded chunk of `batch` (its calls, and the message each came from)
    /// under the lock, in order.
    private func foldChunk(_ calls: inout DecodedCalls, _ origins: [Int32], _ hashes: [UInt64], batch: [ConsumedMessage], nowEpoch: Int64,
                           last: Bool, invalid: inout [(Int, DecodeFailure, UInt64)]) {
        let now = clock.monotonicMs()
        lock.withLock {
            if catchUp != nil && catchUp!.firstFoldMs == nil { catchUp!.firstFoldMs = now }
            // First reach every user of the chunk, in passes that each start the loads
            // the next pass needs without waiting for them (prefetch hints), so that their
            // cache misses overlap; folding event by event it would wait for each in turn
            // (at 100k users that was ~0.7 µs an event). The passes: the index buckets
            // (of the identities' hashes, computed with the decoding), the entries those
            // buckets most likely lead to, then the lookups themselves. The rest of each
            // entry and the heap storage it points to are requested a few events ahead of
            // the fold, not for the whole chunk at once: ~1,000 hints in one burst were
            // largely lost by the time the fold got there (the visit spans' and packed
            // text's first reads still stalled; ~2-3 % of the single-threaded engine).
            let n = calls.count
            users.prefetchBuckets(hashes)
            users.prefetchEntries(hashes) // a non-event's 0: a harmless hint
            slotScratch.removeAll(keepingCapacity: true)
            for j in 0..<n {
                if let identity = calls.identity(j) {
                    let (slot, isNew) = users.slot(identity, hash: hashes[j])
                    slotScratch.append(isNew ? ~Int32(slot) : Int32(slot))
                } else {
                    slotScratch.append(Self.noSlot)
                }
            }
            let ahead = Self.prefetchAhead
            for j in 0..<min(2 * ahead, n) where slotScratch[j] != Self.noSlot { users.prefetchEntryRest(slotScratch[j]) }
            for j in 0..<min(ahead, n) where slotScratch[j] != Self.noSlot { users.prefetchStorage(slotScratch[j]) }
            var previous = -1
            // The call's index within its message (every call of a message is in one chunk).
            var call: UInt32 = 0
            var pidx: OffsetTracker.PartitionIndex = 0
            var previousPartition: TopicPartition? = nil
            // Each event is folded where the decoder wrote it, its strings moved into the
            // state; the rest of the chunk is dropped when its scratch is next decoded into.
            let outcomes = calls.outcomes
            calls.withEvents { events in
                for (j, outcome) in outcomes.enumerated() {
                    if j + 2 * ahead < n, slotScratch[j + 2 * ahead] != Self.noSlot {
                        users.prefetchEntryRest(slotScratch[j + 2 * ahead])
                    }
                    if j + ahead < n, slotScratch[j + ahead] != Self.noSlot { users.prefetchStorage(slotScratch[j + ahead]) }
                    let i = Int(origins[j])
                    let m = batch[i]
                    if i != previous {
                        // Runs of one partition are the rule: look its index up once per run.
                        if m.topicPartition != previousPartition {
                            pidx = index(of: m.topicPartition)
                            previousPartition = m.topicPartition
                        }
                        offsets.saw(pidx, offset: m.offset)
                        previous = i
                        call = 0
                    } else {
                        call &+= 1
                    }
                    switch outcome {
                    case .event(let k):
                        let slot = slotScratch[j]
                        fold(events.baseAddress! + Int(k), slot: slot < 0 ? Int(~slot) : Int(slot), isNew: slot < 0, message: m,
                             call: call, partition: pidx, nowEpoch: nowEpoch, nowMono: now)
                    case .ignored(let t):
                        if t == Self.controlMarker, ResyncRequest.isControl(key: m.key) {
                            if !control(m, partition: pidx, nowMono: now) {
                                stats.invalid[InvalidReason.invalidControl.rawValue, default: 0] += 1
                                offsets.hold(pidx, offset: m.offset)
                                invalid.append((i, DecodeFailure(.invalidControl), reserveDeadLetter(.offset(pidx, m.offset))))
                            }
                        } else {
                            stats.ignored += 1
                        }
                    case .invalid(let f):
                        stats.invalid[f.reason.rawValue, default: 0] += 1
                        // Its offset is held until the dead letter is written.
                        offsets.hold(pidx, offset: m.offset)
                        invalid.append((i, f, reserveDeadLetter(.offset(pidx, m.offset))))
                    }
                }
            }
            if last { publishOffsets() }
            if catchUp != nil { catchUp!.lastFoldMs = clock.monotonicMs() }
        }
    }

    /// Folds one event; called with the lock held.
    private func fold(_ e: UnsafeMutablePointer<SegmentEvent>, slot: Int, isNew: Bool, message m: ConsumedMessage, call: UInt32,
                      partition pidx: OffsetTracker.PartitionIndex, nowEpoch: Int64, nowMono: Int64) {
        if e.pointee.timeImplausible { stats.implausibleTime += 1 }
        if e.pointee.implausibleTraitDates != 0 { stats.implausibleTraitDates += Int(e.pointee.implausibleTraitDates) }
        // The decode resolved a missing payload time to a plausible Kafka time (or made
        // the event invalid); a message without a Kafka time takes the wall clock.
        let t = e.pointee.timeMs ?? nowEpoch
        // Mutate the entry in place in the table's storage (its slot was looked up with
        // the rest of the chunk's): no copy of the entry out and back.
        users.modify(slot) { entry in
            apply(e, timeMs: t, message: m, call: call, partition: pidx, isNew: isNew, nowMono: nowMono, to: &entry)
        }
    }

    private func apply(_ e: UnsafeMutablePointer<SegmentEvent>, timeMs t: Int64, message m: ConsumedMessage, call: UInt32,
                       partition pidx: OffsetTracker.PartitionIndex, isNew: Bool, nowMono: Int64, to entry: inout UserEntry) {
        // A user waiting for a checkpoint under another partition is queued under this
        // one too: revoking this one must write it before its offset is committed.
        if entry.checkpointPending && entry.home != pidx { pendingCheckpoint[pidx, default: []].append(e.pointee.identity) }
        entry.home = pidx
        if t > streamTimeMs[Int(pidx)] { streamTimeMs[Int(pidx)] = t }
        let source = sourceIds[Int(pidx)]
        let kafkaMs = m.timestampMs ?? -1
        if entry.state.hasApplied(source: source, offset: m.offset, call: call) {
            if !isRecreation(entry.state, source: source, kafkaMs: kafkaMs, partition: pidx, offset: m.offset) {
                stats.skippedReplays += 1
                if !replayNoted.contains(pidx) {
                    replayNoted.insert(pidx)
                    logger.info("skipping replayed events (already in the users' state)", metadata: [
                        "partition": "\(partitionsByIndex[Int(pidx)])", "first_offset": "\(m.offset)",
                    ])
                }
                return
            }
            entry.state.forgetApplied(source: source)
        }
        if entry.state.wouldForgetASource(recording: source) { stats.appliedSourcesForgotten += 1 }
        stats.folded += 1
        let changed = folder.fold(spending: &e.pointee, timeMs: t, offset: m.offset, source: source, call: call, kafkaMs: kafkaMs,
                                  into: &entry.state, adjustments: &stats.adjustments)
        // Every applied event moves the applied offset (and maybe visit spans): persist.
        markForCheckpoint(e.pointee.identity, &entry)
        if changed || isNew {
            let wasDirty = entry.delivery.isDirty
            debouncer.changed(e.pointee.identity, &entry.delivery, nowMs: nowMono)
            if !wasDirty { dirty.became(since: entry.delivery.dirtySinceMs) }
            let added = entry.delivery.inFlight
                ? entry.flightHolds.add(pidx, m.offset)
                : entry.holds.add(pidx, m.offset)
            if added { offsets.hold(pidx, offset: m.offset) }
        }
    }

    /// Whether a call at or below the user's applied position of its source comes from
    /// a recreated topic (offsets restarted under the same name), to be folded, rather
    /// than a replay, to be skipped. Two signs are needed: its message is newer, by Kafka
    /// time, than the applied one by over ``recreationToleranceMs`` (a replay reads the
    /// same messages), and the partition's high watermark is at or below the applied
    /// offset (the log is shorter than what was applied: it restarted). The time alone is
    /// no proof — producers that stamp `CreateTime` with event times make it go back and
    /// forth, and folding a replay counts it twice — so then the call is skipped, and the
    /// suspicion is said (warning, `foldspace_sync_source_recreation_suspected_total`).
    /// Said once per partition and assignment. Called with the lock held.
    private func isRecreation(_ s: UserState, source: UInt32, kafkaMs: Int64, partition pidx: OffsetTracker.PartitionIndex,
                              offset: Int64) -> Bool {
        guard kafkaMs >= 0, let applied = s.appliedPosition(source: source), applied.kafkaSeconds > 0,
              kafkaMs / 1000 > Int64(applied.kafkaSeconds) + Self.recreationToleranceMs / 1000 else { return false }
        let tp = partitionsByIndex[Int(pidx)]
        let metadata: Logger.Metadata = [
            "partition": "\(tp)", "offset": "\(offset)", "applied_offset": "\(applied.offset)",
            "kafka_ms": "\(kafkaMs)", "applied_kafka_s": "\(applied.kafkaSeconds)",
        ]
        guard let hw = highWatermark?(tp), hw >= 0, hw <= applied.offset else {
            if recreationSuspected.insert(pidx).inserted {
                stats.suspectedRecreations += 1
                logger.warning("a message at or below users' applied offsets is much newer (Kafka time) than the one they applied, but the log is longer than those offsets: skipped as a replay; if the topic was recreated, reset this group's state", metadata: metadata)
            }
            return false
        }
        if recreationNoted.insert(pidx).inserted {
            stats.recreatedSources += 1
            logger.error("source partition restarted below the users' applied offsets with newer messages: the topic was recreated; its events are folded, not skipped as replays", metadata: metadata)
        }
        return true
    }

    /// How much newer (Kafka time) a message at or below a user's applied offset must be
    /// than the applied one to be taken for a recreated topic rather than a replay
    /// (producers' clocks and batching make `CreateTime` only roughly ordered).
    static let recreationToleranceMs: Int64 = 3_600_000

    // MARK: Resync (control records; see ``ResyncRequest``)

    /// Applies a control record read from partition `p`; false if it is not a request
    /// this version understands (dead-lettered). Called with the lock held.
    private func control(_ m: ConsumedMessage, partition p: OffsetTracker.PartitionIndex, nowMono: Int64) -> Bool {
        guard let request = ResyncRequest(value: m.value) else { return false }
        stats.resyncRequests += 1
        switch request.scope {
        case .all:
            // One round covers any number of requests read before it starts; the first
            // one's offset stays uncommitted until the round has queued every user.
            if resyncQueued[p] == nil {
                resyncQueued[p] = m.offset
                offsets.hold(p, offset: m.offset)
                countResyncPending()
            }
            logger.info("resync of all users requested", metadata: [
                "partition": "\(partitionsByIndex[Int(p)])", "offset": .stringConvertible(m.offset),
                "request_id": .string(request.requestId),
            ])
        case .ids(let ids):
            var queued = 0
            for id in ids {
                // Each partition's owner reads the same list: the owner of a partition the
                // user's events came from sends it.
                users.modify(id) { e in
                    guard e.home == p || e.state.appliedPosition(source: sourceIds[Int(p)]) != nil else { return }
                    markForResync(&e, partition: p, offset: m.offset, nowMono: nowMono)
                    queued += 1
                }
            }
            logger.info("resync of listed users requested", metadata: [
                "partition": "\(partitionsByIndex[Int(p)])", "offset": .stringConvertible(m.offset),
                "request_id": .string(request.requestId), "listed": .stringConvertible(ids.count),
                "queued": .stringConvertible(queued),
            ])
        }
        return true
    }

    /// Queues a user to be sent again as it is now, as a change read at `offset` of
    /// partition `p` would: no body counts as already acknowledged, the debouncer
    /// schedules it, and (memory mode) the offset stays uncommitted until it is settled.
    /// Called with the lock held.
    private func markForResync(_ entry: inout UserEntry, partition p: OffsetTracker.PartitionIndex, offset: Int64, nowMono: Int64) {
        entry.delivery.settledHash = 0
        // A request in flight went out before the request was read: its answer must not
        // count as this resend.
        if entry.delivery.inFlight { entry.delivery.resendAfterFlight = true }
        let wasDirty = entry.delivery.isDirty
        debouncer.changed(entry.identity, &entry.delivery, nowMs: nowMono)
        if !wasDirty { dirty.became(since: entry.delivery.dirtySinceMs) }
        let added = entry.delivery.inFlight ? entry.flightHolds.add(p, offset) : entry.holds.add(p, offset)
        if added { offsets.hold(p, offset: offset) }
        // Durable mode: stored as dirty with no settled body, so a crash does not lose it.
        markForCheckpoint(entry.identity, &entry)
        stats.resyncUsers += 1
    }

    /// How many users one step of a resync round (one a second) queues: what this
    /// instance may send in that second (its current rate, which 429s lower), so that
    /// the round keeps pace with sending and changes read meanwhile do not wait behind a
    /// long queue; none while half of `max_dirty_users` await delivery, so that a resync
    /// never pauses consumption.
    private var resyncStepBudget: Int {
        guard dirty.count < max(1, options.maxDirtyUsers / 2) else { return 0 }
        let rate = limiter.currentRate
        return max(1, Int(min(max(rate, 0).rounded(.up), 1e9)))
    }

    /// Advances the all-users resync: starts a round for the partitions requested, and
    /// queues the next ``resyncStepBudget`` of their users. A round ends when the table
    /// was walked to its end; then the control records' offsets are released. Called
    /// with the lock held.
    private func resyncStep(nowMono: Int64, slots: Int) {
        if resyncRound.isEmpty && !resyncQueued.isEmpty {
            resyncRound = resyncQueued
            resyncQueued = [:]
            resyncCursor = 0
        }
        defer { countResyncPending() }
        guard !resyncRound.isEmpty else { return }
        var budget = resyncStepBudget
        guard budget > 0 else { return }
        let round = resyncRound
        resyncCursor = users.scanModifying(from: resyncCursor, limit: max(1, slots)) { e in
            guard let offset = round[e.home] else { return true }
            markForResync(&e, partition: e.home, offset: offset, nowMono: nowMono)
            budget -= 1
            return budget > 0
        }
        if resyncCursor == 0 {
            for (p, offset) in round { offsets.release(p, offset: offset) }
            logger.info("resync of all users queued", metadata: [
                "partitions": .stringConvertible(round.count),
            ])
            resyncRound = [:]
        }
    }

    /// Publishes how many partitions have an all-users resync not queued whole. Called
    /// with the lock held.
    private func countResyncPending() {
        stats.resyncPendingPartitions = Set(resyncRound.keys).union(resyncQueued.keys).count
    }

    /// The lowest offset of a partition's resync not yet queued whole: nothing at or past
    /// it is committed (durable mode), so that a crash or a move re-reads the request.
    private func resyncFloor(_ p: OffsetTracker.PartitionIndex) -> Int64? {
        switch (resyncQueued[p], resyncRound[p]) {
        case (let a?, let b?): return min(a, b)
        case (let a?, nil): return a
        case (nil, let b?): return b
        case (nil, nil): return nil
        }
    }

    /// Forgets the resyncs of revoked partitions, releasing their holds; returns the
    /// offsets not to commit past (the next owner reads those requests again).
    private func dropResyncs(of revoked: Set<OffsetTracker.PartitionIndex>) -> [OffsetTracker.PartitionIndex: Int64] {
        var floors: [OffsetTracker.PartitionIndex: Int64] = [:]
        for p in revoked {
            guard let floor = resyncFloor(p) else { continue }
            floors[p] = floor
            if let o = resyncQueued.removeValue(forKey: p) { offsets.release(p, offset: o) }
            if let o = resyncRound.removeValue(forKey: p) { offsets.release(p, offset: o) }
        }
        countResyncPending()
        return floors
    }

    private func index(of tp: TopicPartition) -> OffsetTracker.PartitionIndex {
        if let i = partitionIndex[tp] { return i }
        let i = OffsetTracker.PartitionIndex(partitionsByIndex.count)
        partitionIndex[tp] = i
        partitionsByIndex.append(tp)
        sourceIds.append(stableSourceId(tp))
        streamTimeMs.append(.min)
        offsets.activate(i)
        return i
    }

    /// Durable mode: each partition is restored before it is consumed, off the poll
    /// thread (``setRestoredSink(_:)``): the consumer holds it paused meanwhile, and
    /// readiness waits for it. Memory mode: consumed at once.
    public func partitionsAssigned(_ partitions: [TopicPartition]) {
        let durable = options.durable && lock.withLock { stateStore != nil }
        var generation: UInt64 = 0
        var sink: (@Sendable ([TopicPartition]) -> Void)?
        lock.withLock {
            assignGeneration &+= 1
            generation = assignGeneration
            sink = restoredSink
            for tp in partitions {
                let i = index(of: tp)
                offsets.activate(i)
                if durable {
                    restoringGeneration[tp] = generation
                } else {
                    assigned.insert(i)
                }
                replayNoted.remove(i)
                recreationNoted.remove(i)
                recreationSuspected.remove(i)
                lastCommitted[i] = nil
                markerDue.remove(i)
                pendingCheckpoint[i] = nil
                pendingTombstones[i] = nil
                resyncQueued[i] = nil
                resyncRound[i] = nil
            }
            hasBeenAssigned = true
            if !partitions.isEmpty { catchUp = (clock.monotonicMs(), stats.folded, nil, 0) }
        }
        if durable {
            if let sink {
                let generation = generation
                Thread.detachNewThread { [self] in runRestores(partitions, generation: generation, retry: true, ready: sink) }
            } else {
                runRestores(partitions, generation: generation, retry: false, ready: nil)
            }
        }
        updateRateShare()
    }

    /// What was read since the latest assignment, until the consumer caught up.
    public struct CaughtUp: Sendable, Equatable {
        /// Events folded since the assignment.
        public var events: Int
        /// From the first folded chunk to the last.
        public var foldSeconds: Double
        /// From the assignment (restores included) to now.
        public var sinceAssignmentSeconds: Double
    }

    /// Whether an assignment's backlog has not been reported caught up yet.
    public var awaitingCatchUp: Bool { lock.withLock { catchUp != nil } }

    /// Called once the consumer has caught up with its partitions: what was folded
    /// since the latest assignment, reported once (nil if nothing was, or already).
    /// With `backlog` (messages still to read) and nothing folded yet, the consumer has
    /// not started: it keeps waiting (a look between the assignment and the first fetch
    /// used to end the wait with nothing to report).
    public func takeCatchUp(backlog: Int64 = 0) -> CaughtUp? {
        let now = clock.monotonicMs()
        return lock.withLock {
            guard let c = catchUp else { return nil }
            if c.firstFoldMs == nil && backlog > 0 { return nil }
            catchUp = nil
            guard let first = c.firstFoldMs, stats.folded > c.folded else { return nil }
            return CaughtUp(events: stats.folded - c.folded, foldSeconds: Double(c.lastFoldMs - first) / 1000,
                            sinceAssignmentSeconds: Double(now - c.assignedMs) / 1000)
        }
    }

    /// Settles the revoked partitions before they move: every dirty user is flushed
    /// (bounded by the drain timeout), committable offsets are stored, and the users
    /// homed on those partitions leave memory. What could not be settled stays
    /// uncommitted, so the next owner reads it again.
    public func partitionsRevoked(_ partitions: [TopicPartition]) {
        let idxs: [OffsetTracker.PartitionIndex] = lock.withLock {
            // A restore under way is stale from now on.
            for tp in partitions { restoringGeneration[tp] = nil }
            return partitions.compactMap { partitionIndex[$0] }
        }
        let start = clock.monotonicMs()
        // A resync not queued whole stays uncommitted: the next owner reads it again.
        var resyncFloors: [OffsetTracker.PartitionIndex: Int64] = [:]
        if options.durable {
            // Out of the periodic checkpoints' scope first: after this one (which waits
            // for any under way) nothing more is written for them.
            lock.withLock { for i in idxs { assigned.remove(i) } }
            // The state moves with the partition: checkpoint it, commit, and let the
            // next owner restore it. No waiting for Foldspace. Inside the rebalance
            // callback, so bounded (one transaction per partition, each of which could
            // otherwise wait a minute on a slow coordinator): what is not committed by
            // the drain timeout is read again by the next owner.
            let until = DispatchTime.now() + .milliseconds(Int(clamping: max(1_000, options.drainTimeoutMs)))
            if !checkpoint(partitions: idxs, deadline: until) {
                logger.warning("revoked partitions could not be checkpointed; the next owner re-reads from the last commit")
            }
            // A claim of them under way (a restore) ends first: a claim landing after the
            // next owner's would fence it.
            let deadline = DispatchTime.now().uptimeNanoseconds + 40_000_000_000
            while lock.withLock({ partitions.contains { claiming.contains($0) } }),
                  DispatchTime.now().uptimeNanoseconds < deadline {
                Thread.sleep(forTimeInterval: 0.01)
            }
            lock.withLock { stateStore }?.relinquish(partitions)
            lock.withLock { _ = dropResyncs(of: Set(idxs)) }
        } else {
            // Its hold released first, or the drain would wait for it to its timeout; what
            // is published meanwhile stays below it.
            resyncFloors = lock.withLock {
                let floors = dropResyncs(of: Set(idxs))
                revokingFloors.merge(floors) { min($0, $1) }
                return floors
            }
            drain(partitions: idxs, timeoutMs: options.drainTimeoutMs)
        }
        lock.withLock {
            var store: [TopicPartition: Int64] = [:]
            for i in idxs {
                if let c = offsets.committable(i) { store[partitionsByIndex[Int(i)]] = min(c, resyncFloors[i] ?? .max) }
            }
            if !store.isEmpty && !options.durable { storeOffsets?(store) }
            let revoked = Set(idxs)
            var dropped = 0
            var unsettled = 0
            var droppedUsers: Set<String> = []
            for (key, entry) in users.all where revoked.contains(entry.home) {
                var keep = false
                entry.holds.forEach { p, _ in if !revoked.contains(p) { keep = true } }
                entry.flightHolds.forEach { p, _ in if !revoked.contains(p) { keep = true } }
                if keep { continue }
                if entry.delivery.isDirty {
                    dirty.cleared(since: entry.delivery.dirtySinceMs)
                    unsettled += 1
                }
                users[key] = nil
                if pendingUserLetters.removeValue(forKey: key) != nil { droppedUsers.insert(key) }
                dropped += 1
            }
            stats.unsettledAtLastRevocation = unsettled
            forgetDeadLetterHolds(of: revoked, droppedUsers: droppedUsers)
            for i in idxs {
                revokingFloors[i] = nil
                offsets.deactivate(i)
                assigned.remove(i)
                pendingCheckpoint[i] = nil
                pendingTombstones[i] = nil
                lastCommitted[i] = nil
            }
            logger.info("partitions settled", metadata: [
                "partitions": "\(partitions.map(\.description).joined(separator: ","))",
                "users_dropped": .stringConvertible(dropped), "users_unsettled": .stringConvertible(unsettled),
                "ms": .stringConvertible(clock.monotonicMs() - start),
            ])
        }
        updateRateShare()
    }

    /// Flushes every dirty user until the given partitions hold no offsets (or all
    /// users are settled when `partitions` is nil), or the timeout passes.
    public func drain(partitions: [OffsetTracker.PartitionIndex]?, timeoutMs: Int64) {
        if lock.withLock({ halted }) { return }
        // Real time, not the engine's clock: this waits for other threads' work (a
        // manual clock in tests would never reach the deadline).
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(max(0, timeoutMs)) * 1_000_000
        lock.withLock {
            draining = true
            debouncer.rescheduleAll(at: clock.monotonicMs())
        }
        defer { lock.withLock { draining = false } }
        while DispatchTime.now().uptimeNanoseconds < deadline {
            let done: Bool = lock.withLock {
                if let partitions { return partitions.allSatisfy { offsets.holdCount($0) == 0 } }
                return dirty.count == 0
            }
            if done { return }
            Thread.sleep(forTimeInterval: 0.01)
        }
        logger.warning("drain timed out; unsettled offsets stay uncommitted and will be read again")
    }

    public var wantsPause: Bool {
        // Read before the lock: the sink has a lock of its own.
        let backlog = deadLetters.backlogBytes
        return lock.withLock {
            if dirty.count > options.maxDirtyUsers || backlog > options.maxDeadLetterBacklogBytes {
                pausedForCapacity = true
            } else if pausedForCapacity && dirty.count < options.maxDirtyUsers * 8 / 10
                        && backlog < options.maxDeadLetterBacklogBytes / 10 * 8 {
                pausedForCapacity = false
            }
            return pausedForCapacity
        }
    }

    // MARK: Delivery side (flusher)

    /// What the flusher should do next.
    public enum Next: Sendable {
        case send([FlushJob])
        case sleepUntil(Int64?)
    }

    /// Takes up to `limit` due users, each with a rate-limiter permit, and marks them in
    /// flight. Returns when to look again if none can go now.
    public func takeDue(limit: Int) -> Next {
        let now = clock.monotonicMs()
        let nowEpoch = clock.epochMs()
        return lock.withLock {
            // A fenced instance's state may be older than what its successor sent.
            if halted { return .sleepUntil(nil) }
            // Not while the process may just have been woken from a stop (FreezeWatch).
            if let gate = sendGate, !gate() { return .sleepUntil(now + 100) }
            var jobs: [FlushJob] = []
            var wake: Int64? = nil
            if limiter.breakerOpen && now - lastBreakerLogMs >= 60_000 {
                lastBreakerLogMs = now
                logBreaker("sending is paused, nothing is dropped", dirtyUsers: dirty.count)
            }
            while jobs.count < limit {
                guard let next = debouncer.nextCheckMs else { break }
                if next > now {
                    wake = next
                    break
                }
                let permit = limiter.acquire(nowMs: now)
                if case .waitUntil(let t) = permit {
                    wake = t
                    break
                }
                let keys = debouncer.popDue(nowMs: now, limit: 1, force: draining) { users[$0]?.delivery }
                guard let key = keys.first else {
                    limiter.refund(permit)
                    continue
                }
                guard var entry = users[key],
                      let body = projector.body(identifyId: key, state: entry.state, nowMs: nowEpoch, adjustments: &stats.adjustments)
                else {
                    limiter.refund(permit)
                    continue
                }
                let hash = bodyHash(body)
                if hash == entry.delivery.settledHash {
                    // The same body Foldspace already has: nothing to send.
                    let since = entry.delivery.dirtySinceMs
                    debouncer.suppressed(&entry.delivery)
                    release(&entry.holds)
                    dirty.cleared(since: since)
                    stats.suppressed += 1
                    markForCheckpoint(key, &entry)
                    users[key] = entry
                    limiter.refund(permit)
                    continue
                }
                stats.sendLateness.observe(Double(max(0, now - debouncer.dueMs(entry.delivery))) / 1000)
                debouncer.willSend(&entry.delivery)
                users[key] = entry
                jobs.append(FlushJob(identifyId: key, body: body, hash: hash, isProbe: permit == .probe))
                if permit == .probe { break }
            }
            publishOffsets()
            return jobs.isEmpty ? .sleepUntil(wake) : .send(jobs)
        }
    }

    /// Records Foldspace's answer for a job and applies the delivery policy.
    public func complete(_ job: FlushJob, outcome: DeliveryOutcome, seconds: Double? = nil) {
        let now = clock.monotonicMs()
        var deadLetter: (kind: String, status: Int, response: String)? = nil
        var deadLetterSeq: UInt64 = 0
        lock.withLock {
            let delay = backoff.delayMs(attempt: Int(users[job.identifyId]?.delivery.attempts ?? 0), using: &rng)
            let wasOpen = limiter.breakerOpen
            // Whether a final status may settle this user: only per-user evidence does
            // (the endpoint proven, and the status not repeating across users).
            let settles = limiter.record(outcome, wasProbe: job.isProbe, nowMs: now, backoffMs: delay,
                                         user: identitySeed.hash(job.identifyId))
            stats.countRequest(outcome)
            if let seconds { stats.requestDuration.observe(seconds) }
            if limiter.breakerOpen != wasOpen {
                if limiter.breakerOpen {
                    lastBreakerLogMs = now
                    logBreaker("sending is paused until it answers otherwise; one probe every \(options.breakerProbeIntervalMs / 1000) s",
                               dirtyUsers: dirty.count)
                } else {
                    logger.info("Foldspace answers again; sending resumed")
                }
            }
            guard var entry = users[job.identifyId] else { return }
            switch outcome {
            case .acknowledged:
                settle(job, &entry, now)
            case .rejected(let status, let response):
                deadLetter = ("rejected-update", status, response)
                deadLetterSeq = reserveDeadLetter(for: &entry)
                settle(job, &entry, now)
            case .unexpected(let status, let response):
                if settles {
                    deadLetter = ("rejected-update", status, response)
                    deadLetterSeq = reserveDeadLetter(for: &entry)
                    settle(job, &entry, now)
                } else {
                    fail(job, &entry, retryAtMs: now + delay, reason: String(status))
                }
            case .notFound(let response):
                switch options.onUserNotFound {
                case .deadLetter where settles:
                    deadLetter = ("user-not-found", 404, response)
                    deadLetterSeq = reserveDeadLetter(for: &entry)
                    settle(job, &entry, now)
                case .drop where settles:
                    settle(job, &entry, now)
                case .deadLetter, .drop, .retry:
                    fail(job, &entry, retryAtMs: now + delay, reason: "404")
                }
            case .rateLimited:
                fail(job, &entry, retryAtMs: max(limiter.pausedUntilMs, now + 1), reason: "429")
            case .unauthorized(let status), .systemic(let status, _):
                fail(job, &entry, retryAtMs: now, reason: String(status))
            case .retryable(let reason):
                // No answer, or a gateway's (502, 504): the request may still be applied,
                // after a newer one.
                fail(job, &entry, retryAtMs: now + delay, reason: reason,
                     unknownOutcome: ["timeout", "connection", "502", "504"].contains(reason))
            }
            markForCheckpoint(job.identifyId, &entry)
            users[job.identifyId] = entry
            if let dl = deadLetter { stats.deadLetters[dl.kind, default: 0] += 1 }
            publishOffsets()
        }
        if let dl = deadLetter {
            let seq = deadLetterSeq
            deadLetters.deadLetter(kind: dl.kind, key: Array(job.identifyId.utf8), value: job.body, headers: [
                ("reason", dl.kind), ("status", String(dl.status)), ("response", String(dl.response.prefix(1024))),
            ]) { [weak self] in self?.deadLetterDelivered(seq) }
        }
    }

    /// Numbers a dead letter about to be queued and records what it holds back from
    /// being committed. Called with the lock held.
    private func reserveDeadLetter(_ hold: DeadLetterHold) -> UInt64 {
        let seq = deadLetterSeq
        deadLetterSeq &+= 1
        undeliveredDeadLetters[seq] = hold
        return seq
    }

    /// As ``reserveDeadLetter(_:)`` for a user's rejected body: in memory mode the
    /// offsets that body covered stay held (taken out of the entry, so settling does not
    /// release them) until the letter is written. Called with the lock held.
    private func reserveDeadLetter(for entry: inout UserEntry) -> UInt64 {
        guard !options.durable else {
            pendingUserLetters[entry.identity, default: 0] += 1
            return reserveDeadLetter(.user(entry.identity))
        }
        let taken = entry.holds
        entry.holds = Holds()
        return reserveDeadLetter(.holds(taken))
    }

    /// Revoked partitions' offsets are no longer this instance's to hold: a letter
    /// delivered after they come back must not release a hold taken since. Called with
    /// the lock held, before the partitions are deactivated.
    private func forgetDeadLetterHolds(of revoked: Set<OffsetTracker.PartitionIndex>, droppedUsers: Set<String>) {
        for (seq, hold) in undeliveredDeadLetters {
            switch hold {
            case .offset(let p, _) where revoked.contains(p):
                undeliveredDeadLetters[seq] = DeadLetterHold.none
            case .user(let key) where droppedUsers.contains(key):
                // The user left with its state stored unsettled; if it comes back, a
                // letter of this time must not mark a later one written.
                undeliveredDeadLetters[seq] = DeadLetterHold.none
            case .holds(let h):
                var kept = Holds()
                h.forEach { p, o in if !revoked.contains(p) { _ = kept.add(p, o) } }
                undeliveredDeadLetters[seq] = .holds(kept)
            default: break
            }
        }
    }

    /// A dead letter was written: what it held back may be committed.
    private func deadLetterDelivered(_ seq: UInt64) {
        lock.withLock {
            switch undeliveredDeadLetters.removeValue(forKey: seq) {
            case .offset(let p, let o)?: offsets.release(p, offset: o)
            case .holds(var h)?: release(&h)
            case .user(let key)?:
                if let n = pendingUserLetters[key] {
                    pendingUserLetters[key] = n > 1 ? n - 1 : nil
                    // The next checkpoint stores the user settled.
                    if n <= 1 { _ = users.modify(key) { entry in markForCheckpoint(key, &entry) } }
                }
            case .none?, nil: break
            }
            publishOffsets()
        }
    }

    /// Durable mode: waits until every dead letter numbered below `seq` is written, up
    /// to `timeoutMs`. Returns whether they all were.
    private func waitForDeadLetters(below seq: UInt64, timeoutMs: Int64) -> Bool {
        // Real time, not the engine's clock: this waits for another thread's work.
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(max(0, timeoutMs)) * 1_000_000
        while true {
            let done = lock.withLock { undeliveredDeadLetters.keys.allSatisfy { $0 >= seq } }
            if done { return true }
            if DispatchTime.now().uptimeNanoseconds >= deadline { return false }
            Thread.sleep(forTimeInterval: 0.005)
        }
    }

    /// Hands back a job that was taken but never sent (the flusher stopped inside a
    /// `Retry-After` pause): the user stays dirty, due again at once, its offsets held.
    public func returnUnsent(_ job: FlushJob) {
        let now = clock.monotonicMs()
        lock.withLock {
            if job.isProbe { limiter.refund(.probe) }
            guard var entry = users[job.identifyId] else { return }
            fail(job, &entry, retryAtMs: now, reason: "unsent")
            users[job.identifyId] = entry
        }
    }

    /// The breaker's error line: which status, at which URL, and what it means. Called
    /// with the lock held.
    private func logBreaker(_ what: String, dirtyUsers: Int) {
        let status = limiter.breakerStatus
        let cause = status == 401 || status == 403
            ? "Foldspace refuses the API key (SIGHUP re-reads the key file)"
            : "Foldspace answers \(status) for every user: not about any one user (a wrong foldspace_url, a redirect, a proxy)"
        logger.error("\(cause); \(what)", metadata: [
            "status": "\(status)", "foldspace_url": "\(options.foldspaceURL)", "dirty_users": "\(dirtyUsers)",
        ])
    }

    private func settle(_ job: FlushJob, _ entry: inout UserEntry, _ now: Int64) {
        release(&entry.holds)
        entry.holds = entry.flightHolds
        entry.flightHolds = Holds()
        let since = entry.delivery.dirtySinceMs
        if debouncer.settled(job.identifyId, &entry.delivery, hash: job.hash, nowMs: now) {
            dirty.cleared(since: since)
        } else {
            // Changed while in flight: dirty since those changes now.
            dirty.moved(from: since, to: entry.delivery.dirtySinceMs)
        }
    }

    private func fail(_ job: FlushJob, _ entry: inout UserEntry, retryAtMs: Int64, reason: String, unknownOutcome: Bool = false) {
        stats.retries[reason, default: 0] += 1
        // Keep the lowest hold per partition: flight holds are later than holds.
        entry.flightHolds.forEach { p, o in
            if entry.holds.add(p, o) == false {
                offsets.release(p, offset: o)
            }
        }
        entry.flightHolds = Holds()
        debouncer.failed(job.identifyId, &entry.delivery, retryAtMs: retryAtMs, unknownOutcome: unknownOutcome)
    }

    private func release(_ holds: inout Holds) {
        holds.forEach { p, o in offsets.release(p, offset: o) }
        holds.removeAll()
    }

    /// Hands offsets that moved forward to the consumer; called with the lock held.
    private func publishOffsets() {
        guard !options.durable else { return }
        let adv = offsets.advanced()
        guard !adv.isEmpty, let storeOffsets else { return }
        var m: [TopicPartition: Int64] = [:]
        for (i, o) in adv where assigned.contains(i) { m[partitionsByIndex[Int(i)]] = min(o, revokingFloors[i] ?? .max) }
        if !m.isEmpty { storeOffsets(m) }
    }

    /// Milliseconds until a client-wide `Retry-After` pause ends, or nil when none is in
    /// force. The flusher checks it again right before a request goes on the wire, so a
    /// request taken before a 429 arrived does not land inside the window.
    public func retryAfterRemainingMs() -> Int64? {
        let now = clock.monotonicMs()
        return lock.withLock {
            let until = limiter.pausedUntilMs
            return until > now ? until - now : nil
        }
    }

    /// Lets the breaker probe right away (the key was re-read).
    /// Whether a request may go on the wire now: not halted, and the send gate open.
    public func maySend() -> Bool {
        let gate = lock.withLock { halted ? nil : (sendGate ?? { true }) }
        return gate?() ?? false
    }

    /// Sending happens only while `gate` says yes (checked on each take).
    public func setSendGate(_ gate: @escaping @Sendable () -> Bool) {
        lock.withLock { sendGate = gate }
    }

    /// Stops all sending for good: the process is about to exit on a fatal Kafka error
    /// (a fenced instance must not send what may be stale).
    public func halt() {
        lock.withLock { halted = true }
    }

    public func keyReloaded() {
        let now = clock.monotonicMs()
        lock.withLock { limiter.probeSoon(nowMs: now) }
    }

    /// Sets this instance's share of the API key's rate.
    public func setRateShare(_ share: Double) {
        let now = clock.monotonicMs()
        lock.withLock { limiter.setShare(share, nowMs: now) }
    }

    // MARK: Observation

    /// Calls read so far (folded, invalid, ignored, skipped): O(1), for progress loops.
    public var eventsRead: Int {
        lock.withLock { stats.folded + stats.ignored + stats.skippedReplays + stats.invalid.values.reduce(0, +) }
    }

    /// All counters and gauges. Computing the oldest dirty age walks the users, so call
    /// it at scrape intervals, not in a tight loop.
    public func snapshot() -> EngineStats {
        let now = clock.monotonicMs()
        return lock.withLock {
            var s = stats
            s.users = users.count
            s.usersByType = ["ANONYMOUS": usersByType[0], "LEAD": usersByType[1], "USER": usersByType[2]]
            s.dirtyUsers = dirty.count
            // From the tally, not a walk over every user: a scrape held the lock, and so
            // the poll thread, for ~1 ms per 10k users.
            s.oldestDirtyMs = dirty.oldestSinceMs.map { max(0, now - $0) } ?? 0
            s.breakerOpen = limiter.breakerOpen
            s.breakerStatus = limiter.breakerOpen ? limiter.breakerStatus : 0
            s.rateLimit = limiter.currentRate
            // Ready: joined, and every assigned partition restored (no partition is
            // fine). An open breaker is foldspace_sync_breaker_open and an alert, not
            // unreadiness: that would block drains and hide the metrics that fire it.
            s.ready = hasBeenAssigned && restoringGeneration.isEmpty
            return s
        }
    }

    /// The body the engine would send for a user now (tests and debugging).
    public func projection(of identifyId: String) -> [UInt8]? {
        lock.withLock {
            guard let e = users[identifyId] else { return nil }
            var adj = Adjustments()
            return projector.body(identifyId: identifyId, state: e.state, nowMs: clock.epochMs(), adjustments: &adj)
        }
    }
}

/// FNV-1a (32 bits) of `topic` and the partition number: the same on every instance
/// and every run, so applied offsets in user state stay meaningful after a move.
func stableSourceId(_ tp: TopicPartition) -> UInt32 {
    var h: UInt32 = 0x811C_9DC5
    for b in tp.topic.utf8 {
        h ^= UInt32(b)
        h = h &* 0x0100_0193
    }
    for shift in stride(from: 0, to: 32, by: 8) {
        h ^= UInt32(truncatingIfNeeded: Int64(tp.partition) >> Int64(shift)) & 0xFF
        h = h &* 0x0100_0193
    }
    return h
}

/// How many users are dirty and since when, in buckets of ``bucketMs``: the oldest
/// dirty user's age without walking every user. Updated on every dirty/clean transition.
struct DirtyTally {
    static let bucketMs: Int64 = 100
    private(set) var count = 0
    /// Dirty users per bucket of their `dirtySinceMs`.
    private var buckets: [Int64: Int] = [:]

    mutating func became(since ms: Int64) {
        count += 1
        buckets[Self.bucket(ms), default: 0] += 1
    }

    mutating func cleared(since ms: Int64) {
        count -= 1
        let k = Self.bucket(ms)
        if let n = buckets[k], n > 1 { buckets[k] = n - 1 } else { buckets[k] = nil }
    }

    mutating func moved(from old: Int64, to new: Int64) {
        guard Self.bucket(old) != Self.bucket(new) else { return }
        cleared(since: old)
        became(since: new)
    }

    /// The start of the oldest bucket holding a dirty user: at most ``bucketMs`` before
    /// the oldest user's `dirtySinceMs`.
    var oldestSinceMs: Int64? { buckets.keys.min().map { $0 * Self.bucketMs } }

    private static func bucket(_ ms: Int64) -> Int64 { ms >= 0 ? ms / bucketMs : (ms - bucketMs + 1) / bucketMs }
}

/// Which decode chunks of a batch are claimed and which are done, shared by the poll
/// thread and the decode helpers.
final class ChunkProgress: @unchecked Sendable {
    private let condition = NSCondition()
    private var next = 0
    private var done: [Bool]

    init(chunks: Int) { done = Array(repeating: false, count: chunks) }

    /// The next chunk nobody has taken, now taken by the caller.
    func claim() -> Int? {
        condition.lock()
        defer { condition.unlock() }
        guard next < done.count else { return nil }
        next += 1
        return next - 1
    }

    func finish(_ c: Int) {
        condition.lock()
        done[c] = true
        condition.broadcast()
        condition.unlock()
    }

    func isDone(_ c: Int) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        return done[c]
    }

    /// Waits until chunk `c` is done.
    func wait(for c: Int) {
        condition.lock()
        while !done[c] { condition.wait() }
        condition.unlock()
    }
}
