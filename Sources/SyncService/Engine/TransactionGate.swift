import Folding
import Kafka

/// Holds each routed record read from `<group>-repartition` until a notice of the task
/// that wrote it says whether its transaction committed (docs/identity.md,
/// "Transactions on brokers that show aborted records"); drops those of transactions that
/// did not. Records of a partition leave in the order they came: behind one that waits,
/// every later one waits too (their positions are committed in order).
///
/// Poll thread only (``SyncEngine/consume(_:)`` and the rebalance callbacks).
final class TransactionGate: @unchecked Sendable {
    private struct Held {
        var topicPartition: TopicPartition
        var offset: Int64
        var timestampMs: Int64?
        /// The key's bytes, then the value's.
        var bytes: UnsafeMutableBufferPointer<UInt8>
        var keyCount: Int
        var valueCount: Int
        var tag: RepartitionRecord.Tag?
        /// true: folded; false: dropped (its transaction did not commit); nil: unknown yet.
        var verdict: Bool?
    }

    private var queues: [TopicPartition: [Held]] = [:]
    /// Copies handed to the engine by the last ``filter(_:topic:tasks:)``, freed by ``release()``.
    private var handedOut: [UnsafeMutableBufferPointer<UInt8>] = []
    /// Bytes held, and records dropped so far (their transactions did not commit).
    private(set) var heldBytes = 0
    private(set) var heldRecords = 0
    private(set) var dropped = 0

    deinit {
        release()
        for q in queues.values { for h in q { h.bytes.deallocate() } }
    }

    /// The batch with the messages of `topic` that wait taken out, and those a notice in it
    /// resolved put in (each where its notice was). Call ``release()`` once the batch is
    /// folded.
    ///
    /// A tag naming no task of `tasks` (none of the group's writers wrote it) is read as
    /// untagged: no notice would ever come for it, and every later record of its partition
    /// would wait behind it.
    func filter(_ batch: [ConsumedMessage], topic: String, tasks: Int32) -> [ConsumedMessage] {
        guard batch.contains(where: { $0.topicPartition.topic == topic }) || !queues.isEmpty else { return batch }
        var out: [ConsumedMessage] = []
        out.reserveCapacity(batch.count)
        for m in batch {
            guard m.topicPartition.topic == topic else {
                out.append(m)
                continue
            }
            var head = RepartitionRecord.head(value: m.value)
            if case .tagged(let tag) = head, tag.task >= tasks { head = .untagged }
            let waiting = !(queues[m.topicPartition]?.isEmpty ?? true)
            switch head {
            case .tagged(let tag):
                hold(m, tag: tag, verdict: nil)
            case .notice(let task, let epoch, let through):
                guard waiting else {
                    out.append(m)
                    continue
                }
                hold(m, tag: nil, verdict: true)
                resolve(m.topicPartition, task: task, epoch: epoch, through: through)
                handOut(m.topicPartition, into: &out)
            case .untagged:
                if waiting {
                    hold(m, tag: nil, verdict: true)
                } else {
                    out.append(m)
                }
            }
        }
        return out
    }

    /// Frees the copies the last ``filter(_:topic:tasks:)`` handed out.
    func release() {
        for b in handedOut { b.deallocate() }
        handedOut.removeAll(keepingCapacity: true)
    }

    /// Forgets what is held of `partitions` (revoked, or assigned anew: read again from
    /// their committed offsets).
    func drop(_ partitions: [TopicPartition]) {
        for tp in partitions {
            guard let q = queues.removeValue(forKey: tp) else { continue }
            for h in q {
                heldBytes -= h.bytes.count
                heldRecords -= 1
                h.bytes.deallocate()
            }
        }
    }

    private func hold(_ m: ConsumedMessage, tag: RepartitionRecord.Tag?, verdict: Bool?) {
        let bytes = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(1, m.key.count + m.value.count))
        if !m.key.isEmpty { _ = UnsafeMutableBufferPointer(rebasing: bytes[0..<m.key.count]).initialize(from: m.key) }
        if !m.value.isEmpty {
            _ = UnsafeMutableBufferPointer(rebasing: bytes[m.key.count..<(m.key.count + m.value.count)]).initialize(from: m.value)
        }
        queues[m.topicPartition, default: []].append(
            Held(
                topicPartition: m.topicPartition, offset: m.offset, timestampMs: m.timestampMs, bytes: bytes,
                keyCount: m.key.count, valueCount: m.value.count, tag: tag, verdict: verdict))
        heldBytes += bytes.count
        heldRecords += 1
    }

    /// A notice of `task`: every record of it held before the notice is resolved.
    private func resolve(_ tp: TopicPartition, task: Int32, epoch: UInt64, through: Int64) {
        guard var q = queues[tp] else { return }
        for i in q.indices where q[i].verdict == nil {
            guard let tag = q[i].tag, tag.task == task else { continue }
            q[i].verdict = tag.epoch == epoch && tag.seq <= through
        }
        queues[tp] = q
    }

    /// The resolved records at the head of `tp`'s queue: the committed ones into `out`,
    /// the others dropped.
    private func handOut(_ tp: TopicPartition, into out: inout [ConsumedMessage]) {
        guard var q = queues[tp] else { return }
        var n = 0
        while n < q.count, let verdict = q[n].verdict {
            let h = q[n]
            heldBytes -= h.bytes.count
            heldRecords -= 1
            if verdict {
                let base = UnsafeBufferPointer(h.bytes)
                out.append(
                    ConsumedMessage(
                        topicPartition: h.topicPartition, offset: h.offset, timestampMs: h.timestampMs,
                        key: UnsafeBufferPointer(rebasing: base[0..<h.keyCount]),
                        value: UnsafeBufferPointer(rebasing: base[h.keyCount..<(h.keyCount + h.valueCount)])))
                handedOut.append(h.bytes)
            } else {
                dropped += 1
                h.bytes.deallocate()
            }
            n += 1
        }
        q.removeFirst(n)
        queues[tp] = q.isEmpty ? nil : q
    }
}
