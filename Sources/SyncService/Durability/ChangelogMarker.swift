import Folding
import FoldspaceAPI
import Foundation
import Kafka
import Logging

/// The record each checkpoint that commits a source partition's offset writes beside its
/// users, in the same transaction (or before the commit): the changelog's proof that it
/// holds that partition's state. Compaction keeps the latest, one per source partition.
///
/// A restore that finds neither its marker nor a user of its partition, in a changelog
/// partition that holds markers or nothing at all, while the group has consumed from the
/// partition (an offset committed past its first retained one), knows the changelog was
/// lost (deleted, recreated empty, or `state_topic` changed): consuming on would send
/// regressed users and checkpoint them over what was lost, so the partition is held. A
/// changelog partition with records and no marker was written before markers existed
/// and is taken as it is.
///
/// The key starts with 0xFF, a byte no UTF-8 text (so no user key) holds. The value is a
/// state record (``StateCodec/encodeMarker(committedOffset:sourcePartitions:)``) that
/// builds written before markers read as an empty user of no partition.
public enum ChangelogMarker {
    public static func key(_ tp: TopicPartition) -> [UInt8] {
        [0xFF] + Array("foldspace-sync.source/\(tp.topic)/\(tp.partition)".utf8)
    }

    public static func isMarker(key: some Collection<UInt8>) -> Bool { key.first == 0xFF }

    public static func value(
        offset: Int64, sourcePartitions: Int32, txn: StoredUser.MarkerTxn? = nil, hopsTaken: [HopMark] = [], hopsSent: [HopMark] = []
    ) -> [UInt8] {
        StateCodec.encodeMarker(
            committedOffset: offset, sourcePartitions: sourcePartitions, txn: txn, hopsTaken: hopsTaken, hopsSent: hopsSent)
    }

    /// The key of the record a merging task's transaction writes last into its partition
    /// of `<group>-identities` (its value a marker with the transaction's epoch and
    /// sequence number): a restore reads the graph up to the one of the transaction the
    /// changelog's markers name, and no further (docs/identity.md).
    public static let identitiesKey: [UInt8] = [0xFF] + Array("foldspace-sync.transaction".utf8)

    /// The key of the record a merging task's transaction writes first into its changelog
    /// partition (its value a marker with the transaction's tag, as the end's): with the
    /// source marker that ends it, it bounds what the transaction wrote there
    /// (``committedSpans(count:isBegin:isEnd:tag:)``).
    public static func beginKey(_ tp: TopicPartition) -> [UInt8] {
        beginPrefix + Array("/\(tp.topic)/\(tp.partition)".utf8)
    }

    /// The key of the record a merging task's transaction writes first into its partition
    /// of `<group>-identities`; ``identitiesKey`` ends it.
    public static let identitiesBeginKey: [UInt8] = beginPrefix

    static let beginPrefix: [UInt8] = [0xFF] + Array("foldspace-sync.begin".utf8)

    /// Whether `key` is a transaction's begin marker (written before every other record of
    /// it; a marker too, which readers of users and of the graph skip).
    public static func isBegin(key: some Collection<UInt8>) -> Bool {
        key.count >= beginPrefix.count && key.prefix(beginPrefix.count).elementsEqual(beginPrefix)
    }

    /// Which records of a merging task's partition (its changelog partition, or its
    /// partition of `<group>-identities`) a restore reads, as ranges of indices (`kept`):
    /// those of committed transactions; and the begin markers of transactions cut off
    /// (`cut`). `tag`: an end or begin marker's transaction, if it names one.
    ///
    /// Each transaction writes a begin marker first and an end marker last: one is
    /// committed when both stand with the same tag and no other begin marker between them.
    /// A transaction cut by a crash has its begin and never its end; a broker that shows
    /// aborted records (librdkafka's mock, tansu) shows its records, and the next
    /// transaction's begin marker puts them out. Reading up to the last end marker alone
    /// took them as committed once a later transaction committed above them.
    ///
    /// The log is read in stretches, each ending at an end marker:
    /// - one with no begin marker was written by a build without them (or by a run
    ///   without identity resolution): read whole, as before begin markers. A build
    ///   without them may own the task in a rolling upgrade or a rollback, between owners
    ///   that write them.
    /// - one whose last begin marker has the end marker's tag: from that begin marker on,
    ///   and, in the first stretch, what precedes its first begin marker. That is where
    ///   compaction leaves what it kept of older transactions once their markers are gone
    ///   (it removes a marker only when a later one of its key stands, so a stretch after
    ///   a kept end marker lost none of its begin markers). In a later stretch, what
    ///   precedes the first begin marker is read after an end marker naming no
    ///   transaction (a run without identity resolution writes users and tombstones with
    ///   no marker after them), and was cut off after one naming a transaction (a build
    ///   without begin markers crashed in a transaction).
    /// - one whose end marker has another tag (or none): written by a build without begin
    ///   markers after a transaction that was cut off, or, once compaction removed an end
    ///   marker, after one that committed: read whole, as that build reads it (its
    ///   records cannot be told from the others; leaving them out would lose a committed
    ///   transaction, its offsets already committed). Its last begin marker's transaction
    ///   is read with it, not named cut.
    ///
    /// What follows the last end marker was cut off; in a log without end markers, what
    /// precedes the first begin marker is read (written before markers existed).
    public static func committedSpans(
        count: Int, isBegin: (Int) -> Bool, isEnd: (Int) -> Bool, tag: (Int) -> StoredUser.MarkerTxn?
    ) -> (kept: [Range<Int>], cut: [Int]) {
        var kept: [Range<Int>] = []
        var cut: [Int] = []
        var start = 0
        var begins: [Int] = []
        var first = true
        // Whether the last end marker named a transaction (nil: written by a run without
        // identity resolution, whose checkpoints also write users and tombstones with no
        // marker after them).
        var lastTagged = false
        for i in 0..<count {
            if isBegin(i) {
                begins.append(i)
            } else if isEnd(i) {
                let t = tag(i)
                if let last = begins.last, let t, tag(last) == t {
                    if (first || !lastTagged) && begins[0] > start { kept.append(start..<begins[0]) }
                    kept.append(last..<(i + 1))
                } else {
                    // Read whole, the last begin marker's transaction with it (compaction
                    // may have removed its end marker).
                    kept.append(start..<(i + 1))
                }
                // Either way, the transactions begun before the last begin marker were cut.
                cut += begins.dropLast()
                start = i + 1
                begins = []
                first = false
                lastTagged = t != nil
            }
        }
        if first {
            let head = begins.first ?? count
            if head > 0 { kept.append(0..<head) }
        }
        cut += begins
        return (kept, cut)
    }
}
