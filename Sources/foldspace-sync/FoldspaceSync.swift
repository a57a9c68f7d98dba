import ArgumentParser
import FoldspaceAPI
import Foundation
import Kafka
import Logging
import ServiceLifecycle
import SyncService
import UnixSignals

@main
struct FoldspaceSync: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "foldspace-sync",
        abstract: "Folds product-analytics events from Kafka into Foldspace users.",
        version: foldspaceSyncVersion,
        subcommands: [Run.self, Demo.self, CheckConfig.self, Inspect.self, ResyncCommand.self, MockKafka.self])

    /// Exit statuses (docs/operations.md, deploy/systemd): 0 a clean stop, 1 a failure
    /// while running, 2 a usage or configuration error (systemd does not restart on 2:
    /// `RestartPreventExitStatus=2`). ArgumentParser's own usage errors (EX_USAGE, 64)
    /// are mapped to 2 here.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            if exitCode(for: error) == .validationFailure {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(exitConfigurationError)
            }
            exit(withError: error)
        }
    }
}

/// A usage or configuration error: a restart cannot help.
let exitConfigurationError: Int32 = 2
/// A failure while running (Kafka fatal error, the admin port taken, …).
let exitRuntimeFailure: Int32 = 1

/// Flags shared by `run` and `check-config`. Every flag is also a configuration key
/// (file and `FOLDSPACE_SYNC_*` environment); flags win.
struct ConfigFlags: ParsableArguments {
    @Option(help: "Configuration file: JSON, or YAML when named .yaml or .yml.") var config: String?
    @Option(help: "Kafka bootstrap servers, host:port[,host:port].") var brokers: String?
    @Option(name: .customLong("topic"), help: "Source topic; repeat for several.") var topics: [String] = []
    @Option(help: "Kafka consumer group id.") var group: String?
    @Option(name: .customLong("foldspace-url"), help: "Foldspace API base URL (default https://api.foldspace.ai).") var foldspaceURL:
        String?
    @Option(name: .customLong("api-key-file"), help: "File holding the Foldspace API key, re-read on SIGHUP (else FOLDSPACE_API_KEY).")
    var apiKeyFile: String?
    @Option(name: .customLong("ca-file"), help: "PEM file of CAs to trust for Foldspace's TLS certificate.") var caFile: String?
    @Option(help: "Quiet period after a user's last change, e.g. 250ms, 5s (default 5s).") var debounce: String?
    @Option(name: .customLong("max-wait"), help: "Longest a changed user waits, e.g. 60s (default 60s).") var maxWait: String?
    @Option(
        name: .customLong("admin-listen"),
        help: "Admin HTTP host:port for /metrics, /healthz, /readyz (default 127.0.0.1:9464; port 0 picks one).") var adminListen: String?
    @Option(name: .customLong("dead-letter-topic"), help: "Topic for invalid input and refused updates (default none: counted and logged).")
    var deadLetterTopic: String?
    @Option(name: .customLong("log-format"), help: "json or text (default json unless stderr is a terminal).") var logFormat: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical (default info).") var logLevel:
        String?

    var overrides: [String: SyncConfiguration.ConfigValue] {
        var m: [String: SyncConfiguration.ConfigValue] = [:]
        func set(_ k: String, _ v: String?) { if let v { m[k] = .text(v) } }
        set("brokers", brokers)
        if !topics.isEmpty { m["topics"] = .list(topics) }
        set("group", group)
        set("foldspace_url", foldspaceURL)
        set("api_key_file", apiKeyFile)
        set("ca_file", caFile)
        set("debounce", debounce)
        set("max_wait", maxWait)
        set("admin_listen", adminListen)
        set("dead_letter_topic", deadLetterTopic)
        set("log_format", logFormat)
        set("log_level", logLevel)
        return m
    }

    func load() throws -> SyncConfiguration {
        try SyncConfiguration.load(file: config, environment: ProcessInfo.processInfo.environment, flags: overrides)
    }

    /// The configuration for a one-shot tool (`inspect`, `resync`): validated without
    /// requiring the API key (exit 2 naming the problem), and a logger that says only
    /// errors, on stderr (the tool's output is on stdout).
    func loadForTool() throws -> (SyncConfiguration, Logger) {
        let config: SyncConfiguration
        do {
            config = try load()
            try config.validate(requireKey: false)
        } catch {
            FileHandle.standardError.write(Data("foldspace-sync: \(error)\n".utf8))
            throw ExitCode(exitConfigurationError)
        }
        var logger = Logger(label: "foldspace-sync")
        logger.logLevel = .error
        return (config, logger)
    }
}

extension FoldspaceSync {
    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the daemon: consume, fold, debounce and send user updates.",
            discussion: """
                The API key comes from --api-key-file (re-read on SIGHUP) or FOLDSPACE_API_KEY.
                SIGTERM/SIGINT: stop consuming, flush every changed user, commit, leave the group, exit 0.
                Every flag is also a key of the configuration file and an environment variable
                FOLDSPACE_SYNC_<KEY> (see docs/configuration.md); flags win over the environment,
                the environment over the file.
                """)

        @OptionGroup var flags: ConfigFlags

        func run() async throws {
            let config: SyncConfiguration
            do {
                config = try flags.load()
                try config.validate()
            } catch {
                FileHandle.standardError.write(Data("foldspace-sync: \(error)\n".utf8))
                throw ExitCode(exitConfigurationError)
            }
            LogSetup.bootstrap(format: config.logFormat, level: parseLogLevel(config.logLevel) ?? .info)
            let logger = Logger(label: "foldspace-sync")
            for warning in config.warnings { logger.warning("\(warning)") }
            let keys: APIKeyStore
            do {
                if let file = config.apiKeyFile {
                    keys = try APIKeyStore(file: file)
                } else {
                    keys = try APIKeyStore(key: config.apiKey ?? "")
                }
            } catch {
                logger.critical("cannot load the API key", metadata: ["error": "\(error)"])
                throw ExitCode(exitConfigurationError)
            }
            let pipeline: SyncPipeline
            do {
                pipeline = try SyncPipeline(config: config, keys: keys, logger: logger)
            } catch {
                // Secret files and librdkafka's check of the properties: configuration.
                logger.critical("cannot start", metadata: ["error": "\(error)"])
                throw ExitCode(exitConfigurationError)
            }
            let group = ServiceGroup(
                configuration: .init(
                    services: [.init(service: pipeline)],
                    gracefulShutdownSignals: [.sigterm, .sigint],
                    logger: logger))
            do {
                try await group.run()
            } catch {
                logger.critical("stopped on error", metadata: ["error": "\(error)"])
                // librdkafka refusing a property (a KafkaError without a code) is a
                // configuration error; anything else failed while running.
                if let k = error as? KafkaError, k.code == nil { throw ExitCode(exitConfigurationError) }
                // A changelog that cannot be used as it is (its layout, its cleanup.policy).
                if error is ConfigurationError { throw ExitCode(exitConfigurationError) }
                throw ExitCode(exitRuntimeFailure)
            }
        }
    }

    struct Demo: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run everything embedded: mock Kafka, generated traffic, the daemon, a Foldspace sandbox.")

        @Option(help: "Users to simulate.") var users = 2_000
        @Option(help: "Events to generate.") var events = 40_000
        @Option(help: "Give up after this many seconds.") var timeout = 30

        func run() async throws {
            LogSetup.bootstrap(format: "text", level: .warning)
            var o = EmbeddedDemo.Options()
            o.users = users
            o.events = events
            o.timeoutMs = Int64(timeout) * 1000
            let summary = try await EmbeddedDemo(options: o, logger: Logger(label: "demo"), print: printLine).run()
            if !summary.complete || summary.violations > 0 { throw ExitCode(1) }
        }
    }

    struct CheckConfig: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "check-config",
            abstract: "Validate the configuration and print it, secrets redacted. Exit 2 on a configuration error.")

        @OptionGroup var flags: ConfigFlags

        func run() async throws {
            do {
                let config = try flags.load()
                try config.validate()
                for warning in config.warnings { FileHandle.standardError.write(Data("foldspace-sync: warning: \(warning)\n".utf8)) }
                print(config.describe())
            } catch {
                FileHandle.standardError.write(Data("foldspace-sync: \(error)\n".utf8))
                throw ExitCode(exitConfigurationError)
            }
        }
    }

    struct Inspect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print what the changelog holds for users, as JSON: state, the body that would be sent, applied positions.",
            discussion: """
                Reads the group's state topic (durable mode) with the same configuration as `run` \
                (brokers, group, state_topic, kafka.properties); joins no group, writes nothing. \
                The output holds users' data: for a terminal, not for logs.
                """)

        @OptionGroup var flags: ConfigFlags
        @Argument(help: "identifyIds to look up") var ids: [String]

        func run() async throws {
            let (config, logger) = try flags.loadForTool()
            do {
                print(try SyncService.Inspect.run(config: config, ids: ids, logger: logger))
            } catch {
                FileHandle.standardError.write(Data("foldspace-sync: inspect: \(error)\n".utf8))
                throw ExitCode(exitRuntimeFailure)
            }
        }
    }

    struct ResyncCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "resync",
            abstract: "Ask the running group to send users' current state to Foldspace again.",
            discussion: """
                Writes a control record (key foldspace-sync.control) to every partition of every source \
                topic, with the same configuration as `run`. Each partition's owner re-sends that partition's \
                users through its own debouncer and rate limiter, in order with the events around the record; \
                progress is in /metrics (foldspace_sync_resync_*). Safe while the daemon runs, and idempotent: \
                a request read twice sends the same state twice. Users dropped by inactive_user_ttl are not sent.
                """)

        @OptionGroup var flags: ConfigFlags
        @Flag(help: "Re-send every user.") var all = false
        @Argument(help: "identifyIds to re-send (instead of --all)") var ids: [String] = []

        func validate() throws {
            if all == !ids.isEmpty { throw ValidationError("give either --all or one or more identifyIds") }
            if ids.contains(where: \.isEmpty) { throw ValidationError("an identifyId cannot be empty") }
        }

        func run() async throws {
            let (config, logger) = try flags.loadForTool()
            do {
                let written = try SyncService.Resync.run(config: config, ids: ids, logger: logger)
                let o: [String: Any] = ["request_id": written.requestId, "control_records": written.records]
                let data = try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } catch {
                FileHandle.standardError.write(Data("foldspace-sync: resync: \(error)\n".utf8))
                throw ExitCode(exitRuntimeFailure)
            }
        }
    }

    struct MockKafka: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "mock-kafka",
            abstract: "Host librdkafka's mock Kafka cluster on loopback until SIGTERM.",
            discussion: """
                Prints the bootstrap servers as the first line of stdout. Reads fault \
                commands from stdin, one per line, and answers each with `ok` or `error: …`:
                  broker-down ID, broker-up ID       take a broker away and bring it back
                  leader TOPIC PARTITION BROKER      move a partition's leadership
                  errors API COUNT [ERROR]           fail the next COUNT requests of an API
                                                     (Produce, Fetch, OffsetCommit, JoinGroup, …;
                                                     ERROR is a Kafka error code, default 7)
                  rtt BROKER MS                      add round-trip time to a broker
                """)

        @Option(help: "Number of brokers.") var brokers = 1
        @Option(name: .customLong("topic"), help: "Topic to create, NAME:PARTITIONS; repeatable.") var topics: [String] = []

        func run() async throws {
            let cluster = try MockCluster(brokers: brokers)
            for t in topics {
                let parts = t.split(separator: ":")
                guard parts.count <= 2, let name = parts.first, !name.isEmpty else {
                    throw ValidationError("--topic expects NAME:PARTITIONS, got \(t)")
                }
                let n = parts.count == 2 ? Int(parts[1]) : 1
                guard let n, n > 0 else { throw ValidationError("--topic expects NAME:PARTITIONS, got \(t)") }
                try cluster.createTopic(String(name), partitions: n)
            }
            printLine(cluster.bootstrapServers)
            // Fault commands from stdin (a test harness or an operator); EOF ends only
            // the reader, the cluster stays up until a signal.
            let reader = Thread {
                while let line = readLine() {
                    let trimmed = line.trimmingCharacters(in: .whitespaces)
                    if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
                    if let problem = cluster.control(trimmed) { printLine("error: \(problem)") } else { printLine("ok \(trimmed)") }
                }
            }
            reader.start()
            let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
            for await _ in signals { break }
            withExtendedLifetime(cluster) {}
        }
    }
}

/// Writes a line to stdout at once (stdout is block-buffered when piped, and tests read
/// the first line of `mock-kafka` while it keeps running).
@Sendable func printLine(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
