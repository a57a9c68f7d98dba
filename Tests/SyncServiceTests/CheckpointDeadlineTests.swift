import Foundation
import Kafka
import TestSupport
import Testing

@testable import SyncService

/// A revocation checkpoints its partitions inside the rebalance callback, one transaction
/// each: against a slow coordinator that took minutes and stopped the poll loop past the
/// liveness limit. With a deadline, no transaction is begun after it; what is left is
/// not committed (the next owner reads it again) and the error names it.
@Suite struct CheckpointDeadlineTests {
    @Test func noTransactionIsBegunAfterTheDeadline() async throws {
        // Seconds of blocking calls: off the cooperative pool (``offThePool``).
        try await offThePool { try Self.checkpointPastTheDeadline() }
    }

    static func checkpointPastTheDeadline() throws {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic("state", partitions: 4)
        let config = KafkaClientConfig(["bootstrap.servers": cluster.bootstrapServers])
        let store = try KafkaStateStore(
            topic: "state", partitions: 4, sourcePartitions: 4, config: config, logger: quietLogger,
            transactional: true)
        defer { store.close() }
        let sources = (0..<Int32(4)).map { TopicPartition("events", $0) }
        try store.claim(sources)
        // Every round trip 400 ms: a transaction (add partitions, produce, end) takes
        // over a second and a half, four of them over six.
        _ = cluster.control("rtt 1 400")
        let groups = sources.map {
            CheckpointGroup(source: $0, records: [($0.partition, Array("u\($0.partition)".utf8), Array("v".utf8))], offset: nil)
        }
        var left: String?
        do {
            try store.checkpoint(groups, deadline: .now() + .seconds(2))
        } catch {
            left = "\(error)"
        }
        _ = cluster.control("rtt 1 0")
        // Either no transaction was begun past the deadline (the error names those left),
        // or the one under way when it passed had its call cut short and failed.
        let message = try #require(left, "all four transactions ran although the deadline passed")
        #expect(message.contains("not checkpointed") || message.contains("transaction"), "\(message)")
        // The last partition's transaction was never committed.
        let read = try store.read(partitions: [0, 1, 2, 3])
        #expect(read[3]?.isEmpty == true, "\(message)")
    }
}
