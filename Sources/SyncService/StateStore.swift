import Delivery
import Folding
import Foundation
import Kafka
import Logging

/// Where durable user state lives: a compacted changelog topic co-partitioned with the
/// source (partition p of the changelog holds the users of source partition p).
public protocol StateStore: Sendable {
    /// Every record of changelog partition `partition`, oldest first.
    func read(partition: Int32) throws -> [(key: [UInt8], value: [UInt8]?)]
    /// The changelog partition holding a source partition's users.
    func statePartition(for sourcePartition: Int32) -> Int32
    /// The source topic's partition count, recorded in each record.
    var sourcePartitions: Int32 { get }
    /// Writes records (a nil value: a tombstone) and returns once all are acknowledged.
    func write(_ records: [(partition: Int32, key: [UInt8], value: [UInt8]?)]) throws
    /// Commits source offsets (the next offset to read, per partition).
    func commit(_ offsets: [TopicPartition: Int64]) throws
    /// Whether the store's writer hit a fatal error: nothing more can be written.
    var hasFatalError: Bool { get }
}

extension StateStore {
    public var hasFatalError: Bool { false }
}

/// The changelog on Kafka: an idempotent producer with `acks=all` for writes, a
/// throw-away assigned consumer for restores, and the group consumer for commits.
public final class KafkaStateStore: StateStore, @unchecked Sendable {
    public let topic: String
    /// The changelog's partition count; source partition p lives in p mod this.
    public let partitions: Int32
    /// The source topic's partition count, written into every record.
    public let sourcePartitions: Int32
    public var hasFatalError: Bool { producer.hasFatalError }
    private let producer: KafkaProducer
    private let config: KafkaClientConfig
    private let logger: Logger
    private let lock = NSLock()
    private var consumer: KafkaConsumer?

    public init(topic: String, partitions: Int, sourcePartitions: Int, config: KafkaClientConfig, logger: Logger) throws {
        self.topic = topic
        self.sourcePartitions = Int32(sourcePartitions)
        self.partitions = Int32(max(1, partitions))
        self.config = config
        self.logger = logger
        var p = config.withoutConsumerProperties
        p["enable.idempotence"] = "true"
        p["acks"] = "all"
        p["linger.ms"] = "5"
        // A checkpoint writes every changed user at once (~310 bytes each: ~35 MB for
        // 100k users); lz4 about halves what the brokers receive and keep, for little
        // CPU. An operator's choice in kafka.properties stands.
        if p["compression.type"] == nil && p["compression.codec"] == nil { p["compression.type"] = "lz4" }
        producer = try KafkaProducer(config: p, logger: logger)
    }

    public func attach(consumer: KafkaConsumer) {
        lock.withLock { self.consumer = consumer }
    }

    public func statePartition(for sourcePartition: Int32) -> Int32 { sourcePartition % partitions }

    public func read(partition: Int32) throws -> [(key: [UInt8], value: [UInt8]?)] {
        try KafkaAdmin.readPartition(config: config.withoutConsumerProperties,
                                     topic: topic, partition: partition, logger: logger)
    }

    public func write(_ records: [(partition: Int32, key: [UInt8], value: [UInt8]?)]) throws {
        try producer.sendAndWait(topic: topic, records)
    }

    public func commit(_ offsets: [TopicPartition: Int64]) throws {
        guard let c = lock.withLock({ consumer }) else { return }
        try c.commitSync(offsets)
    }

    public func close() { producer.close() }

    /// Changelog records queued and not yet acknowledged (`/metrics`).
    public var queueLength: Int { producer.queueLength }

    /// Makes sure the changelog exists, compacted, with the source's partition count,
    /// and returns its partition count.
    ///
    /// - Throws: with a clear message when a changelog that already holds state has a
    ///   different partition count. An *empty* changelog with another count (a cluster
    ///   that auto-creates topics and has no Admin API, such as librdkafka's mock) is
    ///   used with source partition p stored in changelog partition p mod count, and a
    ///   warning: restores then filter records by their source.
    public static func prepare(topic: String, sourceTopic: String, config: KafkaClientConfig, logger: Logger) throws -> (state: Int, source: Int) {
        let admin = config.withoutConsumerProperties
        let sourcePartitions = try KafkaAdmin.partitionCount(config: admin, topic: sourceTopic)
        if !(try KafkaAdmin.listTopics(config: admin)).contains(topic) {
            do {
                _ = try KafkaAdmin.createTopicIfMissing(config: admin, topic: topic, partitions: sourcePartitions,
                                                        topicConfig: ["cleanup.policy": "compact"], logger: logger,
                                                        timeoutMs: 5_000)
            } catch {
                logger.warning("could not create the state topic through the Admin API", metadata: [
                    "topic": "\(topic)", "error": "\(error)",
                ])
            }
        }
        let statePartitions = try KafkaAdmin.partitionCount(config: admin, topic: topic)
        if statePartitions != sourcePartitions {
            // Usable only if it holds nothing, or only what this daemon wrote for a source
            // of the current size (each record carries the source's partition count).
            for p in 0..<Int32(statePartitions) {
                guard let last = try KafkaAdmin.lastValue(config: admin, topic: topic, partition: p, logger: logger) else { continue }
                let written = (try? StateCodec.decode(last))?.sourcePartitions ?? -1
                if written != Int32(sourcePartitions) {
                    throw ConfigurationError(
                        "state_topic: \(topic) has \(statePartitions) partitions but \(sourceTopic) has \(sourcePartitions), "
                        + "and it holds state written for another layout; the changelog must be co-partitioned with the source "
                        + "(recreate it, compacted, with \(sourcePartitions) partitions)")
                }
            }
            logger.warning("state topic is not co-partitioned with the source; source partition p is stored in p mod its count", metadata: [
                "state_topic": "\(topic)", "state_partitions": "\(statePartitions)", "source_partitions": "\(sourcePartitions)",
            ])
        }
        return (statePartitions, sourcePartitions)
    }
}
