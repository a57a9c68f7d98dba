/// The routing of docs/identity.md for one task: which task folds a call, where a link
/// request and a merge record go. Pure: it returns steps, and the engine (or a test's
/// model of the engine) performs them (folds, writes to `<group>-repartition`, hands
/// state over). It owns the task's ``IdentityGraph`` and remembers which entries changed
/// since they were last taken (for the task's next checkpoint).
public struct IdentityRouter: Sendable {
    /// The task: partition index of the source, repartition, identities and state topics.
    public let task: Int32
    /// Partitions of each of those topics.
    public let partitions: Int32
    public let partitioner: KeyPartitioner
    public private(set) var graph: IdentityGraph
    /// Identities whose entries changed since they were last committed (``committed(_:)``).
    public private(set) var changed: Set<String> = []
    /// Calls and merge records folded where they were because they had travelled
    /// ``maxHops`` (a cycle of links that two racing aliases made).
    public private(set) var hopLimitReached: UInt64 = 0

    /// Hops past which a call is folded where it is: a chain of links is as long as the
    /// aliases between user ids, which is short; only a cycle reaches this.
    public static let maxHops: UInt8 = 16

    public init(
        task: Int32, partitions: Int32, partitioner: KeyPartitioner = .murmur2, maxLinked: Int = IdentityGraph.defaultMaxLinked
    ) {
        self.task = task
        self.partitions = max(partitions, 1)
        self.partitioner = partitioner
        graph = IdentityGraph(maxLinked: maxLinked)
    }

    /// The task that owns `id`'s graph entry and, while `id` is canonical, its state.
    @inline(__always)
    public func owner(_ id: String) -> Int32 { Self.owner(id, partitions: partitions, partitioner: partitioner) }

    /// ``owner(_:)`` of a router with these `partitions` and `partitioner`, without one.
    @inline(__always)
    public static func owner(_ id: String, partitions: Int32, partitioner: KeyPartitioner) -> Int32 {
        partitioner.partition(of: id, count: max(partitions, 1))
    }

    /// Where a call (or a merge record) whose target is `target` goes from this task.
    public enum Step: Sendable, Equatable {
        /// Fold it here, into the state of this canonical identity.
        case fold(into: String)
        /// Write it to repartition partition `partition`, keyed by `target`, with `hops`.
        case forward(partition: Int32, target: String, hops: UInt8)
    }

    /// Steps 1 to 3: a call read from this task's source partition (`hops` 0) or its
    /// repartition partition, whose target is `target` (its userId, else its anonymousId;
    /// or the identity it was forwarded to), having travelled `hops` hops. A forward
    /// carries the hops counted on (the caller writes them as given). With keys by identity
    /// and no link, the first test is the whole cost: `target` is owned here and has no
    /// entry.
    ///
    /// Past ``maxHops`` a call is folded where it is, into `target`'s state, and counted:
    /// only a cycle of links, or instances that disagree on `owner` (a partition count or
    /// partitioner changed on some of them; the daemon refuses to start so), travel that
    /// far, and a call that bounced for ever would hold its partition's offsets for ever.
    public mutating func route(target: String, hops: UInt8) -> Step {
        var target = target
        var hops = hops
        while true {
            let o = owner(target)
            let next: String
            if o != task {
                next = target
            } else {
                guard case .forward(let to) = graph.resolve(target) else { return .fold(into: target) }
                next = to
            }
            if hops >= Self.maxHops {
                hopLimitReached &+= 1
                return .fold(into: target)
            }
            hops += 1
            if o != task { return .forward(partition: o, target: next, hops: hops) }
            target = next
        }
    }

    /// What follows a link noted or applied here.
    public enum LinkStep: Sendable, Equatable {
        /// Nothing more (known already, or refused and counted by the graph).
        case none
        /// Write the link request "`linked` → `into`" to repartition partition `partition`.
        case request(partition: Int32, linked: String, into: String, timeMs: Int64)
        /// `linked` is now linked to `into`: take its folded state, if any, out of this
        /// task (tombstone it) and route it as a merge record whose target is `into`.
        case handOver(linked: String, into: String)
    }

    /// Step 4, after a call was folded into the canonical `c` here: its second id `x`.
    public mutating func note(_ x: String, at c: String, timeMs: Int64) -> LinkStep {
        switch graph.noteSecondId(x, at: c, timeMs: timeMs) {
        case .known, .capReached: return .none
        case .requestLink:
            changed.insert(c)
            let o = owner(x)
            if o != task { return .request(partition: o, linked: x, into: c, timeMs: timeMs) }
            return apply(x, into: c, timeMs: timeMs)
        }
    }

    /// Step 5: the link request "`x` → `c`", read here (or made here: `x` is owned here).
    public mutating func apply(_ x: String, into c: String, timeMs: Int64) -> LinkStep {
        guard case .linked = graph.applyLinkRequest(x, into: c, timeMs: timeMs) else { return .none }
        changed.insert(x)
        return .handOver(linked: x, into: c)
    }

    /// The identities whose entries changed since they were last committed, with their
    /// entries (nil: none any more): the records of the task's next checkpoint. They stay
    /// changed until ``committed(_:)``: a checkpoint that fails while the process goes on
    /// writes them again with the next one (forgotten at the first attempt, a link made
    /// in an aborted transaction was never written, and the graph, which knows it, never
    /// asked for it again).
    public func changes() -> [(id: String, entry: IdentityEntry?)] {
        changed.map { ($0, graph.entry(of: $0)) }
    }

    /// The checkpoint that wrote `ids` (from ``changes()``) committed. An entry changed
    /// again since is written again: its id is only forgotten if its entry is still the
    /// one written.
    public mutating func committed(_ written: [(id: String, entry: IdentityEntry?)]) {
        for w in written where graph.entry(of: w.id) == w.entry { changed.remove(w.id) }
    }

    /// Restores an entry read from `<group>-identities` (nil: a tombstone).
    public mutating func load(_ id: String, _ entry: IdentityEntry?) {
        if let entry { graph.load(id, entry) } else { graph.remove(id) }
    }
}
