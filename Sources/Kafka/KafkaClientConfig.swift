import CRdKafka
import Foundation
import Logging

/// librdkafka configuration: every property passes through unchanged, so operators can
/// set anything CONFIGURATION.md documents (SASL, SSL, fetch sizes, …).
public struct KafkaClientConfig: Sendable {
    public var properties: [String: String]

    public init(_ properties: [String: String] = [:]) {
        self.properties = properties
    }

    public subscript(key: String) -> String? {
        get { properties[key] }
        set { properties[key] = newValue }
    }

    /// Property names whose values must never be logged or printed.
    public static func isSecret(_ key: String) -> Bool {
        let k = key.lowercased()
        return k.contains("password") || k.contains("secret") || k.contains("token") || k.hasSuffix("key.pem")
            || k.contains("oauthbearer.config")
    }

    /// Properties only a consumer understands; other clients made from the same
    /// configuration (producers, admin and metadata clients) leave them out.
    public static let consumerOnlyProperties: Set<String> = [
        "group.id", "group.instance.id", "enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset",
        "partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms", "queued.min.messages",
        "queued.max.messages.kbytes", "auto.commit.interval.ms", "enable.partition.eof", "max.poll.interval.ms",
        "fetch.min.bytes", "fetch.wait.max.ms", "fetch.max.bytes", "max.partition.fetch.bytes", "isolation.level",
    ]

    /// This configuration without the consumer-only properties.
    public var withoutConsumerProperties: KafkaClientConfig {
        KafkaClientConfig(properties.filter { !Self.consumerOnlyProperties.contains($0.key) })
    }

    /// Creates an `rd_kafka_conf_t`; the caller owns it until it is handed to
    /// `rd_kafka_new`.
    func makeConf() throws(KafkaError) -> OpaquePointer {
        let conf = rd_kafka_conf_new()!
        var errbuf = [CChar](repeating: 0, count: 512)
        for (k, v) in properties.sorted(by: { $0.key < $1.key }) {
            let r = rd_kafka_conf_set(conf, k, v, &errbuf, errbuf.count)
            if r != RD_KAFKA_CONF_OK {
                rd_kafka_conf_destroy(conf)
                let why = errorText(errbuf)
                throw KafkaError(message: "kafka property \(k): \(why)")
            }
        }
        return conf
    }
}

/// State shared with librdkafka's C callbacks through the client's opaque pointer.
/// Callbacks come from librdkafka's own threads, so everything here is thread-safe.
final class CallbackContext: @unchecked Sendable {
    let logger: Logger
    /// Set for consumers: receives rebalance callbacks on the poll thread.
    weak var consumer: KafkaConsumer?
    /// Set for producers: receives delivery reports on the producer's poll thread.
    weak var producer: KafkaProducer?

    /// librdkafka's latest statistics (JSON), when `statistics.interval.ms` is set.
    private let statsLock = NSLock()
    private var stats: String?
    var statistics: String? {
        get { statsLock.withLock { stats } }
        set { statsLock.withLock { stats = newValue } }
    }

    init(logger: Logger) {
        self.logger = logger
    }
}

/// Routes librdkafka's log lines and error callbacks into swift-log.
func installLogging(_ conf: OpaquePointer, context: CallbackContext) {
    rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(context).toOpaque())
    rd_kafka_conf_set_log_cb(conf) { rk, level, fac, buf in
        guard let rk, let opaque = rd_kafka_opaque(rk) else { return }
        let ctx = Unmanaged<CallbackContext>.fromOpaque(opaque).takeUnretainedValue()
        let text = buf.map { String(cString: $0) } ?? ""
        let facility = fac.map { String(cString: $0) } ?? ""
        let swiftLevel: Logger.Level
        switch level {
        case 0...3: swiftLevel = .error
        case 4: swiftLevel = .warning
        case 5, 6: swiftLevel = .info
        default: swiftLevel = .debug
        }
        ctx.logger.log(level: swiftLevel, "\(text)", metadata: ["librdkafka": "\(facility)"])
    }
    rd_kafka_conf_set_error_cb(conf) { rk, rawErr, reason, opaque in
        let err = rd_kafka_resp_err_t(rawValue: rawErr)
        guard let opaque else { return }
        let ctx = Unmanaged<CallbackContext>.fromOpaque(opaque).takeUnretainedValue()
        let why = reason.map { String(cString: $0) } ?? ""
        var fatal = false
        if err == RD_KAFKA_RESP_ERR__FATAL, let rk {
            fatal = true
            var buf = [CChar](repeating: 0, count: 512)
            let orig = rd_kafka_fatal_error(rk, &buf, buf.count)
            ctx.logger.critical("kafka fatal error", metadata: [
                "code": "\(String(cString: rd_kafka_err2name(orig)))",
                "reason": "\(errorText(buf))",
            ])
            ctx.consumer?.noteFatal()
        }
        if !fatal {
            // Transport errors (broker down, all brokers down) are retried by librdkafka.
            ctx.logger.warning("kafka error", metadata: [
                "code": "\(String(cString: rd_kafka_err2name(err)))", "reason": "\(why)",
            ])
        }
    }
}
