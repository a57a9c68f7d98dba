import Folding
import Foundation
import Kafka
import Logging
import Testing

@testable import SyncService

/// The changelog must be co-partitioned with the source (topics made through the mock
/// cluster's own API, since it has no Admin API).
@Suite(.serialized) struct StateTopicLayoutTests {
    let logger: Logger = {
        var l = Logger(label: "layout")
        l.logLevel = .critical
        return l
    }()

    func config(_ cluster: MockCluster) -> KafkaClientConfig {
        KafkaClientConfig(["bootstrap.servers": cluster.bootstrapServers, "log_level": "3"])
    }

    func write(_ cluster: MockCluster, topic: String, partition: Int32, sourcePartitions: Int32) throws {
        let p = try KafkaProducer(config: config(cluster), logger: logger)
        var s = UserState()
        s.recordApplied(AppliedPosition(source: 0, offset: 1))
        try p.send(
            topic: topic, partition: partition, key: Array("u".utf8),
            value: StateCodec.encode(StoredUser(state: s, dirty: false, settledHash: 0, sourcePartitions: sourcePartitions)))
        #expect(p.flush())
        p.close()
    }

    @Test func matchingCountsAreAccepted() throws {
        let cluster = try MockCluster()
        try cluster.createTopic("src", partitions: 3)
        try cluster.createTopic("g-state", partitions: 3)
        let layout = try KafkaStateStore.prepare(topic: "g-state", sourceTopic: "src", config: config(cluster), logger: logger)
        #expect(layout.state == 3 && layout.source == 3)
    }

    @Test func aChangelogWrittenForAnotherLayoutIsRefusedNamingTheKey() throws {
        let cluster = try MockCluster()
        try cluster.createTopic("src", partitions: 2)
        try cluster.createTopic("g-state", partitions: 3)
        try write(cluster, topic: "g-state", partition: 1, sourcePartitions: 3)  // written when the source had 3
        do {
            _ = try KafkaStateStore.prepare(topic: "g-state", sourceTopic: "src", config: config(cluster), logger: logger)
            Issue.record("a mismatched changelog holding another layout's state was accepted")
        } catch {
            #expect("\(error)".hasPrefix("state_topic:"), "\(error)")
            #expect("\(error)".contains("3 partitions") && "\(error)".contains("src has 2"), "\(error)")
        }
    }

    @Test func anEmptyOrOwnMismatchedChangelogIsUsedModuloItsCount() throws {
        let cluster = try MockCluster()
        try cluster.createTopic("src", partitions: 2)
        try cluster.createTopic("g-state", partitions: 4)
        #expect(try KafkaStateStore.prepare(topic: "g-state", sourceTopic: "src", config: config(cluster), logger: logger).state == 4)
        try write(cluster, topic: "g-state", partition: 0, sourcePartitions: 2)  // our own records
        #expect(try KafkaStateStore.prepare(topic: "g-state", sourceTopic: "src", config: config(cluster), logger: logger).state == 4)
    }
    /// The mock names a controller that is none of its brokers, so nothing would answer a
    /// CreateTopics request: the daemon is told so at once (and falls back to the
    /// auto-created topic) instead of waiting out the Admin API's timeout at each start.
    @Test func aClusterWithoutAControllerIsRefusedAtOnceNotTimedOut() throws {
        let cluster = try MockCluster()
        try cluster.createTopic("src", partitions: 2)
        do {
            _ = try KafkaAdmin.createTopicIfMissing(
                config: config(cluster), topic: "g-state", partitions: 2,
                topicConfig: ["cleanup.policy": "compact"], logger: logger)
            Issue.record("the mock cluster took a CreateTopics request")
        } catch {
            #expect("\(error)".contains("controller") && "\(error)".contains("cannot take Admin requests"), "\(error)")
        }
        // The start goes on with the topic the cluster auto-creates.
        let layout = try KafkaStateStore.prepare(topic: "g-state", sourceTopic: "src", config: config(cluster), logger: logger)
        #expect(layout.source == 2 && layout.state >= 1)
    }
}
