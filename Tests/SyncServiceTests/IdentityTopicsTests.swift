import Foundation
import Kafka
import Logging
import Testing

@testable import SyncService

/// The repartition and identities topics must have the source's partition count (topics
/// made through the mock cluster's own API, since it has no Admin API).
@Suite(.serialized) struct IdentityTopicsTests {
    let logger: Logger = {
        var l = Logger(label: "identity-topics")
        l.logLevel = .critical
        return l
    }()

    func config(_ cluster: MockCluster) -> KafkaClientConfig {
        KafkaClientConfig(["bootstrap.servers": cluster.bootstrapServers, "log_level": "3"])
    }

    @Test func topicsOfTheSourcesCountAreAccepted() throws {
        let cluster = try MockCluster()
        for t in ["src", "g-repartition", "g-identities"] { try cluster.createTopic(t, partitions: 3) }
        #expect(try IdentityTopics.prepare(group: "g", sourceTopic: "src", config: config(cluster), logger: logger) == 3)
    }

    @Test(arguments: ["g-repartition", "g-identities"])
    func aTopicOfAnotherCountIsRefusedNamingIt(_ odd: String) throws {
        let cluster = try MockCluster()
        try cluster.createTopic("src", partitions: 3)
        for t in ["g-repartition", "g-identities"] { try cluster.createTopic(t, partitions: t == odd ? 4 : 3) }
        do {
            _ = try IdentityTopics.prepare(group: "g", sourceTopic: "src", config: config(cluster), logger: logger)
            Issue.record("\(odd) with 4 partitions beside a source of 3 was accepted")
        } catch {
            #expect("\(error)".hasPrefix("identity.merge: \(odd) has 4 partitions but src has 3"), "\(error)")
        }
    }
}
