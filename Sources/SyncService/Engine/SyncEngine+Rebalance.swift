import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

extension SyncEngine {
    func index(of tp: TopicPartition) -> OffsetTracker.PartitionIndex {
        if let i = partitionIndex[tp] { return i }
        let i = OffsetTracker.PartitionIndex(partitionsByIndex.count)
        partitionIndex[tp] = i
        partitionsByIndex.append(tp)
        sourceIds.append(stableSourceId(tp))
        repartitionByIndex.append(tp.topic == options.identity.repartitionTopic)
        streamTimeMs.append(.min)
        offsets.activate(i)
        return i
    }

    /// Durable mode: each partition is restored before it is consumed, off the poll
    /// thread (``EngineLinks/restored``): the consumer holds it paused meanwhile, and
    /// readiness waits for it. Memory mode: consumed at once.
    public func partitionsAssigned(_ partitions: [TopicPartition]) {
        gate.drop(partitions)
        let durable = options.durable && stateStore != nil
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
                replayFloors[tp] = nil
                readBeforeRestore[tp] = nil
                rereads[tp] = nil
                recreationNoted.remove(i)
                recreationSuspected.remove(i)
                lastCommitted[i] = nil
                lastMarked[i] = nil
                switchWaits[tp] = nil
                switchGivenUp.remove(tp.partition)
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
            // A repartition partition is held (in `restoringGeneration`) and released with its
            // task's source partition: it is neither claimed nor restored of its own.
            let repartition = options.identity.merge ? options.identity.repartitionTopic : nil
            let partitions = partitions.filter { $0.topic != repartition }
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
            return CaughtUp(
                events: stats.folded - c.folded, foldSeconds: Double(c.lastFoldMs - first) / 1000,
                sinceAssignmentSeconds: Double(now - c.assignedMs) / 1000)
        }
    }

    /// Settles the revoked partitions before they move: every dirty user is flushed
    /// (bounded by the drain timeout), committable offsets are stored, and the users
    /// homed on those partitions leave memory. What could not be settled stays
    /// uncommitted, so the next owner reads it again.
    public func partitionsRevoked(_ partitions: [TopicPartition]) {
        gate.drop(partitions)
        let idxs: [OffsetTracker.PartitionIndex] = lock.withLock {
            // A restore under way is stale from now on.
            for tp in partitions {
                restoringGeneration[tp] = nil
                readBeforeRestore[tp] = nil
                rereads[tp] = nil
            }
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
            // Identity resolution: tasks kept here that handed the revoked ones calls in the
            // process, or were handed calls by them, are checkpointed with them, so that
            // every such call is committed where it went (the eager assignor revokes every
            // task at once; this is a safeguard).
            let scope = idxs + (options.identity.merge ? lock.withLock { keptTasksHandingWith(idxs) } : [])
            if !checkpoint(partitions: scope, deadline: until) {
                logger.warning("revoked partitions could not be checkpointed; the next owner re-reads from the last commit")
            } else if options.identity.merge
                && lock.withLock({ scope.contains { handedInProcess[partitionsByIndex[Int($0)].partition] != nil } })
            {
                // Calls handed over in the process hold their source offsets back until the
                // tasks they went to commit: those did just now, so one more commits the
                // offsets (the next owner reads less again).
                checkpoint(partitions: scope, deadline: until)
            }
            if options.identity.merge { lock.withLock { haltIfHandedCallsAreLost(idxs) } }
            // A claim of them under way (a restore) ends first: a claim landing after the
            // next owner's would fence it.
            let deadline = DispatchTime.now().uptimeNanoseconds + 40_000_000_000
            while lock.withLock({ partitions.contains { claiming.contains($0) } }),
                DispatchTime.now().uptimeNanoseconds < deadline
            {
                Thread.sleep(forTimeInterval: 0.01)
            }
            stateStore?.relinquish(partitions)
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
            if options.identity.merge {
                // The task's graph and what it had not written leave with it: its next owner
                // restores the graph, and reads again what was not committed (records kept
                // here would be written later, when the task may be someone else's).
                let tasks = Set(partitions.filter { $0.topic != options.identity.repartitionTopic }.map(\.partition))
                for t in tasks {
                    retireRouter(t)
                    outbound[t] = nil
                    txns[t] = nil
                    hopsTaken[t] = nil
                    hopsTakenDue.remove(t)
                    hopsSent[t] = nil
                    hopsUnknown.remove(t)
                    handedInProcess[t] = nil
                    durableAt[t] = nil
                    firstHanded[t] = nil
                    rewinds[t] = nil
                }
                rewindHandingTasks(to: tasks)
            }
            for i in idxs { lastMarked[i] = nil }
            for tp in partitions { switchWaits[tp] = nil }
            for tp in partitions { replayFloors[tp] = nil }
            for i in idxs {
                revokingFloors[i] = nil
                offsets.deactivate(i)
                assigned.remove(i)
                pendingCheckpoint[i] = nil
                pendingTombstones[i] = nil
                lastCommitted[i] = nil
            }
            logger.info(
                "partitions settled",
                metadata: [
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

    /// Whether consuming is to pause for capacity (``Backpressure``): called by the
    /// consumer before each poll.
    public var wantsPause: Bool {
        // Read before the lock: the sink has a lock of its own.
        let backlog = deadLetters.backlogBytes
        return lock.withLock { backpressure.update(dirtyUsers: dirty.count, deadLetterBacklogBytes: backlog) }
    }
}
