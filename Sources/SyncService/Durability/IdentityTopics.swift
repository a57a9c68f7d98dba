import FoldspaceAPI
import Foundation
import Kafka
import Logging

/// The two topics identity resolution adds (docs/identity.md): `<group>-repartition` (the
/// routed calls, link requests and merge records) and `<group>-identities` (the graph,
/// compacted). Both need the source's partition count: task p is partition p of every
/// topic, and the range assignor keeps source p and repartition p on one instance only when
/// their counts are equal.
enum IdentityTopics {
    static func repartition(group: String) -> String { group + "-repartition" }
    static func identities(group: String) -> String { group + "-identities" }

    /// Creates what is missing (where the cluster has the Admin API) and checks both
    /// topics; returns the partition count of all of them. The errors name the key
    /// (`identity.merge`) and say how to mend the topic.
    static func prepare(group: String, sourceTopic: String, config: KafkaClientConfig, logger: Logger) throws -> Int {
        let admin = config.withoutConsumerProperties
        let sourcePartitions = try KafkaAdmin.partitionCount(config: admin, topic: sourceTopic)
        let existing = try KafkaAdmin.listTopics(config: admin)
        let wanted: [(String, [String: String])] = [
            (repartition(group: group), [:]),
            (identities(group: group), ["cleanup.policy": "compact"]),
        ]
        for (topic, topicConfig) in wanted where !existing.contains(topic) {
            do {
                _ = try KafkaAdmin.createTopicIfMissing(
                    config: admin, topic: topic, partitions: sourcePartitions,
                    topicConfig: KafkaStateStore.creationConfig(topicConfig, producer: admin), logger: logger,
                    timeoutMs: 5_000)
            } catch {
                logger.warning(
                    "could not create an identity topic through the Admin API", metadata: ["topic": "\(topic)", "error": "\(error)"])
            }
        }
        for (topic, _) in wanted {
            let n = try KafkaAdmin.partitionCount(config: admin, topic: topic)
            guard n == sourcePartitions else {
                throw ConfigurationError(
                    "identity.merge: \(topic) has \(n) partitions but \(sourceTopic) has \(sourcePartitions); "
                        + "every task is one partition of each, so they must be equal (recreate \(topic) with \(sourcePartitions) "
                        + "partitions, before any instance of the group runs)")
            }
        }
        try KafkaStateStore.checkCleanupPolicy(topic: identities(group: group), key: "identity.merge", config: admin, logger: logger)
        try KafkaStateStore.checkRecordLimit(topic: repartition(group: group), key: "identity.merge", config: admin, logger: logger)
        return sourcePartitions
    }
}
