import Delivery
import Folding
import FoldspaceAPI
import Foundation
import Kafka

/// The daemon's effective configuration.
///
/// Sources, highest precedence first: command-line flags, environment variables
/// (`FOLDSPACE_SYNC_` + the key in upper case, dots as underscores), the configuration
/// file (JSON or YAML, `--config`), then defaults. Every key is declared once, in
/// ``SyncConfiguration/keys`` (Keys.swift): its file name, environment variable, parsing,
/// printing and documentation; docs/configuration.md's key table is generated from it.
///
/// This folder: the struct (here), ``Key`` and its typed constructors (Key.swift), the
/// table (Keys.swift), reading the sources (Load.swift, ConfigFile.swift,
/// EnvironmentPairs.swift), ``validate(requireKey:)`` (Validate.swift), and printing and
/// documenting, with the duration format (Describe.swift).
public struct SyncConfiguration: Sendable {
    public var brokers: String = ""
    public var topics: [String] = []
    public var group: String = ""
    public var foldspaceURL = "https://api.foldspace.ai"
    public var apiKeyFile: String?
    /// From `FOLDSPACE_API_KEY`; never printed.
    public var apiKey: String?
    public var caFile: String?
    /// Whether an `http://` Foldspace URL may name a host other than a loopback address.
    public var allowInsecureHTTP = false
    public var deadLetterTopic: String?
    public var adminListen = "127.0.0.1:9464"
    public var logFormat: String?
    public var logLevel = "info"
    public var shutdownTimeoutMs: Int64 = 30_000
    public var connectTimeoutMs: Int64 = 5_000
    public var requestTimeoutMs: Int64 = 30_000
    public var kafkaProperties: [String: String] = [:]
    /// librdkafka properties whose values are read from files (passwords, keys).
    public var kafkaSecretFiles: [String: String] = [:]
    /// Static group membership (`group.instance.id`), e.g. a StatefulSet pod name.
    public var groupInstanceId: String?
    /// The changelog topic; default `<group>-state`.
    public var stateTopic: String?
    /// Durable mode: each checkpoint writes a partition's users and commits its source
    /// offset in one Kafka transaction, fenced by the broker (docs/decisions.md).
    public var stateTransactions = true
    public var commitIntervalMs: Int64 = 5_000
    /// Size librdkafka's zstd batches by libzstd's bound when the producer left the size
    /// out (``ZstdSizeHint``): one decompression per batch instead of up to three.
    public var zstdSizeHint = true
    /// Problems that do not stop the daemon (environment variables that name no key),
    /// for the caller to log once logging is set up.
    public var warnings: [String] = []
    /// The engine's tunables; most keys set one of them.
    public var engine = EngineOptions()

    /// Where user state lives (the `state` key). Stored once, as the engine's
    /// ``EngineOptions/durable``, which the pipeline and the engine read.
    public var stateMode: StateMode {
        get { engine.durable ? .durable : .memory }
        set { engine.durable = newValue == .durable }
    }

    public var effectiveStateTopic: String { stateTopic ?? "\(group)-state" }

    public init() {
        stateMode = .durable
    }

    /// A configuration for running against a cluster and a Foldspace on this machine
    /// (the demo, benchmarks, tests): admin on a free loopback port, librdkafka quiet.
    public static func local(brokers: String, topic: String, group: String, foldspaceURL: String) -> SyncConfiguration {
        var c = SyncConfiguration()
        c.brokers = brokers
        c.topics = [topic]
        c.group = group
        c.foldspaceURL = foldspaceURL
        c.adminListen = "127.0.0.1:0"
        c.kafkaProperties = ["log_level": "3"]
        return c
    }

    /// The librdkafka properties to use: passthrough properties, secrets read from their
    /// files, bootstrap servers, group and static membership.
    public func resolvedKafkaProperties() throws -> [String: String] {
        var p = kafkaProperties
        for (property, path) in kafkaSecretFiles {
            guard let v = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw ConfigurationError("kafka.secret_files: cannot read the file for \(property)")
            }
            p[property] = v.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        if !brokers.isEmpty { p["bootstrap.servers"] = brokers }
        if let id = groupInstanceId { p["group.instance.id"] = id }
        return p
    }

    /// A value before parsing: what the file, a variable or a flag gave for a key.
    public enum ConfigValue: Sendable, Equatable {
        case text(String)
        case list([String])
        case map([String: String])
    }
}

/// The `state` key: where user state lives.
public enum StateMode: String, Sendable, CaseIterable {
    /// In a compacted changelog topic, restored on assignment; effectively-once.
    case durable
    /// Nothing persisted (development).
    case memory
}
