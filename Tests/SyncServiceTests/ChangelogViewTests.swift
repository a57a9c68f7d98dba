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

    /// A log written out as tokens: `B<n>` a begin marker of transaction n, `E<n>` an end
    /// marker of it, `E` an end marker naming none (a run without identity resolution),
    /// `u` a user's record.
    static func log(_ tokens: String, task: TopicPartition) -> [(key: [UInt8], value: [UInt8]?)] {
        tokens.split(separator: " ").map { t in
            let n = Int64(t.dropFirst())
            let txn = n.map { StoredUser.MarkerTxn(epoch: 9, seq: $0) }
            switch t.first {
            case "B": return (ChangelogMarker.beginKey(task), ChangelogMarker.value(offset: -1, sourcePartitions: 2, txn: txn))
            case "E": return (ChangelogMarker.key(task), ChangelogMarker.value(offset: n ?? 0, sourcePartitions: 2, txn: txn))
            default: return (Array("u\(t)".utf8), [1])
            }
        }
    }

    func spans(_ tokens: String) -> (kept: [Range<Int>], cut: [Int]) {
        let r = Self.log(tokens, task: tp0)
        return ChangelogMarker.committedSpans(
            count: r.count, isBegin: { ChangelogMarker.isBegin(key: r[$0].key) }, isEnd: { r[$0].key == ChangelogMarker.key(tp0) },
            tag: { i in r[i].value.flatMap { try? StateCodec.decode($0) }?.markerTxn })
    }

    /// The stretches a log is read in, each ending at an end marker
    /// (``ChangelogMarker/committedSpans(count:isBegin:isEnd:tag:)``), where builds with
    /// and without begin markers meet (a rolling upgrade, a rollback), or compaction
    /// removed markers.
    @Test func eachStretchUpToAnEndMarkerIsReadAsItsWriterWroteIt() {
        #expect(spans("u u u").kept == [0..<3])  // no markers: all
        #expect(spans("u E1 u").kept == [0..<2])  // no begin markers: up to the last end
        // The first stretch: what precedes its begin marker is what compaction kept of
        // older transactions.
        #expect(spans("u B1 u E1").kept == [0..<1, 1..<4])
        // A later one: what precedes it was cut off after a transaction's end (a build
        // without begin markers crashed); after a run without identity resolution, it is
        // what that run committed with no marker after it (users expired, settled), and
        // read (found by a review).
        #expect(spans("u E5 u B6 u E6").kept == [0..<2, 3..<6])
        #expect(spans("u E u B6 u E6").kept == [0..<2, 2..<3, 3..<6])
        #expect(spans("B1 u E1 u E u B6 u E6").kept == [0..<3, 3..<5, 5..<6, 6..<9])
        // A build without begin markers committed after one with them: read whole (found by
        // a review: a rolling upgrade's owner lost it, its offsets already committed).
        #expect(spans("B1 u E1 u E2").kept == [0..<3, 3..<5])
        // ... and after a transaction cut off: that build's records cannot be told from the
        // cut ones, so both are read, as that build reads them; the cut one is named.
        let mixed = spans("B1 u E1 B2 u u E3")
        #expect(mixed.kept == [0..<3, 3..<7])
        #expect(mixed.cut.isEmpty)
        #expect(spans("B1 u E1 B2 u B3 u u E4").cut == [3])
        let torn = spans("B1 u E1 B2 u B3 u E3 B4 u")
        #expect(torn.kept == [0..<3, 5..<8])
        #expect(torn.cut == [3, 8])
        #expect(spans("B1 u").kept.isEmpty)  // a first transaction cut off
        #expect(spans("").kept.isEmpty)
    }

    /// The graph's restore reads what the changelog holds a source marker of: an older
    /// build's transaction cut between its identities marker and its source marker, then
    /// a commit by a build with begin markers above it, stays cut (found by a review).
    @Test func theGraphReadsOnlyTransactionsTheChangelogCommitted() {
        let id = { (t: String) -> (key: [UInt8], value: [UInt8]?) in
            let n = Int64(t.dropFirst())
            let txn = n.map { StoredUser.MarkerTxn(epoch: 9, seq: $0) }
            switch t.first {
            case "B": return (ChangelogMarker.identitiesBeginKey, ChangelogMarker.value(offset: -1, sourcePartitions: 2, txn: txn))
            case "I": return (ChangelogMarker.identitiesKey, ChangelogMarker.value(offset: -1, sourcePartitions: 2, txn: txn))
            default: return (Array(t.utf8), [1])
            }
        }
        let changelog = Self.log("u E4 cut B6 u E6", task: tp0)
        let view = SyncEngine.ChangelogView(PackedRecords(changelog), transactionsOf: tp0)
        #expect(!view.latest.map(\.key).contains("ucut"))
        let graph = ["g1", "I4", "gcut", "I5", "B6", "g2", "I6", "B7", "glate", "I7"].map(id)
        #expect(view.committedIdentities(graph, of: tp0).map { String(decoding: $0.key, as: UTF8.self) } == ["g1", "g2"])
        // With begin markers: a transaction whose identities marker landed and whose source
        // marker did not is named cut by the changelog.
        let cutView = SyncEngine.ChangelogView(PackedRecords(Self.log("B1 u E1 B2 u B3 u E3", task: tp0)), transactionsOf: tp0)
        #expect(cutView.cut == [StoredUser.MarkerTxn(epoch: 9, seq: 2)])
        let graph2 = ["B1", "g1", "I1", "B2", "g2", "I2", "B3", "g3", "I3"].map(id)
        #expect(cutView.committedIdentities(graph2, of: tp0).map { String(decoding: $0.key, as: UTF8.self) } == ["g1", "g3"])
        // Compaction removed transaction 5's source marker (a later one stands) and kept
        // its begin marker, and a build without begin markers (6), or a run without
        // identity resolution (no tag), committed after it: 5 is read, in the changelog
        // and in the graph (found by a review: its graph records were left out).
        for (log, graph) in [
            ("u B5 u u E6 B7 u E7", ["g4", "I4", "B5", "g5", "I5", "g6", "I6", "B7", "g7", "I7"]),
            ("u B5 u u E B7 u E7", ["g4", "I4", "B5", "g5", "I5", "B7", "g7", "I7"]),
        ] {
            let compacted = SyncEngine.ChangelogView(PackedRecords(Self.log(log, task: tp0)), transactionsOf: tp0)
            #expect(compacted.cut.isEmpty, "\(log)")
            let read = compacted.committedIdentities(graph.map(id), of: tp0).map { String(decoding: $0.key, as: UTF8.self) }
            #expect(read == graph.filter { $0.hasPrefix("g") }, "\(log)")
        }
    }

    /// Markers that do not decode, or tombstones of them, trap nothing.
    @Test func damagedMarkersTrapNothing() {
        let records: [(key: [UInt8], value: [UInt8]?)] = [
            (ChangelogMarker.beginKey(tp0), [0xFF, 0, 1]), (Array("a".utf8), [1]), (ChangelogMarker.key(tp0), [0x01]),
            (ChangelogMarker.beginKey(tp0), nil), (Array("b".utf8), [1]), (ChangelogMarker.beginKey(tp0), []),
        ]
        let view = SyncEngine.ChangelogView(PackedRecords(records), transactionsOf: tp0)
        #expect(view.latest.map(\.key) == ["a"])
        let ids: [(key: [UInt8], value: [UInt8]?)] = [
            (ChangelogMarker.identitiesBeginKey, [9, 9]), (Array("g".utf8), [1]), (ChangelogMarker.identitiesKey, nil),
            (ChangelogMarker.identitiesBeginKey, nil),
        ]
        _ = view.committedIdentities(ids, of: tp0)
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
