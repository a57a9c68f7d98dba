import CRdKafka
import Foundation

/// An error from librdkafka or from this module's use of it.
public struct KafkaError: Error, CustomStringConvertible, Sendable {
    /// librdkafka's error code (`rd_kafka_resp_err_t`), or `nil` for configuration errors.
    public var code: Int32?
    public var message: String
    /// librdkafka marks some errors fatal: the client instance is unusable afterwards.
    public var isFatal: Bool
    /// The operation may succeed when tried again.
    public var isRetriable: Bool
    /// A transaction call failed in a way that leaves the transaction to be aborted.
    public var requiresAbort = false

    public init(code: Int32? = nil, message: String, isFatal: Bool = false, isRetriable: Bool = false) {
        self.code = code
        self.message = message
        self.isFatal = isFatal
        self.isRetriable = isRetriable
    }

    init(_ err: rd_kafka_resp_err_t, context: String) {
        let name = String(cString: rd_kafka_err2str(err))
        self.init(code: err.rawValue, message: "\(context): \(name)")
    }

    init(consuming error: OpaquePointer, context: String) {
        let msg = String(cString: rd_kafka_error_string(error))
        self.init(
            code: rd_kafka_error_code(error).rawValue, message: "\(context): \(msg)",
            isFatal: rd_kafka_error_is_fatal(error) != 0,
            isRetriable: rd_kafka_error_is_retriable(error) != 0)
        requiresAbort = rd_kafka_error_txn_requires_abort(error) != 0
        rd_kafka_error_destroy(error)
    }

    public var description: String { message }

    /// A newer producer with the same transactional id exists: this one was fenced.
    public var isFenced: Bool {
        code == RD_KAFKA_RESP_ERR__FENCED.rawValue || code == RD_KAFKA_RESP_ERR_PRODUCER_FENCED.rawValue
            || code == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH.rawValue
    }

    /// Transactions cannot work here, whatever the retries: the broker does not support
    /// them, or the transactional id (or the cluster) is not authorized.
    public var isUnrecoverableForTransactions: Bool {
        [
            RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION, RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE,
            RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED, RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED,
        ]
        .contains { $0.rawValue == code }
    }

    /// The record (or its batch) is over a size limit of the producer or the broker.
    public var isMessageTooLarge: Bool {
        code == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE.rawValue || code == RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE.rawValue
    }
}

/// A partition of a topic.
public struct TopicPartition: Hashable, Sendable, CustomStringConvertible {
    public var topic: String
    public var partition: Int32

    public init(_ topic: String, _ partition: Int32) {
        self.topic = topic
        self.partition = partition
    }

    public var description: String { "\(topic)[\(partition)]" }
}

/// The metadata foldspace-sync commits with every offset: a committed offset without it
/// was written by someone else (an operator's reset, another tool).
public let commitMetadata = "foldspace-sync"
