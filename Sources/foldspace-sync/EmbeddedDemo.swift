import FoldspaceAPI
import Foundation
import Kafka
import Logging
import Simulation
import SyncService

/// `foldspace-sync demo`: the whole pipeline in one process, nothing to install. An
/// in-process librdkafka mock cluster, generated Segment traffic, the real engine and
/// HTTP client, and a Foldspace sandbox that checks every request against the schema.
struct EmbeddedDemo {
    struct Options: Sendable {
        var users = 2_000
        var events = 40_000
        var partitions = 4
        var debounceMs: Int64 = 500
        var maxWaitMs: Int64 = 3_000
        var timeoutMs: Int64 = 30_000
        init() {}
    }

    struct Summary: Sendable {
        var events: Int
        var invalid: Int
        var users: Int
        var usersDelivered: Int
        var puts: Int
        var violations: Int
        var seconds: Double
        var complete: Bool
    }

    let options: Options
    let logger: Logger
    let print: @Sendable (String) -> Void

    init(options: Options, logger: Logger, print: @escaping @Sendable (String) -> Void) {
        self.options = options
        self.logger = logger
        self.print = print
    }

    func run() async throws -> Summary {
        let start = Date()
        let cluster = try MockCluster(brokers: 1)
        let topic = "segment-events"
        try cluster.createTopic(topic, partitions: options.partitions)
        // The changelog for durable state, co-partitioned with the source.
        try cluster.createTopic("foldspace-sync-demo-state", partitions: options.partitions)
        let apiKey = "demo-key-\(UInt32.random(in: 0...UInt32.max))"
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        sandbox.setRecordBodies(true)
        try await sandbox.start()
        print("demo: mock Kafka at \(cluster.bootstrapServers), Foldspace sandbox at \(sandbox.baseURL)")

        // Produce the traffic, compressed, keyed by user.
        let producer = try KafkaProducer(config: KafkaClientConfig(["bootstrap.servers": cluster.bootstrapServers]), logger: logger)
        var gen = TrafficGenerator(users: options.users)
        var seen = Set<String>()
        for n in 0..<options.events {
            let m = gen.next(sequence: n)
            seen.insert(m.userId)
            try producer.send(topic: topic, key: Array(m.key.utf8), value: m.value)
        }
        for g in TrafficGenerator.garbage { try producer.send(topic: topic, key: nil, value: g) }
        producer.flush()
        producer.close()
        print("demo: produced \(options.events) events for \(seen.count) users, and \(TrafficGenerator.garbage.count) broken messages")

        var config = SyncConfiguration.local(
            brokers: cluster.bootstrapServers, topic: topic, group: "foldspace-sync-demo",
            foldspaceURL: sandbox.baseURL)
        config.engine.debounceMs = options.debounceMs
        config.engine.maxWaitMs = options.maxWaitMs
        config.engine.requestsPerSecond = 5_000
        config.engine.burst = 5_000
        config.engine.maxInFlight = 32
        config.engine.drainTimeoutMs = 10_000
        config.kafkaProperties["session.timeout.ms"] = "6000"
        let pipeline = try SyncPipeline(config: config, keys: APIKeyStore(key: apiKey), logger: logger)
        let runTask = Task { try await pipeline.run() }

        let deadline = Date().addingTimeInterval(Double(options.timeoutMs) / 1000)
        var lastPrint = Date.distantPast
        var complete = false
        let expected = options.events + TrafficGenerator.garbage.count
        while Date() < deadline {
            try await Task.sleep(for: .milliseconds(200))
            let s = pipeline.snapshot()
            let delivered = sandbox.latestAcknowledged().count
            if Date().timeIntervalSince(lastPrint) >= 1 {
                lastPrint = Date()
                print(
                    String(
                        format: "demo: %5.1fs  events %6d  users %5d  dirty %5d  PUTs %5d  delivered users %5d",
                        Date().timeIntervalSince(start), s.folded + s.invalidTotal + s.ignored, s.users, s.dirtyUsers,
                        sandbox.requestCount, delivered))
            }
            if s.folded + s.invalidTotal >= expected && s.dirtyUsers == 0 && delivered >= seen.count {
                complete = true
                break
            }
        }
        pipeline.requestStop()
        try await runTask.value
        let s = pipeline.snapshot()
        let summary = Summary(
            events: s.folded, invalid: s.invalidTotal, users: seen.count,
            usersDelivered: sandbox.latestAcknowledged().count, puts: sandbox.requestCount,
            violations: sandbox.violationCount, seconds: Date().timeIntervalSince(start), complete: complete)
        await sandbox.stop()
        print(
            """
            demo summary
              events folded        \(summary.events)
              invalid messages     \(summary.invalid) (counted and skipped; no dead-letter topic in the demo)
              users                \(summary.users)
              users delivered      \(summary.usersDelivered)
              PUTs                 \(summary.puts)
              events per PUT       \(String(format: "%.1f", Double(summary.events) / Double(max(1, summary.puts))))
              schema violations    \(summary.violations)
              time                 \(String(format: "%.1f", summary.seconds)) s
              result               \(summary.complete && summary.violations == 0 ? "OK: every user delivered, every request valid" : "INCOMPLETE")
            """)
        return summary
    }
}
