import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

extension SyncEngine {
    public func consume(_ batch: [ConsumedMessage]) {
        let batch = withoutUnrestored(batch)
        // Identity resolution: routed records wait for their transaction's notice.
        guard options.identity.merge, let topic = options.identity.repartitionTopic else { return consumeInOrder(batch) }
        let gated = gate.filter(batch, topic: topic, tasks: options.identity.partitions)
        let (held, dropped, rereads) = (gate.heldRecords, gate.dropped, gate.rewinds)
        lock.withLock {
            stats.heldRoutedRecords = held
            stats.droppedRoutedRecords = dropped
            stats.routedRereads = rereads
        }
        // In slices of at most ``sliceCalls`` calls: a record of routed calls holds up to
        // 2,000, decoded at once into about 560 bytes each, and a poll batch holds up to a
        // thousand records (a backlog read after a restart): over a gigabyte of decoded
        // calls in one batch.
        // Each message's calls, read once: the chunks are cut by them too.
        let counts = Self.callCounts(gated, repartitionTopic: topic)
        var start = 0
        var calls = 0
        for (i, n) in counts.enumerated() {
            if calls + n > Self.sliceCalls && i > start {
                consumeInOrder(Array(gated[start..<i]), callCounts: counts[start..<i])
                (start, calls) = (i, 0)
            }
            calls += n
        }
        consumeInOrder(start == 0 ? gated : Array(gated[start...]), callCounts: counts[start...])
        gate.release()
    }

    /// The most calls of routed records decoded at once (``consume(_:)``).
    static let sliceCalls = 16_384

    /// The seeks back: of the gate (routed records let go over its cap), and of partitions
    /// restored after some of their messages were delivered (``withoutUnrestored(_:)``).
    /// The poll thread performs them before it consumes again.
    public func takeSeeks() -> [(TopicPartition, Int64)] {
        var seeks = gate.takeSeeks()
        let now = clock.monotonicMs()
        lock.withLock {
            guard !rereads.isEmpty else { return }
            for (tp, r) in rereads where !r.asked {
                if switchWaits[tp] != nil && stillWaitsForSwitch(tp, nowMs: now) { continue }
                seeks.append((tp, r.offset))
                rereads[tp]!.asked = true
            }
        }
        return seeks
    }

    /// `batch` without the messages of partitions not restored yet, nor those fetched
    /// before a partition's seek back (``rereads``). A partition is held paused until its
    /// state is restored, yet librdkafka 2.0.2 delivers some of its messages under load:
    /// read then, a call was folded into a user the restore then found newer than its
    /// changelog record (the record's history lost), or routed with the task's graph not
    /// loaded and routed again after the restore (counted twice). They are read again
    /// from the first of them once the partition is restored.
    ///
    /// Identity resolution: so are those of a source partition whose task waits to hand
    /// calls over in the process (``switchWaits``), read again once it may.
    func withoutUnrestored(_ batch: [ConsumedMessage]) -> [ConsumedMessage] {
        let waits = options.identity.merge && options.durable && inProcessHops
        let now = waits ? clock.monotonicMs() : 0
        return lock.withLock {
            if restoringGeneration.isEmpty && rereads.isEmpty && (!waits || hopsSent.isEmpty) { return batch }
            // Messages come in runs of one partition: each run is looked up once, and the
            // batch is copied only if something of it is left out.
            var out: [ConsumedMessage]?
            var i = 0
            while i < batch.count {
                let tp = batch[i].topicPartition
                var end = i + 1
                while end < batch.count && batch[end].topicPartition == tp { end += 1 }
                var keepFrom = i
                if restoringGeneration[tp] != nil {
                    let first = batch[i..<end].lazy.map(\.offset).min()!
                    if readBeforeRestore[tp].map({ first < $0 }) ?? true { readBeforeRestore[tp] = first }
                    keepFrom = end
                } else if let r = rereads[tp] {
                    // Until the seek is asked and its offset comes back, what comes was
                    // fetched before it.
                    keepFrom = r.asked ? (batch[i..<end].firstIndex { $0.offset == r.offset } ?? end) : end
                    if keepFrom < end { rereads[tp] = nil }
                }
                if waits && keepFrom < end && tp.topic != options.identity.repartitionTopic && stillWaitsForSwitch(tp, nowMs: now) {
                    rereads[tp] = (batch[keepFrom].offset, false)
                    keepFrom = end
                }
                if keepFrom > i && out == nil { out = Array(batch[..<i]) }
                if out != nil { out!.append(contentsOf: batch[keepFrom..<end]) }
                i = end
            }
            return out ?? batch
        }
    }

    /// Each message's calls: a record of `<group>-repartition` holds up to
    /// ``RepartitionRecord/maxBatchCalls``, any other message one.
    static func callCounts(_ batch: [ConsumedMessage], repartitionTopic topic: String) -> [Int] {
        batch.map { $0.topicPartition.topic == topic ? RepartitionRecord.callCount(value: $0.value) : 1 }
    }

    /// `callCounts`: each message's calls (``callCounts(_:repartitionTopic:)``), when the
    /// caller has read them already.
    func consumeInOrder(_ batch: [ConsumedMessage], callCounts: ArraySlice<Int>? = nil) {
        let nowEpoch = clock.epochMs()
        // Decoding is pure and the larger share of an event's cost; folding must stay in
        // order on this thread. So the batch is cut into chunks that helper threads
        // decode ahead, outside the lock, into reused scratch arrays, while this thread
        // folds each chunk as soon as it is decoded (decoding the next one itself when
        // no helper has taken it yet).
        // Chunks of `decodeChunk` messages, or fewer when records of routed calls make them
        // `decodeChunk` calls first (a record of hundreds of calls is a chunk of its own):
        // cut by messages alone, a batch of such records was one chunk, decoded by one
        // thread.
        var bounds = [0]
        if let topic = options.identity.merge ? options.identity.repartitionTopic : nil {
            var calls = 0
            let counts = callCounts ?? ArraySlice(Self.callCounts(batch, repartitionTopic: topic))
            for (i, n) in zip(0..<batch.count, counts) {
                if i - bounds[bounds.count - 1] == Self.decodeChunk || calls >= Self.decodeChunk {
                    bounds.append(i)
                    calls = 0
                }
                calls += n
            }
        } else {
            bounds += Array(stride(from: Self.decodeChunk, to: batch.count, by: Self.decodeChunk))
        }
        bounds.append(batch.count)
        let chunkBounds = bounds
        let chunks = chunkBounds.count - 1
        while scratch.count < chunks {
            scratch.append(DecodedCalls())
            scratchMessage.append([])
            scratchHash.append([])
            scratchOwner.append([])
            scratchRouted.append([])
        }
        // Chunks this batch does not reach still hold an earlier batch's leftovers.
        for c in chunks..<scratch.count where scratch[c].count > 0 { scratch[c].removeAll() }
        let decoder = self.decoder
        var invalid: [(Int, DecodeFailure, UInt64)] = []
        let seed = identitySeed
        let repartitionTopic = options.identity.merge ? options.identity.repartitionTopic : nil
        let owners = options.identity.merge ? (options.identity.partitions, options.identity.partitioner) : nil
        scratch.withUnsafeMutableBufferPointer { calls in
            scratchMessage.withUnsafeMutableBufferPointer { origins in
                scratchHash.withUnsafeMutableBufferPointer { hashes in
                    scratchOwner.withUnsafeMutableBufferPointer { ownerOf in
                        scratchRouted.withUnsafeMutableBufferPointer { routed in
                            nonisolated(unsafe) let calls = calls
                            nonisolated(unsafe) let routed = routed
                            nonisolated(unsafe) let origins = origins
                            nonisolated(unsafe) let hashes = hashes
                            nonisolated(unsafe) let ownerOf = ownerOf
                            // Each chunk writes only its own scratch arrays; the messages are read-only.
                            nonisolated(unsafe) let batch = batch
                            let decodeChunk: @Sendable (Int) -> Void = { c in
                                // The previous batch's leftovers of this chunk are dropped here, by the
                                // decoding thread: the poll thread, the busier one, only folds them.
                                calls[c].removeAll()
                                origins[c].removeAll(keepingCapacity: true)
                                routed[c].removeAll(keepingCapacity: true)
                                for i in chunkBounds[c]..<chunkBounds[c + 1] {
                                    let before = calls[c].count
                                    // A routed record: read on the poll thread, in order (docs/identity.md).
                                    // First: its key is an identity, which a client may have made
                                    // equal to the control records' key.
                                    if let repartitionTopic, batch[i].topicPartition.topic == repartitionTopic {
                                        // Routed calls are decoded here like the source's; a link
                                        // request, a merge record or a record that does not decode
                                        // is read on the poll thread (``routed``).
                                        if !Self.decodeRoutedCalls(batch[i], decoder, nowMs: nowEpoch, into: &calls[c], routed: &routed[c])
                                        {
                                            calls[c].append(.ignored(Self.routedMarker))
                                        }
                                        for _ in before..<calls[c].count { origins[c].append(Int32(truncatingIfNeeded: i)) }
                                        continue
                                    }
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
                                ownerOf[c].removeAll(keepingCapacity: true)
                                for j in 0..<calls[c].count {
                                    let id = calls[c].identity(j)
                                    hashes[c].append(id.map { seed.hash($0) } ?? 0)
                                    // And, with identity resolution, the task that owns each.
                                    if let (partitions, partitioner) = owners {
                                        ownerOf[c].append(
                                            id.map { IdentityRouter.owner($0, partitions: partitions, partitioner: partitioner) } ?? -1)
                                    }
                                }
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
                                foldChunk(
                                    &calls[k], origins[k], hashes[k], ownerOf[k], routed[k], batch: batch, nowEpoch: nowEpoch,
                                    last: k == chunks - 1, invalid: &invalid)
                            }
                        }
                    }
                }
            }
        }
        mostCallsDecodedAtOnce = max(mostCallsDecodedAtOnce, scratch[..<chunks].reduce(0) { $0 + $1.count })
        for (i, f, seq) in invalid {
            let m = batch[i]
            var headers = [
                ("reason", f.reason.rawValue),
                ("source.topic", m.topicPartition.topic),
                ("source.partition", String(m.topicPartition.partition)),
                ("source.offset", String(m.offset)),
            ]
            if let field = f.field { headers.append(("field", field)) }
            deadLetters.deadLetter(
                kind: .invalidEvent, key: m.key.isEmpty ? nil : Array(m.key),
                value: Array(m.value), headers: headers
            ) { [weak self] in self?.deadLetterDelivered(seq) }
        }
    }

    /// Decodes the routed calls of `m` (a message of `<group>-repartition`) into `calls`,
    /// one event each, and what each was routed by into `routed`; false, with nothing
    /// added, when it is not a record of calls this version reads, every one as an event
    /// (the record is then read, and refused whole, on the poll thread).
    static func decodeRoutedCalls(
        _ m: ConsumedMessage, _ decoder: SegmentDecoder, nowMs: Int64, into calls: inout DecodedCalls,
        routed: inout [RoutedCallInfo]
    ) -> Bool {
        let before = calls.count
        let routedBefore = routed.count
        let read = RepartitionRecord.forEachCall(key: m.key, value: m.value) { c in
            let at = calls.count
            if c.compact {
                guard decoder.decodeCompact(c.payload, nowMs: nowMs, into: &calls) else { return false }
            } else {
                decoder.decode(c.payload, nowMs: nowMs, into: &calls)
            }
            calls.resolveTimes(from: at, kafkaMs: m.timestampMs, nowMs: nowMs)
            guard calls.count == at + 1, case .event = calls.outcomes[at] else { return false }
            routed.append(
                RoutedCallInfo(call: Int32(at), target: String(decoding: c.target, as: UTF8.self), hops: c.hops, origin: c.origin))
            return true
        }
        guard read else {
            calls.rollBack(to: before)
            routed.removeSubrange(routedBefore...)
            return false
        }
        return true
    }

    /// Events per decode chunk: small enough that folding starts soon after a batch
    /// arrives, large enough that handing chunks between threads costs little.
    static let decodeChunk = 128
    /// What the decode puts for a control record (``ResyncRequest/key``): the fold
    /// applies it in order with the events around it.
    static let controlMarker = "foldspace-sync.control"
    /// What the decode puts for a message of `<group>-repartition`.
    static let routedMarker = "foldspace-sync.routed"
    /// How many events ahead of the fold a user's storage is requested (its entry's
    /// other lines twice as far ahead, so that its pointers are there to be read).
    static let prefetchAhead = 4

    /// Folds one decoded chunk of `batch` (its calls, and the message each came from)
    /// under the lock, in order.
    func foldChunk(
        _ calls: inout DecodedCalls, _ origins: [Int32], _ hashes: [UInt64], _ owners: [Int32], _ routedCalls: [RoutedCallInfo],
        batch: [ConsumedMessage],
        nowEpoch: Int64, last: Bool, invalid: inout [(Int, DecodeFailure, UInt64)]
    ) {
        let now = clock.monotonicMs()
        lock.withLock {
            if catchUp != nil && catchUp!.firstFoldMs == nil { catchUp!.firstFoldMs = now }
            // First reach every user of the chunk, in passes that each start the loads
            // the next pass needs without waiting for them (prefetch hints), so that their
            // cache misses overlap; folding event by event it would wait for each in turn
            // (docs/performance.md, "Figures behind the code"). The passes: the index buckets
            // (of the identities' hashes, computed with the decoding), the entries those
            // buckets most likely lead to, then the lookups themselves. The rest of each
            // entry and the heap storage it points to are requested a few events ahead of
            // the fold, not for the whole chunk at once: ~1,000 hints in one burst were
            // largely lost by the time the fold got there (the visit spans' and packed
            // text's first reads still stalled).
            let n = calls.count
            users.prefetchBuckets(hashes)
            users.prefetchEntries(hashes)  // a non-event's 0: a harmless hint
            slotScratch.removeAll(keepingCapacity: true)
            let merging = options.identity.merge
            if merging {
                reroutedScratch.removeAll(keepingCapacity: true)
                inProcessScratch.removeAll(keepingCapacity: true)
            }
            // A task restored with group offsets older than its changelog: what it reads
            // below the changelog's markers is skipped whole (``replayFloors``).
            let floored = merging && !replayFloors.isEmpty
            // Identity resolution: the task whose source partition the call's message was
            // read from (nil: a record of `<group>-repartition`), worked out once a message.
            var sourceTask: Int32?
            var taskOfMessage = -1
            // The next of `routedCalls` not yet matched with its call.
            var routedCursor = 0
            // The call's index within its message.
            var callInMessage: UInt32 = 0
            for j in 0..<n {
                if j > 0 && origins[j] == origins[j - 1] { callInMessage &+= 1 } else { callInMessage = 0 }
                if let identity = calls.identity(j) {
                    var key = identity
                    var hash = hashes[j]
                    if merging {
                        let i = Int(origins[j])
                        if i != taskOfMessage {
                            taskOfMessage = i
                            let tp = batch[i].topicPartition
                            sourceTask = tp.topic == options.identity.repartitionTopic ? nil : tp.partition
                        }
                    }
                    // Below the task's marker: its effects are committed. A source call whose
                    // target another task owns may have been handed over in the process and
                    // not committed there: it is routed again, and skipped where it was taken
                    // (``routeCall``).
                    let replay = floored && isBelowReplayFloor(batch[Int(origins[j])])
                    if replay && (sourceTask == nil || owners[j] == sourceTask!) {
                        slotScratch.append(Self.skippedSlot)
                        continue
                    }
                    var foundCanonical = false
                    if merging {
                        // Keys by identity: a call read at its identity's owner, whose graph
                        // found that identity canonical before (and has neither linked it nor
                        // been replaced since), is folded into its own state without a look
                        // at the graph, a cache miss per call on the fold's thread.
                        if routingFastPath, let t = sourceTask, owners[j] == t,
                            let slot = users.existingSlot(identity, hash: hash), users.routedAt(slot) == routingGeneration
                        {
                            slotScratch.append(Int32(slot))
                            continue
                        }
                        var info: RoutedCallInfo?
                        if sourceTask == nil {
                            while routedCursor < routedCalls.count && Int(routedCalls[routedCursor].call) < j { routedCursor += 1 }
                            if routedCursor < routedCalls.count && Int(routedCalls[routedCursor].call) == j {
                                info = routedCalls[routedCursor]
                            }
                        }
                        switch routeCall(
                            j, identity, &calls, origins, batch, nowEpoch, routed: info, call: callInMessage, replay: replay,
                            own: owners[j] == sourceTask)
                        {
                        case .fold(let c) where !c.utf8.elementsEqual(identity.utf8):
                            key = c
                            hash = identitySeed.hash(c)
                            reroutedScratch[j] = c
                        case .fold:
                            // Canonical, or back at itself at the hop limit (a circle of
                            // links): only the first is marked, by the graph's word.
                            if let t = sourceTask { foundCanonical = routers[t]?.graph.resolve(identity) == .canonical }
                        case .inProcess(let c, let q):
                            if !c.utf8.elementsEqual(identity.utf8) {
                                key = c
                                hash = identitySeed.hash(c)
                                reroutedScratch[j] = c
                            }
                            inProcessScratch[j] = (q, repartitionIndex(ofTask: q))
                        case .forward:
                            slotScratch.append(Self.forwardedSlot)
                            continue
                        case .skip:
                            slotScratch.append(Self.skippedSlot)
                            continue
                        }
                    }
                    let (slot, isNew) = users.slot(key, hash: hash)
                    if foundCanonical { users.modify(slot) { $0.routedAt = routingGeneration } }
                    // Homed at once where its call was read: a merge record read before the
                    // call (identity resolution) finds the entry and must not leave it homed
                    // on partition index 0, another task's.
                    if merging && isNew {
                        let home = inProcessScratch[j]?.home ?? index(of: batch[Int(origins[j])].topicPartition)
                        users.modify(slot) { $0.home = home }
                    }
                    slotScratch.append(isNew ? ~Int32(slot) : Int32(slot))
                } else {
                    slotScratch.append(Self.noSlot)
                }
            }
            let ahead = Self.prefetchAhead
            for j in 0..<min(2 * ahead, n) where slotScratch[j] > Self.skippedSlot { users.prefetchEntryRest(slotScratch[j]) }
            for j in 0..<min(ahead, n) where slotScratch[j] > Self.skippedSlot { users.prefetchStorage(slotScratch[j]) }
            var previous = -1
            // The call's index within its message (every call of a message is in one chunk).
            var call: UInt32 = 0
            var pidx: OffsetTracker.PartitionIndex = 0
            var previousPartition: TopicPartition? = nil
            var skipped = false
            // Each event is folded where the decoder wrote it, its strings moved into the
            // state; the rest of the chunk is dropped when its scratch is next decoded into.
            let outcomes = calls.outcomes
            calls.withEvents { events in
                for (j, outcome) in outcomes.enumerated() {
                    if j + 2 * ahead < n, slotScratch[j + 2 * ahead] > Self.skippedSlot {
                        users.prefetchEntryRest(slotScratch[j + 2 * ahead])
                    }
                    if j + ahead < n, slotScratch[j + ahead] > Self.skippedSlot { users.prefetchStorage(slotScratch[j + ahead]) }
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
                        skipped = false
                        if floored, let floor = replayFloors[m.topicPartition] {
                            if m.offset < floor {
                                // Its events were decided call by call (``skippedSlot``).
                                skipped = true
                                // A re-read's last message: the source offset may move on
                                // (``rewinds``), even if nothing more comes.
                                if m.offset == floor - 1 && !repartitionByIndex[Int(pidx)] { rewinds[m.topicPartition.partition] = nil }
                            } else {
                                replayFloors[m.topicPartition] = nil
                                if !repartitionByIndex[Int(pidx)] { rewinds[m.topicPartition.partition] = nil }
                            }
                        }
                    } else {
                        call &+= 1
                    }
                    // Below the floor an event was decided call by call (``skippedSlot``); a
                    // link request, merge record or control record is skipped here.
                    if skipped {
                        if case .event = outcome {
                        } else {
                            stats.skippedReplays += 1
                            continue
                        }
                    }
                    switch outcome {
                    case .event(let k):
                        let slot = slotScratch[j]
                        if slot == Self.forwardedSlot {
                            stats.forwarded += 1
                            continue
                        }
                        if slot == Self.skippedSlot {
                            stats.skippedReplays += 1
                            continue
                        }
                        let e = events.baseAddress! + Int(k)
                        if merging, let c = reroutedScratch[j] { e.pointee.identity = c }
                        // Handed over in the process: folded as its task, without a position.
                        let handed = merging ? inProcessScratch[j] : nil
                        fold(
                            e, slot: slot < 0 ? Int(~slot) : Int(slot), isNew: slot < 0, message: m,
                            call: call, partition: pidx, home: handed?.home, nowEpoch: nowEpoch, nowMono: now)
                        if merging, let x = e.pointee.linkedId {
                            noteLink(
                                x, at: e.pointee.identity, timeMs: e.pointee.timeMs ?? nowEpoch,
                                task: handed?.task ?? m.topicPartition.partition, home: handed?.home ?? pidx)
                        }
                    case .ignored(let t):
                        if t == Self.routedMarker, merging, m.topicPartition.topic == options.identity.repartitionTopic {
                            routed(m, partition: pidx, nowMono: now, invalid: &invalid, message: i)
                        } else if t == Self.controlMarker, ResyncRequest.isControl(key: m.key) {
                            if !control(m, partition: pidx, nowMono: now) {
                                stats.invalid[.invalidControl, default: 0] += 1
                                offsets.hold(pidx, offset: m.offset)
                                invalid.append((i, DecodeFailure(.invalidControl), reserveDeadLetter(.offset(pidx, m.offset))))
                            }
                        } else {
                            stats.ignored += 1
                        }
                    case .invalid(let f):
                        stats.invalid[f.reason, default: 0] += 1
                        // Its offset is held until the dead letter is written.
                        offsets.hold(pidx, offset: m.offset)
                        invalid.append((i, f, reserveDeadLetter(.offset(pidx, m.offset))))
                    }
                }
            }
            if merging && !pendingHandOvers.isEmpty { performHandOvers(nowMono: now) }
            if last { publishOffsets() }
            if catchUp != nil { catchUp!.lastFoldMs = clock.monotonicMs() }
        }
    }

    /// Whether message `m` lies below its partition's ``replayFloors`` entry. Called with
    /// the lock held.
    func isBelowReplayFloor(_ m: ConsumedMessage) -> Bool {
        guard let floor = replayFloors[m.topicPartition] else { return false }
        return m.offset < floor
    }

    /// Folds one event; called with the lock held.
    /// `home`: a call handed over in the process (identity resolution) is folded as the
    /// task it was handed to, whose repartition partition this is, without a position.
    func fold(
        _ e: UnsafeMutablePointer<SegmentEvent>, slot: Int, isNew: Bool, message m: ConsumedMessage, call: UInt32,
        partition pidx: OffsetTracker.PartitionIndex, home: OffsetTracker.PartitionIndex? = nil, nowEpoch: Int64, nowMono: Int64
    ) {
        if e.pointee.timeImplausible { stats.implausibleTime += 1 }
        if e.pointee.implausibleTraitDates != 0 { stats.implausibleTraitDates += Int(e.pointee.implausibleTraitDates) }
        // The decode resolved a missing payload time to a plausible Kafka time (or made
        // the event invalid); a message without a Kafka time takes the wall clock.
        let t = e.pointee.timeMs ?? nowEpoch
        // Mutate the entry in place in the table's storage (its slot was looked up with
        // the rest of the chunk's): no copy of the entry out and back.
        users.modify(slot) { entry in
            apply(e, timeMs: t, message: m, call: call, partition: pidx, home: home, isNew: isNew, nowMono: nowMono, to: &entry)
        }
    }

    func apply(
        _ e: UnsafeMutablePointer<SegmentEvent>, timeMs t: Int64, message m: ConsumedMessage, call: UInt32,
        partition pidx: OffsetTracker.PartitionIndex, home: OffsetTracker.PartitionIndex? = nil, isNew: Bool, nowMono: Int64,
        to entry: inout UserEntry
    ) {
        let positioned = home == nil
        let home = home ?? pidx
        // A user waiting for a checkpoint under another partition is queued under this
        // one too: revoking this one must write it before its offset is committed.
        if entry.checkpointPending && entry.home != home { pendingCheckpoint[home, default: []].append(e.pointee.identity) }
        entry.home = home
        if t > streamTimeMs[Int(home)] { streamTimeMs[Int(home)] = t }
        let source = sourceIds[Int(pidx)]
        let kafkaMs = m.timestampMs ?? -1
        if positioned && entry.state.hasApplied(source: source, offset: m.offset, call: call) {
            if !isRecreation(entry.state, source: source, kafkaMs: kafkaMs, partition: pidx, offset: m.offset) {
                stats.skippedReplays += 1
                if !replayNoted.contains(pidx) {
                    replayNoted.insert(pidx)
                    logger.info(
                        "skipping replayed events (already in the users' state)",
                        metadata: [
                            "partition": "\(partitionsByIndex[Int(pidx)])", "first_offset": "\(m.offset)",
                        ])
                }
                return
            }
            entry.state.forgetApplied(source: source)
        }
        if positioned && entry.state.wouldForgetASource(recording: source) { stats.appliedSourcesForgotten += 1 }
        stats.folded += 1
        // A routed call's ties go by its place in its record too (many source messages'
        // calls share the record's offset). One handed over in the process ties by its
        // source offset, as a source call does.
        let tieBreak = options.identity.merge && repartitionByIndex[Int(pidx)] ? Stamp.position(offset: m.offset, call: call) : nil
        let changed = folder.fold(
            spending: &e.pointee, timeMs: t, offset: m.offset, source: source, call: call, kafkaMs: kafkaMs, tieBreak: tieBreak,
            positioned: positioned, into: &entry.state, adjustments: &stats.adjustments)
        // Every applied event moves the applied offset (and maybe visit spans): persist.
        markForCheckpoint(e.pointee.identity, &entry)
        if changed || isNew {
            let wasDirty = entry.delivery.isDirty
            debouncer.changed(e.pointee.identity, &entry.delivery, nowMs: nowMono)
            if !wasDirty { dirty.became(since: entry.delivery.dirtySinceMs) }
            // A call handed over in the process holds no offset: its user is the other
            // task's, and a hold on this partition would keep it in memory past that task's
            // revocation (holds count in memory mode only, which merging does not run in).
            let added =
                !positioned
                ? false
                : entry.delivery.inFlight
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
    func isRecreation(
        _ s: UserState, source: UInt32, kafkaMs: Int64, partition pidx: OffsetTracker.PartitionIndex,
        offset: Int64
    ) -> Bool {
        guard kafkaMs >= 0, let applied = s.appliedPosition(source: source), applied.kafkaSeconds > 0,
            kafkaMs / 1000 > Int64(applied.kafkaSeconds) + Self.recreationToleranceMs / 1000
        else { return false }
        let tp = partitionsByIndex[Int(pidx)]
        let metadata: Logger.Metadata = [
            "partition": "\(tp)", "offset": "\(offset)", "applied_offset": "\(applied.offset)",
            "kafka_ms": "\(kafkaMs)", "applied_kafka_s": "\(applied.kafkaSeconds)",
        ]
        guard let hw = highWatermark?(tp), hw >= 0, hw <= applied.offset else {
            if recreationSuspected.insert(pidx).inserted {
                stats.suspectedRecreations += 1
                logger.warning(
                    "a message at or below users' applied offsets is much newer (Kafka time) than the one they applied, but the log is longer than those offsets: skipped as a replay; if the topic was recreated, reset this group's state",
                    metadata: metadata)
            }
            return false
        }
        if recreationNoted.insert(pidx).inserted {
            stats.recreatedSources += 1
            logger.error(
                "source partition restarted below the users' applied offsets with newer messages: the topic was recreated; its events are folded, not skipped as replays",
                metadata: metadata)
        }
        return true
    }

    /// How much newer (Kafka time) a message at or below a user's applied offset must be
    /// than the applied one to be taken for a recreated topic rather than a replay
    /// (producers' clocks and batching make `CreateTime` only roughly ordered).
    static let recreationToleranceMs: Int64 = 3_600_000
}
