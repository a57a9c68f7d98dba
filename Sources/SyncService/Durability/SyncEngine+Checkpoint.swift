import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

extension SyncEngine {
    /// Called with the lock held: queue the user for the next checkpoint.
    func markForCheckpoint(_ key: String, _ entry: inout UserEntry) {
        guard options.durable, !entry.checkpointPending else { return }
        entry.checkpointPending = true
        pendingCheckpoint[entry.home, default: []].append(key)
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
        guard let store = stateStore else { return false }
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
        // Each position with its group: committed only when that group is.
        var positions: [(g: Int, p: OffsetTracker.PartitionIndex, pos: Int64)] = []
        var tombstones: [(partition: Int32, key: String, home: OffsetTracker.PartitionIndex)] = []
        var deadLetterBarrier: UInt64 = 0
        // Identity resolution: per group, its task's records for other topics, the offsets of
        // its repartition partition, the graph entries written and the buffer taken (put
        // back when the checkpoint fails).
        var identity: [Int: TaskExtras] = [:]
        // Merging tasks written whole or not at all, and only with the offsets that cover
        // them: a hand-over's tombstone without its merge record, or a graph entry without
        // its link request, would lose what they carry. A task held here (its dead letters
        // not written yet) waits, whole, for a later checkpoint.
        var held: Set<Int> = []
        let merging = options.identity.merge
        // A restored task's markers are written again at its first checkpoint, with the
        // floor it was restored with when nothing moved since (-1 would lose it). Both read
        // with the positions: the fold may pass a floor (and drop it) meanwhile.
        var due: Set<OffsetTracker.PartitionIndex> = []
        var floors: [TopicPartition: Int64] = [:]
        lock.withLock {
            deadLetterBarrier = deadLetterSeq
            due = markerDue
            floors = replayFloors
            let scope = partitions ?? Array(assigned)
            // Asked of the store once, not per user.
            let statePartitions = partitionsByIndex.map { store.statePartition(for: $0.partition) }
            let sourcePartitions = store.sourcePartitions
            let pending = scope.map { pendingCheckpoint[$0]?.count ?? 0 }.reduce(0, +)
            snapshot.reserveCapacity(pending)
            keys.reserveCapacity(pending)
            for p in scope {
                // A repartition partition is written with its task's source partition.
                if merging && isRepartition(p) { continue }
                // A task not restored here (a revocation while its restore runs or waits to
                // retry): it has nothing to write, and a transaction of its own would tell
                // readers that nothing of its former owner committed.
                if merging && txns[partitionsByIndex[Int(p)].partition] == nil { continue }
                groups.append((partitionsByIndex[Int(p)], p, snapshot.count, tombstones.count))
                var pendingKeys = pendingCheckpoint.removeValue(forKey: p) ?? []
                var tombstoneKeys = pendingTombstones.removeValue(forKey: p) ?? []
                if merging {
                    let extras = takeTaskExtras(p, store: store)
                    if let r = extras.repartitionIndex {
                        pendingKeys += pendingCheckpoint.removeValue(forKey: r) ?? []
                        tombstoneKeys += pendingTombstones.removeValue(forKey: r) ?? []
                        if let pos = offsets.consumedPosition(r), pos > (lastCommitted[r] ?? -1),
                            pos >= (replayFloors[partitionsByIndex[Int(r)]] ?? 0)
                        {
                            identity[groups.count - 1, default: extras].offsets[partitionsByIndex[Int(r)]] = pos
                            positions.append((groups.count - 1, r, pos))
                        }
                    }
                    if identity[groups.count - 1] == nil { identity[groups.count - 1] = extras }
                }
                for key in pendingKeys {
                    let taken: (Int32, StoredUser, OffsetTracker.PartitionIndex)? =
                        users.modify(key) { entry in
                            guard entry.checkpointPending else { return nil }
                            entry.checkpointPending = false
                            // A rejected body whose dead letter is not written yet: stored as
                            // not settled, so that a crash before the letter lands sends it again.
                            let letterPending = pendingUserLetters[key] != nil
                            return (
                                statePartitions[Int(entry.home)],
                                StoredUser(
                                    state: entry.state, dirty: entry.delivery.isDirty || letterPending,
                                    settledHash: letterPending ? 0 : entry.delivery.settledHash,
                                    sourcePartitions: sourcePartitions),
                                entry.home
                            )
                        } ?? nil
                    guard let (partition, stored, _) = taken else { continue }
                    snapshot.append((partition, key, stored))
                    keys.append((p, key))
                }
                // Expired users: a tombstone, unless an event brought the user back.
                for key in tombstoneKeys where users[key] == nil {
                    tombstones.append((statePartitions[Int(p)], key, p))
                }
                // Not past a resync that has not queued every user yet. Except with identity
                // resolution: the task's records past that offset could not be written (a
                // replay would route them again), and a round can take hours; a resync
                // interrupted by a crash or a rebalance is not resumed (docs/operations.md).
                if var pos = offsets.consumedPosition(p) {
                    if !merging, let floor = resyncFloor(p) { pos = min(pos, floor) }
                    if merging {
                        // Still below the changelog's marker: writing this would move the
                        // marker back over effects already committed.
                        if let floor = replayFloors[partitionsByIndex[Int(p)]], pos < floor { continue }
                        // The marker covers what the task decided itself, up to here; the
                        // group offset waits for calls handed over in the process to be
                        // committed where they went (``groupOffset(_:consumed:)``).
                        if pos > (lastMarked[p] ?? -1) { identity[groups.count - 1]!.markerAt = pos }
                        let offset = groupOffset(partitionsByIndex[Int(p)].partition, consumed: pos)
                        guard offset > (lastCommitted[p] ?? -1) else { continue }
                        commit[partitionsByIndex[Int(p)]] = offset
                        positions.append((groups.count - 1, p, offset))
                        continue
                    }
                    guard pos > (lastCommitted[p] ?? -1) else { continue }
                    commit[partitionsByIndex[Int(p)]] = pos
                    positions.append((groups.count - 1, p, pos))
                }
            }
        }
        // Encoded outside the lock; a record over what the changelog accepts is left out
        // (one user must never hold back every commit) and dead-lettered.
        var encoded: [[(partition: Int32, key: [UInt8], value: [UInt8]?)]] = []
        var oversized: [(key: String, bytes: Int, source: TopicPartition, kind: DeadLetterKind)] = []
        let maxRecordBytes = store.maxRecordBytes
        if let topic = options.identity.repartitionTopic {
            // A routed record over what the broker accepts (a merge record of a state just
            // under the changelog's limit, a call with long texts) is left out and
            // dead-lettered, as an oversized user is.
            for g in identity.keys.sorted() {
                for o in identity[g]!.encodeOutbound(topic: topic, maxRecordBytes: maxRecordBytes) {
                    oversized.append((o.key, o.bytes, groups[g].source, o.kind))
                }
            }
        }
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
                    oversized.append((snapshot[i].key, value.count, group.source, .stateTooLarge))
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
                for o in oversized {
                    if o.kind == .stateTooLarge { stats.oversizedStates += 1 }
                    stats.deadLetters[o.kind, default: 0] += 1
                }
                for _ in oversized { seqs.append(reserveDeadLetter(.none)) }
                deadLetterBarrier = deadLetterSeq
            }
            for (o, seq) in zip(oversized, seqs) {
                // No PII in the log: the partition and the size say enough to find it.
                logger.error(
                    o.kind == .stateTooLarge
                        ? "a user's state is larger than the changelog accepts; it is not checkpointed (dead-lettered)"
                        : "a routed call is larger than the broker accepts; it is not routed (dead-lettered)",
                    metadata: [
                        "partition": "\(o.source)", "bytes": .stringConvertible(o.bytes), "limit": .stringConvertible(maxRecordBytes),
                    ])
                deadLetters.deadLetter(
                    kind: o.kind, key: Array(o.key.utf8), value: [],
                    headers: [
                        ("reason", o.kind == .stateTooLarge ? DeadLetterKind.stateTooLarge.rawValue : "too-large-to-route"),
                        ("bytes", String(o.bytes)), ("source.topic", o.source.topic),
                        ("source.partition", String(o.source.partition)),
                    ]
                ) { [weak self] in self?.deadLetterDelivered(seq) }
            }
        }
        // The dead letters of what these offsets cover are written first; if they are not
        // yet, the offsets wait for a later checkpoint (the users are written now).
        let letters =
            (commit.isEmpty && identity.values.allSatisfy { $0.offsets.isEmpty && $0.markerAt == nil && !$0.hopsDue })
            || waitForDeadLetters(below: deadLetterBarrier, timeoutMs: options.deadLetterWaitMs)
        if !letters {
            held.formUnion(identity.keys)
            logger.warning(
                "dead letters not written yet; source offsets are committed by a later checkpoint",
                metadata: ["partitions": .stringConvertible(commit.count)])
        }
        var batches: [CheckpointGroup] = []
        var recordCount = 0
        var marked: [OffsetTracker.PartitionIndex] = []
        for (g, group) in groups.enumerated() where !held.contains(g) {
            var records = encoded[g]
            let offset = letters ? commit[group.source] : nil
            guard !records.isEmpty || offset != nil || due.contains(group.index) || identity[g]?.isEmpty == false else {
                continue
            }
            recordCount += records.count
            if let x = identity[g] {
                // Identity resolution: every transaction writes both markers last, the source
                // partition's the very last, tagged with the transaction: a restore reads
                // the changelog up to it and the graph up to the identities marker with its
                // tag, and no further (what a crash cut off, which some brokers show).
                let txn = StoredUser.MarkerTxn(epoch: x.tag.epoch, seq: x.tag.seq)
                let sp = store.statePartition(for: group.source.partition)
                // And a begin marker first, in both: a restore reads only what lies between
                // a begin marker and its end (what a crash cut off lies between a begin
                // marker and the next one, even below a later transaction's end).
                records.insert(
                    (
                        sp, ChangelogMarker.beginKey(group.source),
                        ChangelogMarker.value(offset: -1, sourcePartitions: store.sourcePartitions, txn: txn)
                    ),
                    at: 0)
                if let r = x.repartitionIndex {
                    let rtp = partitionsByIndex[Int(r)]
                    if let at = x.offsets[rtp] ?? x.committedRepartition ?? floors[rtp] {
                        records.append(
                            (
                                sp, ChangelogMarker.key(rtp),
                                ChangelogMarker.value(offset: at, sourcePartitions: store.sourcePartitions, txn: txn)
                            ))
                    }
                }
                records.append(
                    (
                        sp, ChangelogMarker.key(group.source),
                        ChangelogMarker.value(
                            offset: x.markerAt ?? x.committedSource ?? floors[group.source] ?? -1, sourcePartitions: store.sourcePartitions,
                            txn: txn, hopsTaken: x.hopsTaken, hopsSent: x.hopsSent)
                    ))
                marked.append(group.index)
            } else if offset != nil || due.contains(group.index) {
                // -1: written at an assignment's first checkpoint, with no offset.
                records.append(
                    (
                        store.statePartition(for: group.source.partition), ChangelogMarker.key(group.source),
                        ChangelogMarker.value(offset: offset ?? floors[group.source] ?? -1, sourcePartitions: store.sourcePartitions)
                    ))
                marked.append(group.index)
            }
            var batch = CheckpointGroup(source: group.source, records: records, offset: offset)
            if let x = identity[g] {
                let identities = options.identity.identitiesTopic
                batch.extra = [x.identitiesMarker(topic: identities, sourcePartitions: store.sourcePartitions, begin: true)]
                batch.extra += x.graphRecords + x.outbound
                batch.extra.append(x.identitiesMarker(topic: identities, sourcePartitions: store.sourcePartitions))
                batch.extraOffsets = x.offsets
            }
            batches.append(batch)
        }
        // A transactional store commits group by group: when it fails part way, the groups
        // it committed are done (queued again, their routed records would be written twice).
        var failure: (any Error)?
        var committed: Set<TopicPartition> = []
        do {
            try store.checkpoint(batches, deadline: deadline)
        } catch {
            failure = error
            committed = (error as? CheckpointIncomplete)?.committed ?? []
        }
        let storeFailed = failure != nil && store.hasFatalError
        lock.withLock {
            if storeFailed { halted = true }
            var done = Set<Int>()
            for (g, group) in groups.enumerated() {
                let end = g + 1 < groups.count ? groups[g + 1].start : keys.count
                let tombstonesEnd = g + 1 < groups.count ? groups[g + 1].tombstones : tombstones.count
                if !held.contains(g) && (failure == nil || committed.contains(group.source)) {
                    done.insert(g)
                    if marked.contains(group.index) { markerDue.remove(group.index) }
                    if let x = identity[g] {
                        if let at = x.markerAt { lastMarked[group.index] = max(lastMarked[group.index] ?? -1, at) }
                        // Every call those tasks handed this one below these positions is
                        // committed here now.
                        for (s, at) in x.handSnapshot where (durableAt[s]?[x.task] ?? -1) < at { durableAt[s, default: [:]][x.task] = at }
                        withRouter(x.task) { $0.committed(x.written) }
                        if txns[x.task]?.epoch == x.tag.epoch {
                            txns[x.task]!.committed(
                                x.tag.seq, start: x.start, full: x.full ? x.beganMs : nil, noticed: Set(x.notices.map(\.partition)),
                                touched: x.touched)
                        }
                    }
                } else {
                    requeue(keys[groups[g].start..<end], tombstones[groups[g].tombstones..<tombstonesEnd])
                    if let x = identity[g] { putBack(x) }
                }
            }
            if letters {
                for (g, p, pos) in positions where done.contains(g) { lastCommitted[p] = max(lastCommitted[p] ?? -1, pos) }
            }
            if failure == nil {
                stats.checkpoints += 1
                stats.checkpointRecords += recordCount
            } else {
                stats.checkpointFailures += 1
            }
            stats.checkpointDuration.observe(Double(clock.monotonicMs() - started) / 1000)
        }
        lock.withLock { heldBack = !held.isEmpty }
        if let failure {
            logger.error("checkpoint failed; offsets not committed, will retry", metadata: ["error": "\(failure)"])
            return false
        }
        if !held.isEmpty {
            logger.debug(
                "tasks held for a later checkpoint (dead letters not written yet)",
                metadata: ["tasks": .stringConvertible(held.count)])
        }
        return true
    }
}

/// What a task's checkpoint writes besides its users (identity resolution).
struct TaskExtras {
    var task: Int32
    var repartitionIndex: OffsetTracker.PartitionIndex?
    /// `<group>-identities` records of the graph entries changed, and the entries written.
    var graphRecords: [(topic: String, partition: Int32, key: [UInt8], value: [UInt8]?)]
    var written: [(id: String, entry: IdentityEntry?)]
    /// `<group>-repartition` records (encoded outside the engine's lock, by
    /// ``encodeOutbound(topic:maxRecordBytes:)``), and the buffer they were taken from.
    var outbound: [(topic: String, partition: Int32, key: [UInt8], value: [UInt8]?)]
    var taken: [(partition: Int32, record: RepartitionRecord)]
    var offsets: [TopicPartition: Int64] = [:]
    /// The transaction's tag (``TaskTransactions``), the notices it writes first, and
    /// whether they are its task's start notices.
    var tag = RepartitionRecord.Tag(task: 0, epoch: 0, seq: 0)
    var notices: [(partition: Int32, record: RepartitionRecord)] = []
    var start = false
    /// Whether its notices go to every partition (every ``TaskTransactions/fullNoticeMs``),
    /// and when it began.
    var full = false
    var beganMs: Int64 = 0
    /// The offsets of the task's two partitions committed before (for markers written
    /// again when they did not move).
    var committedSource: Int64?
    var committedRepartition: Int64?
    /// The in-process hop (docs/identity.md): the source offset its marker covers now
    /// (nil: as before), the first hops it has taken and sent (``SyncEngine/hopsTaken``,
    /// ``SyncEngine/hopsSent``) and whether the first moved since its last transaction, and
    /// per source task that handed it calls, that task's consumed position now.
    var markerAt: Int64?
    var hopsTaken: [HopMark] = []
    var hopsSent: [HopMark] = []
    var hopsDue = false
    var handSnapshot: [Int32: Int64] = [:]

    var isEmpty: Bool {
        graphRecords.isEmpty && taken.isEmpty && offsets.isEmpty && notices.isEmpty && markerAt == nil && !hopsDue
    }

    /// The partitions its routed records go to.
    var touched: Set<Int32> { Set(taken.map(\.partition)) }

    /// Encodes the notices and the buffer taken into ``outbound``, outside the engine's
    /// lock: each record is copied into its framing (a merge record's state encoded),
    /// which under the lock stalled the fold for the whole backlog. The notices go first:
    /// in each partition they precede this transaction's records, which they do not cover.
    ///
    /// Calls for one partition with no other record for it between them are written as
    /// one record, of up to ``RepartitionRecord/maxBatchCalls`` calls and
    /// ``RepartitionRecord/maxBatchBytes`` (and `maxRecordBytes`): a record costs a message
    /// to produce and fetch and a pass through the reader's gate, and with keys by
    /// messageId almost every call is routed. Each partition's records keep the order the
    /// task made them in (calls and link requests or merge records do not move past one
    /// another: their order decides which links a graph makes, so calls routed ahead of a
    /// link request could link an id through another than before).
    ///
    /// A record, or a call alone, over `maxRecordBytes` is left out of ``outbound`` and
    /// ``taken`` and returned (to be dead-lettered).
    mutating func encodeOutbound(topic: String, maxRecordBytes: Int) -> [(key: String, bytes: Int, kind: DeadLetterKind)] {
        outbound = []
        outbound.reserveCapacity(notices.count + taken.count)
        for n in notices {
            let (k, v) = n.record.encode()
            outbound.append((topic, n.partition, k, v))
        }
        var oversized: [(key: String, bytes: Int, kind: DeadLetterKind)] = []
        var kept: [(partition: Int32, record: RepartitionRecord)] = []
        kept.reserveCapacity(taken.count)
        // A record of calls without its calls: the head, the tag and room for the count.
        let frame = RepartitionRecord.calls([]).encode(tag: tag).value.count + 4
        let cap = min(maxRecordBytes, RepartitionRecord.maxBatchBytes)
        // Per partition: the calls of its open record (written when another kind of record
        // for it comes, when the next call would take it over a cap, or at the end) and the
        // record's bytes so far (its key, the first call's target, included).
        var open: [Int32: (calls: [RepartitionRecord.ForwardedCall], bytes: Int)] = [:]
        func close(_ q: Int32) {
            guard let o = open.removeValue(forKey: q) else { return }
            let (k, v) = RepartitionRecord.calls(o.calls).encode(tag: tag)
            outbound.append((topic, q, k, v))
        }
        for t in taken {
            guard case .calls(let calls) = t.record else {
                close(t.partition)
                let (k, v) = t.record.encode(tag: tag)
                let bytes = k.count + v.count
                if bytes > maxRecordBytes {
                    switch t.record {
                    case .merge(let from, _, _, _): oversized.append((from, bytes, .stateTooLarge))
                    case .call(let target, _, _): oversized.append((target, bytes, .invalidEvent))
                    case .link(let id, _, _, _): oversized.append((id, bytes, .invalidEvent))
                    case .notice, .calls: break
                    }
                    continue
                }
                outbound.append((topic, t.partition, k, v))
                kept.append(t)
                continue
            }
            var fit: [RepartitionRecord.ForwardedCall] = []
            for c in calls {
                let alone = frame + c.target.utf8.count + c.encodedBytes
                if alone > maxRecordBytes {
                    oversized.append((c.target, alone, .invalidEvent))
                    continue
                }
                fit.append(c)
                if let o = open[t.partition], o.bytes + c.encodedBytes > cap || o.calls.count >= RepartitionRecord.maxBatchCalls {
                    close(t.partition)
                }
                if open[t.partition] == nil {
                    open[t.partition] = ([c], alone)
                } else {
                    open[t.partition]!.calls.append(c)
                    open[t.partition]!.bytes += c.encodedBytes
                }
            }
            if fit.count == calls.count {
                kept.append(t)
            } else if !fit.isEmpty {
                kept.append((t.partition, .calls(fit)))
            }
        }
        for q in open.keys.sorted() { close(q) }
        taken = kept
        return oversized
    }

    /// The identities marker: the transaction's last record in the task's partition of
    /// `<group>-identities` (`begin`: its first).
    func identitiesMarker(
        topic: String, sourcePartitions: Int32, begin: Bool = false
    ) -> (topic: String, partition: Int32, key: [UInt8], value: [UInt8]?) {
        (
            topic, task, begin ? ChangelogMarker.identitiesBeginKey : ChangelogMarker.identitiesKey,
            ChangelogMarker.value(offset: -1, sourcePartitions: sourcePartitions, txn: .init(epoch: tag.epoch, seq: tag.seq))
        )
    }
}

extension SyncEngine {
    func isRepartition(_ p: OffsetTracker.PartitionIndex) -> Bool {
        repartitionByIndex[Int(p)]
    }

    /// Called with the lock held: what task `p`'s checkpoint writes besides its users.
    func takeTaskExtras(_ p: OffsetTracker.PartitionIndex, store: StateStore) -> TaskExtras {
        let task = partitionsByIndex[Int(p)].partition
        let r = options.identity.repartitionTopic.flatMap { partitionIndex[TopicPartition($0, task)] }
        let written = withRouter(task) { $0.changes() }
        let identities = options.identity.identitiesTopic
        let graph = written.map { w in (identities, task, IdentityCodec.key(w.id), w.entry.map(IdentityCodec.encode)) }
        let taken = outbound.removeValue(forKey: task) ?? []
        var x = TaskExtras(
            task: task, repartitionIndex: r, graphRecords: graph, written: written, outbound: [], taken: taken)
        let now = clock.monotonicMs()
        var t = txns[task] ?? TaskTransactions(prior: nil, nowMs: now)
        x.start = t.startPending
        (x.tag, x.notices, x.full) = t.begin(task: task, partitions: options.identity.partitions, nowMs: now)
        x.beganMs = now
        txns[task] = t
        x.committedSource = lastMarked[p]
        x.committedRepartition = r.flatMap { lastCommitted[$0] }
        x.hopsTaken = (hopsTaken[task] ?? [:]).map { HopMark(task: $0.key, offset: $0.value.offset, call: $0.value.call) }
            .sorted { $0.task < $1.task }
        x.hopsSent = (hopsSent[task] ?? [:]).map { HopMark(task: $0.key, offset: $0.value.offset, call: $0.value.call) }
            .sorted { $0.task < $1.task }
        x.hopsDue = hopsTakenDue.remove(task) != nil
        let topic = partitionsByIndex[Int(p)].topic
        for (s, handed) in handedInProcess where handed[task] != nil {
            if let i = partitionIndex[TopicPartition(topic, s)], let at = offsets.consumedPosition(i) { x.handSnapshot[s] = at }
        }
        return x
    }

    /// Called with the lock held: how far task `p`'s source offset may be committed, with
    /// `consumed` read: no further than what every task it handed calls to in the process
    /// has committed of them (a call handed over and not committed there is read again,
    /// and skipped where it was taken; docs/identity.md, rule 5).
    func groupOffset(_ p: Int32, consumed: Int64) -> Int64 {
        let consumed = min(consumed, rewinds[p] ?? .max)
        guard var handed = handedInProcess[p] else { return consumed }
        var limit = consumed
        for (q, last) in handed {
            let durable = durableAt[p]?[q] ?? -1
            if last < durable {
                handed[q] = nil  // all committed there
            } else {
                limit = min(limit, durable)
            }
        }
        handedInProcess[p] = handed.isEmpty ? nil : handed
        return limit
    }

    /// Called with the lock held: a checkpoint that did not write `x`'s buffer puts it back,
    /// ahead of what was buffered since.
    func putBack(_ x: TaskExtras) {
        if txns[x.task]?.epoch == x.tag.epoch { txns[x.task]!.failed(touched: x.touched) }
        if x.hopsDue { hopsTakenDue.insert(x.task) }
        guard !x.taken.isEmpty else { return }
        outbound[x.task] = x.taken + (outbound[x.task] ?? [])
    }
}

extension SyncEngine {
    /// Called with the lock held: users and tombstones a checkpoint did not write are
    /// queued for the next one.
    func requeue(
        _ keys: ArraySlice<(OffsetTracker.PartitionIndex, String)>,
        _ tombstones: ArraySlice<(partition: Int32, key: String, home: OffsetTracker.PartitionIndex)>
    ) {
        for t in tombstones where users[t.key] == nil { pendingTombstones[t.home, default: []].append(t.key) }
        for (p, key) in keys {
            guard var entry = users[key] else { continue }
            if !entry.checkpointPending {
                entry.checkpointPending = true
                // Under the partition whose list it came from, and its home if that is
                // another: revoking either must write it first.
                pendingCheckpoint[p, default: []].append(key)
                if entry.home != p { pendingCheckpoint[entry.home, default: []].append(key) }
                users[key] = entry
            }
        }
    }
}
