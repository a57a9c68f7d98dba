import Folding
import Foundation
import Kafka
import TestSupport
import Testing

@testable import SyncService

/// Identity resolution on a broker that shows an aborted transaction's records (the mock):
/// a merging task's transaction that fails once its markers are written is read as
/// committed by every later restore, so it counts as committed (its routed records are not
/// written again, nor dropped by the next notices); one that fails before them does not.
/// Before, a transaction failing after its markers was written again and its readers told
/// it failed, while a restore after a crash took it as committed: its routed records were
/// lost.
@Suite struct FailedTransactionTests {
    @Test(arguments: [KafkaStateStore.InjectedFailure.beforeMarkers, .afterMarkers])
    func aTransactionThatFailsAfterItsMarkersCountsAsCommitted(failure: KafkaStateStore.InjectedFailure) async throws {
        try await offThePool { try Self.run(failure) }
    }

    static func run(_ failure: KafkaStateStore.InjectedFailure) throws {
        let cluster = try MockCluster(brokers: 1)
        for t in ["state", "g-repartition", "g-identities"] { try cluster.createTopic(t, partitions: 2) }
        let config = KafkaClientConfig(["bootstrap.servers": cluster.bootstrapServers])
        let store = try KafkaStateStore(
            topic: "state", partitions: 2, sourcePartitions: 2, config: config, logger: quietLogger, transactional: true)
        defer { store.close() }
        let source = TopicPartition("events", 1)
        try store.claim([source])
        let txn = StoredUser.MarkerTxn(epoch: 99, seq: 0)
        var g = CheckpointGroup(
            source: source,
            records: [
                (1, Array("user".utf8), Array("state".utf8)),
                (1, ChangelogMarker.key(source), ChangelogMarker.value(offset: 7, sourcePartitions: 2, txn: txn)),
            ],
            offset: nil)
        g.extra = [
            ("g-repartition", 0, Array("target".utf8), Array("routed".utf8)),
            ("g-identities", 1, ChangelogMarker.identitiesKey, ChangelogMarker.value(offset: -1, sourcePartitions: 2, txn: txn)),
        ]
        store.injectFailureForTesting = failure
        var failed: String?
        do {
            try store.checkpoint([g], deadline: nil)
        } catch {
            failed = "\(error)"
        }
        // What a restore reads: the source marker last (the mock shows an aborted
        // transaction's records), or not there at all.
        let last = try store.read(partitions: [1])[1]?.records.last
        switch failure {
        case .afterMarkers:
            #expect(last?.key == ChangelogMarker.key(source))
            #expect(failed == nil, "a transaction a restore reads as committed was reported failed: \(failed ?? "")")
        case .beforeMarkers:
            #expect(last?.key != ChangelogMarker.key(source))
            #expect(failed != nil, "a transaction without its markers was reported committed")
        }
    }
}
