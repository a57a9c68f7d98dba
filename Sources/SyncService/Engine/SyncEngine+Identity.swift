import Delivery
import Events
import Folding
import Foundation
import Kafka

/// Identity resolution in the engine (docs/identity.md): each task's ``IdentityRouter``
/// decides where a call is folded, and the engine performs its steps. Called with the
/// lock held, on the poll thread.
extension SyncEngine {
    /// The router of the task that partition index `pidx` is.
    func withRouter<R>(_ pidx: OffsetTracker.PartitionIndex, _ body: (inout IdentityRouter) -> R) -> R {
        if routers[pidx] == nil {
            let o = options.identity
            routers[pidx] = IdentityRouter(
                task: partitionsByIndex[Int(pidx)].partition, partitions: stateStore?.sourcePartitions ?? 1,
                partitioner: o.partitioner, maxLinked: o.maxLinked)
        }
        return body(&routers[pidx]!)
    }

    /// Steps 1 to 3 for call `j` of the chunk, read from its task's source partition: the
    /// identity it folds into here, or its record for another task (buffered).
    func routeCall(
        _ j: Int, _ identity: String, _ calls: inout DecodedCalls, _ origins: [Int32], _ batch: [ConsumedMessage], _ nowEpoch: Int64
    ) -> IdentityRouter.Step {
        let pidx = index(of: batch[Int(origins[j])].topicPartition)
        let step = withRouter(pidx) { $0.route(target: identity, hops: 0) }
        if case .forward(let q, let target, let hops) = step, case .event(let e) = calls[j] {
            outbound[pidx, default: []].append((q, .call(target: target, hops: hops, event: e, timeMs: e.timeMs ?? nowEpoch)))
        }
        return step
    }

    /// Step 4, after a call was folded into canonical `c` here: its second id `x`.
    func noteLink(_ x: String, at c: String, timeMs: Int64, task pidx: OffsetTracker.PartitionIndex) {
        switch withRouter(pidx, { $0.note(x, at: c, timeMs: timeMs) }) {
        case .none: break
        case .request(let q, let linked, let into, let t):
            outbound[pidx, default: []].append((q, .link(id: linked, canonical: into, timeMs: t, hops: 0)))
        case .handOver(let linked, let into):
            pendingHandOvers.append((pidx, linked, into))
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
            users[h.linked] = nil
            release(&taken.holds)
            release(&taken.flightHolds)
            if taken.delivery.isDirty { dirty.cleared(since: taken.delivery.dirtySinceMs) }
            if options.durable { pendingTombstones[taken.home, default: []].append(h.linked) }
            stats.identitiesMerged += 1
            switch withRouter(h.task, { $0.route(target: h.into, hops: 0) }) {
            case .forward(let q, let target, let hops):
                outbound[h.task, default: []].append((q, .merge(from: h.linked, into: target, state: taken.state, hops: hops)))
            case .fold(let c):
                let (slot, isNew) = users.slot(c)
                users.modify(slot) { entry in
                    if isNew { entry.home = h.task }
                    folder.merge(taken.state, into: &entry.state)
                    markForCheckpoint(c, &entry)
                    let wasDirty = entry.delivery.isDirty
                    debouncer.changed(c, &entry.delivery, nowMs: nowMono)
                    if !wasDirty { dirty.became(since: entry.delivery.dirtySinceMs) }
                }
            }
        }
    }
}
