import Delivery
import Events
import Folding
import Foundation
import Kafka

/// Identity resolution in the engine (docs/identity.md): each task's ``IdentityRouter``
/// decides where a call is folded, and the engine performs its steps. Called with the
/// lock held, on the poll thread.
extension SyncEngine {
    /// The router of task `task` (a partition number of the source and the repartition
    /// topic alike).
    func withRouter<R>(_ task: Int32, _ body: (inout IdentityRouter) -> R) -> R {
        if routers[task] == nil {
            nextRoutingGeneration()
            let o = options.identity
            routers[task] = IdentityRouter(
                task: task, partitions: o.partitions,
                partitioner: o.partitioner, maxLinked: o.maxLinked)
        }
        return body(&routers[task]!)
    }

    /// The most bytes an identity Foldspace takes can have: 255 characters of up to 4.
    static let longestIdentityBytes = 1_020

    /// Whether identity `id`, held here under partition `home`, is linked to another
    /// (its hand-over refused). Called with the lock held.
    func isLinkedHere(_ id: String, home: OffsetTracker.PartitionIndex) -> Bool {
        guard options.identity.merge, Int(home) < partitionsByIndex.count else { return false }
        guard let r = routers[partitionsByIndex[Int(home)].partition] else { return false }
        return r.graph.entry(of: id)?.linkedTo != nil
    }

    /// Lets task `task`'s router go (revoked, or replaced by a restored one), its counts kept.
    func retireRouter(_ task: Int32) {
        if let r = routers.removeValue(forKey: task) { retiredIdentity.add(r) }
        nextRoutingGeneration()
    }

    /// Makes every ``UserEntry/routedAt`` stale: a graph was made or let go.
    func nextRoutingGeneration() {
        routingGeneration &+= 1
        guard routingGeneration == 0 else { return }
        // Wrapped (after 65,535 routers made or let go): an entry found long ago would
        // look current again.
        routingGeneration = 1
        users.forgetRouting()
    }

    /// What becomes of a call (``routeCall(_:_:_:_:_:_:routed:call:replay:)``).
    enum Route: Equatable {
        /// Fold it here, into this identity's state.
        case fold(String)
        /// Fold it into this identity's state as task `task`, which it was handed to in
        /// the process.
        case inProcess(String, task: Int32)
        /// Buffered for another task (or forwarded on by the task it was handed to).
        case forward
        /// A first hop taken already, or a replayed call whose effects are committed.
        case skip
    }

    /// Steps 1 to 3 for call `j` of the chunk, read from its task's source partition (call
    /// `call` of its message; `replay`: below the task's marker; `own`: its identity is the
    /// task's own, which its marker covers, so a forward of it, to the user it was linked
    /// to, is no first hop and goes through Kafka in the task's transaction) or a call routed here,
    /// decoded with them: the identity it folds into here, the task it is handed to in the
    /// process, or its record for another task (buffered).
    func routeCall(
        _ j: Int, _ identity: String, _ calls: inout DecodedCalls, _ origins: [Int32], _ batch: [ConsumedMessage], _ nowEpoch: Int64,
        routed: RoutedCallInfo?, call: UInt32, replay: Bool, own: Bool
    ) -> Route {
        let m = batch[Int(origins[j])]
        let task = m.topicPartition.partition
        // An origin naming no task of the topic (written by no build of this) is no first hop.
        if let o = routed?.origin, o.task >= 0, o.task < options.identity.partitions, o.task != task {
            // A first hop, taken here unless it was before (sent again by a source task
            // that replays what it handed over).
            let at = HopPosition(offset: o.offset, call: o.call)
            if let a = hopsTaken[task]?[o.task], at <= a { return .skip }
            hopsTaken[task, default: [:]][o.task] = at
            hopsTakenDue.insert(task)
        }
        // A call routed here goes by its target, with its hops so far; a source call by its
        // identity.
        let step = withRouter(task) { $0.route(target: routed?.target ?? identity, hops: routed?.hops ?? 0) }
        guard case .forward(let q, let target, let hops) = step, case .event(let k) = calls.outcomes[j] else {
            if case .fold(let c) = step { return .fold(c) }
            return .forward
        }
        // Encoded where the event lies (the subscript would copy all of it).
        func body() -> [UInt8] { calls.events[Int(k)].compact(timeMs: calls.events[Int(k)].timeMs ?? nowEpoch) }
        var origin: HopMark?
        if routed == nil && !own {
            // A first hop, from this task's source partition.
            let at = HopPosition(offset: m.offset, call: call)
            // Replayed below the marker: sent through Kafka before (committed with the
            // marker, or buffered since), unless it went past what was sent that way.
            if replay, hopsUnknown.contains(task) || (hopsSent[task]?[q]).map({ at <= $0 }) ?? false { return .skip }
            if handsInProcess(from: task, to: q) {
                if let a = hopsTaken[q]?[task], at <= a { return .skip }
                hopsTaken[q, default: [:]][task] = at
                hopsTakenDue.insert(q)
                handedInProcess[task, default: [:]][q] = m.offset
                if firstHanded[task]?[q] == nil { firstHanded[task, default: [:]][q] = m.offset }
                stats.handedInProcess += 1
                switch withRouter(q, { $0.route(target: target, hops: hops) }) {
                case .fold(let c):
                    return .inProcess(c, task: q)
                case .forward(let r, let t, let h):
                    // Forwarded on by q, through Kafka, in q's transaction.
                    outbound[q, default: []].append((r, .calls([.init(target: t, hops: h, body: body())])))
                    return .forward
                }
            }
            origin = HopMark(task: task, offset: m.offset, call: call)
            if hopsSent[task]?[q].map({ $0 < at }) ?? true { hopsSent[task, default: [:]][q] = at }
        }
        outbound[task, default: []].append((q, .calls([.init(target: target, hops: hops, body: body(), origin: origin)])))
        return .forward
    }

    /// The partition index of task `q`'s repartition partition, where the users of calls
    /// handed to it in the process are homed: looked up once per task, not per call (a
    /// partition's index never changes).
    func repartitionIndex(ofTask q: Int32) -> OffsetTracker.PartitionIndex {
        if Int(q) < repartitionIndexByTask.count, let i = repartitionIndexByTask[Int(q)] { return i }
        let i = index(of: TopicPartition(options.identity.repartitionTopic ?? "", q))
        if Int(q) >= repartitionIndexByTask.count {
            repartitionIndexByTask += Array(repeating: nil, count: Int(q) + 1 - repartitionIndexByTask.count)
        }
        repartitionIndexByTask[Int(q)] = i
        return i
    }

    /// Whether source task `p` hands its calls for task `q` over in the process: q is held
    /// and restored here, and has taken every first hop p sent it through Kafka (so that
    /// q takes p's first hops in order, whichever way they come).
    func handsInProcess(from p: Int32, to q: Int32) -> Bool {
        guard inProcessHops, q != p, txns[q] != nil, !halted else { return false }
        return hasTakenAllSent(q, from: p)
    }

    /// Whether task `q` has taken every first hop source task `p` sent it through Kafka.
    func hasTakenAllSent(_ q: Int32, from p: Int32) -> Bool {
        guard let sent = hopsSent[p]?[q] else { return true }
        return hopsTaken[q]?[p].map { $0 >= sent } ?? false
    }

    /// Called with the lock held: whether source task `p` is to wait before reading on,
    /// for a task it would hand calls to in the process but sent first hops through Kafka
    /// that it has not taken yet.
    func waitsForSwitch(_ p: Int32) -> Bool {
        guard inProcessHops, !switchGivenUp.contains(p), let sent = hopsSent[p] else { return false }
        return sent.keys.contains { q in q != p && txns[q] != nil && !hasTakenAllSent(q, from: p) }
    }

    /// Called with the lock held: whether source partition `tp`'s wait (``switchWaits``)
    /// goes on; gives it up past ``switchWaitLimitMs``.
    func stillWaitsForSwitch(_ tp: TopicPartition, nowMs: Int64) -> Bool {
        guard waitsForSwitch(tp.partition) else {
            switchWaits[tp] = nil
            return false
        }
        let since = switchWaits[tp] ?? nowMs
        if nowMs - since > Self.switchWaitLimitMs {
            switchWaits[tp] = nil
            switchGivenUp.insert(tp.partition)
            logger.warning(
                "a task waited too long for another to take the calls it sent through Kafka; it goes on sending through Kafka",
                metadata: ["partition": "\(tp)"])
            return false
        }
        switchWaits[tp] = since
        return true
    }

    /// Called with the lock held: the source partitions of the tasks kept here that handed
    /// the tasks of `revoked` calls in the process, or were handed calls by them.
    func keptTasksHandingWith(_ revoked: [OffsetTracker.PartitionIndex]) -> [OffsetTracker.PartitionIndex] {
        let sources = revoked.filter { !repartitionByIndex[Int($0)] }
        guard let topic = sources.first.map({ partitionsByIndex[Int($0)].topic }) else { return [] }
        let gone = Set(sources.map { partitionsByIndex[Int($0)].partition })
        var related: Set<Int32> = []
        for (p, handed) in handedInProcess {
            if gone.contains(p) { related.formUnion(handed.keys) } else if handed.keys.contains(where: gone.contains) { related.insert(p) }
        }
        return related.subtracting(gone).compactMap { t in
            partitionIndex[TopicPartition(topic, t)].flatMap { assigned.contains($0) ? $0 : nil }
        }
    }

    /// Called with the lock held, after a revocation's checkpoint: a revoked task that
    /// handed a task kept here calls that task has not committed (its checkpoint failed)
    /// leaves them in the kept task's memory only, while the revoked task's next owner
    /// sends them again and the kept task skips them as taken: a crash would lose them.
    /// Nothing more is written or sent; a restart restores every task from what committed.
    func haltIfHandedCallsAreLost(_ revoked: [OffsetTracker.PartitionIndex]) {
        for i in revoked where !repartitionByIndex[Int(i)] {
            let p = partitionsByIndex[Int(i)].partition
            for (q, last) in handedInProcess[p] ?? [:] where txns[q] != nil && last >= (durableAt[p]?[q] ?? -1) {
                halted = true
                logger.error(
                    "a task left while calls it handed another task held here are not committed there; this instance stops writing and sending: restart it",
                    metadata: ["partition": "\(partitionsByIndex[Int(i)])", "task": .stringConvertible(q)])
                return
            }
        }
    }

    /// Called with the lock held, as tasks `gone` leave this instance while others stay
    /// (the eager assignor the daemon sets revokes every task at once; a partial revocation
    /// is a safeguard): a task that handed them calls in the process not committed there
    /// reads its source again from its last commit. Its memory stays (its own calls up to
    /// what it read are skipped as replays); its calls for other tasks are sent again, in
    /// order, before any later one, and skipped where they were taken.
    func rewindHandingTasks(to gone: Set<Int32>) {
        guard let topic = zip(partitionsByIndex, repartitionByIndex).first(where: { !$0.1 })?.0.topic else { return }
        for (p, handed) in handedInProcess {
            // From where each task that left may lack p's calls: what its last committed
            // transaction covered, or the first call p handed it.
            let lost = handed.keys.filter { gone.contains($0) && handed[$0]! >= (durableAt[p]?[$0] ?? -1) }
                .compactMap { durableAt[p]?[$0] ?? firstHanded[p]?[$0] }
            for q in gone {
                handedInProcess[p]?[q] = nil
                durableAt[p]?[q] = nil
                firstHanded[p]?[q] = nil
                hopsSent[p]?[q] = nil
            }
            guard let earliest = lost.min(), let i = partitionIndex[TopicPartition(topic, p)], assigned.contains(i),
                let consumed = offsets.consumedPosition(i)
            else { continue }
            let tp = TopicPartition(topic, p)
            let from = max(earliest, lastCommitted[i] ?? 0)
            replayFloors[tp] = max(replayFloors[tp] ?? 0, consumed)
            // The group offset stays there until the re-read has passed what was read.
            rewinds[p] = min(rewinds[p] ?? .max, from)
            // What the task sent through Kafka up to what it read went before these.
            hopsUnknown.remove(p)
            rereads[tp] = (from, false)
            logger.warning(
                "a task this instance handed calls to left before committing them; the handing task reads its source again from its last commit",
                metadata: ["partition": "\(tp)", "offset": .stringConvertible(from), "read": .stringConvertible(consumed)])
        }
    }

    /// Step 4, after a call was folded into canonical `c` here: its second id `x`.
    func noteLink(_ x: String, at c: String, timeMs: Int64, task: Int32, home: OffsetTracker.PartitionIndex) {
        perform(withRouter(task, { $0.note(x, at: c, timeMs: timeMs) }), task: task, home: home)
    }

    func perform(_ step: IdentityRouter.LinkStep, task: Int32, home: OffsetTracker.PartitionIndex) {
        switch step {
        case .none: break
        case .request(let q, let linked, let into, let t):
            outbound[task, default: []].append((q, .link(id: linked, canonical: into, timeMs: t, hops: 0)))
        case .handOver(let linked, let into):
            // Linked: no longer canonical (its state may yet stay here, its hand-over refused).
            _ = users.modify(linked) { $0.routedAt = 0 }
            pendingHandOvers.append((task, home, linked, into))
        }
    }

    /// A message of `<group>-repartition` read at partition index `pidx` that the decode did
    /// not take as a routed call: a link request or a merge record. A record that does not
    /// decode is invalid input like any other.
    func routed(
        _ m: ConsumedMessage, partition pidx: OffsetTracker.PartitionIndex, nowMono: Int64,
        invalid: inout [(Int, DecodeFailure, UInt64)], message i: Int
    ) {
        let task = m.topicPartition.partition
        let record: RepartitionRecord
        do {
            record = try RepartitionRecord.decode(key: m.key, value: m.value)
        } catch {
            stats.invalid[.notJSON, default: 0] += 1
            offsets.hold(pidx, offset: m.offset)
            invalid.append((i, DecodeFailure(.notJSON, field: "repartition"), reserveDeadLetter(.offset(pidx, m.offset))))
            return
        }
        switch record {
        case .link(let id, let canonical, let timeMs, _):
            perform(withRouter(task, { $0.apply(id, into: canonical, timeMs: timeMs) }), task: task, home: pidx)
        case .merge(let from, let into, let state, let hops):
            switch withRouter(task, { $0.route(target: into, hops: hops) }) {
            case .forward(let q, let target, let h):
                outbound[task, default: []].append((q, .merge(from: from, into: target, state: state, hops: h)))
            case .fold(let c):
                mergeState(
                    state, into: c, home: pidx, position: AppliedPosition(source: sourceIds[Int(pidx)], offset: m.offset), nowMono: nowMono)
            }
        case .notice:
            break  // read by the gate (``TransactionGate``)
        case .call, .calls:
            // A routed call that decodes as one event was decoded, routed and folded with
            // the source's calls (``decodeRoutedCalls``, ``routeCall``): one read here does
            // not, and is invalid input like any other.
            stats.invalid[.notJSON, default: 0] += 1
            offsets.hold(pidx, offset: m.offset)
            invalid.append((i, DecodeFailure(.notJSON, field: "repartition"), reserveDeadLetter(.offset(pidx, m.offset))))
        }
    }

    /// Merges `state` into canonical `c`'s here, unless `c` has applied `position`
    /// already (a merge record read again).
    func mergeState(_ state: UserState, into c: String, home: OffsetTracker.PartitionIndex, position: AppliedPosition?, nowMono: Int64) {
        let (slot, isNew) = users.slot(c)
        users.modify(slot) { entry in
            if isNew { entry.home = home }
            if let position {
                if entry.state.hasApplied(source: position.source, offset: position.offset) { return }
                folder.merge(state, into: &entry.state)
                entry.state.recordApplied(position)
            } else {
                folder.merge(state, into: &entry.state)
            }
            markForCheckpoint(c, &entry)
            let wasDirty = entry.delivery.isDirty
            debouncer.changed(c, &entry.delivery, nowMs: nowMono)
            if !wasDirty { dirty.became(since: entry.delivery.dirtySinceMs) }
        }
    }

    /// Takes each identity linked while the chunk was folded out of the table and merges
    /// its state into its user's (here, or as a merge record for the user's task). What
    /// the table's other parts held for it goes with it: its offsets' holds, its share of
    /// the dirty count; a request in flight for it completes into nothing.
    func performHandOvers(nowMono: Int64) {
        let handOvers = pendingHandOvers
        pendingHandOvers.removeAll(keepingCapacity: true)
        for h in handOvers {
            guard var taken = users[h.linked] else { continue }  // nothing was folded under it
            // Only what this task holds moves: an identity homed on another task's
            // partitions (state written before merging was turned on) would have its
            // tombstone written in that task's transaction, apart from its merge record.
            guard partitionsByIndex[Int(taken.home)].partition == h.task else {
                stats.handOversRefused += 1
                continue
            }
            let step = withRouter(h.task, { $0.route(target: h.into, hops: 0) })
            var merge: RepartitionRecord?
            // A merge the changelog or the broker would refuse does not happen: the identity
            // keeps its state here (its tombstone would commit without the record, or beside
            // a merged state left out of the checkpoint, and its history would be lost).
            var bytes = 0
            switch step {
            case .forward(_, let target, let hops):
                let record = RepartitionRecord.merge(from: h.linked, into: target, state: taken.state, hops: hops)
                let (k, v) = record.encode()
                // Room for the record forwarded on, keyed by a longer identity (255
                // characters of up to 4 bytes), and for its transaction's tag (at most 25
                // bytes of varints).
                bytes = k.count + v.count + Self.longestIdentityBytes + 25
                merge = record
            case .fold(let c):
                let other = users[c].map { StateCodec.encode(StoredUser(state: $0.state, dirty: true, settledHash: 0)).count } ?? 0
                bytes = StateCodec.encode(StoredUser(state: taken.state, dirty: true, settledHash: 0)).count + other + c.utf8.count
            }
            if let limit = stateStore?.maxRecordBytes, bytes > limit {
                stats.handOversRefused += 1
                logger.warning(
                    "a linked identity's state is too large to merge into its user; it stays a user of its own",
                    metadata: ["task": .stringConvertible(h.task), "bytes": .stringConvertible(bytes)])
                continue
            }
            users[h.linked] = nil
            // A rejected body's dead letter still to be written: the identity is gone.
            pendingUserLetters[h.linked] = nil
            release(&taken.holds)
            release(&taken.flightHolds)
            if taken.delivery.isDirty { dirty.cleared(since: taken.delivery.dirtySinceMs) }
            if options.durable { pendingTombstones[taken.home, default: []].append(h.linked) }
            stats.identitiesMerged += 1
            switch step {
            case .forward(let q, _, _):
                if let merge { outbound[h.task, default: []].append((q, merge)) }
            case .fold(let c):
                mergeState(taken.state, into: c, home: h.home, position: nil, nowMono: nowMono)
            }
        }
    }

    /// Records buffered for other tasks and not yet written (their tasks read them only once
    /// a checkpoint has committed them, and a later one's notices say so), notices
    /// waiting, and users queued for the next checkpoint:
    /// ``Checkpoints`` asks, to checkpoint sooner.
    public var checkpointBacklog: (routed: Int, users: Int) {
        lock.withLock {
            (
                outbound.values.reduce(0) { $0 + $1.count } + txns.values.reduce(0) { $0 + $1.waiting },
                pendingCheckpoint.values.reduce(0) { $0 + $1.count }
            )
        }
    }

    /// Whether the last checkpoint held merging tasks back for their dead letters.
    public var lastCheckpointHeldBack: Bool { lock.withLock { heldBack } }

    /// Calls read so far (folded, forwarded to another task, or skipped as replays):
    /// ``Checkpoints`` tells an idle fold from a busy one by it.
    public var callsRead: Int { lock.withLock { stats.folded &+ stats.forwarded &+ stats.skippedReplays } }

    /// The records buffered for other tasks, taken (for the checkpoint that writes them;
    /// tests read them).
    func takeOutbound() -> [Int32: [(partition: Int32, record: RepartitionRecord)]] {
        lock.withLock {
            defer { outbound.removeAll(keepingCapacity: true) }
            return outbound
        }
    }
}
