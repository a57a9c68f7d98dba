import CRdKafka
import Foundation

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

    /// An integer property as librdkafka (2.0.2) reads it: `(int)strtol(value, &end, 0)`
    /// (decimal, `0x` hex, octal after a leading 0, anything after the digits ignored,
    /// the low 32 bits kept); nil when unset or with no digits (which librdkafka refuses).
    public func integer(_ key: String) -> Int? {
        guard let value = properties[key] else { return nil }
        return value.withCString { start in
            var end: UnsafeMutablePointer<CChar>?
            let n = strtol(start, &end, 0)
            return end.map { UnsafePointer($0) == start } ?? true ? nil : Int(Int32(truncatingIfNeeded: n))
        }
    }

    /// The producer's `message.max.bytes` as librdkafka takes it: its default, 1,000,000,
    /// unless set within what librdkafka accepts (1,000 to 1,000,000,000; a value out of
    /// it fails the client's creation anyway).
    public var messageMaxBytes: Int {
        integer("message.max.bytes").flatMap { (1_000...1_000_000_000).contains($0) ? $0 : nil } ?? 1_000_000
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
                name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "_" })
            else { continue }
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
