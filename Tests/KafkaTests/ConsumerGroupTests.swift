import Foundation
import Logging
import TestSupport
import Testing

@testable import Kafka

/// Records what the poll thread hands over and stores each offset once "processed".
final class RecordingHandler: ConsumerHandler, @unchecked Sendable {
    private let lock = NSLock()
    private var messages: [(TopicPartition, Int64, String)] = []
    private var events: [String] = []
    weak var consumer: KafkaConsumer?

    func consume(_ batch: [ConsumedMessage]) {
        var store: [TopicPartition: Int64] = [:]
        lock.withLock {
            for m in batch {
                messages.append((m.topicPartition, m.offset, String(decoding: m.value, as: UTF8.self)))
                store[m.topicPartition] = m.offset + 1
            }
        }
        consumer?.storeOffsets(store)
    }

    func partitionsAssigned(_ partitions: [TopicPartition]) {
        lock.withLock { events.append("assigned \(partitions.count)") }
    }

    func partitionsRevoked(_ partitions: [TopicPartition]) {
        lock.withLock { events.append("revoked \(partitions.count)") }
    }

    var wantsPause: Bool { false }

    var values: [String] { lock.withLock { messages.map(\.2) } }
    var offsets: [(TopicPartition, Int64)] { lock.withLock { messages.map { ($0.0, $0.1) } } }
    var log: [String] { lock.withLock { events } }
}

let quiet: Logger = {
    var l = Logger(label: "kafka-test")
    // Clients may outlive their mock cluster by a moment at the end of a test and log
    // connection failures; only critical lines matter here.
    l.logLevel = .critical
    return l
}()

func consumerConfig(_ cluster: MockCluster, group: String) -> KafkaClientConfig {
    KafkaClientConfig([
        "bootstrap.servers": cluster.bootstrapServers,
        "group.id": group,
        "session.timeout.ms": "6000",
        "heartbeat.interval.ms": "500",
        "auto.commit.interval.ms": "200",
        "log_level": "3",
    ])
}

func produce(_ cluster: MockCluster, topic: String, _ values: [String]) throws {
    let p = try KafkaProducer(config: KafkaClientConfig(["bootstrap.servers": cluster.bootstrapServers, "log_level": "3"]), logger: quiet)
    for (i, v) in values.enumerated() {
        try p.send(topic: topic, key: Array("k\(i)".utf8), value: Array(v.utf8))
    }
    #expect(p.flush(timeoutMs: 10_000))
    p.close()
}

/// A consumer of `topic` in `group` (with `config`, else the tests' usual one), polling,
/// with the handler that records it.
func startedConsumer(
    _ cluster: MockCluster, group: String, topic: String,
    config: KafkaClientConfig? = nil
) throws -> (KafkaConsumer, RecordingHandler) {
    let handler = RecordingHandler()
    let consumer = try KafkaConsumer(
        config: config ?? consumerConfig(cluster, group: group), topics: [topic],
        handler: handler, logger: quiet)
    handler.consumer = consumer
    consumer.start()
    return (consumer, handler)
}

@Suite(.serialized) struct ConsumerGroupTests {
    @Test func joinsConsumesAndCommits() async throws {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic("t1", partitions: 2)
        try produce(cluster, topic: "t1", (0..<100).map { "m\($0)" })
        let (consumer, handler) = try startedConsumer(cluster, group: "g1", topic: "t1")
        #expect(await eventually { handler.values.count == 100 })
        #expect(Set(handler.values) == Set((0..<100).map { "m\($0)" }))
        consumer.commitStoredSync()
        let committed = try consumer.committed([TopicPartition("t1", 0), TopicPartition("t1", 1)])
        #expect(committed.values.reduce(0, +) == 100)
        consumer.stop()
        #expect(handler.log.first == "assigned 2")
        #expect(handler.log.last == "revoked 2")  // close settles the partitions through the callback
    }

    @Test func aDrainedQueueWakesTheFetcher() async throws {
        // A queue limit of 1 KB and fetches of at most 4 KB: librdkafka stops fetching
        // after every few messages and, left alone, decides again only when its broker
        // thread wakes (up to a second later), so 200 messages would take minutes. The
        // consumer wakes it when the queue runs dry with messages still to read.
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic("t-nudge", partitions: 1)
        let p = try KafkaProducer(
            config: KafkaClientConfig([
                "bootstrap.servers": cluster.bootstrapServers, "log_level": "3", "batch.num.messages": "2", "linger.ms": "0",
            ]), logger: quiet)
        let pad = String(repeating: "x", count: 1000)
        for i in 0..<200 { try p.send(topic: "t-nudge", key: nil, value: Array("\(i) \(pad)".utf8)) }
        #expect(p.flush(timeoutMs: 10_000))
        p.close()
        var config = consumerConfig(cluster, group: "g-nudge")
        config["queued.max.messages.kbytes"] = "1"
        config["queued.min.messages"] = "1"
        config["max.partition.fetch.bytes"] = "8192"
        let (consumer, handler) = try startedConsumer(cluster, group: "g-nudge", topic: "t-nudge", config: config)
        #expect(await eventually(.seconds(40)) { handler.values.count == 200 })
        #expect(handler.values.map { $0.prefix { $0 != " " } } == (0..<200).map { Substring(String($0)) })
        #expect(consumer.fetcherNudges > 10, "\(consumer.fetcherNudges)")
        let nudges = consumer.fetcherNudges
        // Caught up: the cached watermarks show nothing left, so no more wake-ups.
        try await Task.sleep(for: .milliseconds(600))
        #expect(consumer.fetcherNudges == nudges)
        consumer.stop()
    }

    @Test func resumesFromTheCommittedOffset() async throws {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic("t2", partitions: 1)
        try produce(cluster, topic: "t2", (0..<50).map { "a\($0)" })
        let (c1, first) = try startedConsumer(cluster, group: "g2", topic: "t2")
        #expect(await eventually { first.values.count == 50 })
        c1.stop()  // commits on close
        try produce(cluster, topic: "t2", (0..<30).map { "b\($0)" })
        let (c2, second) = try startedConsumer(cluster, group: "g2", topic: "t2")
        #expect(await eventually { second.values.count >= 30 })
        try? await Task.sleep(for: .milliseconds(500))
        #expect(second.values == (0..<30).map { "b\($0)" })
        #expect(second.offsets.first?.1 == 50)
        c2.stop()
    }

    /// Restarted on a fully committed, idle partition: librdkafka knows no position
    /// until a message arrives, and the lag used to be counted from the oldest message.
    @Test func theLagOfAnIdleCommittedPartitionIsZero() async throws {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic("t5", partitions: 2)
        try produce(cluster, topic: "t5", (0..<40).map { "a\($0)" })
        let (c1, first) = try startedConsumer(cluster, group: "g5", topic: "t5")
        #expect(await eventually { first.values.count == 40 })
        #expect(await eventually { c1.lag().count == 2 && c1.lag().values.allSatisfy { $0 == 0 } })
        c1.stop()  // commits on close
        let (c2, second) = try startedConsumer(cluster, group: "g5", topic: "t5")
        #expect(await eventually { c2.assignment.count == 2 && c2.lag().count == 2 })
        #expect(c2.lag().values.reduce(0, +) == 0, "\(c2.lag())")
        // New messages show as lag until read, then it is 0 again.
        try produce(cluster, topic: "t5", (0..<10).map { "b\($0)" })
        #expect(await eventually { second.values.count == 10 })
        #expect(await eventually { c2.lag().values.reduce(0, +) == 0 })
        #expect(second.values.sorted() == (0..<10).map { "b\($0)" }.sorted())
        c2.stop()
    }

    @Test func rebalanceBetweenTwoConsumersLosesNothing() async throws {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic("t3", partitions: 4)
        let (ca, a) = try startedConsumer(cluster, group: "g3", topic: "t3")
        try produce(cluster, topic: "t3", (0..<200).map { "x\($0)" })
        #expect(await eventually { a.values.count == 200 })
        let (cb, b) = try startedConsumer(cluster, group: "g3", topic: "t3")
        // Wait until b owns partitions, then produce more: both share the load.
        #expect(await eventually { b.log.contains { $0.hasPrefix("assigned") } })
        try produce(cluster, topic: "t3", (200..<400).map { "x\($0)" })
        let all = Set((0..<400).map { "x\($0)" })
        #expect(await eventually { Set(a.values + b.values).isSuperset(of: all) })
        #expect(!b.values.isEmpty)
        #expect(a.log.contains { $0.hasPrefix("revoked") })
        ca.stop()
        cb.stop()
    }
}
