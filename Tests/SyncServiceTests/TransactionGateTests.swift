import Folding
import Foundation
import Kafka
import Simulation
import Testing

@testable import SyncService

/// ``TransactionGate``: a routed record leaves only once a notice of its task says its
/// transaction committed, in its partition's order; one of a transaction that did not
/// commit never leaves.
@Suite struct TransactionGateTests {
    static let topic = "g-repartition"

    /// A gate, and every value passed through it by partition and offset (what leaves
    /// must be it).
    final class Harness {
        let gate: TransactionGate
        var sent: [[Int64]: [UInt8]] = [:]

        init(capBytes: Int = 64 << 20, maxNotices: Int = TransactionGate.maxNotices) {
            gate = TransactionGate(capBytes: capBytes, maxNotices: maxNotices)
        }

        /// Runs `messages` (partition, offset, value) through the gate in one batch, with a
        /// source message after each; what left of the topic, as (partition, offset).
        func pass(_ messages: [(Int32, Int64, [UInt8])]) -> [(Int32, Int64)] {
            for m in messages { sent[[Int64(m.0), m.1]] = m.2 }
            var all = messages.map { (TopicPartition(TransactionGateTests.topic, $0.0), $0.1, $0.2) }
            all = all.flatMap { [$0, (TopicPartition("events", 0), $0.1, Array("{}".utf8))] }
            let buffers = all.map { m -> UnsafeMutableBufferPointer<UInt8> in
                let b = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(1, m.2.count))
                _ = b.initialize(from: m.2)
                return b
            }
            defer { for b in buffers { b.deallocate() } }
            let key = Array("k".utf8)
            return key.withUnsafeBufferPointer { k in
                let batch = zip(all, buffers).map { m, b in
                    ConsumedMessage(
                        topicPartition: m.0, offset: m.1, timestampMs: nil, key: k,
                        value: UnsafeBufferPointer(start: b.baseAddress, count: m.2.count))
                }
                let out = gate.filter(batch, topic: TransactionGateTests.topic, tasks: 4)
                defer { gate.release() }
                #expect(out.count { $0.topicPartition.topic == "events" } == messages.count, "a source message held")
                return out.filter { $0.topicPartition.topic == TransactionGateTests.topic }.map { m in
                    #expect(Array(m.value) == sent[[Int64(m.topicPartition.partition), m.offset]] && Array(m.key) == key)
                    return (m.topicPartition.partition, m.offset)
                }
            }
        }
    }

    static func record(_ task: Int32, _ epoch: UInt64, _ seq: Int64) -> [UInt8] {
        RepartitionRecord.link(id: "a", canonical: "b", timeMs: 1, hops: 0).encode(tag: .init(task: task, epoch: epoch, seq: seq)).value
    }

    static func notice(_ task: Int32, _ epoch: UInt64, _ through: Int64) -> [UInt8] {
        RepartitionRecord.notice(task: task, epoch: epoch, through: through).encode().value
    }

    @Test func recordsWaitForTheirNoticeAndLeaveInOrder() {
        let h = Harness()
        let gate = h.gate
        // Task 1's transaction 0, task 2's transaction 4, an untagged record behind them.
        var out = h.pass(
            [(0, 10, Self.record(1, 7, 0)), (0, 11, Self.record(2, 9, 4)), (0, 12, Array("old".utf8)), (1, 5, Self.record(1, 7, 0))])
        #expect(out.isEmpty)
        #expect(gate.heldRecords == 4)
        // Task 2's notice first: its record waits behind task 1's.
        out = h.pass([(0, 13, Self.notice(2, 9, 4))])
        #expect(out.isEmpty)
        // Task 1's: partition 0 leaves whole, in order, notices included; partition 1 waits.
        out = h.pass([(0, 14, Self.notice(1, 7, 0))])
        #expect(out.map(\.1) == [10, 11, 12, 13, 14] && out.allSatisfy { $0.0 == 0 })
        #expect(gate.heldRecords == 1)
        // A notice with nothing held passes at once.
        out = h.pass([(0, 15, Self.notice(1, 7, 0))])
        #expect(out.map(\.1) == [15])
        #expect(gate.dropped == 0)
    }

    /// A failed transaction's records (a later notice names an earlier one), a former
    /// epoch's records past what the new owner's start notice names, and a former owner's
    /// records when the new owner found nothing committed: dropped.
    @Test func recordsOfTransactionsThatDidNotCommitAreDropped() {
        let h = Harness()
        let gate = h.gate
        var out = h.pass(
            [
                (0, 0, Self.record(1, 7, 0)), (0, 1, Self.record(1, 7, 1)), (0, 2, Self.notice(1, 7, 0)),  // 1 failed
                (0, 3, Self.record(1, 7, 2)), (0, 4, Self.record(1, 7, 3)),
                (0, 5, Self.notice(1, 0, -1)),  // a new owner: nothing of task 1 committed before
            ])
        #expect(out.map(\.1) == [0, 2, 5])
        #expect(gate.dropped == 3 && gate.heldRecords == 0)
        out = h.pass(
            [(0, 6, Self.record(1, 8, 0)), (0, 7, Self.record(1, 8, 1)), (0, 8, Self.record(1, 8, 2)), (0, 9, Self.notice(1, 8, 1))])
        #expect(out.map(\.1) == [6, 7, 9])
        #expect(gate.dropped == 4)
    }

    /// A tag naming a task the group does not have (no notice would ever come for it) is
    /// read as untagged: nothing waits behind it.
    @Test func aTagOfNoTaskHoldsNothing() {
        let h = Harness()
        let out = h.pass([(0, 0, Self.record(4, 7, 0)), (0, 1, Self.record(.max, 7, 0)), (0, 2, Self.record(3, 7, 0))])
        #expect(out.map(\.1) == [0, 1])
        #expect(h.gate.heldRecords == 1)
    }

    /// What is held of a partition revoked (or assigned anew) is forgotten: it is read
    /// again from the committed offset.
    @Test func aRevokedPartitionsRecordsAreForgotten() {
        let h = Harness()
        let gate = h.gate
        _ = h.pass([(0, 0, Self.record(1, 7, 0)), (1, 0, Self.record(1, 7, 0))])
        gate.drop([TopicPartition(Self.topic, 0)])
        #expect(gate.heldRecords == 1 && gate.heldBytes > 0)
        let out = h.pass([(0, 1, Self.notice(1, 7, 0)), (1, 1, Self.notice(1, 7, 0))])
        #expect(out.map { [$0.0, Int32($0.1)] } == [[0, 1], [1, 0], [1, 1]])
        #expect(gate.heldRecords == 0 && gate.heldBytes == 0)
    }
}

/// ``TaskTransactions``: which partitions a task's next transaction writes notices into.
@Suite struct TaskTransactionsTests {
    @Test func noticesGoWhereRecordsWaitAndEverywhereAtTheStartAndEvery30s() {
        var t = TaskTransactions(prior: .init(epoch: 5, seq: 9), nowMs: 0)
        // The start: every partition, naming the former owner's last committed transaction.
        var (tag, notices, _) = t.begin(task: 2, partitions: 3, nowMs: 10)
        #expect(tag.task == 2 && tag.seq == 0 && tag.epoch == t.epoch && t.epoch != 5)
        #expect(notices.map(\.partition) == [0, 1, 2])
        #expect(notices.allSatisfy { $0.record == .notice(task: 2, epoch: 5, through: 9) })
        // Failed: the start notices again, and its records' partition owed.
        t.failed(touched: [1])
        (tag, notices, _) = t.begin(task: 2, partitions: 3, nowMs: 20)
        #expect(tag.seq == 1 && notices.count == 3 && t.startPending)
        t.committed(1, start: true, noticed: [0, 1, 2], touched: [0])
        // Then only where its records wait, naming its own last commit.
        (tag, notices, _) = t.begin(task: 2, partitions: 3, nowMs: 30)
        #expect(notices.map(\.partition) == [0])
        #expect(notices.first?.record == .notice(task: 2, epoch: t.epoch, through: 1))
        t.committed(2, start: false, noticed: [0], touched: [])
        (_, notices, _) = t.begin(task: 2, partitions: 3, nowMs: 40)
        #expect(notices.isEmpty && t.waiting == 0)
        // Every 30 s, every partition, until a transaction that wrote them commits.
        var full = false
        (tag, notices, full) = t.begin(task: 2, partitions: 3, nowMs: TaskTransactions.fullNoticeMs + 1)
        #expect(notices.map(\.partition) == [0, 1, 2] && full)
        #expect(notices.allSatisfy { $0.record == .notice(task: 2, epoch: t.epoch, through: 2) })
        t.failed(touched: [])
        (_, notices, full) = t.begin(task: 2, partitions: 3, nowMs: TaskTransactions.fullNoticeMs + 2)
        #expect(notices.count == 3 && full)
        t.committed(5, start: false, full: TaskTransactions.fullNoticeMs + 2, noticed: [0, 1, 2], touched: [])
        (_, notices, _) = t.begin(task: 2, partitions: 3, nowMs: TaskTransactions.fullNoticeMs + 3)
        #expect(notices.isEmpty)
    }
}

/// ``TransactionGate`` over its cap: what is not kept is looked through for notices and
/// read again (a seek) once the first record not kept can be resolved; read again, it is
/// resolved by the notices seen.
@Suite struct TransactionGateCapTests {
    @Test func pastTheCapAPartitionIsReadAgainAndResolvedByTheNoticesSeen() {
        let h = TransactionGateTests.Harness(capBytes: 0)
        let gate = h.gate
        let rec = TransactionGateTests.record
        let notice = TransactionGateTests.notice
        // Nothing kept; the notice of task 1 comes at 3: a seek back to 0.
        var out = h.pass([(0, 0, rec(1, 7, 0)), (0, 1, rec(1, 7, 1)), (0, 2, rec(2, 9, 0)), (0, 3, notice(1, 7, 0))])
        #expect(out.isEmpty && gate.heldRecords == 0)
        // Task 2's record (at 2) is not resolved yet, but the first one not kept is: read again.
        #expect(gate.takeSeeks().map { [$0.0.partition, Int32($0.1)] } == [[0, 0]])
        // Messages fetched before the seek are ignored until offset 0 comes back.
        out = h.pass([(0, 4, rec(2, 9, 1))])
        #expect(out.isEmpty)
        // Read again: 0 committed, 1 dropped, 2 waits (nothing kept: over the cap), the rest
        // behind it.
        out = h.pass([(0, 0, rec(1, 7, 0)), (0, 1, rec(1, 7, 1)), (0, 2, rec(2, 9, 0)), (0, 3, notice(1, 7, 0))])
        #expect(out.map(\.1) == [0])
        #expect(gate.dropped == 1)
        // No seek until a notice of task 2 is seen.
        #expect(gate.takeSeeks().isEmpty)
        out = h.pass([(0, 4, rec(2, 9, 1)), (0, 5, notice(2, 9, 1))])
        #expect(out.isEmpty)
        #expect(gate.takeSeeks().map { [$0.0.partition, Int32($0.1)] } == [[0, 2]])
        out = h.pass([(0, 2, rec(2, 9, 0)), (0, 3, notice(1, 7, 0)), (0, 4, rec(2, 9, 1)), (0, 5, notice(2, 9, 1))])
        #expect(out.map(\.1) == [2, 3, 4, 5])
        #expect(gate.takeSeeks().isEmpty && gate.heldRecords == 0 && gate.heldBytes == 0)
        // Idle again: a notice passes at once.
        out = h.pass([(0, 6, notice(2, 9, 1))])
        #expect(out.map(\.1) == [6])
    }

    /// A writer silent for long (its task restored nowhere) while its record waits past the
    /// cap: the notices of the other tasks read meanwhile are kept up to a bound, not
    /// without end (about 40 bytes each, for as long as the silence lasts). Those not kept
    /// are read again with the records behind them: every record leaves once, in order,
    /// judged by its own task's first notice after it.
    @Test func theNoticesKeptWhileARecordWaitsAreBoundedAndEveryRecordStillLeaves() {
        let h = TransactionGateTests.Harness(capBytes: 0, maxNotices: 3)
        let gate = h.gate
        let rec = TransactionGateTests.record
        let notice = TransactionGateTests.notice
        // Task 1's record waits; task 2 writes a record and a notice, over and over; task 2's
        // record at 21 is of epoch 8, which its next notice says did not commit.
        var log: [(Int32, Int64, [UInt8])] = [(0, 0, rec(1, 7, 0))]
        for i in 0..<20 {
            log.append((0, Int64(1 + 2 * i), rec(2, i == 10 ? 8 : 9, Int64(i))))
            log.append((0, Int64(2 + 2 * i), notice(2, 9, Int64(i))))
        }
        var out = h.pass(log)
        #expect(out.isEmpty)
        #expect(gate.noticesKept <= 3, "kept \(gate.noticesKept) notices")
        #expect(gate.takeSeeks().isEmpty)
        // Task 1 speaks (its transaction 0 committed). The partition is read again, from
        // where each seek asks, until none is asked.
        log.append((0, 41, notice(1, 7, 0)))
        out = h.pass([log[41]])
        var left: [Int64] = []
        var rounds = 0
        while let seek = gate.takeSeeks().first, rounds < 100 {
            rounds += 1
            out = h.pass(Array(log[Int(seek.1)...]))
            left += out.map(\.1)
            #expect(gate.noticesKept <= 3, "kept \(gate.noticesKept) notices")
        }
        #expect(left == Array(0...41).filter { $0 != 21 }, "\(left)")
        #expect(gate.dropped == 1 && gate.heldRecords == 0)
    }

    /// A random log of one partition (1 to `upTo` messages: records and notices of three
    /// tasks, two epochs), what an unbounded gate lets out of it (the messages up to the
    /// first record no notice of its task follows, less the records their first notice
    /// says did not commit), and how many it drops.
    static func randomLog(partition: Int32, upTo: Int64, _ rng: inout SplitMix64) -> (
        log: [(Int32, Int64, [UInt8])], tags: [Int64: RepartitionRecord.Tag], expected: [Int64], dropped: Int
    ) {
        var log: [(Int32, Int64, [UInt8])] = []
        var tags: [Int64: RepartitionRecord.Tag] = [:]
        var notices: [(offset: Int64, task: Int32, epoch: UInt64, through: Int64)] = []
        for o in 0..<Int64.random(in: 1...upTo, using: &rng) {
            let task = Int32.random(in: 0...2, using: &rng)
            let epoch = UInt64.random(in: 1...2, using: &rng)
            let seq = Int64.random(in: 0...3, using: &rng)
            if Bool.random(using: &rng) {
                log.append((partition, o, TransactionGateTests.record(task, epoch, seq)))
                tags[o] = .init(task: task, epoch: epoch, seq: seq)
            } else {
                log.append((partition, o, TransactionGateTests.notice(task, epoch, seq)))
                notices.append((o, task, epoch, seq))
            }
        }
        var expected: [Int64] = []
        var dropped = 0
        for m in log {
            guard let tag = tags[m.1] else {
                expected.append(m.1)
                continue
            }
            guard let n = notices.first(where: { $0.offset > m.1 && $0.task == tag.task }) else { break }
            if tag.epoch == n.epoch && tag.seq <= n.through { expected.append(m.1) } else { dropped += 1 }
        }
        return (log, tags, expected, dropped)
    }

    /// Random logs of records and notices of three tasks, read through gates of random
    /// caps and notice bounds, in batches of random sizes, from wherever a seek asks: what
    /// leaves is what leaves an unbounded gate, the messages up to the first record no
    /// notice resolves, less those its first notice says did not commit, in order, once.
    /// Seeded (`GATE_ROUNDS` asks more rounds). Seed 4294 found a partition held back
    /// for good: a record let go over the cap whose verdict was known already (its
    /// notice read before a seek back) did not count as the first one let go.
    @Test func whateverTheBoundsWhatLeavesIsWhatTheNoticesSay() {
        let rounds = Int(ProcessInfo.processInfo.environment["GATE_ROUNDS"] ?? "") ?? 5_000
        for round in 0..<rounds {
            var rng = SplitMix64(seed: UInt64(round))
            let cap = [0, 40, 120, 64 << 20].randomElement(using: &rng)!
            let maxNotices = [1, 2, 5, TransactionGate.maxNotices].randomElement(using: &rng)!
            let h = TransactionGateTests.Harness(capBytes: cap, maxNotices: maxNotices)
            let (log, tags, expected, dropped) = Self.randomLog(partition: 0, upTo: 40, &rng)
            var left: [Int64] = []
            var from = 0
            var reads = 0
            while from < log.count && reads < 2_000 {
                reads += 1
                let end = min(log.count, from + Int.random(in: 1...8, using: &rng))
                left += h.pass(Array(log[from..<end])).map(\.1)
                #expect(h.gate.noticesKept <= maxNotices)
                if let seek = h.gate.takeSeeks().first { from = Int(seek.1) } else { from = end }
            }
            // Notices read over the cap after the last record that can leave wait with the
            // first that cannot (they carry nothing to fold: only the committed position
            // stays before them), as do the records dropped there.
            let records = expected.filter { tags[$0] != nil }
            #expect(
                left.count <= expected.count && Array(expected.prefix(left.count)) == left
                    && left.filter { tags[$0] != nil } == records,
                "round \(round), cap \(cap), notices kept \(maxNotices): \(left) against \(expected)")
            // Those read over the cap behind the last that leaves are dropped when read again.
            #expect(h.gate.dropped <= dropped, "round \(round)")
        }
    }

    /// As ``whateverTheBoundsWhatLeavesIsWhatTheNoticesSay()`` over up to three
    /// partitions that share the cap, read in turns, in batches that mix them, with
    /// messages fetched before a seek delivered after it (to be ignored), and revocations
    /// (``TransactionGate/drop(_:)``) after which a partition is read again from after the
    /// last message handed out, as from its committed offset.
    @Test func partitionsSharingTheCapThroughSeeksAndRevocationsLeaveWhatTheNoticesSay() {
        let rounds = Int(ProcessInfo.processInfo.environment["GATE_ROUNDS"] ?? "") ?? 2_000
        for round in 0..<rounds {
            var rng = SplitMix64(seed: 1_000_000 + UInt64(round))
            let cap = [0, 40, 120, 64 << 20].randomElement(using: &rng)!
            let maxNotices = [1, 2, 5, TransactionGate.maxNotices].randomElement(using: &rng)!
            let h = TransactionGateTests.Harness(capBytes: cap, maxNotices: maxNotices)
            let partitions = Int.random(in: 1...3, using: &rng)
            var logs: [[(Int32, Int64, [UInt8])]] = []
            var expected: [[Int64]] = []
            var records: [[Int64]] = []
            var tags: [[Int64: RepartitionRecord.Tag]] = []
            for p in 0..<partitions {
                let (log, tag, out, _) = Self.randomLog(partition: Int32(p), upTo: 30, &rng)
                logs.append(log)
                tags.append(tag)
                expected.append(out)
                records.append(out.filter { tag[$0] != nil })
            }
            var left = [[Int64]](repeating: [], count: partitions)
            var from = [Int](repeating: 0, count: partitions)
            var reads = 0
            while from.indices.contains(where: { from[$0] < logs[$0].count }) && reads < 4_000 {
                reads += 1
                // A revocation now and then: read again from after the last handed out.
                if Int.random(in: 0..<20, using: &rng) == 0 {
                    let p = Int.random(in: 0..<partitions, using: &rng)
                    h.gate.drop([TopicPartition(TransactionGateTests.topic, Int32(p))])
                    from[p] = Int(left[p].last.map { $0 + 1 } ?? 0)
                }
                // A batch of one or two partitions' next messages.
                var batch: [(Int32, Int64, [UInt8])] = []
                var ends = from
                for _ in 0..<Int.random(in: 1...2, using: &rng) {
                    let p = Int.random(in: 0..<partitions, using: &rng)
                    guard ends[p] < logs[p].count else { continue }
                    let end = min(logs[p].count, ends[p] + Int.random(in: 1...6, using: &rng))
                    batch += logs[p][ends[p]..<end]
                    ends[p] = end
                }
                if batch.isEmpty { continue }
                for (p, o) in h.pass(batch) { left[Int(p)].append(o) }
                from = ends
                #expect(h.gate.noticesKept <= maxNotices * partitions)
                for seek in h.gate.takeSeeks() {
                    let p = Int(seek.0.partition)
                    // A message fetched before the seek, delivered after it: ignored.
                    if Bool.random(using: &rng), from[p] < logs[p].count, from[p] != Int(seek.1) {
                        #expect(h.pass([logs[p][from[p]]]).isEmpty, "round \(round): a message fetched before a seek left")
                    }
                    from[p] = Int(seek.1)
                }
            }
            for p in 0..<partitions {
                let l = left[p]
                #expect(
                    l.count <= expected[p].count && Array(expected[p].prefix(l.count)) == l
                        && l.filter { tags[p][$0] != nil } == records[p],
                    "round \(round), cap \(cap), notices kept \(maxNotices), partition \(p): \(l) against \(expected[p])")
            }
        }
    }
}
