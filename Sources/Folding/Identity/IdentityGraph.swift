/// The identity graph of one task: the entries of the identities it owns (owner(id) =
/// murmur2(id) mod N), and the rules of docs/identity.md, "Routing one call", steps 3 to
/// 5, as decisions returned as values. The engine performs them (forwards calls, sends
/// link requests, hands state over); this type does no I/O and keeps no clock.
///
/// Identities are told apart by their UTF-8 bytes (``IdentityKey``), as the user table
/// and the changelog tell them apart: two byte-different ids that Swift finds equal are
/// two identities here too. Every identity given is a valid one (non-empty, at most 255
/// characters), as the event decoder lets through: ``IdentityCodec`` reads no other.
///
/// Counts (``Counts``) count decisions: a replayed link request that links nothing
/// again counts no link, but a replayed conflict, cap or cycle counts again, as any
/// counter of calls seen does.
public struct IdentityGraph: Sendable {
    public static let defaultMaxLinked = 100

    /// The most identities linked into one (`identity.max_linked`): one more is counted
    /// and not linked. At most ``IdentityCodec/maxLinked``, so that every entry the graph
    /// holds can be written and read back.
    public let maxLinked: Int

    public private(set) var counts = Counts()

    private var entries: [IdentityKey: IdentityEntry] = [:]

    /// `maxLinked` outside `0...IdentityCodec.maxLinked` is taken as the nearest bound.
    public init(maxLinked: Int = defaultMaxLinked) {
        self.maxLinked = min(max(maxLinked, 0), IdentityCodec.maxLinked)
    }

    /// The decisions the engine exports as counters.
    public struct Counts: Sendable, Equatable {
        /// Identities linked (``LinkOutcome/linked(carried:)``).
        public var links: UInt64 = 0
        /// Link requests refused because the identity was linked to another user.
        public var conflicts: UInt64 = 0
        /// Second ids not linked because the canonical identity had ``maxLinked`` already.
        public var capReached: UInt64 = 0
        /// Link requests refused as a direct cycle (``LinkOutcome/cycle``).
        public var cycles: UInt64 = 0

        public init() {}
    }

    /// Where a call whose target (or next hop) is an identity goes on (step 3).
    public enum Resolution: Sendable, Equatable {
        /// The identity is canonical: the call is folded into its state.
        case canonical
        /// The identity was linked: the call goes on to the owner of this identity.
        case forward(to: String)
    }

    /// What step 4 decided about a call's second id at its canonical identity.
    public enum NoteOutcome: Sendable, Equatable {
        /// The second id is the canonical identity, or linked into it already: nothing to do.
        case known
        /// The second id was added to the canonical identity's `linked`: the caller sends
        /// the link request "second id → canonical" to the owner of the second id.
        case requestLink
        /// The canonical identity has ``IdentityGraph/maxLinked`` linked already: counted,
        /// not linked, no request.
        case capReached
    }

    /// What step 5 decided at the owner of the identity a link request names.
    public enum LinkOutcome: Sendable, Equatable {
        /// The identity was not linked and now is: the caller hands its folded state, if
        /// any, over to the canonical side as a merge record and tombstones it. `carried`
        /// are the identities that were linked into it: they keep pointing at it and
        /// reach the new user through it (one hop more), so the caller may count them or
        /// re-point them later. They are not re-pointed here.
        case linked(carried: [String])
        /// Linked to the same identity already (a replayed request): nothing.
        case duplicate
        /// Linked to another identity: it stays with that one, and the request is counted.
        case conflict(existing: String)
        /// The request would link the identity to itself, or to an identity linked into
        /// it (two aliases racing each other, each noted at its own side first): refused
        /// and counted. Only this direct cycle is caught; a longer one (three ids linked
        /// around) is bounded by the hop count of routing.
        case cycle
    }

    // MARK: Routing

    /// Step 3: whether `id` is canonical or linked on (no entry, or an entry without a
    /// link, is canonical).
    @inline(__always)
    public func resolve(_ id: String) -> Resolution {
        guard let to = entries[IdentityKey(id)]?.linkedTo?.identity else { return .canonical }
        return .forward(to: to)
    }

    /// Step 4, at the canonical identity `canonical` of a call that carries the second
    /// id `x` (the anonymousId beside a userId, or an alias's previousId). `timeMs` is the
    /// call's event time, which the link request carries; `canonical`'s entry keeps no
    /// times. Called where ``resolve(_:)`` found `canonical` canonical; were it linked on,
    /// `x` would still reach its user, through it.
    public mutating func noteSecondId(_ x: String, at canonical: String, timeMs: Int64) -> NoteOutcome {
        if IdentityKey.same(x, canonical) { return .known }
        let key = IdentityKey(canonical)
        guard let i = entries.index(forKey: key) else {
            guard maxLinked > 0 else { return capReached() }
            let e = IdentityEntry(linked: [x])
            entries[key] = e
            tally(e, 1)
            return .requestLink
        }
        if entries.values[i].hasLinked(x) { return .known }
        guard entries.values[i].linked.count < maxLinked else { return capReached() }
        tally(entries.values[i], -1)
        entries.values[i].linked.append(x)
        tally(entries.values[i], 1)
        return .requestLink
    }

    private mutating func capReached() -> NoteOutcome {
        counts.capReached &+= 1
        return .capReached
    }

    /// Step 5, at the owner of `x`: the link request "`x` → `c`" made at `c` by a call of
    /// event time `timeMs`.
    public mutating func applyLinkRequest(_ x: String, into c: String, timeMs: Int64) -> LinkOutcome {
        if IdentityKey.same(x, c) { return cycle() }
        let key = IdentityKey(x)
        guard let i = entries.index(forKey: key) else {
            entries[key] = IdentityEntry(linkedTo: IdentityLink(identity: c, timeMs: timeMs))
            counts.links &+= 1
            return .linked(carried: [])
        }
        if let existing = entries.values[i].linkedTo?.identity {
            if IdentityKey.same(existing, c) { return .duplicate }
            counts.conflicts &+= 1
            return .conflict(existing: existing)
        }
        if entries.values[i].hasLinked(c) { return cycle() }
        tally(entries.values[i], -1)
        entries.values[i].linkedTo = IdentityLink(identity: c, timeMs: timeMs)
        counts.links &+= 1
        return .linked(carried: entries.values[i].linked)
    }

    private mutating func cycle() -> LinkOutcome {
        counts.cycles &+= 1
        return .cycle
    }

    // MARK: Entries

    /// The entry of `id`, if it has one: the value of its `<group>-identities` record.
    public func entry(of id: String) -> IdentityEntry? { entries[IdentityKey(id)] }

    /// How many identities have an entry.
    public var count: Int { entries.count }

    /// How many identities are linked into each canonical identity that has any (for a
    /// histogram): entries linked on themselves are left out, their ids counted at the
    /// user they reach.
    public var linkedCounts: some Sequence<Int> {
        entries.values.lazy.filter { $0.linkedTo == nil && !$0.linked.isEmpty }.map(\.linked.count)
    }

    /// What ``linkedCounts`` sums to, kept as the entries change (a scrape walked every
    /// entry under the engine's lock, stalling the fold): the canonical identities with
    /// ids linked into them, those ids, and the most linked into one.
    public var linkedSummary: (users: Int, linked: Int, most: Int) {
        var out = (users: 0, linked: 0, most: 0)
        for (n, c) in byLinkedCount.enumerated() where c > 0 {
            out.users += c
            out.linked += n * c
            out.most = n
        }
        return out
    }

    /// `byLinkedCount[n]`: the canonical identities with `n` ids linked into them (at most
    /// ``maxLinked`` + 1 slots, restored entries included).
    private var byLinkedCount: [Int] = []

    /// Counts `e` in (`sign` 1) or out (-1) of ``byLinkedCount``.
    private mutating func tally(_ e: IdentityEntry?, _ sign: Int) {
        guard let e, e.linkedTo == nil, !e.linked.isEmpty else { return }
        let n = e.linked.count
        if n >= byLinkedCount.count { byLinkedCount += repeatElement(0, count: n + 1 - byLinkedCount.count) }
        byLinkedCount[n] += sign
    }

    /// Restores the entry of `id` from its record. The entry is made to hold the graph's
    /// rules: a link to `id` itself is dropped, and so are `id` itself and repeats in
    /// `linked`, and ids past ``maxLinked`` (the oldest kept: after the cap was lowered
    /// their calls count at the cap instead of being known, and still reach the user,
    /// as their own owner keeps their link). An entry left empty is removed.
    public mutating func load(_ id: String, _ entry: IdentityEntry) {
        var e = entry
        if let to = e.linkedTo, IdentityKey.same(to.identity, id) { e.linkedTo = nil }
        var kept: [String] = []
        var seen: Set<IdentityKey> = [IdentityKey(id)]
        for l in e.linked where kept.count < maxLinked && seen.insert(IdentityKey(l)).inserted { kept.append(l) }
        e.linked = kept
        if e.linkedTo == nil && e.linked.isEmpty {
            remove(id)
        } else {
            tally(entries.updateValue(e, forKey: IdentityKey(id)), -1)
            tally(e, 1)
        }
    }

    /// Removes the entry of `id` (a tombstone restored from `<group>-identities`).
    public mutating func remove(_ id: String) {
        tally(entries.removeValue(forKey: IdentityKey(id)), -1)
    }

    /// Calls `body` with every entry, in no particular order.
    public func forEachEntry(_ body: (_ id: String, _ entry: IdentityEntry) throws -> Void) rethrows {
        for (k, e) in entries { try body(k.string, e) }
    }

    /// Whether `other` holds the same entries (its counts and cap aside).
    public func sameEntries(as other: IdentityGraph) -> Bool { entries == other.entries }
}
