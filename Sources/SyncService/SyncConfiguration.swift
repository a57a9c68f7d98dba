import Events
import Folding
import FoldspaceAPI
import Foundation
import Kafka
import Yams

/// The daemon's effective configuration.
///
/// Sources, highest precedence first: command-line flags, environment variables
/// (`FOLDSPACE_SYNC_` + the key in upper case, dots as underscores), the configuration
/// file (JSON or YAML, `--config`), then defaults. ``SyncConfiguration/keys`` is the single
/// table of keys, types and defaults; `docs/configuration.md` documents the same.
public struct SyncConfiguration: Sendable {
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
    /// `durable` (default): state in a changelog topic; `memory`: nothing persisted.
    public var stateMode = "durable" {
        didSet { engine.durable = stateMode == "durable" }
    }
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

    public var effectiveStateTopic: String { stateTopic ?? "\(group)-state" }

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
    public var engine = EngineOptions()

    public init() {
        engine.durable = true
    }

    /// A key: its name in the file, its type for docs, and whether it is secret.
    public struct Key: Sendable {
        public var name: String
        public var type: String
        public var defaultText: String
        public var secret: Bool
        public var help: String
    }

    public static let keys: [Key] = [
        Key(name: "brokers", type: "string", defaultText: "(required)", secret: false, help: "Kafka bootstrap servers, host:port[,host:port]"),
        Key(name: "topics", type: "list of strings", defaultText: "(required)", secret: false, help: "source topics (flag --topic, repeatable; env comma-separated)"),
        Key(name: "group", type: "string", defaultText: "(required)", secret: false, help: "Kafka consumer group id"),
        Key(name: "foldspace_url", type: "URL", defaultText: "https://api.foldspace.ai", secret: false, help: "Foldspace API base URL"),
        Key(name: "api_key_file", type: "path", defaultText: "none", secret: false, help: "file holding the API key (re-read on SIGHUP); else FOLDSPACE_API_KEY"),
        Key(name: "ca_file", type: "path", defaultText: "none", secret: false, help: "PEM file of CAs trusted for Foldspace's TLS certificate in addition to the system roots"),
        Key(name: "allow_insecure_http", type: "boolean", defaultText: "false", secret: false, help: "allow an http:// foldspace_url whose host is not a loopback address (the API key and users' data then cross the network in clear text)"),
        Key(name: "debounce", type: "duration", defaultText: "5s", secret: false, help: "quiet period after a user's last change before it is sent"),
        Key(name: "max_wait", type: "duration", defaultText: "60s", secret: false, help: "longest a changed user waits, however busy it is"),
        Key(name: "admin_listen", type: "host:port", defaultText: "127.0.0.1:9464", secret: false, help: "admin HTTP (/metrics, /healthz, /readyz); port 0 picks one"),
        Key(name: "dead_letter_topic", type: "string", defaultText: "none", secret: false, help: "topic for invalid input and refused updates; none: counted and logged"),
        Key(name: "log_format", type: "json|text", defaultText: "json unless stderr is a terminal", secret: false, help: "log line format"),
        Key(name: "log_level", type: "trace|debug|info|notice|warning|error|critical", defaultText: "info", secret: false, help: "lowest level logged"),
        Key(name: "shutdown_timeout", type: "duration", defaultText: "30s", secret: false, help: "on SIGTERM, the longest wait for Foldspace before giving up (unsettled offsets stay uncommitted)"),
        Key(name: "connect_timeout", type: "duration", defaultText: "5s", secret: false, help: "Foldspace connect timeout"),
        Key(name: "request_timeout", type: "duration", defaultText: "30s", secret: false, help: "Foldspace request timeout"),
        Key(name: "max_in_flight", type: "integer", defaultText: "16", secret: false, help: "concurrent requests to Foldspace"),
        Key(name: "decode_threads", type: "integer", defaultText: "2", secret: false, help: "threads decoding messages, the poll thread included: it folds each chunk in order as soon as it is decoded and decodes what no helper has taken (capped at the cores)"),
        Key(name: "requests_per_second", type: "number", defaultText: "20", secret: false, help: "request rate for the API key (split across instances by partition share)"),
        Key(name: "burst", type: "number", defaultText: "40", secret: false, help: "token-bucket burst for the API key"),
        Key(name: "max_dirty_users", type: "integer", defaultText: "1000000", secret: false, help: "pause consuming above this many users awaiting delivery; resume below 80 %"),
        Key(name: "max_message_bytes", type: "integer", defaultText: "1048576", secret: false, help: "larger messages are invalid"),
        Key(name: "max_batch_events", type: "integer", defaultText: "2000", secret: false, help: "most calls in one {\"batch\": [...]} envelope"),
        Key(name: "breaker_probe_interval", type: "duration", defaultText: "30s", secret: false, help: "while Foldspace answers 401/403, one probe request this often (the key file is re-read first)"),
        Key(name: "on_user_not_found", type: "dead-letter|retry|drop", defaultText: "dead-letter", secret: false, help: "what a 404 from Foldspace does"),
        Key(name: "visit_gap", type: "duration", defaultText: "30m", secret: false, help: "an event more than this after the user's previous one (in event time) starts a new visit"),
        Key(name: "send_number_of_visits", type: "boolean", defaultText: "false", secret: false, help: "send numberOfVisits (Foldspace manages it itself unless told otherwise)"),
        Key(name: "custom_attributes", type: "list of strings", defaultText: "[]", secret: false, help: "trait names sent as customAttributes (objects as they are, other values as {\"value\": …})"),
        Key(name: "pql.source", type: "model|trait|none", defaultText: "model", secret: false, help: "where pqlScore comes from: the model, a valid traits.pqlScore, or not sent"),
        Key(name: "pql.visit_weight", type: "number", defaultText: "1", secret: false, help: "weight of min(visits, pql.visit_cap)"),
        Key(name: "pql.visit_cap", type: "integer", defaultText: "50", secret: false, help: "visits counted at most"),
        Key(name: "pql.day_weight", type: "number", defaultText: "2", secret: false, help: "weight of each active day in the last 28 days"),
        Key(name: "pql.k", type: "number", defaultText: "50", secret: false, help: "saturation: score = 100·(1 − e^(−x/k))"),
        Key(name: "pql.half_life", type: "duration", defaultText: "14d", secret: false, help: "the score halves for each half-life since the user was last seen"),
        Key(name: "pql.key_events", type: "list of {name, weight, cap} or \"name[:weight[:cap]]\"", defaultText: "[]", secret: false, help: "track events counted for the score (at most 32; weight 3, cap 20 by default)"),
        Key(name: "state", type: "durable|memory", defaultText: "durable", secret: false, help: "durable: user state in a compacted changelog topic, restored on assignment, effectively-once; memory: nothing persisted (development)"),
        Key(name: "state_topic", type: "string", defaultText: "<group>-state", secret: false, help: "the changelog topic, created compacted with the source's partition count when missing"),
        Key(name: "state.transactions", type: "boolean", defaultText: "true", secret: false, help: "durable state: write each partition's changed users and commit its source offset in one Kafka transaction (transactional id <group>-state-<topic>-<partition>), so that a former owner is fenced; false for brokers without transactions (see docs/decisions.md for what that weakens)"),
        Key(name: "commit_interval", type: "duration", defaultText: "5s", secret: false, help: "how often changed state is written and source offsets committed"),
        Key(name: "inactive_user_ttl", type: "duration", defaultText: "off", secret: false, help: "users whose last event is this much older than their partition's latest event are dropped from memory and tombstoned in the changelog; off (or 0) keeps every user"),
        Key(name: "group_instance_id", type: "string", defaultText: "none", secret: false, help: "static group membership (group.instance.id), e.g. the pod name of a StatefulSet"),
        Key(name: "zstd_size_hint", type: "boolean", defaultText: "true", secret: false, help: "decompress each zstd batch once: when a producer left the batch's size out (the Java client; librdkafka built against a shared libzstd), librdkafka 2.0 guesses and decompresses again, up to three times; this gives it libzstd's bound instead"),
        Key(name: "kafka.properties", type: "map of strings", defaultText: "{}", secret: false, help: "librdkafka properties, passed through unchanged; FOLDSPACE_SYNC_KAFKA_PROPERTIES adds to or replaces the file's per property"),
        Key(name: "kafka.secret_files", type: "map of property → file", defaultText: "{}", secret: false, help: "librdkafka properties read from files at start (sasl.password, ssl.key.password, …); never printed; FOLDSPACE_SYNC_KAFKA_SECRET_FILES merges per property"),
    ]

    /// Builds the configuration from the three sources. Every error names its key.
    public static func load(file: String?, environment: [String: String], flags: [String: ConfigValue]) throws -> SyncConfiguration {
        var raw: [String: ConfigValue] = [:]
        if let file {
            let data: Data
            do { data = try Data(contentsOf: URL(fileURLWithPath: file)) } catch {
                throw ConfigurationError("config: cannot read \(file)")
            }
            let lower = file.lowercased()
            if lower.hasSuffix(".yaml") || lower.hasSuffix(".yml") {
                guard let text = String(data: data, encoding: .utf8) else { throw ConfigurationError("config: \(file) is not UTF-8") }
                let node: Node?
                do { node = try Yams.compose(yaml: text) } catch {
                    throw ConfigurationError("config: \(file) is not valid YAML: \(error)")
                }
                guard let node, let obj = try yamlValue(node) as? [String: Any] else {
                    throw ConfigurationError("config: \(file) is not a YAML mapping")
                }
                try flatten(obj, prefix: "", into: &raw)
            } else {
                guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                    throw ConfigurationError("config: \(file) is not a JSON object")
                }
                try flatten(obj, prefix: "", into: &raw)
            }
        }
        let known = Set(keys.map(\.name))
        var unknownVariables: [String] = []
        for (name, value) in environment where name.hasPrefix("FOLDSPACE_SYNC_") {
            let key = name.dropFirst("FOLDSPACE_SYNC_".count).lowercased()
            if key == "kafka_properties" || key == "kafka_secret_files" {
                // Merged per key over the file's map: the environment adds or replaces
                // single properties, it does not drop the file's others.
                let dotted = key == "kafka_properties" ? "kafka.properties" : "kafka.secret_files"
                var merged: [String: String] = [:]
                if case .map(let m) = raw[dotted] { merged = m }
                for (k, v) in try parsePairs(value, key: dotted, variable: name) { merged[k] = v }
                raw[dotted] = .map(merged)
                continue
            }
            guard let k = known.first(where: { $0.replacingOccurrences(of: ".", with: "_") == key }) else {
                // Not ours: the kubelet's service links for a Service named
                // foldspace-sync-* (FOLDSPACE_SYNC_METRICS_SERVICE_HOST, …) share the
                // prefix. Named in one warning; a misspelt key shows up there too.
                unknownVariables.append(name)
                continue
            }
            raw[k] = k == "topics" ? .list(value.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }) : .text(value)
        }
        for (k, v) in flags { raw[k] = v }
        if let key = environment["FOLDSPACE_API_KEY"], !key.isEmpty { raw["api_key"] = .text(key) }
        // systemd's LoadCredential=foldspace-api-key:… puts the key here.
        if raw["api_key_file"] == nil, raw["api_key"] == nil, let dir = environment["CREDENTIALS_DIRECTORY"] {
            let path = (dir as NSString).appendingPathComponent("foldspace-api-key")
            if FileManager.default.fileExists(atPath: path) { raw["api_key_file"] = .text(path) }
        }
        var c = try build(raw)
        if !unknownVariables.isEmpty {
            c.warnings.append("ignoring environment variables that name no configuration key: "
                + unknownVariables.sorted().joined(separator: ", "))
        }
        return c
    }

    /// `FOLDSPACE_SYNC_KAFKA_PROPERTIES` / `_SECRET_FILES`: a JSON object, or
    /// `name=value` entries separated by commas or newlines, where `\,` is a comma in a
    /// value and `\\` a backslash.
    static func parsePairs(_ value: String, key: String, variable: String) throws -> [String: String] {
        let trimmed = value.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.hasPrefix("{") {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8)) as? [String: Any] else {
                throw ConfigurationError("\(key): \(variable) starts with { but is not a JSON object")
            }
            var m: [String: String] = [:]
            for (k, v) in obj {
                guard !(v is [Any]), !(v is [String: Any]) else { throw ConfigurationError("\(key): \(variable): \(k) is not a string or number") }
                m[k] = scalarText(v)
            }
            return m
        }
        var entries: [String] = []
        var current = ""
        var escaped = false
        for ch in value {
            if escaped {
                // Only \, and \\ are escapes; any other backslash stays as it is.
                if ch != "," && ch != "\\" && ch != "\n" { current.append("\\") }
                current.append(ch)
                escaped = false
            } else if ch == "\\" {
                escaped = true
            } else if ch == "," || ch == "\n" || ch == "\r\n" {
                entries.append(current)
                current = ""
            } else {
                current.append(ch)
            }
        }
        if escaped { current.append("\\") }
        entries.append(current)
        var m: [String: String] = [:]
        for entry in entries {
            let e = entry.trimmingCharacters(in: .whitespacesAndNewlines)
            if e.isEmpty { continue }
            let kv = e.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, !kv[0].trimmingCharacters(in: .whitespaces).isEmpty else {
                throw ConfigurationError("\(key): expected name=value entries in \(variable), got an entry without = (write a comma inside a value as \\,)")
            }
            m[String(kv[0]).trimmingCharacters(in: .whitespaces)] = String(kv[1])
        }
        return m
    }

    /// A YAML node as the JSON reader's values: scalars as their text (the keys parse
    /// text anyway), null as empty, mappings and sequences as dictionaries and arrays.
    static func yamlValue(_ node: Node) throws -> Any {
        switch node {
        case .scalar(let scalar):
            return node.null != nil ? "" : scalar.string
        case .mapping(let mapping):
            var o: [String: Any] = [:]
            for (k, v) in mapping {
                guard let key = k.string else { throw ConfigurationError("config: a YAML key that is not a string") }
                o[key] = try yamlValue(v)
            }
            return o
        case .sequence(let sequence):
            return try sequence.map { try yamlValue($0) }
        case .alias:
            throw ConfigurationError("config: YAML aliases are not supported")
        }
    }

    /// A value before parsing.
    public enum ConfigValue: Sendable, Equatable {
        case text(String)
        case list([String])
        case map([String: String])
    }

    private static func flatten(_ obj: [String: Any], prefix: String, into raw: inout [String: ConfigValue]) throws {
        let known = Set(keys.map(\.name))
        for (k, v) in obj {
            let name = prefix + k
            if name == "kafka.properties" || name == "kafka.secret_files" {
                guard let m = v as? [String: Any] else { throw ConfigurationError("\(name): expected an object") }
                var props: [String: String] = [:]
                for (pk, pv) in m { props[pk] = scalarText(pv) }
                raw[name] = .map(props)
            } else if let sub = v as? [String: Any], !known.contains(name) {
                try flatten(sub, prefix: name + ".", into: &raw)
            } else if let a = v as? [Any] {
                raw[name] = .list(a.map { item in
                    if let o = item as? [String: Any] {
                        // {"name": n, "weight": w, "cap": c} → "n:w:c"
                        let n = o["name"].map(scalarText) ?? ""
                        let w = o["weight"].map(scalarText) ?? "3"
                        let c = o["cap"].map(scalarText) ?? "20"
                        return "\(n):\(w):\(c)"
                    }
                    return scalarText(item)
                })
            } else {
                guard known.contains(name) else { throw ConfigurationError("\(name): unknown key") }
                raw[name] = .text(scalarText(v))
            }
        }
    }

    private static func scalarText(_ v: Any) -> String {
        if let s = v as? String { return s }
        if let n = v as? NSNumber {
            if n.objCType.pointee == CChar(UInt8(ascii: "c")) { return n.boolValue ? "true" : "false" }
            return n.stringValue
        }
        return "\(v)"
    }

    static func build(_ raw: [String: ConfigValue]) throws -> SyncConfiguration {
        var c = SyncConfiguration()
        let known = Set(keys.map(\.name)).union(["api_key"])
        for k in raw.keys where !known.contains(k) { throw ConfigurationError("\(k): unknown key") }
        func text(_ k: String) throws -> String? {
            switch raw[k] {
            case nil: return nil
            case .text(let s): return s
            case .list(let l): if l.count == 1 { return l[0] }; throw ConfigurationError("\(k): expected one value, got a list")
            case .map: throw ConfigurationError("\(k): expected a value, got an object")
            }
        }
        func duration(_ k: String) throws -> Int64? {
            guard let t = try text(k) else { return nil }
            guard let ms = parseDuration(t) else { throw ConfigurationError("\(k): bad duration \"\(t)\" (use 250ms, 5s, 1m, 1h, 14d)") }
            return ms
        }
        func integer(_ k: String, min lo: Int) throws -> Int? {
            guard let t = try text(k) else { return nil }
            guard let v = Int(t), v >= lo else { throw ConfigurationError("\(k): expected an integer ≥ \(lo), got \"\(t)\"") }
            return v
        }
        func number(_ k: String) throws -> Double? {
            guard let t = try text(k) else { return nil }
            let zeroOK = k.hasPrefix("pql.") && k != "pql.k"
            guard let v = Double(t), v.isFinite, zeroOK ? v >= 0 : v > 0 else {
                throw ConfigurationError("\(k): expected a \(zeroOK ? "non-negative" : "positive") number, got \"\(t)\"")
            }
            return v
        }
        if let v = try text("brokers") { c.brokers = v }
        switch raw["topics"] {
        case .list(let l): c.topics = l.filter { !$0.isEmpty }
        case .text(let t): c.topics = t.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
        case .map: throw ConfigurationError("topics: expected a list")
        case nil: break
        }
        if let v = try text("group") { c.group = v }
        if let v = try text("foldspace_url") { c.foldspaceURL = v }
        c.apiKeyFile = try text("api_key_file")
        c.apiKey = try text("api_key")
        c.caFile = try text("ca_file")
        if let v = try bool("allow_insecure_http") { c.allowInsecureHTTP = v }
        c.deadLetterTopic = try text("dead_letter_topic").flatMap { $0.isEmpty ? nil : $0 }
        if let v = try text("admin_listen") { c.adminListen = v }
        c.logFormat = try text("log_format")
        if let v = try text("log_level") { c.logLevel = v }
        if let v = try duration("debounce") { c.engine.debounceMs = v }
        if let v = try duration("max_wait") { c.engine.maxWaitMs = v }
        if let v = try duration("shutdown_timeout") { c.shutdownTimeoutMs = v }
        if let v = try duration("connect_timeout") { c.connectTimeoutMs = v }
        if let v = try duration("request_timeout") { c.requestTimeoutMs = v }
        if let v = try integer("max_in_flight", min: 1) { c.engine.maxInFlight = v }
        if let v = try integer("decode_threads", min: 1) { c.engine.decodeThreads = v }
        if let v = try duration("breaker_probe_interval") { c.engine.breakerProbeIntervalMs = max(v, 100) }
        if let v = try number("requests_per_second") { c.engine.requestsPerSecond = v }
        if let v = try number("burst") { c.engine.burst = v }
        if let v = try integer("max_dirty_users", min: 1) { c.engine.maxDirtyUsers = v }
        if let v = try integer("max_message_bytes", min: 1) { c.engine.decoder.maxMessageBytes = v }
        if let v = try integer("max_batch_events", min: 1) { c.engine.decoder.maxBatchEvents = v }
        if let t = try text("on_user_not_found") {
            guard let p = UserNotFoundPolicy(rawValue: t) else {
                throw ConfigurationError("on_user_not_found: expected dead-letter, retry or drop, got \"\(t)\"")
            }
            c.engine.onUserNotFound = p
        }
        if case .map(let m) = raw["kafka.properties"] { c.kafkaProperties = m }
        if case .map(let m) = raw["kafka.secret_files"] { c.kafkaSecretFiles = m }
        c.groupInstanceId = try text("group_instance_id").flatMap { $0.isEmpty ? nil : $0 }
        if let m = try text("state") {
            guard m == "durable" || m == "memory" else { throw ConfigurationError("state: expected durable or memory, got \"\(m)\"") }
            c.stateMode = m
        }
        c.stateTopic = try text("state_topic").flatMap { $0.isEmpty ? nil : $0 }
        if let v = try duration("commit_interval") { c.commitIntervalMs = max(v, 100) }
        if let t = try text("inactive_user_ttl") {
            if t == "off" || t == "0" {
                c.engine.inactiveUserTTLMs = 0
            } else if let ms = parseDuration(t), ms > 0 {
                c.engine.inactiveUserTTLMs = ms
            } else {
                throw ConfigurationError("inactive_user_ttl: expected off or a duration (30d, 12h), got \"\(t)\"")
            }
        }
        c.engine.durable = c.stateMode == "durable"
        func list(_ k: String) throws -> [String]? {
            switch raw[k] {
            case nil: return nil
            case .list(let l): return l.filter { !$0.isEmpty }
            case .text(let t): return t.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            case .map: throw ConfigurationError("\(k): expected a list")
            }
        }
        func bool(_ k: String) throws -> Bool? {
            guard let t = try text(k) else { return nil }
            switch t.lowercased() {
            case "true", "yes", "1", "on": return true
            case "false", "no", "0", "off": return false
            default: throw ConfigurationError("\(k): expected true or false, got \"\(t)\"")
            }
        }
        if let v = try duration("visit_gap") { c.engine.fold.visitGapMs = max(v, 1) }
        if let v = try bool("send_number_of_visits") { c.engine.fold.sendNumberOfVisits = v }
        if let v = try bool("state.transactions") { c.stateTransactions = v }
        if let v = try bool("zstd_size_hint") { c.zstdSizeHint = v }
        if let v = try list("custom_attributes") { c.engine.fold.customAttributes = v }
        if let t = try text("pql.source") {
            guard let src = FoldConfig.PQLSource(rawValue: t) else {
                throw ConfigurationError("pql.source: expected model, trait or none, got \"\(t)\"")
            }
            c.engine.fold.pql.source = src
        }
        if let v = try number("pql.visit_weight") { c.engine.fold.pql.visitWeight = v }
        if let v = try integer("pql.visit_cap", min: 0) { c.engine.fold.pql.visitCap = v }
        if let v = try number("pql.day_weight") { c.engine.fold.pql.dayWeight = v }
        if let v = try number("pql.k") { c.engine.fold.pql.k = v }
        if let v = try duration("pql.half_life") { c.engine.fold.pql.halfLifeDays = max(Double(v) / 86_400_000, 0.001) }
        if let events = try list("pql.key_events") {
            guard events.count <= FoldConfig.maxKeyEvents else {
                throw ConfigurationError("pql.key_events: at most \(FoldConfig.maxKeyEvents) events, got \(events.count)")
            }
            c.engine.fold.keyEvents = try events.map { spec in
                var parts = spec.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
                var cap = 20
                var weight = 3.0
                if parts.count >= 3, let cp = Int(parts[parts.count - 1]), let w = Double(parts[parts.count - 2]) {
                    cap = cp
                    weight = w
                    parts.removeLast(2)
                } else if parts.count >= 2, let w = Double(parts[parts.count - 1]) {
                    weight = w
                    parts.removeLast()
                }
                let name = parts.joined(separator: ":")
                guard !name.isEmpty, cap >= 0, weight.isFinite else {
                    throw ConfigurationError("pql.key_events: bad entry \"\(spec)\" (use name, name:weight or name:weight:cap)")
                }
                return FoldConfig.KeyEvent(name: name, weight: weight, cap: cap)
            }
        }
        c.engine.drainTimeoutMs = c.shutdownTimeoutMs
        return c
    }

    /// Checks what `run` needs; every message names its key.
    public func validate(requireKey: Bool = true) throws {
        if brokers.isEmpty && kafkaProperties["bootstrap.servers"] == nil {
            throw ConfigurationError("brokers: missing (flag --brokers, env FOLDSPACE_SYNC_BROKERS, or the file)")
        }
        if topics.isEmpty { throw ConfigurationError("topics: missing (flag --topic, env FOLDSPACE_SYNC_TOPICS, or the file)") }
        if group.isEmpty { throw ConfigurationError("group: missing (flag --group, env FOLDSPACE_SYNC_GROUP, or the file)") }
        guard let url = URL(string: foldspaceURL), let scheme = url.scheme?.lowercased(),
              scheme == "https" || scheme == "http", url.host != nil else {
            throw ConfigurationError("foldspace_url: \"\(foldspaceURL)\" is not an http(s) URL")
        }
        if scheme == "http", !allowInsecureHTTP, let host = url.host, !isLoopbackHost(host) {
            throw ConfigurationError("foldspace_url: http:// to \(host) would send the API key and users' data in clear text; use https://, a loopback address (a local stand-in or sidecar), or set allow_insecure_http: true")
        }
        if let f = logFormat, f != "json", f != "text" { throw ConfigurationError("log_format: expected json or text, got \"\(f)\"") }
        if parseLogLevel(logLevel) == nil { throw ConfigurationError("log_level: unknown level \"\(logLevel)\"") }
        if parseHostPort(adminListen) == nil { throw ConfigurationError("admin_listen: expected host:port, got \"\(adminListen)\"") }
        if stateMode == "durable" && topics.count > 1 {
            throw ConfigurationError("topics: state: durable supports one source topic (the changelog is co-partitioned with it); use one instance group per topic, or state: memory")
        }
        if requireKey && apiKey == nil && apiKeyFile == nil {
            throw ConfigurationError("api_key_file: missing (flag --api-key-file, or set FOLDSPACE_API_KEY)")
        }
        if engine.maxWaitMs < engine.debounceMs { throw ConfigurationError("max_wait: must not be shorter than debounce") }
        for (property, path) in kafkaSecretFiles where !FileManager.default.isReadableFile(atPath: path) {
            throw ConfigurationError("kafka.secret_files: cannot read the file for \(property)")
        }
        if let f = apiKeyFile, !FileManager.default.isReadableFile(atPath: f) {
            throw ConfigurationError("api_key_file: cannot read \(f)")
        }
    }

    /// The effective configuration as `key: value` lines, secrets redacted.
    public func describe() -> String {
        var lines: [String] = []
        func add(_ k: String, _ v: String) { lines.append("\(k): \(v)") }
        add("brokers", brokers)
        add("topics", topics.joined(separator: ","))
        add("group", group)
        add("foldspace_url", foldspaceURL)
        add("api_key", apiKey == nil ? "(not set)" : "<redacted>")
        add("api_key_file", apiKeyFile ?? "(not set)")
        add("ca_file", caFile ?? "(none: system roots)")
        add("allow_insecure_http", String(allowInsecureHTTP))
        add("debounce", formatDuration(engine.debounceMs))
        add("max_wait", formatDuration(engine.maxWaitMs))
        add("admin_listen", adminListen)
        add("dead_letter_topic", deadLetterTopic ?? "(none)")
        add("log_format", logFormat ?? "(json unless stderr is a terminal)")
        add("log_level", logLevel)
        add("shutdown_timeout", formatDuration(shutdownTimeoutMs))
        add("connect_timeout", formatDuration(connectTimeoutMs))
        add("request_timeout", formatDuration(requestTimeoutMs))
        add("max_in_flight", String(engine.maxInFlight))
        add("decode_threads", String(engine.decodeThreads))
        add("requests_per_second", String(engine.requestsPerSecond))
        add("burst", String(engine.burst))
        add("max_dirty_users", String(engine.maxDirtyUsers))
        add("max_message_bytes", String(engine.decoder.maxMessageBytes))
        add("max_batch_events", String(engine.decoder.maxBatchEvents))
        add("breaker_probe_interval", formatDuration(engine.breakerProbeIntervalMs))
        add("on_user_not_found", engine.onUserNotFound.rawValue)
        add("visit_gap", formatDuration(engine.fold.visitGapMs))
        add("send_number_of_visits", String(engine.fold.sendNumberOfVisits))
        add("custom_attributes", engine.fold.customAttributes.joined(separator: ","))
        add("pql.source", engine.fold.pql.source.rawValue)
        add("pql.visit_weight", String(engine.fold.pql.visitWeight))
        add("pql.visit_cap", String(engine.fold.pql.visitCap))
        add("pql.day_weight", String(engine.fold.pql.dayWeight))
        add("pql.k", String(engine.fold.pql.k))
        add("pql.half_life", formatDuration(Int64(engine.fold.pql.halfLifeDays * 86_400_000)))
        add("pql.key_events", engine.fold.keyEvents.map { "\($0.name):\($0.weight):\($0.cap)" }.joined(separator: ","))
        add("state", stateMode)
        add("state_topic", effectiveStateTopic)
        add("state.transactions", String(stateTransactions))
        add("commit_interval", formatDuration(commitIntervalMs))
        add("inactive_user_ttl", engine.inactiveUserTTLMs > 0 ? formatDuration(engine.inactiveUserTTLMs) : "off")
        add("group_instance_id", groupInstanceId ?? "(none)")
        add("zstd_size_hint", String(zstdSizeHint))
        for (k, v) in kafkaProperties.sorted(by: { $0.key < $1.key }) {
            add("kafka.properties.\(k)", KafkaClientConfig.isSecret(k) ? "<redacted>" : v)
        }
        for (k, v) in kafkaSecretFiles.sorted(by: { $0.key < $1.key }) {
            add("kafka.secret_files.\(k)", v)
        }
        return lines.joined(separator: "\n")
    }
}

/// Parses `250ms`, `5s`, `1m`, `2h`, `14d` (or a bare number of seconds) into milliseconds.
public func parseDuration(_ text: String) -> Int64? {
    let t = text.trimmingCharacters(in: .whitespaces).lowercased()
    let units: [(String, Double)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
    for (suffix, factor) in units where t.hasSuffix(suffix) {
        let num = t.dropLast(suffix.count)
        guard let v = Double(num), v >= 0, v.isFinite, v * factor < 1e15 else { return nil }
        return Int64(v * factor)
    }
    if let v = Double(t), v >= 0, v < 1e12 { return Int64(v * 1000) }
    return nil
}

public func formatDuration(_ ms: Int64) -> String {
    if ms % 86_400_000 == 0 && ms > 0 { return "\(ms / 86_400_000)d" }
    if ms % 3_600_000 == 0 && ms > 0 { return "\(ms / 3_600_000)h" }
    if ms % 60_000 == 0 && ms > 0 { return "\(ms / 60_000)m" }
    if ms % 1000 == 0 { return "\(ms / 1000)s" }
    return "\(ms)ms"
}

public func parseHostPort(_ s: String) -> (host: String, port: Int)? {
    guard let colon = s.lastIndex(of: ":") else { return nil }
    var host = String(s[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    guard let port = Int(s[s.index(after: colon)...]), (0...65535).contains(port), !host.isEmpty else { return nil }
    return (host, port)
}

/// Whether `host` (as a URL gives it) is a loopback address: `localhost`, `::1`, or
/// any address in 127.0.0.0/8.
func isLoopbackHost(_ host: String) -> Bool {
    var h = host.lowercased()
    if h.hasPrefix("[") && h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
    if h == "localhost" || h == "::1" || h == "0:0:0:0:0:0:0:1" { return true }
    let octets = h.split(separator: ".", omittingEmptySubsequences: false)
    guard octets.count == 4, octets.allSatisfy({ !$0.isEmpty && $0.count <= 3 && $0.allSatisfy(\.isNumber) }),
          let values = Optional(octets.compactMap { Int($0) }), values.count == 4, values.allSatisfy({ $0 <= 255 }) else { return false }
    return values[0] == 127
}
