import Delivery
import Folding
import FoldspaceAPI
import Foundation
import Kafka

extension SyncConfiguration {
    /// Every configuration key, once: file name, type, default and meaning (the rows of
    /// docs/configuration.md, generated from here), where it goes in the configuration,
    /// and how it is printed. The environment variable is `FOLDSPACE_SYNC_` + the name in
    /// upper case, dots as underscores, unless the entry says otherwise. This order is
    /// the order of the documentation and of `check-config`'s output.
    ///
    /// Adding a key: one entry here (its property in SyncConfiguration.swift or
    /// ``EngineOptions``), a sample value in ConfigurationTests' key-table suite, and
    /// `UPDATE_DOCS=1 swift test --filter ConfigurationTests/Docs` to regenerate the docs.
    public static let keys: [Key] = [
        .string("brokers", \.brokers, default: "(required)", "Kafka bootstrap servers, host:port[,host:port]"),
        Key(
            "topics", type: "list of strings", default: "(required)", "source topics (flag --topic, repeatable; env comma-separated)",
            shape: .list,
            parse: { c, v in
                // Unlike other lists, a blank entry of a comma-separated string stays.
                if case .text(let t) = v {
                    c.topics = t.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
                } else {
                    c.topics = try Key.list(v, "topics")
                }
            }, render: { $0.topics.joined(separator: ",") }),
        .string("group", \.group, default: "(required)", "Kafka consumer group id"),
        .string("foldspace_url", \.foldspaceURL, type: "URL", default: "https://api.foldspace.ai", "Foldspace API base URL"),
        .secret("api_key", \.apiKey, environment: "FOLDSPACE_API_KEY"),
        .optional(
            "api_key_file", \.apiKeyFile, type: "path", default: "none", unset: "(not set)",
            "file holding the API key (re-read on SIGHUP); else FOLDSPACE_API_KEY"),
        .optional(
            "ca_file", \.caFile, type: "path", default: "none", unset: "(none: system roots)",
            "PEM file of CAs trusted for Foldspace's TLS certificate in addition to the system roots"),
        .bool(
            "allow_insecure_http", \.allowInsecureHTTP, default: "false",
            "allow an http:// foldspace_url whose host is not a loopback address (the API key and users' data then cross the network in clear text)"
        ),
        .duration("debounce", \.engine.debounceMs, default: "5s", "quiet period after a user's last change before it is sent"),
        .duration("max_wait", \.engine.maxWaitMs, default: "60s", "longest a changed user waits, however busy it is"),
        .string(
            "admin_listen", \.adminListen, type: "host:port", default: "127.0.0.1:9464",
            "admin HTTP (/metrics, /healthz, /readyz); port 0 picks one"),
        .optional(
            "dead_letter_topic", \.deadLetterTopic, default: "none", unset: "(none)", emptyIsUnset: true,
            "topic for invalid input and refused updates; none: counted and logged"),
        // log_format and log_level are checked by validate(), after loading.
        .optional(
            "log_format", \.logFormat, type: "json|text", default: "json unless stderr is a terminal",
            unset: "(json unless stderr is a terminal)", "log line format"),
        .string("log_level", \.logLevel, type: "trace|debug|info|notice|warning|error|critical", default: "info", "lowest level logged"),
        .duration(
            "shutdown_timeout", \.shutdownTimeoutMs, default: "30s",
            "on SIGTERM, the longest wait for Foldspace before giving up (unsettled offsets stay uncommitted)"),
        .duration("connect_timeout", \.connectTimeoutMs, default: "5s", "Foldspace connect timeout"),
        .duration("request_timeout", \.requestTimeoutMs, default: "30s", "Foldspace request timeout"),
        .int("max_in_flight", \.engine.maxInFlight, min: 1, default: "16", "concurrent requests to Foldspace"),
        .int(
            "decode_threads", \.engine.decodeThreads, min: 1, default: "2",
            "threads decoding messages, the poll thread included: it folds each chunk in order as soon as it is decoded and decodes what no helper has taken (capped at the cores)"
        ),
        .number(
            "requests_per_second", \.engine.requestsPerSecond, .positive, default: "20",
            "request rate for the API key (split across instances by partition share)"),
        .number("burst", \.engine.burst, .positive, default: "40", "token-bucket burst for the API key"),
        .int(
            "max_dirty_users", \.engine.maxDirtyUsers, min: 1, default: "1000000",
            "pause consuming above this many users awaiting delivery; resume below 80 %"),
        .int("max_message_bytes", \.engine.decoder.maxMessageBytes, min: 1, default: "1048576", "larger messages are invalid"),
        .int("max_batch_events", \.engine.decoder.maxBatchEvents, min: 1, default: "2000", #"most calls in one {"batch": [...]} envelope"#),
        .duration(
            "breaker_probe_interval", \.engine.breakerProbeIntervalMs, atLeast: 100, default: "30s",
            "while Foldspace answers 401/403, one probe request this often (the key file is re-read first)"),
        .choice("on_user_not_found", \.engine.onUserNotFound, default: "dead-letter", "what a 404 from Foldspace does"),
        .duration(
            "visit_gap", \.engine.fold.visitGapMs, atLeast: 1, default: "30m",
            "an event more than this after the user's previous one (in event time) starts a new visit"),
        .bool(
            "send_number_of_visits", \.engine.fold.sendNumberOfVisits, default: "false",
            "send numberOfVisits (Foldspace manages it itself unless told otherwise)"),
        .list(
            "custom_attributes", \.engine.fold.customAttributes, default: "[]",
            #"trait names sent as customAttributes (objects as they are, other values as {"value": …})"#),
        .choice(
            "pql.source", \.engine.fold.pql.source, default: "model",
            "where pqlScore comes from: the model, a valid traits.pqlScore, or not sent"),
        .number("pql.visit_weight", \.engine.fold.pql.visitWeight, .nonNegative, default: "1", "weight of min(visits, pql.visit_cap)"),
        .int("pql.visit_cap", \.engine.fold.pql.visitCap, min: 0, default: "50", "visits counted at most"),
        .number("pql.day_weight", \.engine.fold.pql.dayWeight, .nonNegative, default: "2", "weight of each active day in the last 28 days"),
        .number("pql.k", \.engine.fold.pql.k, .positive, default: "50", "saturation: score = 100·(1 − e^(−x/k))"),
        Key(
            "pql.half_life", type: "duration", default: "14d", "the score halves for each half-life since the user was last seen",
            parse: { c, v in c.engine.fold.pql.halfLifeDays = max(Double(try Key.milliseconds(v, "pql.half_life")) / 86_400_000, 0.001) },
            render: { formatDuration(Int64($0.engine.fold.pql.halfLifeDays * 86_400_000)) }),
        Key(
            "pql.key_events", type: #"list of {name, weight, cap} or "name[:weight[:cap]]""#, default: "[]",
            "track events counted for the score (at most 32; weight 3, cap 20 by default)", shape: .list,
            parse: { c, v in c.engine.fold.keyEvents = try parseKeyEvents(Key.list(v, "pql.key_events")) },
            render: { $0.engine.fold.keyEvents.map { "\($0.name):\($0.weight):\($0.cap)" }.joined(separator: ",") }),
        .choice(
            "state", \.stateMode, default: "durable",
            "durable: user state in a compacted changelog topic, restored on assignment, effectively-once; memory: nothing persisted (development)"
        ),
        Key(
            "state_topic", type: "string", default: "<group>-state",
            "the changelog topic, created compacted with the source's partition count when missing",
            parse: { c, v in c.stateTopic = try Key.text(v, "state_topic").nonEmpty }, render: { $0.effectiveStateTopic }),
        .bool(
            "state.transactions", \.stateTransactions, default: "true",
            "durable state: write each partition's changed users and commit its source offset in one Kafka transaction (transactional id <group>-state-<topic>-<partition>), so that a former owner is fenced; false for brokers without transactions (see docs/decisions.md for what that weakens)"
        ),
        .duration(
            "commit_interval", \.commitIntervalMs, atLeast: 100, default: "5s",
            "how often changed state is written and source offsets committed (with `identity.merge`, also sooner when calls routed to other tasks wait, unless the checkpoint would mostly rewrite changed users: docs/identity.md)"
        ),
        .bool(
            "identity.merge", \.engine.identity.merge, default: "false",
            "identity resolution (docs/identity.md): a call naming two identities (identify with userId and anonymousId, alias) links them, and each user carries every linked identity's events; needs state: durable with state.transactions"
        ),
        Key(
            "identity.max_linked", type: "integer", default: String(IdentityGraph.defaultMaxLinked),
            "the most identities linked into one user (0…\(IdentityCodec.maxLinked)); one more is counted and not linked",
            parse: { c, v in
                let t = try Key.text(v, "identity.max_linked")
                guard let n = Int(t), (0...IdentityCodec.maxLinked).contains(n) else {
                    throw ConfigurationError("identity.max_linked: expected an integer from 0 to \(IdentityCodec.maxLinked), got \"\(t)\"")
                }
                c.engine.identity.maxLinked = n
            }, render: { String($0.engine.identity.maxLinked) }),
        .bool(
            "identity.send_anonymous", \.engine.identity.sendAnonymous, default: "true",
            "send an identity that never carried a userId (as ANONYMOUS) until it is linked to a user; false: only users are sent"),
        .choice(
            "identity.partitioner", \.engine.identity.partitioner, default: "murmur2",
            "how the owner of an identity is computed, as the collectors' producers place keys: murmur2 (the Java client, librdkafka's murmur2_random) or crc32 (librdkafka's default)"
        ),
        Key(
            "inactive_user_ttl", type: "duration", default: "off",
            "users whose last event is this much older than their partition's latest event are dropped from memory and tombstoned in the changelog; off (or 0) keeps every user",
            parse: { c, v in
                let t = try Key.text(v, "inactive_user_ttl")
                if t == "off" || t == "0" {
                    c.engine.inactiveUserTTLMs = 0
                } else if let ms = parseDuration(t), ms > 0 {
                    c.engine.inactiveUserTTLMs = ms
                } else {
                    throw ConfigurationError("inactive_user_ttl: expected off or a duration (30d, 12h), got \"\(t)\"")
                }
            }, render: { $0.engine.inactiveUserTTLMs > 0 ? formatDuration($0.engine.inactiveUserTTLMs) : "off" }),
        .optional(
            "group_instance_id", \.groupInstanceId, default: "none", unset: "(none)", emptyIsUnset: true,
            "static group membership (group.instance.id), e.g. the pod name of a StatefulSet"),
        .bool(
            "zstd_size_hint", \.zstdSizeHint, default: "true",
            "decompress each zstd batch once: when a producer left the batch's size out (the Java client; librdkafka built against a shared libzstd), librdkafka 2.0 guesses and decompresses again, up to three times; this gives it libzstd's bound instead"
        ),
        .map(
            "kafka.properties", \.kafkaProperties, type: "map of strings", shown: { !KafkaClientConfig.isSecret($0) },
            "librdkafka properties, passed through unchanged; FOLDSPACE_SYNC_KAFKA_PROPERTIES adds to or replaces the file's per property"),
        // The files' paths are printed, never their contents.
        .map(
            "kafka.secret_files", \.kafkaSecretFiles, type: "map of property → file", shown: { _ in true },
            "librdkafka properties read from files at start (sasl.password, ssl.key.password, …); never printed; FOLDSPACE_SYNC_KAFKA_SECRET_FILES merges per property"
        ),
    ]

    /// `pql.key_events` entries: `name`, `name:weight` or `name:weight:cap` (a name may
    /// hold colons); weight 3 and cap 20 by default.
    static func parseKeyEvents(_ events: [String]) throws -> [FoldConfig.KeyEvent] {
        guard events.count <= FoldConfig.maxKeyEvents else {
            throw ConfigurationError("pql.key_events: at most \(FoldConfig.maxKeyEvents) events, got \(events.count)")
        }
        return try events.map { spec in
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
}

extension String {
    /// nil for the empty string: an empty value unsets an optional key.
    fileprivate var nonEmpty: String? { isEmpty ? nil : self }
}
