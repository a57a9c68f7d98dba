import Folding
import Kafka

/// Holds each routed record read from `<group>-repartition` until a notice of the task
/// that wrote it says whether its transaction committed (docs/identity.md,
/// "Transactions on brokers that show aborted records"); drops those of transactions that
/// did not. Records of a partition leave in the order they came: behind one that waits,
/// every later one waits too (their positions are committed in order).
///
/// Memory: past ``capBytes`` held, a waiting partition's messages are not kept; they are
/// only looked through for notices (each kept as a few numbers), and read again (a seek,
/// ``takeSeeks()``) once what was kept is handed out. Read again, a record whose notice
/// was seen is resolved at once.
///
/// Poll thread only (``SyncEngine/consume(_:)``, ``SyncEngine/takeSeeks()`` and the
/// rebalance callbacks).
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

    private struct Notice {
        var offset: Int64
        var task: Int32
        var epoch: UInt64
        var through: Int64
    }

    private struct Partition {
        var queue: [Held] = []
        /// Notices seen, in order, from where the first unresolved record was read on: all
        /// of them up to its end (a record read again finds its task's first notice after
        /// it there, or none), at most ``TransactionGate/maxNotices``. It loses only its
        /// head, and only while the partition is idle: those at or before what is read.
        /// Once full it takes none after a gap (one kept after a gap could be taken for a
        /// record's first when an earlier one was not kept, and judge it by another
        /// transaction's epoch): room comes back either when it empties (the partition
        /// idle past its end) or while the partition is read again from before its end,
        /// which passes the notices left out, in order, before any later one. What is not
        /// kept is read again with the records behind it.
        var notices: ArraySlice<Notice> = []
        /// Over the cap: the first offset not kept, read again once the queue is handed out
        /// and the first tagged record not kept is resolved.
        var resumeAt: Int64?
        var firstUnkept: (offset: Int64, tag: RepartitionRecord.Tag)?
        /// Whether it is resolved: its verdict known when it was let go, or the first notice
        /// of its task after it seen since (kept as notices come: asked per message, a walk
        /// of every notice seen made a long wait cost the square of its length).
        var firstUnkeptResolved = false
        /// That notice, kept apart from ``notices``, which may be full: read again, the
        /// record is resolved by it (`resumeResolver`), so each reading again moves on.
        var firstUnkeptNotice: Notice?
        var resumeResolver: (offset: Int64, notice: Notice)?
        /// A seek back to this offset asked: the partition's messages until it comes back
        /// were fetched before the seek, and are ignored.
        var rewinding: Int64?
        var isIdle: Bool { queue.isEmpty && resumeAt == nil && rewinding == nil && resumeResolver == nil }
    }

    let capBytes: Int
    private var parts: [TopicPartition: Partition] = [:]
    private var seeks: [(TopicPartition, Int64)] = []
    /// Copies handed to the engine by the last ``filter(_:topic:tasks:)``, freed by ``release()``.
    private var handedOut: [UnsafeMutableBufferPointer<UInt8>] = []
    /// Bytes and records held, records dropped so far (their transactions did not commit),
    /// and seeks asked (messages let go over the cap).
    private(set) var heldBytes = 0
    private(set) var heldRecords = 0
    private(set) var dropped = 0
    private(set) var rewinds = 0

    /// The most notices a partition keeps while records wait (``Partition/notices``):
    /// 2 MiB a waiting partition. A writer silent for long made the list grow with
    /// everything read.
    static let maxNotices = 1 << 16
    let maxNotices: Int

    init(capBytes: Int = 64 << 20, maxNotices: Int = TransactionGate.maxNotices) {
        self.capBytes = capBytes
        self.maxNotices = maxNotices
    }

    /// Notices kept, over all partitions (tests).
    var noticesKept: Int { parts.values.reduce(0) { $0 + $1.notices.count } }

    deinit {
        release()
        for p in parts.values { for h in p.queue { h.bytes.deallocate() } }
    }

    /// The batch with the messages of `topic` that wait taken out, and those a notice
    /// resolved put in (each where its notice was). Call ``release()`` once the batch is
    /// folded.
    ///
    /// A tag naming no task of `tasks` (none of the group's writers wrote it) is read as
    /// untagged: no notice would ever come for it, and every later record of its partition
    /// would wait behind it.
    func filter(_ batch: [ConsumedMessage], topic: String, tasks: Int32) -> [ConsumedMessage] {
        guard batch.contains(where: { $0.topicPartition.topic == topic }) || !parts.isEmpty else { return batch }
        var out: [ConsumedMessage] = []
        out.reserveCapacity(batch.count)
        // The partition of the current run of messages, taken out of `parts` while it
        // changes (a copy left in the table made every append to its queue copy the whole
        // queue) and put back when the run ends: batches come in runs of one partition, and
        // two lookups of a message's partition were a third of the gate's time.
        var runOf: TopicPartition?
        var run: Partition?
        for m in batch {
            guard m.topicPartition.topic == topic else {
                out.append(m)
                continue
            }
            var head = RepartitionRecord.head(value: m.value)
            if case .tagged(let tag) = head, tag.task >= tasks { head = .untagged }
            if runOf != m.topicPartition {
                if let tp = runOf { parts[tp] = run.take() }
                runOf = m.topicPartition
                run = parts.removeValue(forKey: m.topicPartition)
            }
            guard var p = run.take() else {
                // Nothing waits in this partition: only a tagged record starts waiting.
                if case .tagged(let tag) = head {
                    var p = Partition()
                    take(m, tag: tag, verdict: nil, into: &p)
                    run = p
                } else {
                    out.append(m)
                }
                continue
            }
            if let r = p.rewinding {
                guard m.offset == r else {  // fetched before the seek
                    run = p
                    continue
                }
                p.rewinding = nil
            }
            switch head {
            case .tagged(let tag):
                var verdict = resolved(tag, at: m.offset, by: p.notices)
                if let r = p.resumeResolver, r.offset <= m.offset {
                    if verdict == nil && r.offset == m.offset {
                        verdict = Self.committed(tag, epoch: r.notice.epoch, through: r.notice.through)
                    }
                    p.resumeResolver = nil
                }
                if p.queue.isEmpty && p.resumeAt == nil, let verdict {
                    if verdict { out.append(m) } else { dropped += 1 }
                } else {
                    take(m, tag: tag, verdict: verdict, into: &p)
                }
            case .notice(let task, let epoch, let through):
                let notice = Notice(offset: m.offset, task: task, epoch: epoch, through: through)
                if p.notices.count < maxNotices, p.notices.last.map({ $0.offset < m.offset }) ?? true {
                    p.notices.append(notice)
                }
                if let f = p.firstUnkept, !p.firstUnkeptResolved, f.tag.task == task, f.offset < m.offset {
                    p.firstUnkeptResolved = true
                    p.firstUnkeptNotice = notice
                }
                if p.queue.isEmpty && p.resumeAt == nil {
                    out.append(m)
                } else {
                    take(m, tag: nil, verdict: true, into: &p)
                    resolve(&p, task: task, epoch: epoch, through: through)
                }
            case .untagged:
                if p.queue.isEmpty && p.resumeAt == nil {
                    out.append(m)
                } else {
                    take(m, tag: nil, verdict: true, into: &p)
                }
            }
            handOut(&p, into: &out)
            if p.queue.isEmpty, let resume = p.resumeAt, p.firstUnkept == nil || p.firstUnkeptResolved {
                // What was kept is out, and what was not can move: read it again.
                p.resumeResolver = p.firstUnkept.flatMap { f in p.firstUnkeptNotice.map { (f.offset, $0) } }
                p.resumeAt = nil
                p.firstUnkept = nil
                p.firstUnkeptResolved = false
                p.firstUnkeptNotice = nil
                p.rewinding = resume
                seeks.append((m.topicPartition, resume))
                rewinds += 1
            }
            if p.isIdle {
                // Later records need only notices after them (and nothing is read again).
                // Read again after a seek, the list is passed one notice at a time: cut
                // from its head (no walk or move of the whole list per message), its room
                // given back once more than half of it is cut.
                if let first = p.notices.first, first.offset <= m.offset {
                    p.notices.removeFirst(Self.firstAfter(m.offset, in: p.notices) - p.notices.startIndex)
                    if p.notices.startIndex > p.notices.count { p.notices = ArraySlice(Array(p.notices)) }
                }
                if p.notices.isEmpty { continue }
            }
            run = p
        }
        if let tp = runOf { parts[tp] = run.take() }
        return out
    }

    /// Frees the copies the last ``filter(_:topic:tasks:)`` handed out.
    func release() {
        for b in handedOut { b.deallocate() }
        handedOut.removeAll(keepingCapacity: true)
    }

    /// The partitions to read again, and from where (asked once).
    func takeSeeks() -> [(TopicPartition, Int64)] {
        defer { seeks.removeAll() }
        return seeks
    }

    /// Forgets what is held of `partitions` (revoked, or assigned anew: read again from
    /// their committed offsets).
    func drop(_ partitions: [TopicPartition]) {
        let gone = Set(partitions)
        seeks.removeAll { gone.contains($0.0) }
        for tp in partitions {
            guard let p = parts.removeValue(forKey: tp) else { continue }
            for h in p.queue {
                heldBytes -= h.bytes.count
                heldRecords -= 1
                h.bytes.deallocate()
            }
        }
    }

    /// The verdict the first notice of `tag`'s task after `offset` gives, if one was seen.
    /// A notice's verdict on a record of its task before it: committed if the notice names
    /// its epoch and a `through` at or past its transaction; otherwise its transaction did
    /// not commit.
    private static func committed(_ tag: RepartitionRecord.Tag, epoch: UInt64, through: Int64) -> Bool {
        tag.epoch == epoch && tag.seq <= through
    }

    /// The index of the first notice after `offset` (the notices are in offset order).
    private static func firstAfter(_ offset: Int64, in notices: ArraySlice<Notice>) -> Int {
        var (lo, hi) = (notices.startIndex, notices.endIndex)
        while lo < hi {
            let mid = lo + (hi - lo) / 2
            if notices[mid].offset > offset { hi = mid } else { lo = mid + 1 }
        }
        return lo
    }

    /// The verdict of the first notice of `tag`'s task after `offset` in `notices`, if any.
    private func resolved(_ tag: RepartitionRecord.Tag, at offset: Int64, by notices: ArraySlice<Notice>) -> Bool? {
        guard let last = notices.last, last.offset > offset else { return nil }
        guard let n = notices[Self.firstAfter(offset, in: notices)...].first(where: { $0.task == tag.task }) else { return nil }
        return Self.committed(tag, epoch: n.epoch, through: n.through)
    }

    /// Keeps `m` at the end of `p`'s queue, unless the cap is reached or messages were let
    /// go already: then from its offset on the partition is read again.
    private func take(_ m: ConsumedMessage, tag: RepartitionRecord.Tag?, verdict: Bool?, into p: inout Partition) {
        if p.resumeAt == nil && heldBytes + m.key.count + m.value.count > capBytes { p.resumeAt = m.offset }
        if p.resumeAt != nil {
            // The first tagged record let go, resolved or not: with a verdict known already
            // (from the notices kept, read before a seek back), reading it again moves on
            // at once. Only unresolved ones counted, and a later
            // record whose notice never came held back a partition whose next records could
            // all leave (`whateverTheBoundsWhatLeavesIsWhatTheNoticesSay`, seed 4294).
            if p.firstUnkept == nil, let tag {
                p.firstUnkept = (m.offset, tag)
                p.firstUnkeptResolved = verdict != nil
                p.firstUnkeptNotice = nil
            }
            return
        }
        let bytes = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(1, m.key.count + m.value.count))
        if !m.key.isEmpty { _ = UnsafeMutableBufferPointer(rebasing: bytes[0..<m.key.count]).initialize(from: m.key) }
        if !m.value.isEmpty {
            _ = UnsafeMutableBufferPointer(rebasing: bytes[m.key.count..<(m.key.count + m.value.count)]).initialize(from: m.value)
        }
        p.queue.append(
            Held(
                topicPartition: m.topicPartition, offset: m.offset, timestampMs: m.timestampMs, bytes: bytes,
                keyCount: m.key.count, valueCount: m.value.count, tag: tag, verdict: verdict))
        heldBytes += bytes.count
        heldRecords += 1
    }

    /// A notice of `task`: every record of it kept before the notice is resolved.
    private func resolve(_ p: inout Partition, task: Int32, epoch: UInt64, through: Int64) {
        for i in p.queue.indices where p.queue[i].verdict == nil {
            guard let tag = p.queue[i].tag, tag.task == task else { continue }
            p.queue[i].verdict = Self.committed(tag, epoch: epoch, through: through)
        }
    }

    /// The resolved records at the head of `p`'s queue: the committed ones into `out`, the
    /// others dropped.
    private func handOut(_ p: inout Partition, into out: inout [ConsumedMessage]) {
        var n = 0
        while n < p.queue.count, let verdict = p.queue[n].verdict {
            let h = p.queue[n]
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
        if n > 0 { p.queue.removeFirst(n) }
    }
}
