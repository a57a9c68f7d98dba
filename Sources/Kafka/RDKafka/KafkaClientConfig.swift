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

    /// librdkafka (2.0.2) properties known to hold no secret: the only ones whose values
    /// `check-config` shows. Left out on purpose: passwords, keys and their PEM, the
    /// OAUTHBEARER config, client secret, extensions (key=value pairs, often credentials)
    /// and token endpoint URL (may carry credentials), the kinit command line, pointers.
    public static let nonSecretProperties: Set<String> = [
        "acks", "allow.auto.create.topics", "api.version.fallback.ms", "api.version.request",
        "api.version.request.timeout.ms", "auto.commit.enable", "auto.commit.interval.ms", "auto.offset.reset",
        "batch.num.messages", "batch.size", "bootstrap.servers", "broker.address.family", "broker.address.ttl",
        "broker.version.fallback", "builtin.features", "check.crcs", "client.id", "client.rack",
        "compression.codec", "compression.level", "compression.type", "connections.max.idle.ms",
        "consume.callback.max.messages", "coordinator.query.interval.ms", "debug", "delivery.report.only.error",
        "delivery.timeout.ms", "enable.auto.commit", "enable.auto.offset.store", "enable.gapless.guarantee",
        "enable.idempotence", "enable.partition.eof", "enable.random.seed",
        "enable.sasl.oauthbearer.unsecure.jwt", "enable.ssl.certificate.verification", "enabled_events",
        "fetch.error.backoff.ms", "fetch.max.bytes", "fetch.message.max.bytes", "fetch.min.bytes",
        "fetch.wait.max.ms", "group.id", "group.instance.id", "group.protocol.type", "heartbeat.interval.ms",
        "interceptors", "internal.termination.signal", "isolation.level", "linger.ms", "log.connection.close",
        "log.queue", "log.thread.name", "log_level", "max.in.flight", "max.in.flight.requests.per.connection",
        "max.partition.fetch.bytes", "max.poll.interval.ms", "message.copy.max.bytes", "message.max.bytes",
        "message.send.max.retries", "message.timeout.ms", "metadata.broker.list", "metadata.max.age.ms",
        "offset.store.method", "offset.store.path", "offset.store.sync.interval.ms",
        "partition.assignment.strategy", "partitioner", "plugin.library.paths", "produce.offset.report",
        "queue.buffering.backpressure.threshold", "queue.buffering.max.kbytes", "queue.buffering.max.messages",
        "queue.buffering.max.ms", "queued.max.messages.kbytes", "queued.min.messages", "queuing.strategy",
        "receive.message.max.bytes", "reconnect.backoff.jitter.ms", "reconnect.backoff.max.ms",
        "reconnect.backoff.ms", "request.required.acks", "request.timeout.ms", "retries", "retry.backoff.ms",
        "sasl.kerberos.keytab", "sasl.kerberos.min.time.before.relogin", "sasl.kerberos.principal",
        "sasl.kerberos.service.name", "sasl.mechanism", "sasl.mechanisms", "sasl.oauthbearer.client.id",
        "sasl.oauthbearer.method", "sasl.oauthbearer.scope", "sasl.username", "security.protocol",
        "session.timeout.ms", "socket.blocking.max.ms", "socket.connection.setup.timeout.ms",
        "socket.keepalive.enable", "socket.max.fails", "socket.nagle.disable", "socket.receive.buffer.bytes",
        "socket.send.buffer.bytes", "socket.timeout.ms", "ssl.ca.certificate.stores", "ssl.ca.location",
        "ssl.ca.pem", "ssl.certificate.location", "ssl.certificate.pem", "ssl.cipher.suites",
        "ssl.crl.location", "ssl.curves.list", "ssl.endpoint.identification.algorithm", "ssl.engine.id",
        "ssl.engine.location", "ssl.key.location", "ssl.keystore.location", "ssl.providers", "ssl.sigalgs.list",
        "statistics.interval.ms", "sticky.partitioning.linger.ms", "topic.blacklist",
        "topic.metadata.propagation.max.ms", "topic.metadata.refresh.fast.cnt",
        "topic.metadata.refresh.fast.interval.ms", "topic.metadata.refresh.interval.ms",
        "topic.metadata.refresh.sparse", "transaction.timeout.ms", "transactional.id",
    ]

    /// Property names whose values must never be logged or printed: every name not known
    /// to be harmless, so a property added by a later librdkafka (or misspelt) is hidden
    /// until it is reviewed.
    public static func isSecret(_ key: String) -> Bool {
        !nonSecretProperties.contains(key.lowercased())
    }

    /// Every property this librdkafka knows, with its description, from its own table
    /// (`rd_kafka_conf_properties_show`, the source of CONFIGURATION.md): global and topic.
    public static func librdkafkaProperties() -> [(name: String, description: String)] {
        var buffer: UnsafeMutablePointer<CChar>? = nil
        var size = 0
        guard let stream = open_memstream(&buffer, &size) else { return [] }
        rd_kafka_conf_properties_show(stream)
        fclose(stream)
        defer { free(buffer) }
        guard let buffer else { return [] }
        let text = String(cString: buffer)
        var out: [(name: String, description: String)] = []
        for line in text.split(separator: "\n") {
            let cols = line.split(separator: "|", omittingEmptySubsequences: false)
            guard cols.count >= 6 else { continue }
            let name = cols[0].trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty, name != "Property", !name.hasPrefix("-"),
                  name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "_" }) else { continue }
            out.append((name, cols[5...].joined(separator: "|").trimmingCharacters(in: .whitespaces)))
        }
        return out
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
    private var parsed: KafkaStatistics?
    private var parsedIsCurrent = true
    var statistics: String? {
        get { statsLock.withLock { stats } }
        set { statsLock.withLock { stats = newValue; parsedIsCurrent = false } }
    }
    /// The latest statistics, parsed once per new document (at most once an interval).
    var parsedStatistics: KafkaStatistics? {
        statsLock.withLock {
            if !parsedIsCurrent, let stats {
                parsed = KafkaStatistics.parse(stats) ?? parsed
                parsedIsCurrent = true
            }
            return parsed
        }
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
            ctx.producer?.noteFatal()
        }
        if !fatal {
            // Transport errors (broker down, all brokers down) are retried by librdkafka.
            ctx.logger.warning("kafka error", metadata: [
                "code": "\(String(cString: rd_kafka_err2name(err)))", "reason": "\(why)",
            ])
        }
    }
}
