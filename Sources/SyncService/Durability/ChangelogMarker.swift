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
    /// (``committedSpans(count:isBegin:isEnd:)``).
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
    /// those of committed transactions; and the begin markers of those cut off (`cut`). Each transaction writes a begin marker first and an end
    /// marker last, so one is committed when both stand, in that order, with no other begin
    /// marker between them. A transaction cut by a crash has its begin and never its end;
    /// a broker that shows aborted records (librdkafka's mock, tansu) shows its records,
    /// and the next transaction's begin marker puts them out. Reading up to the last end
    /// marker alone took them as committed once a later transaction committed above them.
    ///
    /// Before the first begin marker (written by builds without them, or by none:
    /// compaction keeps only each key's last), the records up to the last end marker
    /// there are read, and all of them if there is none (written before markers
    /// existed). On Kafka, which hides aborted records and compacts them away, the spans
    /// only ever put out what it hides: compaction removes a begin or end marker only
    /// when a later one of the same key stands, after the records it bounded.
    public static func committedSpans(count: Int, isBegin: (Int) -> Bool, isEnd: (Int) -> Bool) -> (kept: [Range<Int>], cut: [Int]) {
        var spans: [Range<Int>] = []
        var cut: [Int] = []
        var open: Int?
        var lastEnd: Int?
        var firstBegin: Int?
        for i in 0..<count {
            if isBegin(i) {
                if firstBegin == nil {
                    firstBegin = i
                    let head = lastEnd.map { $0 + 1 } ?? i
                    if head > 0 { spans.append(0..<head) }
                }
                if let o = open { cut.append(o) }
                open = i
            } else if isEnd(i) {
                if let o = open {
                    spans.append(o..<(i + 1))
                    open = nil
                }
                lastEnd = i
            }
        }
        if let o = open { cut.append(o) }
        if firstBegin == nil {
            let head = lastEnd.map { $0 + 1 } ?? count
            if head > 0 { spans.append(0..<head) }
        }
        return (spans, cut)
    }
}
