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

    /// librdkafka reads integers with `strtol` in base 0: the check reads the producer's
    /// limit the same way (a hex value, an octal one, trailing text).
    @Test func theProducersLimitIsReadAsLibrdkafkaReadsIt() {
        #expect(KafkaClientConfig(["message.max.bytes": "0x200000"]).integer("message.max.bytes") == 2_097_152)
        #expect(KafkaClientConfig(["message.max.bytes": "01000000"]).integer("message.max.bytes") == 262_144)
        #expect(KafkaClientConfig(["message.max.bytes": " 200000 "]).integer("message.max.bytes") == 200_000)
        #expect(KafkaClientConfig(["message.max.bytes": "1e6"]).integer("message.max.bytes") == 1)
        #expect(KafkaClientConfig(["message.max.bytes": "lots"]).integer("message.max.bytes") == nil)
        #expect(KafkaClientConfig([:]).integer("message.max.bytes") == nil)
        // 0x200000 is above Kafka's default topic limit: refused (Int() read it as unset).
        #expect(check("1048588", producer: ["message.max.bytes": "0x200000"]) != nil)
        #expect(check("300000", producer: ["message.max.bytes": "01000000"]) == nil)
    }

    /// A topic the daemon creates takes what its producer writes: an operator's larger
    /// `message.max.bytes` goes into it, so that the start does not refuse its own topic.
    @Test func aTopicTheDaemonCreatesTakesWhatItsProducerWrites() {
        let base = ["cleanup.policy": "compact"]
        #expect(KafkaStateStore.creationConfig(base, producer: KafkaClientConfig([:])) == base)
        #expect(KafkaStateStore.creationConfig(base, producer: KafkaClientConfig(["message.max.bytes": "500000"])) == base)
        let large = KafkaStateStore.creationConfig(base, producer: KafkaClientConfig(["message.max.bytes": "5000000"]))
        #expect(large == ["cleanup.policy": "compact", "max.message.bytes": "5000000"])
        #expect(check(large["max.message.bytes"], producer: ["message.max.bytes": "5000000"]) == nil)
    }

    /// librdkafka keeps the low 32 bits of what `strtol` reads, and takes
    /// `message.max.bytes` from 1,000 to 1,000,000,000 only: a value it reads as 1,000,000
    /// is not taken for four billion, and one it refuses (or a 64-bit extreme, which read
    /// whole made the record limit's arithmetic trap) gives the default.
    @Test func theProducersLimitIsCutAndBoundedAsLibrdkafkaDoes() {
        #expect(KafkaClientConfig(["message.max.bytes": "4295967296"]).integer("message.max.bytes") == 1_000_000)
        #expect(KafkaClientConfig(["message.max.bytes": "4295967296"]).messageMaxBytes == 1_000_000)
        #expect(KafkaClientConfig(["message.max.bytes": "-9223372036854774808"]).messageMaxBytes == 1_000)
        #expect(KafkaClientConfig(["message.max.bytes": "500"]).messageMaxBytes == 1_000_000)
        #expect(KafkaClientConfig(["message.max.bytes": "99999999999999999999999"]).messageMaxBytes == 1_000_000)
        #expect(KafkaClientConfig(["message.max.bytes": ""]).messageMaxBytes == 1_000_000)
        #expect(check("1048588", producer: ["message.max.bytes": "4295967296"]) == nil)
    }
}
