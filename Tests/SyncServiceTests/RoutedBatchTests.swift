import Events
import Folding
import Testing

@testable import SyncService

/// How a checkpoint frames what a task routes (``TaskExtras/encodeOutbound(topic:maxRecordBytes:)``):
/// calls for one partition in a row share a record, up to the batch's caps and the
/// broker's limit; another record for the partition closes the batch, so each
/// partition's records keep their order; a call too large alone is left out.
@Suite struct RoutedBatchTests {
    static let tag = RepartitionRecord.Tag(task: 3, epoch: 0xBEEF, seq: 41)

    static func forwarded(_ n: Int, bytes: Int = 20) -> RepartitionRecord.ForwardedCall {
        .init(target: "user-\(n)", hops: UInt8(n % 3), body: [UInt8](repeating: UInt8(n & 0xFF), count: bytes))
    }

    static func call(_ n: Int, bytes: Int = 20) -> RepartitionRecord { .calls([forwarded(n, bytes: bytes)]) }

    static func extras(_ taken: [(partition: Int32, record: RepartitionRecord)]) -> TaskExtras {
        var x = TaskExtras(task: 3, repartitionIndex: nil, graphRecords: [], written: [], outbound: [], taken: taken)
        x.tag = tag
        x.notices = [(0, .notice(task: 3, epoch: 0xBEEF, through: 40))]
        return x
    }

    /// What the records written hold, per partition in order: each record's calls as
    /// `user-N` numbers, other records by their kind.
    static func written(_ x: TaskExtras) throws -> [Int32: [[String]]] {
        var out: [Int32: [[String]]] = [:]
        for r in x.outbound {
            let record = try RepartitionRecord.decode(key: r.key, value: try #require(r.value))
            let head = r.value!.withUnsafeBufferPointer { RepartitionRecord.head(value: $0) }
            switch record {
            case .notice: out[r.partition, default: []].append(["notice"])
            case .calls(let calls):
                #expect(head == .tagged(tag))
                out[r.partition, default: []].append(calls.map(\.target))
            case .link(let id, _, _, _): out[r.partition, default: []].append(["link " + id])
            default: out[r.partition, default: []].append(["other"])
            }
        }
        return out
    }

    @Test func callsInARowForOnePartitionShareARecordAndKeepTheirOrder() throws {
        var x = Self.extras([
            (0, Self.call(1)), (1, Self.call(2)), (0, Self.call(3)),
            (0, .link(id: "a-1", canonical: "user-9", timeMs: 5, hops: 0)),
            (0, Self.call(4)), (1, Self.call(5)), (1, Self.call(6)),
        ])
        let oversized = x.encodeOutbound(topic: "g-repartition", maxRecordBytes: 1 << 20)
        #expect(oversized.isEmpty)
        #expect(
            try Self.written(x) == [
                0: [["notice"], ["user-1", "user-3"], ["link a-1"], ["user-4"]],
                1: [["user-2", "user-5", "user-6"]],
            ])
        // Kept to be written again if the transaction fails: every call, as taken.
        #expect(x.taken.count == 7)
        // The calls come back whole, hops included.
        let first = try #require(x.outbound.first { $0.partition == 1 })
        guard case .calls(let calls) = try RepartitionRecord.decode(key: first.key, value: first.value!) else {
            Issue.record("not calls")
            return
        }
        #expect(calls == [2, 5, 6].map { Self.forwarded($0) })
    }

    /// A batch stops short of the cap (the broker's limit here), and a call over the limit
    /// on its own is left out of both the records and what is kept for a retry.
    @Test func aBatchStaysUnderTheLimitAndACallOverItIsLeftOut() throws {
        let limit = 400
        var taken: [(partition: Int32, record: RepartitionRecord)] = (0..<40).map { (2, Self.call($0)) }
        taken.insert((2, Self.call(99, bytes: limit)), at: 17)
        var x = Self.extras(taken)
        let oversized = x.encodeOutbound(topic: "g-repartition", maxRecordBytes: limit)
        #expect(oversized.map(\.key) == ["user-99"])
        #expect(oversized.first?.kind == .invalidEvent)
        #expect(x.taken.count == 40)
        let records = x.outbound.filter { $0.partition == 2 }
        #expect(records.count > 1, "one record for 40 calls of 30 bytes under a limit of \(limit)")
        for r in records { #expect(r.key.count + (r.value?.count ?? 0) <= limit) }
        #expect(try Self.written(x)[2]?.flatMap { $0 } == (0..<40).map { "user-\($0)" })
    }

    /// The caps hold without a broker limit: 256 KiB and 2,000 calls a record (what a
    /// reader decodes at once).
    @Test func aBatchStaysUnderItsCaps() throws {
        var x = Self.extras((0..<100).map { (1, Self.call($0, bytes: 10_000)) })
        _ = x.encodeOutbound(topic: "g-repartition", maxRecordBytes: 1 << 30)
        let records = x.outbound.filter { $0.partition == 1 }
        #expect(records.count == 4)
        for r in records { #expect(r.key.count + (r.value?.count ?? 0) <= RepartitionRecord.maxBatchBytes) }
        var small = Self.extras((0..<4_500).map { (1, Self.call($0, bytes: 1)) })
        _ = small.encodeOutbound(topic: "g-repartition", maxRecordBytes: 1 << 30)
        #expect(try Self.written(small)[1]?.map(\.count) == [2_000, 2_000, 500])
    }
}
