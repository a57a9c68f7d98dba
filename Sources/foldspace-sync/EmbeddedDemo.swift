import Events
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
        /// Visitors who browse anonymously (keyed by messageId, so on any partition) and
        /// then sign up as one of the users: identity resolution folds their history in.
        var anonymousVisitors = 200
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
        var identitiesMerged: Int
        /// Signed-up visitors whose user carries the first anonymous visit.
        var visitorsWithHistory: Int
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
        // Identity resolution's topics (docs/identity.md), with the source's partition count.
        for t in ["foldspace-sync-demo-repartition", "foldspace-sync-demo-identities"] {
            try cluster.createTopic(t, partitions: options.partitions)
        }
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
        // Anonymous visitors: three visits two days before the users' traffic, keyed by
        // messageId, then an identify naming both ids (or an alias) as user-i.
        let visitors = min(options.anonymousVisitors, seen.count)
        var firstVisit: [String: Int64] = [:]
        let earliest = Int64(Date().timeIntervalSince1970 * 1000) - 5 * 86_400_000
        var anonymousCalls = 0
        for i in 0..<visitors {
            let anon = "visitor-\(i)"
            let user = gen.userId(i)
            firstVisit[user] = earliest + Int64(i)
            for k in 0..<3 {
                let iso = Timestamp.formatISO8601(earliest + Int64(i) + Int64(k) * 3 * 3_600_000)
                let page =
                    #"{"type":"page","anonymousId":"\#(anon)","messageId":"demo-\#(i)-\#(k)","timestamp":"\#(iso)","name":"/pricing","properties":{"path":"/pricing"},"context":{"library":{"name":"analytics.js","version":"4.1.0"}}}"#
                try producer.send(topic: topic, key: Array("demo-\(i)-\(k)".utf8), value: Array(page.utf8))
                anonymousCalls += 1
            }
            let iso = Timestamp.formatISO8601(earliest + Int64(i) + 7 * 3_600_000)
            let link =
                i % 2 == 0
                ? #"{"type":"identify","userId":"\#(user)","anonymousId":"\#(anon)","messageId":"demo-\#(i)-link","timestamp":"\#(iso)"}"#
                : #"{"type":"alias","userId":"\#(user)","previousId":"\#(anon)","messageId":"demo-\#(i)-link","timestamp":"\#(iso)"}"#
            try producer.send(topic: topic, key: Array("demo-\(i)-link".utf8), value: Array(link.utf8))
            anonymousCalls += 1
        }
        for g in TrafficGenerator.garbage { try producer.send(topic: topic, key: nil, value: g) }
        producer.flush()
        producer.close()
        print(
            "demo: produced \(options.events) events for \(seen.count) users, \(anonymousCalls) of \(visitors) anonymous visitors who sign up, and \(TrafficGenerator.garbage.count) broken messages"
        )
        /// Signed-up visitors whose last acknowledged user body starts at their first anonymous visit.
        func withHistory() -> Int {
            let latest = sandbox.latestAcknowledged()
            return firstVisit.filter { latest[$0.key]?.json?["firstVisitDate"] as? Int64 == $0.value }.count
        }

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
        config.engine.identity.merge = true
        let pipeline = try SyncPipeline(config: config, keys: APIKeyStore(key: apiKey), logger: logger)
        let runTask = Task { try await pipeline.run() }

        let deadline = Date().addingTimeInterval(Double(options.timeoutMs) / 1000)
        var lastPrint = Date.distantPast
        var complete = false
        let expected = options.events + anonymousCalls + TrafficGenerator.garbage.count
        while Date() < deadline {
            try await Task.sleep(for: .milliseconds(200))
            let s = pipeline.snapshot()
            let delivered = sandbox.latestAcknowledged().keys.count { seen.contains($0) }
            if Date().timeIntervalSince(lastPrint) >= 1 {
                lastPrint = Date()
                print(
                    String(
                        format: "demo: %5.1fs  events %6d  users %5d  dirty %5d  PUTs %5d  delivered users %5d",
                        Date().timeIntervalSince(start), s.folded + s.invalidTotal + s.ignored, s.users, s.dirtyUsers,
                        sandbox.requestCount, delivered))
            }
            if s.folded + s.invalidTotal >= expected && s.dirtyUsers == 0 && delivered >= seen.count
                && withHistory() == visitors
            {
                complete = true
                break
            }
        }
        pipeline.requestStop()
        try await runTask.value
        let s = pipeline.snapshot()
        let summary = Summary(
            events: s.folded, invalid: s.invalidTotal, users: seen.count,
            usersDelivered: sandbox.latestAcknowledged().keys.count { seen.contains($0) }, puts: sandbox.requestCount,
            violations: sandbox.violationCount, identitiesMerged: s.identitiesMerged, visitorsWithHistory: withHistory(),
            seconds: Date().timeIntervalSince(start), complete: complete)
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
              identities merged    \(summary.identitiesMerged) (anonymous ids folded into the user they signed up as)
              visitors' history    \(summary.visitorsWithHistory) of \(visitors) signed-up visitors carry their first anonymous visit
              schema violations    \(summary.violations)
              time                 \(String(format: "%.1f", summary.seconds)) s
              result               \(summary.complete && summary.violations == 0 ? "OK: every user delivered, every request valid" : "INCOMPLETE")
            """)
        return summary
    }
}
