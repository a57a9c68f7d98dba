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

        init() {}

        /// `cutAfter`: the key of a marker after whose last record nothing is read
        /// (identity resolution: a task's source marker ends each of its transactions, and
        /// what follows the last one was cut off by a crash). Without one, or when the
        /// partition holds none, every record is read.
        init(_ records: PackedRecords, cutAfter: [UInt8]? = nil) {
            self.records = records
            var last: [RawKey: Int] = [:]
            last.reserveCapacity(records.count)
            var end = records.count
            records.bytes.withUnsafeBufferPointer { b in
                if let cutAfter {
                    let cut = cutAfter.withUnsafeBufferPointer { c in
                        (0..<records.count).last { i in
                            let r = records.keyRange(i)
                            return r.count == c.count && b[r].elementsEqual(c)
                        }
                    }
                    if let cut { end = cut + 1 }
                }
                for i in 0..<end {
                    let key = UnsafeBufferPointer(rebasing: b[records.keyRange(i)])
                    if ChangelogMarker.isMarker(key: key) {
                        markers.updateValue(records.valueRange(i).map { Array(b[$0]) }, forKey: Array(key))
                        continue
                    }
                    last[RawKey(String(decoding: key, as: UTF8.self))] = i
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
