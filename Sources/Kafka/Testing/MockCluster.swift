import CRdKafka
import Foundation

/// librdkafka's mock Kafka cluster (`rdkafka_mock.h`), hosted in this process and
/// reachable over loopback by any Kafka client.
///
/// - Important: it keeps about 5 MiB per partition; produce compressed test data.
public final class MockCluster: @unchecked Sendable {
    private let rk: OpaquePointer
    private let mcluster: OpaquePointer
    /// `host:port,…` of the mock brokers.
    public let bootstrapServers: String

    public init(brokers: Int = 1) throws(KafkaError) {
        let conf = rd_kafka_conf_new()!
        var errbuf = [CChar](repeating: 0, count: 512)
        // A producer handle owns the cluster; it never sends anything itself.
        rd_kafka_conf_set(conf, "test.mock.num.brokers", String(max(1, brokers)), &errbuf, errbuf.count)
        rd_kafka_conf_set(conf, "log_level", "3", &errbuf, errbuf.count)
        let handle = try RDKafkaClient.create(RD_KAFKA_PRODUCER, conf: conf, what: "mock cluster")
        guard let mc = rd_kafka_handle_mock_cluster(handle) else {
            rd_kafka_destroy(handle)
            throw KafkaError(message: "this librdkafka has no mock cluster")
        }
        rk = handle
        mcluster = mc
        bootstrapServers = String(cString: rd_kafka_mock_cluster_bootstraps(mc))
    }

    deinit {
        rd_kafka_destroy(rk)
    }

    /// Creates a topic (replication factor 1).
    public func createTopic(_ name: String, partitions: Int) throws(KafkaError) {
        let err = rd_kafka_mock_topic_create(mcluster, name, Int32(partitions), 1)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(err, context: "create topic \(name)") }
    }

    /// Takes a broker down (connections closed, new ones refused) or brings it back.
    public func setBroker(_ id: Int32, up: Bool) {
        _ = up ? rd_kafka_mock_broker_set_up(mcluster, id) : rd_kafka_mock_broker_set_down(mcluster, id)
    }

    /// Makes the next `count` requests of Kafka API `apiKey` fail with `error`.
    public func pushRequestErrors(apiKey: Int16, error: Int32, count: Int) {
        var errs = [rd_kafka_resp_err_t](repeating: rd_kafka_resp_err_t(rawValue: error), count: count)
        rd_kafka_mock_push_request_errors_array(mcluster, apiKey, count, &errs)
    }

    /// Moves a partition's leadership to `broker`.
    public func setLeader(topic: String, partition: Int32, broker: Int32) {
        _ = rd_kafka_mock_partition_set_leader(mcluster, topic, partition, broker)
    }
}

extension MockCluster {
    /// Kafka API keys by name, for fault injection from outside (`mock-kafka`'s control
    /// commands).
    public static let apiKeys: [String: Int16] = [
        "Produce": 0, "Fetch": 1, "ListOffsets": 2, "Metadata": 3, "OffsetCommit": 8, "OffsetFetch": 9,
        "FindCoordinator": 10, "JoinGroup": 11, "Heartbeat": 12, "LeaveGroup": 13, "SyncGroup": 14,
        "InitProducerId": 22,
    ]

    /// Applies one control command, as `mock-kafka` reads them from its standard input:
    ///
    ///     broker-down ID | broker-up ID
    ///     leader TOPIC PARTITION BROKER
    ///     errors API COUNT [ERROR]      (API by name or number; ERROR defaults to 7, REQUEST_TIMED_OUT)
    ///     rtt BROKER MS
    ///
    /// Returns nil on success, else what was wrong with the command.
    public func control(_ line: String) -> String? {
        let w = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let cmd = w.first else { return "empty command" }
        func int(_ i: Int) -> Int? { i < w.count ? Int(w[i]) : nil }
        switch cmd {
        case "broker-down", "broker-up":
            guard w.count == 2, let id = int(1) else { return "usage: \(cmd) BROKER_ID" }
            setBroker(Int32(id), up: cmd == "broker-up")
        case "leader":
            guard w.count == 4, let p = int(2), let b = int(3) else { return "usage: leader TOPIC PARTITION BROKER" }
            setLeader(topic: w[1], partition: Int32(p), broker: Int32(b))
        case "errors":
            guard w.count == 3 || w.count == 4, let api = Self.apiKeys[w[1]] ?? Int16(w[1]), let n = int(2), n > 0,
                w.count == 3 || int(3) != nil
            else { return "usage: errors API COUNT [ERROR] (API: \(Self.apiKeys.keys.sorted().joined(separator: ", ")))" }
            pushRequestErrors(apiKey: api, error: Int32(int(3) ?? 7), count: n)
        case "rtt":
            guard w.count == 3, let b = int(1), let ms = int(2), ms >= 0 else { return "usage: rtt BROKER MS" }
            rd_kafka_mock_broker_set_rtt(mcluster, Int32(b), Int32(ms))
        default:
            return "unknown command \(cmd); known: broker-down, broker-up, leader, errors, rtt"
        }
        return nil
    }
}
