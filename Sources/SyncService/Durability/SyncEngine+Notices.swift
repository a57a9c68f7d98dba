import Folding
import Foundation
import Kafka

extension SyncEngine {
    /// Identity resolution: how many notices the owned tasks owe (their last transactions'
    /// routed records wait in their readers until a notice of a later one).
    public var noticesOwed: Int {
        lock.withLock { txns.values.reduce(0) { $0 + $1.waiting } }
    }

    /// Identity resolution: a transaction of notices alone for each task that owes some,
    /// when no whole checkpoint is due. A task's routed records are read only once a
    /// notice of its next transaction says that theirs committed; after a burst, that next
    /// transaction waited for the next checkpoint, up to `commit_interval` later, since a
    /// checkpoint that would mostly rewrite busy users is put off (``Checkpoints``): 4 s of
    /// a 600k-event run with keys by messageId went in that wait.
    ///
    /// A notice only states what committed before it, so one read from a transaction that
    /// failed (some brokers show them) is still true; such a transaction writes no routed
    /// record, no state and no marker, and a restore reads the changelog as before. Not for
    /// a task whose failed transaction's records are still to be written again
    /// (``TaskTransactions/rewritePending``). Bounded by 5 s: a revocation waits for it.
    @discardableResult
    public func writeNotices() -> Bool {
        guard options.durable, options.identity.merge, let topic = options.identity.repartitionTopic else { return true }
        if lock.withLock({ halted }) { return false }
        checkpointLock.lock()
        defer { checkpointLock.unlock() }
        guard let store = stateStore else { return false }
        struct Work {
            var source: TopicPartition
            var tag: RepartitionRecord.Tag
            var notices: [(partition: Int32, record: RepartitionRecord)]
            var start: Bool
            var full: Bool
            var beganMs: Int64
        }
        var work: [Work] = []
        lock.withLock {
            let now = clock.monotonicMs()
            for i in assigned {
                let source = partitionsByIndex[Int(i)]
                guard source.topic != topic, var t = txns[source.partition], t.waiting > 0, !t.rewritePending else { continue }
                let start = t.startPending
                let (tag, notices, full) = t.begin(task: source.partition, partitions: options.identity.partitions, nowMs: now)
                txns[source.partition] = t
                work.append(Work(source: source, tag: tag, notices: notices, start: start, full: full, beganMs: now))
            }
        }
        guard !work.isEmpty else { return true }
        let groups = work.map { w in
            var g = CheckpointGroup(source: w.source, records: [], offset: nil)
            g.extra = w.notices.map { n in
                let (k, v) = n.record.encode()
                return (topic, n.partition, k, v)
            }
            return g
        }
        var failure: (any Error)?
        var committed: Set<TopicPartition> = []
        do {
            try store.checkpoint(groups, deadline: .now() + .seconds(5))
        } catch {
            failure = error
            committed = (error as? CheckpointIncomplete)?.committed ?? []
        }
        lock.withLock {
            if failure != nil && store.hasFatalError { halted = true }
            for w in work where txns[w.source.partition]?.epoch == w.tag.epoch {
                if failure == nil || committed.contains(w.source) {
                    txns[w.source.partition]!.committed(
                        w.tag.seq, start: w.start, full: w.full ? w.beganMs : nil, noticed: Set(w.notices.map(\.partition)), touched: [],
                        noticesOnly: true)
                } else {
                    txns[w.source.partition]!.failed(touched: [])
                }
            }
        }
        if let failure {
            logger.warning("a transaction of notices failed; they are written again", metadata: ["error": "\(failure)"])
            return false
        }
        return true
    }
}
