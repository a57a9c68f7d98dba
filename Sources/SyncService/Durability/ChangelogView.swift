import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

extension SyncEngine {
    /// What restores read of a changelog partition, once for all the source partitions
    /// it holds: its records, the last one of each user key, and each source partition's
    /// marker.
    struct ChangelogView: Sendable {
        var records = PackedRecords()
        /// The last record of each user key (an index into ``records``), in the records'
        /// order: decoded in a hash table's order, each record's first byte was a cache
        /// miss, half of decoding. Keys are told apart by their bytes, as the user table
        /// tells identities apart (``RawKey``).
        var latest: [(key: String, record: Int)] = []
        /// How many of those are users: a value (not a tombstone) under a key no event
        /// has (empty).
        var users = 0
        /// Each marker's last value, by its key (nil: a tombstone).
        var markers: [[UInt8]: [UInt8]?] = [:]
        /// The tags of the task's transactions that a crash cut off: begun here and never
        /// ended. Their identities marker may have landed (it is written before the
        /// changelog's), and what they wrote to `<group>-identities` is not read either.
        var cut: Set<StoredUser.MarkerTxn> = []
        /// The tags of the task's source markers here: its committed transactions (every
        /// one since the oldest marker compaction kept).
        var committed: Set<StoredUser.MarkerTxn> = []

        init() {}

        /// `transactionsOf`: a merging task whose transactions wrote the partition: only
        /// what committed ones wrote is read (``ChangelogMarker/committedSpans(count:isBegin:isEnd:tag:)``;
        /// a crash cuts a transaction off, and some brokers show what it wrote). Without
        /// one, every record is read.
        init(_ records: PackedRecords, transactionsOf task: TopicPartition? = nil) {
            self.records = records
            var last: [RawKey: Int] = [:]
            last.reserveCapacity(records.count)
            var end = records.count
            records.bytes.withUnsafeBufferPointer { b in
                var spans = [0..<records.count]
                if let task {
                    let (begin, endKey) = (ChangelogMarker.beginKey(task), ChangelogMarker.key(task))
                    func isKey(_ i: Int, _ k: [UInt8]) -> Bool {
                        let r = records.keyRange(i)
                        return r.count == k.count && b[r].elementsEqual(k)
                    }
                    func tag(_ i: Int) -> StoredUser.MarkerTxn? {
                        guard let v = records.valueRange(i) else { return nil }
                        return (try? StateCodec.decode(UnsafeBufferPointer(rebasing: b[v])))?.markerTxn
                    }
                    var ends: [Int] = []
                    let found = ChangelogMarker.committedSpans(
                        count: records.count, isBegin: { isKey($0, begin) },
                        isEnd: { i in
                            guard isKey(i, endKey) else { return false }
                            ends.append(i)
                            return true
                        }, tag: tag)
                    spans = found.kept
                    end = spans.last?.upperBound ?? 0
                    for i in found.cut { if let t = tag(i) { cut.insert(t) } }
                    for i in ends { if let t = tag(i) { committed.insert(t) } }
                }
                for span in spans {
                    for i in span {
                        let key = UnsafeBufferPointer(rebasing: b[records.keyRange(i)])
                        if ChangelogMarker.isMarker(key: key) {
                            markers.updateValue(records.valueRange(i).map { Array(b[$0]) }, forKey: Array(key))
                            continue
                        }
                        last[RawKey(String(decoding: key, as: UTF8.self))] = i
                    }
                }
            }
            var keyAt = [String?](repeating: nil, count: end)
            for (key, i) in last { keyAt[i] = key.string }
            latest.reserveCapacity(last.count)
            for (i, key) in keyAt.enumerated() {
                guard let key else { continue }
                latest.append((key, i))
                if !key.isEmpty && records.valueRange(i) != nil { users += 1 }
            }
        }

        /// Source partition `tp`'s marker, if the changelog partition holds one.
        func marker(of tp: TopicPartition) -> [UInt8]? { markers[ChangelogMarker.key(tp)] ?? nil }

        /// Of `records`, task `tp`'s partition of `<group>-identities`, what a restore reads
        /// with this view of its changelog partition (oldest first, markers left out): what
        /// committed transactions wrote (``ChangelogMarker/committedSpans(count:isBegin:isEnd:tag:)``
        /// with the identities markers), and of that, only what transactions the changelog
        /// holds a source marker of wrote: a crash between a transaction's identities marker
        /// and its source marker (written last) cut it off all the same. Before the first
        /// identities marker of a transaction the changelog holds (compaction removed the
        /// older source markers), what a transaction the changelog names as cut off wrote
        /// is left out.
        func committedIdentities(_ records: [(key: [UInt8], value: [UInt8]?)], of tp: TopicPartition) -> [(key: [UInt8], value: [UInt8]?)] {
            func tag(_ i: Int) -> StoredUser.MarkerTxn? { (records[i].value.flatMap { try? StateCodec.decode($0) })?.markerTxn }
            func isEnd(_ i: Int) -> Bool { records[i].key == ChangelogMarker.identitiesKey }
            let spans = ChangelogMarker.committedSpans(
                count: records.count, isBegin: { records[$0].key == ChangelogMarker.identitiesBeginKey }, isEnd: isEnd, tag: tag
            ).kept
            let anchor = records.indices.first { isEnd($0) && tag($0).map(committed.contains) == true }
            var out: [(key: [UInt8], value: [UInt8]?)] = []
            for span in spans {
                let last = span.upperBound - 1
                if isEnd(last) {
                    let t = tag(last)
                    let known = t.map(committed.contains) == true
                    let older = anchor.map { last < $0 } ?? true
                    guard known || (older && t.map(cut.contains) != true) else { continue }
                }
                out += records[span].filter { !ChangelogMarker.isMarker(key: $0.key) }
            }
            return out
        }
    }

    /// A key compared and hashed as its UTF-8 bytes, as the user table compares
    /// identities' hashes: `String` equality is canonical equivalence, under which "é" as
    /// one scalar and "e" with a combining accent are one key (and two users' records
    /// were taken for one).
    struct RawKey: Hashable {
        let string: String
        init(_ string: String) { self.string = string }
        static func == (a: RawKey, b: RawKey) -> Bool {
            var x = a.string
            var y = b.string
            return x.withUTF8 { p in
                y.withUTF8 { q in p.count == q.count && (p.isEmpty || memcmp(p.baseAddress!, q.baseAddress!, p.count) == 0) }
            }
        }
        func hash(into h: inout Hasher) {
            var s = string
            s.withUTF8 { h.combine(bytes: UnsafeRawBufferPointer($0)) }
        }
    }
}
