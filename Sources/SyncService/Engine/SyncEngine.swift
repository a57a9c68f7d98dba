import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

/// The heart of the daemon: per-user state, debouncing and offset safety, behind one
/// lock.
///
/// The Kafka poll thread hands over batches (``consume(_:)``), decodes them outside the
/// lock and folds them inside it; the ``Flusher`` takes due users (``takeDue(limit:)``)
/// and reports answers (``complete(_:outcome:)``). Offsets become committable only when
/// every user holding them is settled, and are handed to `storeOffsets`.
public final class SyncEngine: ConsumerHandler, @unchecked Sendable {
    public let options: EngineOptions
    let logger: Logger
    let clock: EngineClock
    let decoder: SegmentDecoder
    let folder: Folder
    let projector: Projector
    let deadLetters: DeadLetterSink
    let backoff = Backoff()
    let deliveryPolicy: DeliveryPolicy

    // What ``EngineLinks`` gave (immutable).
    let sendGate: (@Sendable () -> Bool)?
    let storeOffsets: (@Sendable ([TopicPartition: Int64]) -> Void)?
    let restoredSink: (@Sendable ([TopicPartition]) -> Void)?
    let highWatermark: (@Sendable (TopicPartition) -> Int64?)?
    let stateStore: StateStore?
    let partitionTotal: (@Sendable () -> Int)?

    // Everything below is guarded by `lock`.
    let lock = NSLock()
    var users: UserTable
    /// The user table's hash key, immutable: decode helpers hash identities with it
    /// outside the lock.
    let identitySeed = IdentityHash()
    var debouncer: Debouncer<String>
    var offsets = OffsetTracker()
    var partitionIndex: [TopicPartition: OffsetTracker.PartitionIndex] = [:]
    var partitionsByIndex: [TopicPartition] = []
    /// A stable 32-bit id per partition (FNV-1a of topic and partition), stored in user
    /// state with the applied offset; the index above is only this process's.
    var sourceIds: [UInt32] = []
    /// Per partition index: whether it is a partition of `<group>-repartition` (read per
    /// folded call and per checkpointed partition; a topic comparison each time before).
    var repartitionByIndex: [Bool] = []
    var assigned: Set<OffsetTracker.PartitionIndex> = []
    var limiter: RateLimiter
    var stats = EngineStats()
    /// The users awaiting delivery (dirty, in flight included), and since when.
    var dirty = DirtyTally()
    /// Whether consuming is paused for capacity (dirty users, dead-letter backlog).
    var backpressure: Backpressure
    var draining = false
    /// The state store was fenced (another instance owns our partitions) or failed
    /// fatally: what this instance holds may be stale, so nothing more is sent.
    var halted = false
    /// Whether the last checkpoint held merging tasks back (their dead letters not written
    /// yet): ``Checkpoints`` then keeps to its busy-fold rules (a second, or the
    /// interval), not the idle fold's 200 ms.
    var heldBack = false
    var rng = SystemRandomNumberGenerator()
    var hasBeenAssigned = false
    /// From the latest assignment until the consumer has caught up: what was folded and
    /// when, for the log line that says how fast the backlog was read.
    var catchUp: (assignedMs: Int64, folded: Int, firstFoldMs: Int64?, lastFoldMs: Int64)?
    /// Durable mode: users to write at the next checkpoint, per partition index.
    var pendingCheckpoint: [OffsetTracker.PartitionIndex: [String]] = [:]
    /// Durable mode: users expired by `inactive_user_ttl`, to tombstone at the next
    /// checkpoint, by the partition they lived in.
    var pendingTombstones: [OffsetTracker.PartitionIndex: [String]] = [:]
    /// Dead letters decided and not yet written, by sequence number, with what each keeps
    /// from being committed: the offset of an invalid message, or (memory mode) the
    /// offsets a rejected user's body covered. A durable checkpoint waits for those
    /// decided before its snapshot.
    /// `user`: durable mode, a rejected user's letter; until it is written the user is
    /// checkpointed as dirty with no settled body (``pendingUserLetters``), so that a
    /// crash before the letter lands sends the body again (and so dead-letters it again).
    enum DeadLetterHold { case offset(OffsetTracker.PartitionIndex, Int64), holds(Holds), user(String), none }
    var deadLetterSeq: UInt64 = 0
    var undeliveredDeadLetters: [UInt64: DeadLetterHold] = [:]
    var pendingUserLetters: [String: Int] = [:]
    /// Per partition, the latest event time folded (the partition's "stream time"):
    /// `inactive_user_ttl` counts from it, not from the wall clock, so a backlog of old
    /// events being read does not expire its users as it goes.
    var streamTimeMs: [Int64] = []
    /// Where the next sweep of the user table starts, and the user types counted so far
    /// in this round of sweeps (published when a round ends).
    var sweepCursor = 0
    var typeTally = [0, 0, 0]
    var usersByType = [0, 0, 0]
    var lastCommitted: [OffsetTracker.PartitionIndex: Int64] = [:]
    /// Restored partitions whose changelog marker has not been written since: the next
    /// checkpoint writes it even if their offset has not moved (a quiet partition that
    /// shares a changelog partition with a busy one must not read as lost).
    var markerDue: Set<OffsetTracker.PartitionIndex> = []
    /// Identity resolution: per restored partition of a task (source and repartition), the
    /// offset its changelog marker says the task's effects are committed up to. Messages
    /// below it are skipped whole, even when the group's offset is older (a broker that
    /// does not apply a transaction's offsets, or a plain commit that failed after it): a
    /// call routed again, or a routed call forwarded again, would be a new record and
    /// count twice. Dropped once passed.
    var replayFloors: [TopicPartition: Int64] = [:]
    /// Durable mode: partitions assigned and not restored yet, by the assignment's
    /// generation (a revocation, or a new assignment, makes a restore under way stale).
    /// They are not in `assigned` until restored: never checkpointed, never committed.
    var restoringGeneration: [TopicPartition: UInt64] = [:]
    /// Durable mode: messages delivered of a partition held paused while it restores
    /// (librdkafka 2.0.2 does deliver some, under load) are not read. By partition, the
    /// first one's offset: the partition is read again from there once restored
    /// (``withoutUnrestored(_:)``).
    var readBeforeRestore: [TopicPartition: Int64] = [:]
    /// Partitions to read again from an offset, and whether the consumer was asked to seek
    /// there yet (``takeSeeks()``): until it was, and then until that offset comes back,
    /// their messages are not read.
    var rereads: [TopicPartition: (offset: Int64, asked: Bool)] = [:]
    var assignGeneration: UInt64 = 0
    /// One restore attempt at a time: an old assignment's claim never races a new one's.
    let restoreLock = NSLock()
    /// Partitions whose changelog writer is being claimed right now: a revocation waits
    /// for the claim to end before letting the partition go, so that a late claim never
    /// fences the partition's next owner.
    var claiming: Set<TopicPartition> = []
    /// Partitions whose replay skipping / recreation was logged since their assignment.
    var replayNoted: Set<OffsetTracker.PartitionIndex> = []
    var recreationNoted: Set<OffsetTracker.PartitionIndex> = []
    var recreationSuspected: Set<OffsetTracker.PartitionIndex> = []
    /// All-users resyncs requested and not started, and those of the round under way: by
    /// partition, the offset of the control record, held (uncommitted) until the round
    /// has queued every user of the partition. ``resyncCursor``: the round's next slot.
    var resyncQueued: [OffsetTracker.PartitionIndex: Int64] = [:]
    var resyncRound: [OffsetTracker.PartitionIndex: Int64] = [:]
    var resyncCursor = 0
    /// Memory mode, while partitions are being revoked: their unfinished resyncs' offsets,
    /// which no offset published meanwhile may pass (their holds were released so that
    /// the drain can end).
    var revokingFloors: [OffsetTracker.PartitionIndex: Int64] = [:]
    /// Serializes checkpoints, so commits of one partition never go backwards.
    let checkpointLock = NSLock()
    var lastBreakerLogMs: Int64 = 0

    /// The decoded calls of the batch being consumed and the message each came from;
    /// only the poll thread touches them. Kept between batches for their capacity.
    var scratch: [DecodedCalls] = []
    var scratchMessage: [[Int32]] = []
    /// The identity hash of each call of a chunk (0 for non-events), computed by whichever
    /// thread decoded it.
    var scratchHash: [[UInt64]] = []
    /// Identity resolution: the owner task of each call's identity (-1 for non-events;
    /// empty with merging off), computed with the hashes.
    var scratchOwner: [[Int32]] = []
    /// Identity resolution: each call of a chunk read from `<group>-repartition`, with
    /// what it was routed by (in the order of the chunk's calls).
    var scratchRouted: [[RoutedCallInfo]] = []
    /// The most calls one ``consumeInOrder(_:)`` decoded (tests: the slices' bound).
    var mostCallsDecodedAtOnce = 0
    /// The slot of each call of the chunk being folded (`~slot` for a new user,
    /// ``noSlot`` for a call that is not an event).
    var slotScratch: [Int32] = []
    static let noSlot = Int32.min
    /// The slot of a call forwarded to another task (identity resolution): not folded here.
    static let forwardedSlot = Int32.min + 1
    /// The slot of a call skipped as a replay (its effects committed, or its first hop
    /// taken): not folded.
    static let skippedSlot = Int32.min + 2

    // Identity resolution (``EngineOptions/identity``, docs/identity.md).
    /// Each task's router, by task (partition number), made at the task's first call.
    var routers: [Int32: IdentityRouter] = [:]
    /// Moves on whenever a router is made or let go (a graph replaced): every
    /// ``UserEntry/routedAt`` found before then is stale. Never 0.
    var routingGeneration: UInt16 = 1
    /// Whether a call found canonical before skips the graph (``UserEntry/routedAt``):
    /// tests turn it off to compare with asking the graph for every call.
    var routingFastPath = true
    /// The counts of routers let go (their task revoked): the metrics are counters.
    var retiredIdentity = IdentityCounters()
    /// Each owned task's transactions as its readers know them (``TaskTransactions``).
    var txns: [Int32: TaskTransactions] = [:]
    /// Holds routed records read until their transaction is known committed (poll thread
    /// only).
    let gate: TransactionGate
    /// Calls of the chunk being folded whose canonical identity is another than their own:
    /// by index in the chunk, the identity they are folded into.
    var reroutedScratch: [Int: String] = [:]
    /// Links made while a chunk is folded: the linked identity's state is taken out of the
    /// table once the chunk is folded, so that the slots looked up for it stay valid (its
    /// calls later in the chunk fold into it and reach the user with the merge).
    var pendingHandOvers: [(task: Int32, home: OffsetTracker.PartitionIndex, linked: String, into: String)] = []
    /// Records for other tasks' partitions of `<group>-repartition`, by the task that
    /// writes them (in its next checkpoint's transaction).
    var outbound: [Int32: [(partition: Int32, record: RepartitionRecord)]] = [:]
    // The hop that stays in the process (docs/identity.md, "A hop that stays in the
    // process"): a call read on task p's source partition whose target task q this
    // instance holds too is handed to q here, not written to `<group>-repartition` and read
    // back. Each task keeps committing in its own transactions; these keep it exact.
    /// `A(q, p)`: per task q, per source task p, the furthest first hop q has taken from p
    /// (in the process or through Kafka), written in q's source marker. A first hop at or
    /// below it is a replay, skipped.
    var hopsTaken: [Int32: [Int32: HopPosition]] = [:]
    /// Tasks whose ``hopsTaken`` moved since their last transaction: it is due even if
    /// nothing else changed (the source offsets that handed it calls wait for it).
    var hopsTakenDue: Set<Int32> = []
    /// `S(p, q)`: per source task p, the furthest first hop it sent each task q through
    /// Kafka (buffered included), written in p's source marker. p hands q calls in the
    /// process only once `A(q, p)` has reached it: first hops then reach q in order.
    var hopsSent: [Int32: [Int32: HopPosition]] = [:]
    /// Tasks restored from a marker that predates these fields (or none): below its floor,
    /// such a task's calls went through Kafka, committed, and are skipped whole.
    var hopsUnknown: Set<Int32> = []
    /// Per source task p, per task q it handed calls to in the process: the offset of the
    /// latest. p's group offset is committed no further than what q's committed
    /// transactions cover (``durableAt``).
    var handedInProcess: [Int32: [Int32: Int64]] = [:]
    /// Per source task p, per task q it handed calls to in the process: the offset of the
    /// first (``rewindHandingTasks(to:)``).
    var firstHanded: [Int32: [Int32: Int64]] = [:]
    /// Source tasks reading their partition again from an offset (``rewindHandingTasks(to:)``):
    /// their group offset stays there until the re-read has passed their replay floor.
    var rewinds: [Int32: Int64] = [:]
    /// Per source task p, per task q: p's consumed position when q's latest committed
    /// transaction took its snapshot (every call p handed q below it is in q's changelog).
    var durableAt: [Int32: [Int32: Int64]] = [:]
    /// Per source partition of a merging task: the offset its latest committed marker
    /// covers (what the task decided itself, up to there), which may run ahead of the
    /// group offset (held back by ``durableAt``).
    var lastMarked: [OffsetTracker.PartitionIndex: Int64] = [:]
    /// Source partitions whose task waits, its messages not read, until each task it
    /// sent first hops to through Kafka and now hands calls to in the process has taken
    /// them (``waitsForSwitch(_:)``), and since when (monotonic ms): read on, it would
    /// keep sending through Kafka, and the other task, reading them back a checkpoint and
    /// a notice later, would never catch up. Read again from the first message left.
    var switchWaits: [TopicPartition: Int64] = [:]
    /// Source tasks that waited longer than ``switchWaitLimitMs`` (a first hop sent through
    /// Kafka never taken: dead-lettered as too large to route): they send through Kafka
    /// until their next assignment.
    var switchGivenUp: Set<Int32> = []
    static let switchWaitLimitMs: Int64 = 10_000
    /// Whether calls may be handed in the process (``EngineOptions/IdentityOptions/inProcessHops``).
    var inProcessHops: Bool
    /// The chunk's calls handed over in the process: by index, the task that folds them
    /// and the partition index their user is homed on there (its repartition partition).
    var inProcessScratch: [Int: (task: Int32, home: OffsetTracker.PartitionIndex)] = [:]
    /// ``repartitionIndex(ofTask:)``'s cache, by task.
    var repartitionIndexByTask: [OffsetTracker.PartitionIndex?] = []
    /// Threads decoding a batch, the poll thread included (``EngineOptions/decodeThreads``,
    /// at most the cores).
    let decodeParallelism: Int

    public init(
        options: EngineOptions, deadLetters: DeadLetterSink, logger: Logger, clock: EngineClock = .system,
        links: EngineLinks = EngineLinks()
    ) {
        stateStore = links.stateStore
        storeOffsets = links.storeOffsets
        restoredSink = links.restored
        sendGate = links.sendGate
        partitionTotal = links.partitionTotal
        highWatermark = links.highWatermark
        self.options = options
        gate = TransactionGate(capBytes: options.identity.heldBytesCap)
        self.logger = logger
        self.clock = clock
        self.deadLetters = deadLetters
        inProcessHops = options.identity.inProcessHops
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
        deliveryPolicy = DeliveryPolicy(onUserNotFound: options.onUserNotFound)
        backpressure = Backpressure(maxDirtyUsers: options.maxDirtyUsers, maxDeadLetterBacklogBytes: options.maxDeadLetterBacklogBytes)
    }

    /// Recomputes this instance's share of the rate from its assignment. Called on the
    /// poll thread after each rebalance (the metadata call happens outside the lock).
    func updateRateShare() {
        guard let total = partitionTotal else { return }
        let n = total()
        let now = clock.monotonicMs()
        lock.withLock {
            guard n > 0 else { return }
            let share = Double(max(assigned.count, 1)) / Double(n)
            limiter.setShare(share, nowMs: now)
            logger.info(
                "rate share updated",
                metadata: [
                    "assigned": .stringConvertible(assigned.count), "partitions": .stringConvertible(n),
                    "requests_per_second": .stringConvertible((limiter.currentRate * 100).rounded() / 100),
                ])
        }
    }

    public func partitionsToHold(_ partitions: [TopicPartition]) -> [TopicPartition] {
        lock.withLock { partitions.filter { restoringGeneration[$0] != nil } }
    }

    /// Stops all sending for good: the process is about to exit on a fatal Kafka error
    /// (a fenced instance must not send what may be stale).
    public func halt() {
        lock.withLock { halted = true }
    }

    /// Lets the breaker probe right away (the key was re-read).
    public func keyReloaded() {
        let now = clock.monotonicMs()
        lock.withLock { limiter.probeSoon(nowMs: now) }
    }
}

/// A call read from `<group>-repartition`: its index among its chunk's calls, the
/// identity it was routed by (its target) and how many times it was forwarded.
struct RoutedCallInfo {
    var call: Int32
    var target: String
    var hops: UInt8
    /// A first hop's source position (``RepartitionRecord/ForwardedCall/origin``).
    var origin: HopMark?
}

/// Where a first hop was read on its source partition: the message's offset and the
/// call's index in it.
struct HopPosition: Comparable, Sendable {
    var offset: Int64
    var call: UInt32
    static func < (a: HopPosition, b: HopPosition) -> Bool { (a.offset, a.call) < (b.offset, b.call) }
}
