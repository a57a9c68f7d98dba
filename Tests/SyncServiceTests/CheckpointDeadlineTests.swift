import Foundation
import Kafka
import TestSupport
import Testing

@testable import SyncService

/// A revocation checkpoints its partitions inside the rebalance callback, one transaction
/// each (several at once): against a slow coordinator that took minutes and stopped the
/// poll loop past the liveness limit. With a deadline, no transaction is begun after it;
/// what is left is not committed (the next owner reads it again) and the error names it.
@Suite struct CheckpointDeadlineTests {
    @Test func noTransactionIsBegunAfterTheDeadline() async throws {
        // Seconds of blocking calls: off the cooperative pool (``offThePool``).
        try await offThePool { try Self.checkpointPastTheDeadline() }
    }

    static func checkpointPastTheDeadline() throws {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic("state", partitions: 4)
        let config = KafkaClientConfig(["bootstrap.servers": cluster.bootstrapServers])
        let width = KafkaStateStore.parallelCommits
        let store = try KafkaStateStore(
            topic: "state", partitions: 4, sourcePartitions: 2 * width, config: config, logger: quietLogger,
            transactional: true)
        defer { store.close() }
        let sources = (0..<Int32(2 * width)).map { TopicPartition("events", $0) }
        try store.claim(sources)
        // Every round trip 800 ms: a transaction (add partitions, produce, end) takes over
        // three seconds. The checkpoint commits up to ``KafkaStateStore/parallelCommits``
        // tasks at once: those are under way when the deadline passes, the rest must not
        // begin.
        _ = cluster.control("rtt 1 800")
        let groups = sources.map {
            CheckpointGroup(source: $0, records: [($0.partition % 4, Array("u\($0.partition)".utf8), Array("v".utf8))], offset: nil)
        }
        var left: String?
        do {
            try store.checkpoint(groups, deadline: .now() + .seconds(2))
        } catch {
            left = "\(error)"
        }
        _ = cluster.control("rtt 1 0")
        let message = try #require(left, "every transaction ran although the deadline passed")
        #expect(message.contains("not checkpointed") || message.contains("transaction"), "\(message)")
        // The tasks past the first `width` were never begun: nothing of theirs was committed.
        let read = try store.read(partitions: [0, 1, 2, 3])
        let keys = Set(read.values.flatMap { $0.records.map { String(decoding: $0.key, as: UTF8.self) } })
        #expect(keys.isDisjoint(with: (width..<2 * width).map { "u\($0)" }), "\(keys.sorted()) \(message)")
    }
}
