import Foundation
import Kafka
import Testing

@testable import SyncService

/// A topic the checkpoints write whose `max.message.bytes` is below the producer's
/// `message.max.bytes`: the broker refuses a larger batch whole, so every checkpoint
/// writing one would fail for good. Refused at start, naming both ways out.
@Suite struct TopicRecordLimitTests {
    func check(_ topicLimit: String?, producer: [String: String] = [:]) -> String? {
        var described: [String: String] = ["cleanup.policy": "compact"]
        described["max.message.bytes"] = topicLimit
        do {
            try KafkaStateStore.checkRecordLimit(described, topic: "g-state", key: "state_topic", producer: KafkaClientConfig(producer))
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func aTopicThatTakesSmallerBatchesThanTheProducerWritesIsRefused() throws {
        let refusal = try #require(check("8192"))
        #expect(refusal.contains("state_topic: g-state takes record batches of at most 8192 bytes"), "\(refusal)")
        #expect(refusal.contains("up to 1000000"), "\(refusal)")
        #expect(refusal.contains("max.message.bytes=1000000"), "\(refusal)")
        #expect(refusal.contains("message.max.bytes=8192 and batch.size=8192"), "\(refusal)")
        // An operator's own producer limit above the topic's.
        #expect(check("500000", producer: ["message.max.bytes": "600000"]) != nil)
    }

    @Test func aTopicThatTakesWhatTheProducerWritesIsAccepted() {
        // Kafka's topic default is above librdkafka's producer default.
        #expect(check("1048588") == nil)
        #expect(check("1000000") == nil)
        // The operator's way out: the producer held to the topic's limit.
        #expect(check("8192", producer: ["message.max.bytes": "8192", "batch.size": "8192"]) == nil)
        // A broker that does not say (tansu reports only what was set), or says nonsense.
        #expect(check(nil) == nil)
        #expect(check("0") == nil)
        #expect(check("lots") == nil)
    }
}
