import CRdKafka
import Foundation
import Logging

/// Topic administration and whole-partition reads, for the state changelog.
public enum KafkaAdmin {
    /// Creates `topic` with `partitions` and `config` (e.g. `cleanup.policy=compact`)
    /// unless it exists. Returns `true` when it was created. Uses the Admin API on a
    /// short-lived client.
    public static func createTopicIfMissing(
        config: KafkaClientConfig, topic: String, partitions: Int,
        replicationFactor: Int = -1, topicConfig: [String: String],
        logger: Logger, timeoutMs: Int32 = 15_000
    ) throws(KafkaError) -> Bool {
        let rk = try adminClient(config, timeoutMs: timeoutMs)
        defer { rd_kafka_destroy(rk) }
        var errbuf = [CChar](repeating: 0, count: 512)
        var newTopic: OpaquePointer? = rd_kafka_NewTopic_new(topic, Int32(partitions), Int32(replicationFactor), &errbuf, errbuf.count)
        guard newTopic != nil else { throw KafkaError(message: "bad topic spec for \(topic): \(errorText(errbuf))") }
        defer { rd_kafka_NewTopic_destroy(newTopic) }
        for (k, v) in topicConfig {
            let e = rd_kafka_NewTopic_set_config(newTopic, k, v)
            if e != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(e, context: "topic config \(k)") }
        }
        let event = try adminRequest(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS, timeoutMs: timeoutMs, what: "creating topic \(topic)") {
            rd_kafka_CreateTopics(rk, &newTopic, 1, $0, $1)
        }
        defer { rd_kafka_event_destroy(event) }
        if rd_kafka_event_error(event) != RD_KAFKA_RESP_ERR_NO_ERROR {
            let err = rd_kafka_event_error(event)
            throw KafkaError(err, context: "create topic \(topic)")
        }
        guard let result = rd_kafka_event_CreateTopics_result(event) else { return false }
        var n = 0
        guard let topics = rd_kafka_CreateTopics_result_topics(result, &n), n > 0, let t = topics[0] else { return false }
        let err = rd_kafka_topic_result_error(t)
        if err == RD_KAFKA_RESP_ERR_NO_ERROR {
            logger.info("created state topic", metadata: ["topic": "\(topic)", "partitions": "\(partitions)"])
            return true
        }
        if err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS { return false }
        let msg = rd_kafka_topic_result_error_string(t).map { String(cString: $0) } ?? ""
        throw KafkaError(code: err.rawValue, message: "create topic \(topic): \(msg)")
    }

    /// A short-lived client for one Admin request, once the cluster has a controller
    /// that can take it (``requireController(_:timeoutMs:)``). The caller destroys it.
    private static func adminClient(_ config: KafkaClientConfig, timeoutMs: Int32) throws(KafkaError) -> OpaquePointer {
        let rk = try RDKafkaClient.create(RD_KAFKA_PRODUCER, config: config.withoutConsumerProperties, what: "admin client")
        do {
            try requireController(rk, timeoutMs: timeoutMs)
        } catch {
            rd_kafka_destroy(rk)
            throw error
        }
        return rk
    }

    /// Sends one Admin request (`send` gets the options and the queue its answer goes to)
    /// and returns the answer's event, which the caller destroys.
    private static func adminRequest(
        _ rk: OpaquePointer, _ op: rd_kafka_admin_op_t, timeoutMs: Int32, what: String,
        _ send: (OpaquePointer?, OpaquePointer?) -> Void
    ) throws(KafkaError) -> OpaquePointer {
        var errbuf = [CChar](repeating: 0, count: 512)
        let queue = rd_kafka_queue_new(rk)
        defer { rd_kafka_queue_destroy(queue) }
        let options = rd_kafka_AdminOptions_new(rk, op)
        defer { rd_kafka_AdminOptions_destroy(options) }
        _ = rd_kafka_AdminOptions_set_request_timeout(options, timeoutMs, &errbuf, errbuf.count)
        send(options, queue)
        guard let event = rd_kafka_queue_poll(queue, timeoutMs + 2_000) else { throw KafkaError(message: "\(what) timed out") }
        return event
    }

    /// Fails at once when the cluster's metadata names a controller that is not one of
    /// its brokers: nothing would take the Admin request, and librdkafka would wait out
    /// the whole timeout for one. librdkafka's mock cluster answers so (controller 0,
    /// brokers from 1); a real cluster names a live broker. An unknown controller (-1,
    /// say mid-election) is not taken as an answer: the request is tried.
    private static func requireController(_ rk: OpaquePointer, timeoutMs: Int32) throws(KafkaError) {
        var md: UnsafePointer<rd_kafka_metadata>?
        let err = rd_kafka_metadata(rk, 0, nil, &md, timeoutMs)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR, let md else { return }
        defer { rd_kafka_metadata_destroy(md) }
        let brokers = (0..<Int(md.pointee.broker_cnt)).map { md.pointee.brokers[$0].id }
        let controller = rd_kafka_controllerid(rk, 0)
        if controller >= 0 && !brokers.isEmpty && !brokers.contains(controller) {
            throw KafkaError(
                message: "the cluster names controller \(controller), which is none of its brokers "
                    + "\(brokers.sorted()): it cannot take Admin requests")
        }
    }

    /// A topic's configuration as the brokers report it (DescribeConfigs), by name.
    /// Throws when the cluster cannot answer (librdkafka's mock cluster has no
    /// DescribeConfigs, and names a controller that is none of its brokers).
    public static func topicConfig(config: KafkaClientConfig, topic: String, timeoutMs: Int32 = 10_000) throws(KafkaError) -> [String:
        String]
    {
        let rk = try adminClient(config, timeoutMs: timeoutMs)
        defer { rd_kafka_destroy(rk) }
        var resource: OpaquePointer? = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic)
        guard resource != nil else { throw KafkaError(message: "bad config resource for \(topic)") }
        defer { rd_kafka_ConfigResource_destroy(resource) }
        let event = try adminRequest(
            rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS, timeoutMs: timeoutMs,
            what: "describing topic \(topic)'s configuration"
        ) {
            rd_kafka_DescribeConfigs(rk, &resource, 1, $0, $1)
        }
        defer { rd_kafka_event_destroy(event) }
        let err = rd_kafka_event_error(event)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(err, context: "describe configs of \(topic)") }
        guard let result = rd_kafka_event_DescribeConfigs_result(event) else {
            throw KafkaError(message: "describe configs of \(topic): no result")
        }
        var n = 0
        guard let resources = rd_kafka_DescribeConfigs_result_resources(result, &n), n > 0, let r = resources[0] else {
            throw KafkaError(message: "describe configs of \(topic): no resource in the answer")
        }
        let rerr = rd_kafka_ConfigResource_error(r)
        if rerr != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(rerr, context: "describe configs of \(topic)") }
        var count = 0
        var out: [String: String] = [:]
        guard let entries = rd_kafka_ConfigResource_configs(r, &count) else { return out }
        for i in 0..<count {
            guard let e = entries[i], let name = rd_kafka_ConfigEntry_name(e) else { continue }
            out[String(cString: name)] = rd_kafka_ConfigEntry_value(e).map { String(cString: $0) }
        }
        return out
    }

    /// The names of all topics, from metadata (a listing never auto-creates anything).
    public static func listTopics(config: KafkaClientConfig, timeoutMs: Int32 = 10_000) throws(KafkaError) -> Set<String> {
        let rk = try metadataClient(config)
        defer { rd_kafka_destroy(rk) }
        var md: UnsafePointer<rd_kafka_metadata>?
        let err = rd_kafka_metadata(rk, 1, nil, &md, timeoutMs)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR, let md else { throw KafkaError(err, context: "list topics") }
        defer { rd_kafka_metadata_destroy(md) }
        var out = Set<String>()
        for i in 0..<Int(md.pointee.topic_cnt) { out.insert(String(cString: md.pointee.topics[i].topic)) }
        return out
    }

    private static func metadataClient(_ config: KafkaClientConfig) throws(KafkaError) -> OpaquePointer {
        let metadataConfig = KafkaClientConfig(
            ["bootstrap.servers": config["bootstrap.servers"] ?? ""]
                .merging(
                    config.properties.filter { $0.key.hasPrefix("security.") || $0.key.hasPrefix("sasl.") || $0.key.hasPrefix("ssl.") }
                ) { a, _ in a })
        return try RDKafkaClient.create(RD_KAFKA_PRODUCER, config: metadataConfig, what: "metadata client")
    }

    /// The partition count of `topic` from cluster metadata.
    public static func partitionCount(config: KafkaClientConfig, topic: String, timeoutMs: Int32 = 10_000) throws(KafkaError) -> Int {
        let rk = try metadataClient(config)
        defer { rd_kafka_destroy(rk) }
        return try KafkaProducer.partitionCount(rk: rk, topic: topic, timeoutMs: timeoutMs)
    }

    /// The value of the last record of a partition, or nil if it is empty.
    public static func lastValue(config: KafkaClientConfig, topic: String, partition: Int32, logger: Logger) throws(KafkaError) -> [UInt8]?
    {
        try readPartition(config: config, topic: topic, partition: partition, logger: logger, fromLast: true).last?.value ?? nil
    }

    /// Reads a whole partition, from the beginning to the high watermark seen at the
    /// start, and returns its records in order (key, value; a null value is a tombstone).
    public static func readPartition(
        config: KafkaClientConfig, topic: String, partition: Int32, logger: Logger,
        timeoutMs: Int32 = 60_000, fromLast: Bool = false
    ) throws(KafkaError) -> [(key: [UInt8], value: [UInt8]?)] {
        try PartitionReader(config: config).read(topic: topic, partition: partition, timeoutMs: timeoutMs, fromLast: fromLast)
    }
}
