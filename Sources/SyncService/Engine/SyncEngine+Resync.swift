import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

extension SyncEngine {
    /// Applies a control record read from partition `p`; false if it is not a request
    /// this version understands (dead-lettered). Called with the lock held.
    func control(_ m: ConsumedMessage, partition p: OffsetTracker.PartitionIndex, nowMono: Int64) -> Bool {
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
            logger.info(
                "resync of all users requested",
                metadata: [
                    "partition": "\(partitionsByIndex[Int(p)])", "offset": .stringConvertible(m.offset),
                    "request_id": .string(request.requestId),
                ])
        case .ids(let ids):
            var queued = 0
            for id in ids {
                // Each partition's owner reads the same list: the owner of a partition the
                // user's events came from sends it.
                users.modify(id) { e in
                    guard e.home == p || sameTask(e.home, p) || e.state.appliedPosition(source: sourceIds[Int(p)]) != nil else {
                        return
                    }
                    markForResync(&e, partition: p, offset: m.offset, nowMono: nowMono)
                    queued += 1
                }
            }
            logger.info(
                "resync of listed users requested",
                metadata: [
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
    func markForResync(_ entry: inout UserEntry, partition p: OffsetTracker.PartitionIndex, offset: Int64, nowMono: Int64) {
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
    var resyncStepBudget: Int {
        guard dirty.count < max(1, options.maxDirtyUsers / 2) else { return 0 }
        let rate = limiter.currentRate
        return max(1, Int(min(max(rate, 0).rounded(.up), 1e9)))
    }

    /// Advances the all-users resync: starts a round for the partitions requested, and
    /// queues the next ``resyncStepBudget`` of their users. A round ends when the table
    /// was walked to its end; then the control records' offsets are released. Called
    /// with the lock held.
    func resyncStep(nowMono: Int64, slots: Int) {
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
            // A user whose latest call came routed (identity resolution) is its task's.
            let p = round[e.home] != nil ? e.home : taskSource(e.home)
            guard let p, let offset = round[p] else { return true }
            markForResync(&e, partition: p, offset: offset, nowMono: nowMono)
            budget -= 1
            return budget > 0
        }
        if resyncCursor == 0 {
            for (p, offset) in round { offsets.release(p, offset: offset) }
            logger.info(
                "resync of all users queued",
                metadata: [
                    "partitions": .stringConvertible(round.count)
                ])
            resyncRound = [:]
        }
    }

    /// Publishes how many partitions have an all-users resync not queued whole. Called
    /// with the lock held.
    func countResyncPending() {
        stats.resyncPendingPartitions = Set(resyncRound.keys).union(resyncQueued.keys).count
    }

    /// The lowest offset of a partition's resync not yet queued whole: nothing at or past
    /// it is committed (durable mode), so that a crash or a move re-reads the request.
    func resyncFloor(_ p: OffsetTracker.PartitionIndex) -> Int64? {
        switch (resyncQueued[p], resyncRound[p]) {
        case (let a?, let b?): return min(a, b)
        case (let a?, nil): return a
        case (nil, let b?): return b
        case (nil, nil): return nil
        }
    }

    /// Forgets the resyncs of revoked partitions, releasing their holds; returns the
    /// offsets not to commit past (the next owner reads those requests again).
    func dropResyncs(of revoked: Set<OffsetTracker.PartitionIndex>) -> [OffsetTracker.PartitionIndex: Int64] {
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
}

extension SyncEngine {
    /// Identity resolution: whether two partitions are of one task (a source partition and
    /// the repartition partition of its number). Called with the lock held.
    func sameTask(_ a: OffsetTracker.PartitionIndex, _ b: OffsetTracker.PartitionIndex) -> Bool {
        options.identity.merge && partitionsByIndex[Int(a)].partition == partitionsByIndex[Int(b)].partition
            && isRepartition(a) != isRepartition(b)
    }

    /// Identity resolution: the source partition of the task a repartition partition is
    /// part of, if assigned here. Called with the lock held.
    func taskSource(_ r: OffsetTracker.PartitionIndex) -> OffsetTracker.PartitionIndex? {
        guard options.identity.merge, isRepartition(r) else { return nil }
        let n = partitionsByIndex[Int(r)].partition
        return assigned.first { partitionsByIndex[Int($0)].partition == n && !isRepartition($0) }
    }
}
