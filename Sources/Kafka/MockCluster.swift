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
        guard let handle = rd_kafka_new(RD_KAFKA_PRODUCER, conf, &errbuf, errbuf.count) else {
            rd_kafka_conf_destroy(conf)
            throw KafkaError(message: "cannot create mock cluster: \(errorText(errbuf))")
        }
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
