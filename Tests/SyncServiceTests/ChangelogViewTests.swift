import Folding
import Foundation
import Kafka
import Testing

@testable import SyncService

/// What a restore reads of a changelog partition (``SyncEngine/ChangelogView``): the last
/// record of each key in the records' order, each source partition's marker, and the
/// users a restore sizes its table for.
@Suite struct ChangelogViewTests {
    let tp0 = TopicPartition("events", 0)
    let tp1 = TopicPartition("events", 1)

    @Test func theLastRecordOfEachKeyInTheRecordsOrder() {
        let u = { (s: String) in Array(s.utf8) }
        let records: [(key: [UInt8], value: [UInt8]?)] = [
            (u("a"), [1]),  // 0: replaced by 2
            (u("b"), [2]),  // 1: replaced by the tombstone 3
            (u("a"), [3]),  // 2
            (u("b"), nil),  // 3: a tombstone, kept as one
            (ChangelogMarker.key(tp0), [9]),  // 4: replaced by its tombstone 6
            (ChangelogMarker.key(tp1), [8]),  // 5
            (ChangelogMarker.key(tp0), nil),  // 6
            (u(""), [4]),  // 7: an empty key, kept (the restore skips it)
            (u("c"), []),  // 8: an empty value is not a tombstone
        ]
        let view = SyncEngine.ChangelogView(PackedRecords(records))
        #expect(view.latest.map(\.key) == ["a", "b", "", "c"])
        #expect(view.latest.map(\.record) == [2, 3, 7, 8])
        #expect(view.records.valueRange(3) == nil)
        #expect(view.records.valueRange(8)?.isEmpty == true)
        #expect(view.marker(of: tp0) == nil)
        #expect(view.marker(of: tp1) == [8])
        #expect(view.marker(of: TopicPartition("events", 2)) == nil)
        #expect(view.markers.count == 2)  // the tombstoned one still says the partition has markers
        let empty = SyncEngine.ChangelogView(PackedRecords())
        #expect(empty.latest.isEmpty && empty.markers.isEmpty)
    }

    /// A merging task's changelog partition: what its committed transactions wrote, each
    /// between a begin marker and its source marker. A transaction a crash cut off (begun,
    /// never ended) is not read, even below a later one that committed (brokers that show
    /// aborted records show it), and its tag is named so that the graph's restore leaves
    /// out what it wrote there.
    @Test func onlyWhatCommittedTransactionsWroteIsRead() throws {
        let u = { (s: String) in (key: Array(s.utf8), value: Optional([UInt8(1)])) }
        let txn = { (seq: Int64) in StoredUser.MarkerTxn(epoch: 7, seq: seq) }
        let begin = { (seq: Int64) in
            (key: ChangelogMarker.beginKey(tp0), value: Optional(ChangelogMarker.value(offset: -1, sourcePartitions: 2, txn: txn(seq))))
        }
        let end = { (seq: Int64) in
            (key: ChangelogMarker.key(tp0), value: Optional(ChangelogMarker.value(offset: seq, sourcePartitions: 2, txn: txn(seq))))
        }
        let records = [
            begin(0), u("a"), end(0),
            begin(1), u("torn"), u("a"),  // cut off: "a" keeps its record of transaction 0
            begin(2), u("b"), end(2),
            begin(3), u("late"),  // cut off at the end
        ]
        let view = SyncEngine.ChangelogView(PackedRecords(records), transactionsOf: tp0)
        #expect(view.latest.map(\.key) == ["a", "b"])
        #expect(view.latest.map(\.record) == [1, 7])
        #expect(try StateCodec.decode(#require(view.marker(of: tp0))).markerTxn == txn(2))
        #expect(view.cut == [txn(1), txn(3)])
        // Read without a task (not merging), every record counts.
        #expect(SyncEngine.ChangelogView(PackedRecords(records)).latest.map(\.key) == ["torn", "a", "b", "late"])
    }

    /// Before the first begin marker (builds without them; or compaction kept only the
    /// last): up to the last end marker there, as before begin markers; all of it if there
    /// is none (written before markers).
    @Test func recordsBeforeTheFirstBeginMarkerAreReadAsBefore() {
        let s = { (i: Int) in (0..<i).map { (key: Array("u\($0)".utf8), value: Optional([UInt8(1)])) } }
        let b = [(key: ChangelogMarker.beginKey(tp0), value: Optional([UInt8(0)]))]
        let m = [(key: ChangelogMarker.key(tp0), value: Optional([UInt8(0)]))]
        let spans = { (r: [(key: [UInt8], value: [UInt8]?)]) in
            ChangelogMarker.committedSpans(count: r.count, isBegin: { r[$0].key == b[0].key }, isEnd: { r[$0].key == m[0].key }).kept
        }
        #expect(spans(s(3)) == [0..<3])  // no markers
        #expect(spans(s(2) + m + s(1)) == [0..<3])  // end markers only: up to the last
        #expect(spans(s(2) + b + s(1) + m) == [0..<2, 2..<5])  // a head without an end marker
        #expect(spans(s(1) + m + s(1) + b + s(1) + m) == [0..<2, 3..<6])  // the head's tail was cut off
        #expect(spans(b + s(1)).isEmpty)  // a first transaction cut off
        #expect(spans([]).isEmpty)
    }

    /// Keys are users' identities byte for byte, as the user table hashes them: two
    /// spellings of "é" (one precomposed scalar; "e" and a combining accent) are two
    /// users, which a `String`-keyed table (equal under canonical equivalence) merged,
    /// the later one's state restored under the earlier one's identity.
    @Test func keysThatAreEqualAsTextButNotAsBytesAreTwoUsers() {
        let composed = Array("\u{e9}".utf8)
        let decomposed = Array("e\u{301}".utf8)
        #expect(composed != decomposed)
        let view = SyncEngine.ChangelogView(PackedRecords([(composed, [1]), (decomposed, [2])]))
        #expect(view.latest.count == 2)
        #expect(view.latest.map { Array($0.key.utf8) } == [composed, decomposed])
        #expect(view.latest.map(\.record) == [0, 1])
    }

    /// Keys whose last record is a tombstone are no users: the table is not sized for them
    /// (compaction keeps tombstones a day, so after many users expired at once the table
    /// would have been sized for all of them).
    @Test func tombstonesAreNotCountedAsUsersToCome() {
        let records = (0..<100).map { (key: Array("u\($0)".utf8), value: $0 < 30 ? Optional([UInt8(1)]) : nil) }
        let view = SyncEngine.ChangelogView(PackedRecords(records))
        #expect(view.users == 30)
        let own = SharedStore(statePartitions: 1, sourcePartitions: 1)
        #expect(SyncEngine.expectedUsers([tp0], views: [0: view], store: own) == 30)
    }

    /// A changelog partition shared by the source partitions that map to it.
    struct SharedStore: StateStore {
        let statePartitions: Int32
        let sourcePartitions: Int32
        func statePartition(for sourcePartition: Int32) -> Int32 { sourcePartition % statePartitions }
        func read(partition: Int32) throws -> [(key: [UInt8], value: [UInt8]?)] { [] }
        func write(_ records: [(partition: Int32, key: [UInt8], value: [UInt8]?)]) throws {}
        func commit(_ offsets: [TopicPartition: Int64]) throws {}
    }

    @Test func aSharedChangelogPartitionSizesTheTableForTheShareRestored() {
        let keys = (0..<3_200).map { (key: Array("user-\($0)".utf8), value: Optional([UInt8(1)])) }
        let view = SyncEngine.ChangelogView(PackedRecords(keys))
        // One changelog partition for 32 source partitions: 4 of them restored here expect
        // an eighth of its users, not four times all of them.
        let shared = SharedStore(statePartitions: 1, sourcePartitions: 32)
        let four = (0..<4).map { TopicPartition("events", Int32($0)) }
        #expect(SyncEngine.expectedUsers(four, views: [0: view], store: shared) == 400)
        // Co-partitioned: each restored partition its own changelog partition's keys.
        let own = SharedStore(statePartitions: 4, sourcePartitions: 4)
        #expect(SyncEngine.expectedUsers(four, views: [0: view, 1: view, 2: view, 3: view], store: own) == 4 * 3_200)
        // A store that does not know the source's partitions: every key counts.
        let unknown = SharedStore(statePartitions: 1, sourcePartitions: 0)
        #expect(SyncEngine.expectedUsers(four, views: [0: view], store: unknown) == 3_200)
    }
}
