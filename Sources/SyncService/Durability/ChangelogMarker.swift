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
}
