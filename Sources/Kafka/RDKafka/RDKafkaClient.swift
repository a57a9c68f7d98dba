import CRdKafka

/// The one place this module creates an `rd_kafka_t` (consumer, producer, admin and
/// metadata clients, the restore reader, the mock cluster's owner).
///
/// librdkafka's ownership rule: `rd_kafka_new` takes the configuration only when it
/// succeeds. On failure the configuration is still the caller's, and it is destroyed
/// here before the error is thrown. The returned handle is the caller's to destroy
/// (`rd_kafka_destroy`).
enum RDKafkaClient {
    /// Builds the configuration from `config` (``KafkaClientConfig/makeConf()``), lets
    /// `configure` install callbacks on it, and creates the client. Throws on a property
    /// librdkafka refuses, and as ``create(_:conf:what:)`` does.
    static func create(
        _ type: rd_kafka_type_t, config: KafkaClientConfig, what: String,
        configure: (OpaquePointer) -> Void = { _ in }
    ) throws(KafkaError) -> OpaquePointer {
        let conf = try config.makeConf()
        configure(conf)
        return try create(type, conf: conf, what: what)
    }

    /// Creates the client from a configuration already built; on failure destroys it and
    /// throws "cannot create `what`: librdkafka's reason".
    static func create(_ type: rd_kafka_type_t, conf: OpaquePointer, what: String) throws(KafkaError) -> OpaquePointer {
        var errbuf = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(type, conf, &errbuf, errbuf.count) else {
            rd_kafka_conf_destroy(conf)
            throw KafkaError(message: "cannot create \(what): \(errorText(errbuf))")
        }
        return rk
    }
}

/// The text of a NUL-terminated error buffer filled by librdkafka.
func errorText(_ buf: [CChar]) -> String {
    String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
