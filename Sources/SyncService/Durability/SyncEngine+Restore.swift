import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

extension SyncEngine {
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
    func runRestores(
        _ partitions: [TopicPartition], generation: UInt64, retry: Bool,
        ready: (@Sendable ([TopicPartition]) -> Void)?
    ) {
        guard let store = stateStore else { return }
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
                    // Identity resolution: of each task's changelog partition, what its
                    // committed transactions wrote (between a begin marker and its source
                    // marker, the last record of each).
                    var tasks: [Int32: TopicPartition] = [:]
                    if options.identity.merge {
                        var by: [Int32: [TopicPartition]] = [:]
                        for tp in claimed { by[store.statePartition(for: tp.partition), default: []].append(tp) }
                        for (sp, tps) in by where tps.count == 1 { tasks[sp] = tps[0] }
                    }
                    let taskOf = tasks
                    let slots = ParallelSlots(count: statePartitions.count, ChangelogView())
                    DispatchQueue.concurrentPerform(iterations: statePartitions.count) { i in
                        slots[i] = ChangelogView(records[statePartitions[i]] ?? PackedRecords(), transactionsOf: taskOf[statePartitions[i]])
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
                            logger.error(
                                "state restore failed; the partition is not consumed until it succeeds",
                                metadata: [
                                    "partition": "\(tp)", "reason": "\(reason)", "retry_in_ms": retryText,
                                ])
                            lock.withLock { stats.restoreFailures += 1 }
                            failed.append(tp)
                        }
                    }
                } catch {
                    logger.error(
                        "state restore failed; the partitions are not consumed until it succeeds",
                        metadata: [
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

    /// Claims `tp`'s changelog writer for the assignment `generation` (`.claimed`: and the
    /// assignment still current). One claim at a time in the process
    /// (`restoreLock`): an old assignment's claim never races a new one's.
    func claimForRestore(
        _ tp: TopicPartition, generation: UInt64, store: StateStore,
        retryText: Logger.MetadataValue
    ) -> ClaimOutcome {
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
            logger.error(
                "could not claim the changelog writer of an assigned partition; it is not consumed until it succeeds",
                metadata: [
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
    func restore(
        _ tp: TopicPartition, generation: UInt64, view: ChangelogView,
        store: StateStore, ready: (@Sendable ([TopicPartition]) -> Void)? = nil
    ) -> RestoreOutcome {
        let start = clock.monotonicMs()
        let (latest, marker, markers, records) = (view.latest, view.marker(of: tp), !view.markers.isEmpty, view.records.count)
        // Decoded outside the lock: folding goes on meanwhile.
        let source = stableSourceId(tp)
        // Identity resolution: the task's users may have come last through its repartition
        // partition, and its graph is restored with them.
        let merging = options.identity.merge
        var graph: [(id: String, entry: IdentityEntry?)] = []
        if merging {
            do {
                let records =
                    try store.read(topic: options.identity.identitiesTopic, partitions: [tp.partition])[tp.partition] ?? PackedRecords()
                var last: [[UInt8]: [UInt8]?] = [:]
                for r in view.committedIdentities(records.records, of: tp) { last[r.key] = r.value }
                for (key, value) in last {
                    let id = try IdentityCodec.identity(key: key)
                    graph.append((id, try value.map { try IdentityCodec.decode($0) }))
                }
            } catch {
                return .failed("reading \(options.identity.identitiesTopic) failed: \(error)")
            }
        }
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
                    // others' users too: only this partition's are ours. Merging refuses
                    // shared ones, and its users may hold no position of the task at all
                    // (calls handed over in the process are folded without one).
                    if merging || stored.state.appliedSource == source {
                        decoded.append((key, stored))
                    }
                } catch StateCodec.DecodeError.newerVersion(let v) {
                    newer = v
                    return
                } catch {
                    undecodable += 1
                }
            }
        }
        if let newer { return .failed(Self.newerVersion(newer)) }
        // Identity resolution: the last transaction of the task that committed, named by the
        // new owner's start notices.
        let sourceMarker = merging ? marker.flatMap { try? StateCodec.decode($0) } : nil
        let priorTxn = sourceMarker?.markerTxn
        // The first hops the task took and sent (docs/identity.md, "A hop that stays in the
        // process"); a source partition that now ends below what was taken of it was
        // recreated: its first hops start again.
        var taken: [Int32: HopPosition] = [:]
        for h in sourceMarker?.hopsTaken ?? [] where h.task >= 0 && h.task < options.identity.partitions && h.task != tp.partition {
            if let end = try? store.endOffset(TopicPartition(tp.topic, h.task)), end <= h.offset { continue }
            taken[h.task] = HopPosition(offset: h.offset, call: h.call)
        }
        let sent = Dictionary((sourceMarker?.hopsSent ?? []).map { ($0.task, HopPosition(offset: $0.offset, call: $0.call)) }) { a, _ in a }
        let hopsKnown = sourceMarker == nil || sourceMarker!.hopsKnown
        // Identity resolution: how far the task's source and repartition partitions are
        // committed by the changelog (``replayFloors``).
        var floors: [TopicPartition: Int64] = [:]
        var markerOf: [(TopicPartition, [UInt8])] = marker.map { [(tp, $0)] } ?? []
        if merging, let topic = options.identity.repartitionTopic {
            let rtp = TopicPartition(topic, tp.partition)
            if let m = view.marker(of: rtp) { markerOf.append((rtp, m)) }
        }
        for (of, marker) in markerOf {
            do {
                guard let offset = try StateCodec.decode(marker).markerOffset else {
                    undecodable += 1
                    continue
                }
                if merging && offset > 0 { floors[of] = offset }
            } catch StateCodec.DecodeError.newerVersion(let v) {
                return .failed(Self.newerVersion(v))
            } catch {
                undecodable += 1
            }
        }
        // A partition that now ends below its marker was recreated (or truncated): its
        // messages are new, folded, not skipped.
        for (of, floor) in floors {
            guard let end = try? store.endOffset(of), end < floor else { continue }
            floors[of] = nil
            logger.warning(
                "the partition ends below the offset its changelog marker committed (recreated?); its messages are folded, not skipped",
                metadata: ["partition": "\(of)", "end": .stringConvertible(end), "marker": .stringConvertible(floor)])
        }
        if undecodable > 0 {
            return .failed(
                "\(undecodable) changelog records cannot be decoded (damaged, or not written by foldspace-sync); see docs/operations.md")
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
                return .failed(
                    "the changelog holds nothing for this partition, but the group has consumed it up to offset \(committed): "
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
            var released = [tp]
            if merging {
                replayFloors[tp] = floors[tp]
                txns[tp.partition] = TaskTransactions(prior: priorTxn, nowMs: clock.monotonicMs())
                hopsTaken[tp.partition] = taken.isEmpty ? nil : taken
                hopsSent[tp.partition] = sent.isEmpty ? nil : sent
                if hopsKnown { hopsUnknown.remove(tp.partition) } else { hopsUnknown.insert(tp.partition) }
                // The task's graph, and its repartition partition, held until now.
                retireRouter(tp.partition)
                withRouter(tp.partition) { r in for g in graph { r.load(g.id, g.entry) } }
                if let topic = options.identity.repartitionTopic {
                    let rtp = TopicPartition(topic, tp.partition)
                    if restoringGeneration.removeValue(forKey: rtp) != nil {
                        assigned.insert(index(of: rtp))
                        released.append(rtp)
                        replayFloors[rtp] = floors[rtp]
                    }
                }
            }
            // Messages of them delivered meanwhile were not read: read again from the first.
            for r in released {
                guard let first = readBeforeRestore.removeValue(forKey: r) else { continue }
                rereads[r] = (first, false)
                logger.info(
                    "messages of a partition were delivered while it was held for its restore; it is read again from the first",
                    metadata: ["partition": "\(r)", "offset": .stringConvertible(first)])
            }
            // Released under the lock, while this assignment is known current: a later
            // revocation clears the release, and no stale one can follow.
            ready?(released)
            return true
        }
        guard loaded else { return .stale }
        updateRateShare()
        logger.info(
            "partition restored",
            metadata: [
                "partition": "\(tp)", "records": .stringConvertible(records), "users": .stringConvertible(restored),
                "dirty": .stringConvertible(dirty), "ms": .stringConvertible(clock.monotonicMs() - start),
                // Identity resolution: what is read below these offsets is skipped (committed).
                "markers":
                    "\(floors.sorted { $0.key.partition < $1.key.partition }.map { "\($0.key)@\($0.value)" }.joined(separator: ","))",
            ])
        return .restored
    }
}
