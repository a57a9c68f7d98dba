import ArgumentParser
import Delivery
import Events
import Folding
import FoldspaceAPI
import Simulation
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Kafka
import Logging
import SyncService

/// The entry point: a synchronous main that waits for the command on a task. An async
/// main ends in `dispatch_main`, whose signal thread calls `sigsuspend` with a mask in
/// read-only memory, and valgrind 3.19 (Debian's) writes to that mask and dies, so no
/// subcommand could run under `valgrind --tool=callgrind`.
@main
enum BenchMain {
    static func main() {
        let done = DispatchSemaphore(value: 0)
        // Detached: main is on the main actor, which this thread, blocked, never serves.
        Task.detached {
            await FoldspaceBench.main()
            done.signal()
        }
        done.wait()
    }
}

/// The benchmark driver behind `scripts/bench.sh`. Each subcommand prints `key=value`
/// lines that the script collects into one table.
struct FoldspaceBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "foldspace-bench",
        abstract: "Benchmarks for foldspace-sync: produce, raw read rate, folded rate, memory, core costs.",
        subcommands: [Produce.self, RawRead.self, Pipeline.self, Binary.self, Latency.self, Memory.self, Core.self, Soak.self, Restore.self])
}

let quiet: Logger = {
    var l = Logger(label: "bench")
    l.logLevel = .error
    return l
}()

/// librdkafka properties from an environment variable, `k=v,k=v`, for experiments.
func environmentProperties(_ name: String) -> [String: String] {
    var props: [String: String] = [:]
    for kv in (ProcessInfo.processInfo.environment[name] ?? "").split(separator: ",") {
        let p = kv.split(separator: "=", maxSplits: 1)
        if p.count == 2 { props[String(p[0])] = String(p[1]) }
    }
    return props
}

func uptimeSeconds() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

func rssKiB(_ field: String = "VmRSS:") -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix(field) {
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
    return 0
}

/// Segment-shaped events padded to 400–600 bytes, as the benchmark asks.
struct PaddedTraffic {
    var gen: TrafficGenerator
    var rng = SplitMix64(seed: 99)

    init(users: Int) { gen = TrafficGenerator(users: users, seed: 7) }

    mutating func next(_ n: Int) -> TrafficGenerator.Message {
        var m = gen.next(sequence: n)
        let target = 400 + Int(rng.next() % 201)
        if m.value.count < target, m.value.last == UInt8(ascii: "}") {
            let pad = #","integrations":{"All":true,"pad":""# + String(repeating: "x", count: max(0, target - m.value.count - 35)) + #""}}"#
            m.value.removeLast()
            m.value.append(contentsOf: pad.utf8)
        }
        return m
    }
}

extension FoldspaceBench {
    struct Produce: AsyncParsableCommand {
        @Option var brokers: String
        @Option var topic: String
        @Option var events = 1_000_000
        @Option var users = 100_000

        func run() async throws {
            let p = try KafkaProducer(config: KafkaClientConfig([
                "bootstrap.servers": brokers, "compression.codec": "zstd", "linger.ms": "50",
                "batch.size": "1000000", "queue.buffering.max.messages": "500000", "log_level": "3",
            ]), logger: quiet)
            var t = PaddedTraffic(users: users)
            var bytes = 0
            for n in 0..<events {
                let m = t.next(n)
                bytes += m.value.count
                try p.send(topic: topic, key: Array(m.key.utf8), value: m.value)
            }
            p.flush(timeoutMs: 120_000)
            let c = p.deliveryCounts
            print("produced=\(c.delivered)")
            print("produce_failed=\(c.failed)")
            print("avg_event_bytes=\(bytes / max(1, events))")
        }
    }

    /// `ZSTD_HINT=0` measures librdkafka's own sizing of zstd batches (``ZstdSizeHint``).
    static var zstdHintFromEnvironment: Bool { ProcessInfo.processInfo.environment["ZSTD_HINT"] != "0" }

    /// Plain librdkafka: a group consumer counting messages, no processing.
    struct RawRead: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "raw")
        @Option var brokers: String
        @Option var topic: String
        @Option var expect: Int

        final class Counter: ConsumerHandler, @unchecked Sendable {
            let lock = NSLock()
            var n = 0
            var first = 0.0
            var last = 0.0
            let workNs: UInt64 = UInt64(ProcessInfo.processInfo.environment["RAW_WORK_NS"] ?? "0") ?? 0
            func consume(_ batch: [ConsumedMessage]) {
                if workNs > 0 {
                    let until = DispatchTime.now().uptimeNanoseconds + workNs * UInt64(batch.count)
                    while DispatchTime.now().uptimeNanoseconds < until {}
                }
                let now = uptimeSeconds()
                lock.withLock {
                    if n == 0 { first = now }
                    n += batch.count
                    last = now
                }
            }
            func partitionsAssigned(_ partitions: [TopicPartition]) {}
            func partitionsRevoked(_ partitions: [TopicPartition]) {}
            var wantsPause: Bool { false }
        }

        func run() async throws {
            ZstdSizeHint.setEnabled(FoldspaceBench.zstdHintFromEnvironment)
            let h = Counter()
            var props = ["bootstrap.servers": brokers, "group.id": "raw-\(UUID().uuidString.prefix(8))", "log_level": "3"]
            props.merge(environmentProperties("RAW_PROPS")) { $1 }
            let c = try KafkaConsumer(config: KafkaClientConfig(props), topics: [topic], handler: h, logger: quiet)
            c.start()
            let deadline = uptimeSeconds() + 300
            while h.lock.withLock({ h.n }) < expect && uptimeSeconds() < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            let (n, first, last) = h.lock.withLock { (h.n, h.first, h.last) }
            c.stop()
            print("raw_messages=\(n)")
            print("raw_rate=\(Int(Double(n) / max(last - first, 1e-6)))")
            print("raw_zstd_frames_sized=\(ZstdSizeHint.framesSized)")
        }
    }

    /// The real pipeline against the topic and a fast local stand-in.
    struct Pipeline: AsyncParsableCommand {
        @Option var brokers: String
        @Option var topic: String
        @Option var expect: Int

        func run() async throws {
            let sandbox = FoldspaceSandbox(apiKeys: ["bench"])
            sandbox.setRecordBodies(false)
            try await sandbox.start()
            var c = SyncConfiguration.local(brokers: brokers, topic: topic, group: "bench-\(UUID().uuidString.prefix(8))",
                                            foldspaceURL: sandbox.baseURL)
            c.stateMode = "memory"
            c.kafkaProperties.merge(environmentProperties("PIPELINE_PROPS")) { $1 }
            if let v = ProcessInfo.processInfo.environment["PIPELINE_DECODE_THREADS"].flatMap(Int.init) { c.engine.decodeThreads = v }
            c.zstdSizeHint = FoldspaceBench.zstdHintFromEnvironment
            // Phase 1: a long debounce, so HTTP is not the limit of the folded rate.
            c.engine.debounceMs = 600_000
            c.engine.maxWaitMs = 600_000
            c.engine.requestsPerSecond = 1_000_000
            c.engine.burst = 1_000_000
            c.engine.maxInFlight = 64
            c.engine.maxDirtyUsers = 10_000_000
            c.engine.drainTimeoutMs = 120_000
            let pipeline = try SyncPipeline(config: c, keys: APIKeyStore(key: "bench"), logger: quiet)
            let task = Task { try await pipeline.run() }
            var first = 0.0
            var last = 0.0
            var seen = 0
            let deadline = uptimeSeconds() + 300
            while uptimeSeconds() < deadline {
                let n = pipeline.engine.eventsRead
                if n > 0 && first == 0 { first = uptimeSeconds() }
                if n > seen { seen = n; last = uptimeSeconds() }
                if n >= expect { break }
                try await Task.sleep(for: .milliseconds(5))
            }
            let stats = pipeline.engine.snapshot()
            print("folded_events=\(seen)")
            print("folded_rate=\(Int(Double(seen) / max(last - first, 1e-6)))")
            print("users=\(stats.users)")
            print("fetcher_wakeups=\(pipeline.fetcherWakeups)")
            print("zstd_frames_sized=\(ZstdSizeHint.framesSized)")
            // Phase 2: flush everyone at once; PUT/s against the stand-in.
            let putStart = uptimeSeconds()
            let before = sandbox.requestCount
            pipeline.requestStop() // the drain sends every dirty user, unthrottled here
            try await task.value
            let puts = sandbox.requestCount - before
            print("puts=\(puts)")
            print("put_rate=\(Int(Double(puts) / max(uptimeSeconds() - putStart, 1e-6)))")
            print("puts_per_event=\(String(format: "%.4f", Double(puts) / Double(max(1, seen))))")
            print("noop_puts=\(sandbox.noOpCount)")
            print("peak_rss_kib=\(rssKiB("VmHWM:"))")
            await sandbox.stop()
        }
    }

    /// The daemon's own binary, as an operator runs it: a separate process against the
    /// topic and a fast local stand-in, configured by environment only (the defaults
    /// otherwise, durable state included), its folded rate read from its own `/metrics`
    /// from the first folded event to the last.
    struct Binary: AsyncParsableCommand {
        @Option(help: "Path of the foldspace-sync executable.") var bin: String
        @Option var brokers: String
        @Option var topic: String
        @Option var expect: Int
        @Option(help: "durable (the default of the daemon) or memory.") var state = "durable"

        func run() async throws {
            let sandbox = FoldspaceSandbox(apiKeys: ["bench"])
            sandbox.setRecordBodies(false)
            try await sandbox.start()
            let process = Process()
            process.executableURL = URL(fileURLWithPath: bin)
            process.arguments = ["run"]
            var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("FOLDSPACE_SYNC_") }
            env["FOLDSPACE_API_KEY"] = "bench"
            env["FOLDSPACE_SYNC_BROKERS"] = brokers
            env["FOLDSPACE_SYNC_TOPICS"] = topic
            env["FOLDSPACE_SYNC_GROUP"] = "bin-\(UUID().uuidString.prefix(8))"
            env["FOLDSPACE_SYNC_FOLDSPACE_URL"] = sandbox.baseURL
            env["FOLDSPACE_SYNC_ADMIN_LISTEN"] = "127.0.0.1:0"
            env["FOLDSPACE_SYNC_STATE"] = state
            env["FOLDSPACE_SYNC_LOG_FORMAT"] = "json"
            // As in the pipeline run: a long debounce, so that HTTP is not the limit.
            env["FOLDSPACE_SYNC_DEBOUNCE"] = "10m"
            env["FOLDSPACE_SYNC_MAX_WAIT"] = "10m"
            env["FOLDSPACE_SYNC_REQUESTS_PER_SECOND"] = "1000000"
            env["FOLDSPACE_SYNC_BURST"] = "1000000"
            env["FOLDSPACE_SYNC_MAX_DIRTY_USERS"] = "10000000"
            process.environment = env
            let output = Pipe()
            process.standardOutput = output
            process.standardError = output
            // The admin port is picked by the daemon; its log line says which.
            let found = AdminAddress()
            output.fileHandleForReading.readabilityHandler = { h in found.scan(h.availableData) }
            let started = uptimeSeconds()
            try process.run()
            defer { if process.isRunning { process.terminate() } }
            var address: String?
            while address == nil && uptimeSeconds() - started < 60 && process.isRunning {
                address = found.address
                try await Task.sleep(for: .milliseconds(10))
            }
            guard let address, let url = URL(string: "http://\(address)/metrics") else {
                print("binary_error=no admin address in the daemon's log")
                return
            }
            var first: (t: Double, n: Int)?
            var last = (t: 0.0, n: 0)
            while uptimeSeconds() - started < 300 && process.isRunning {
                guard let (data, _) = try? await URLSession.shared.data(from: url) else {
                    try await Task.sleep(for: .milliseconds(10))
                    continue
                }
                let n = Self.folded(String(decoding: data, as: UTF8.self))
                let t = uptimeSeconds()
                if n > 0 && first == nil { first = (t, n) }
                if n > last.n { last = (t, n) }
                if n >= expect { break }
                try await Task.sleep(for: .milliseconds(10))
            }
            print("binary_state=\(state)")
            print("binary_folded_events=\(last.n)")
            if let first, last.t > first.t {
                print("binary_folded_rate=\(Int(Double(last.n - first.n) / (last.t - first.t)))")
            }
            if last.n > 0 { print("binary_start_to_last_s=\(String(format: "%.2f", last.t - started))") }
            process.terminate()
            process.waitUntilExit()
            await sandbox.stop()
        }

        static func folded(_ metrics: String) -> Int {
            let prefix = #"foldspace_sync_events_total{result="folded"} "#
            for line in metrics.split(separator: "\n") where line.hasPrefix(prefix) {
                return Int(line.dropFirst(prefix.count)) ?? 0
            }
            return 0
        }
    }

    /// Finds the admin server's address in the daemon's JSON log lines.
    final class AdminAddress: @unchecked Sendable {
        private let lock = NSLock()
        private var text = ""
        private var found: String?

        var address: String? { lock.withLock { found } }

        func scan(_ data: Data) {
            lock.withLock {
                guard found == nil else { return }
                text += String(decoding: data, as: UTF8.self)
                for line in text.split(separator: "\n") where line.contains("admin server listening") {
                    if let r = line.range(of: #""address":""#) {
                        found = String(line[r.upperBound...].prefix { $0 != "\"" })
                    }
                }
            }
        }
    }

    /// Event-to-PUT latency at a steady rate with a 1 s debounce: for every PUT, the time
    /// from the user's last event (its `lastSeenDate`, stamped at produce time) to the
    /// PUT's arrival at the stand-in.
    struct Latency: AsyncParsableCommand {
        @Option var brokers: String
        @Option var topic: String
        @Option var rate = 10_000
        @Option var seconds = 10
        @Option var users = 20_000

        func run() async throws {
            let sandbox = FoldspaceSandbox(apiKeys: ["bench"])
            try await sandbox.start()
            var c = SyncConfiguration.local(brokers: brokers, topic: topic, group: "lat-\(UUID().uuidString.prefix(8))",
                                            foldspaceURL: sandbox.baseURL)
            c.stateMode = "memory"
            c.engine.debounceMs = Int64(ProcessInfo.processInfo.environment["LATENCY_DEBOUNCE_MS"] ?? "1000") ?? 1_000
            c.engine.maxWaitMs = 5_000
            c.engine.requestsPerSecond = 1_000_000
            c.engine.burst = 1_000_000
            c.engine.maxInFlight = ProcessInfo.processInfo.environment["LATENCY_MAX_IN_FLIGHT"].flatMap(Int.init) ?? 64
            let pipeline = try SyncPipeline(config: c, keys: APIKeyStore(key: "bench"), logger: quiet)
            let task = Task { try await pipeline.run() }
            while !pipeline.engine.snapshot().ready { try await Task.sleep(for: .milliseconds(50)) }
            try await Task.sleep(for: .seconds(1))
            let p = try KafkaProducer(config: KafkaClientConfig([
                "bootstrap.servers": brokers, "compression.codec": "zstd", "linger.ms": "5", "log_level": "3",
            ]), logger: quiet)
            let pad = String(repeating: "x", count: 300)
            // Warm the producer up first: until it has the partition leaders, librdkafka
            // holds messages back (~1 s on the mock), and that wait is not the daemon's.
            try p.send(topic: topic, key: Array("lat-warmup".utf8),
                       value: Array(#"{"type":"track","userId":"lat-warmup","event":"Warmup","properties":{}}"#.utf8))
            _ = p.flush(timeoutMs: 10_000)
            let start = uptimeSeconds()
            var sent = 0
            var rng = SplitMix64(seed: 3)
            while uptimeSeconds() - start < Double(seconds) {
                let due = Int((uptimeSeconds() - start) * Double(rate))
                while sent < due {
                    let u = Int(rng.next() % UInt64(users))
                    let now = Int64(Date().timeIntervalSince1970 * 1000)
                    let json = #"{"type":"track","userId":"lat-\#(u)","event":"Clicked","timestamp":\#(now),"properties":{"pad":"\#(pad)"}}"#
                    try p.send(topic: topic, key: Array("lat-\(u)".utf8), value: Array(json.utf8))
                    sent += 1
                }
                try await Task.sleep(for: .milliseconds(2))
            }
            p.flush()
            try await Task.sleep(for: .seconds(7))
            let snap = pipeline.engine.snapshot()
            let lateness = snap.sendLateness
            print("request_duration_p50_ms=\(Int((snap.requestDuration.quantileBound(0.5) ?? -0.001) * 1000))")
            print("request_duration_p99_ms=\(Int((snap.requestDuration.quantileBound(0.99) ?? -0.001) * 1000))")
            pipeline.requestStop()
            try await task.value
            // The daemon's own share: from due to handed to the HTTP client.
            print("send_lateness_p50_ms=\(Int((lateness.quantileBound(0.5) ?? -0.001) * 1000))")
            print("send_lateness_p99_ms=\(Int((lateness.quantileBound(0.99) ?? -0.001) * 1000))")
            print("send_lateness_within_100ms=\(String(format: "%.4f", lateness.fraction(atMost: 0.1)))")
            var lat: [Int64] = []
            for r in sandbox.requests where r.identifyId != "lat-warmup" {
                if let seen = r.json?["lastSeenDate"] as? Int64 { lat.append(r.arrivedMs - seen) }
            }
            lat.sort()
            func q(_ x: Double) -> Int64 { lat.isEmpty ? -1 : lat[min(lat.count - 1, Int(Double(lat.count) * x))] }
            print("latency_events=\(sent)")
            print("latency_puts=\(lat.count)")
            print("latency_p50_ms=\(q(0.5))")
            print("latency_p99_ms=\(q(0.99))")
            print("latency_p90_ms=\(q(0.90))")
            await sandbox.stop()
        }
    }

    /// The soak run behind `scripts/soak.sh`: a steady event rate for minutes while the
    /// Foldspace stand-in cycles through faults (503s, 429 storms with Retry-After,
    /// latency); prints RSS, backlog and dirty users every 10 s, and ends with the
    /// verifier: every user's last acknowledged lastSeenDate equals its newest event,
    /// no request arrived inside a Retry-After window, and peak RSS.
    struct Soak: AsyncParsableCommand {
        @Option var minutes = 10.0
        @Option var rate = 5_000
        @Option var users = 20_000

        func run() async throws {
            let cluster = try MockCluster()
            try cluster.createTopic("soak", partitions: 4)
            try cluster.createTopic("soak-state", partitions: 4)
            let sandbox = FoldspaceSandbox(apiKeys: ["soak"])
            sandbox.setRecordBodies(true)
            try await sandbox.start()
            var c = SyncConfiguration.local(brokers: cluster.bootstrapServers, topic: "soak", group: "soak", foldspaceURL: sandbox.baseURL)
            c.engine.debounceMs = 2_000
            c.engine.maxWaitMs = 10_000
            c.engine.requestsPerSecond = 500
            c.engine.burst = 200
            c.commitIntervalMs = 2_000
            let pipeline = try SyncPipeline(config: c, keys: APIKeyStore(key: "soak"), logger: quiet)
            let task = Task { try await pipeline.run() }
            let p = try KafkaProducer(config: KafkaClientConfig([
                "bootstrap.servers": cluster.bootstrapServers, "compression.codec": "zstd", "linger.ms": "20", "log_level": "3",
            ]), logger: quiet)
            var newest: [String: Int64] = [:]
            var rng = SplitMix64(seed: 11)
            let start = uptimeSeconds()
            let total = minutes * 60
            var sent = 0
            var nextReport = 10.0
            var phase = -1
            print("t_s,rss_kib,produced,read,backlog,dirty_users,requests")
            while uptimeSeconds() - start < total {
                let t = uptimeSeconds() - start
                // A fault cycle per minute: 0–15 s 503s, 20–30 s 429 storm, 40–50 s 2 s latency.
                let second = Int(t) % 60
                let newPhase = second < 15 ? 0 : (second >= 20 && second < 30 ? 1 : (second >= 40 && second < 50 ? 2 : 3))
                if newPhase != phase {
                    phase = newPhase
                    sandbox.clearScripts()
                    sandbox.setLatency(ms: phase == 2 ? 2_000 : 0)
                    if phase == 0 { sandbox.scriptAll(Array(repeating: .init(status: 503), count: 1_000_000)) }
                    if phase == 1 { sandbox.scriptAll(Array(repeating: .init(status: 429, retryAfter: "1"), count: 1_000_000)) }
                }
                let due = Int(t * Double(rate))
                while sent < due {
                    let u = "soak-\(rng.next() % UInt64(users))"
                    let now = Int64(Date().timeIntervalSince1970 * 1000)
                    newest[u] = max(newest[u] ?? 0, now)
                    let json = #"{"type":"track","userId":"\#(u)","event":"Tick","timestamp":\#(now),"properties":{"n":\#(sent)}}"#
                    try p.send(topic: "soak", key: Array(u.utf8), value: Array(json.utf8))
                    sent += 1
                }
                if t >= nextReport {
                    nextReport += 10
                    let s = pipeline.engine.snapshot()
                    let read = pipeline.engine.eventsRead
                    print("\(Int(t)),\(rssKiB()),\(sent),\(read),\(sent - read),\(s.dirtyUsers),\(sandbox.requestCount)")
                }
                try await Task.sleep(for: .milliseconds(5))
            }
            p.flush()
            sandbox.clearScripts()
            sandbox.setLatency(ms: 0)
            // Let everything settle, then verify.
            let settleDeadline = uptimeSeconds() + 120
            var missing = newest.count
            while uptimeSeconds() < settleDeadline {
                let latest = sandbox.latestAcknowledged()
                missing = newest.filter { (latest[$0.key]?.json?["lastSeenDate"] as? Int64) != $0.value }.count
                if missing == 0 { break }
                try await Task.sleep(for: .seconds(1))
            }
            let insideRetryAfter = sandbox.retryAfterViolations.count
            pipeline.requestStop()
            try await task.value
            await sandbox.stop()
            print("soak_events=\(sent)")
            print("soak_users=\(newest.count)")
            print("soak_users_not_up_to_date=\(missing)")
            print("soak_requests_inside_retry_after=\(insideRetryAfter)")
            print("soak_peak_rss_kib=\(rssKiB("VmHWM:"))")
            if missing > 0 || insideRetryAfter > 0 { throw ExitCode(1) }
        }
    }

    /// Memory per tracked user: 1M users folded into the engine directly.
    struct Memory: AsyncParsableCommand {
        @Option var users = 1_000_000
        @Flag(help: "Deliver every user as it is folded (steady state: users held, none dirty), instead of holding all dirty.")
        var settled = false

        struct NoDeadLetters: DeadLetterSink {
            func deadLetter(kind: String, key: [UInt8]?, value: [UInt8], headers: [(String, String)],
                            delivered: @escaping @Sendable () -> Void) { delivered() }
        }

        func run() async throws {
            var o = EngineOptions()
            o.debounceMs = settled ? 0 : 600_000
            o.maxWaitMs = settled ? 0 : 600_000
            o.maxDirtyUsers = 10_000_000
            o.requestsPerSecond = 1e12
            o.burst = 1e12
            o.maxInFlight = 1_000_000
            if let v = ProcessInfo.processInfo.environment["MEMORY_DECODE_THREADS"].flatMap(Int.init) { o.decodeThreads = v }
            let engine = SyncEngine(options: o, deadLetters: NoDeadLetters(), logger: quiet)
            let tp = TopicPartition("bench", 0)
            engine.partitionsAssigned([tp])
            var gen = PaddedTraffic(users: users)
            let before = rssKiB()
            let t0 = uptimeSeconds()
            var consumeSeconds = 0.0
            var offset: Int64 = 0
            let batchSize = 1000
            var storage: [[UInt8]] = []
            for start in stride(from: 0, to: users, by: batchSize) {
                storage.removeAll(keepingCapacity: true)
                for i in start..<min(users, start + batchSize) {
                    // One identify per user: every user tracked, each with typical traits.
                    var m = gen.next(i)
                    let id = "user-\(i)"
                    m.value = Array(#"{"type":"identify","userId":"\#(id)","timestamp":"2025-11-20T10:00:00Z","traits":{"email":"\#(id)@example.com","name":"User \#(i)","title":"Engineer","createdAt":"2025-01-01T00:00:00Z"},"context":{"location":{"city":"Berlin","country":"Germany"},"timezone":"Europe/Berlin"}}"#.utf8)
                    storage.append(m.value)
                }
                var batch: [ConsumedMessage] = []
                for v in storage {
                    v.withUnsafeBufferPointer { p in
                        batch.append(ConsumedMessage(topicPartition: tp, offset: offset, timestampMs: nil,
                                                     key: UnsafeBufferPointer(start: nil, count: 0), value: p))
                    }
                    offset += 1
                }
                // The buffers stay alive in `storage` while the batch is consumed.
                let c0 = uptimeSeconds()
                withExtendedLifetime(storage) { engine.consume(batch) }
                consumeSeconds += uptimeSeconds() - c0
                // Settled: every changed user is sent and acknowledged (what a running
                // daemon converges to between bursts).
                while settled, case .send(let jobs) = engine.takeDue(limit: 10_000) {
                    for j in jobs { engine.complete(j, outcome: .acknowledged) }
                }
            }
            print("engine_consume_rate=\(Int(Double(users) / max(consumeSeconds, 1e-9)))")
            print("memory_total_seconds=\(String(format: "%.1f", uptimeSeconds() - t0))")
            let after = rssKiB()
            let s = engine.snapshot()
            print("memory_users=\(s.users)")
            print("memory_dirty_users=\(s.dirtyUsers)")
            print("bytes_per_user\(settled ? "_settled" : "")=\((after - before) * 1024 / max(1, s.users))")
            print("user_entry_inline_bytes=\(SyncEngine.userEntryInlineBytes)")
            print("user_state_inline_bytes=\(MemoryLayout<UserState>.stride)")
            print("delivery_inline_bytes=\(MemoryLayout<DeliveryState>.size) holds_inline_bytes=\(MemoryLayout<Holds>.size)")
            print("memory_peak_rss_kib=\(rssKiB("VmHWM:"))")
        }
    }

    /// Costs of the pure core per event: decode, fold, project, validate.
    struct Core: AsyncParsableCommand {
        @Option var events = 200_000
        @Option var users = 10_000
        @Option(help: "Decode and fold the messages this many times (steadier figures, for profiling).") var rounds = 1

        func run() async throws {
            var gen = PaddedTraffic(users: users)
            let traffic = (0..<events).map { gen.next($0) }
            let messages = traffic.map(\.value)
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            var decoded: [SegmentEvent] = []
            decoded.reserveCapacity(events)
            // Each figure is the fastest of `rounds` rounds: the least disturbed by
            // whatever else the machine runs. Each stage is a function of its own, so
            // that `scripts/callgrind.sh` can count its instructions.
            var decodeNs = Double.infinity
            for _ in 0..<max(1, rounds) {
                decoded.removeAll(keepingCapacity: true)
                let t0 = uptimeSeconds()
                Self.decodeRound(messages, now: now, into: &decoded)
                decodeNs = min(decodeNs, (uptimeSeconds() - t0) * 1e9 / Double(events))
            }
            var states: [String: UserState] = [:]
            var foldNs = Double.infinity
            for _ in 0..<max(1, rounds) {
                states = [:] // the last round's users freed outside the timing
                let t0 = uptimeSeconds()
                states = Self.foldRound(decoded, now: now)
                foldNs = min(foldNs, (uptimeSeconds() - t0) * 1e9 / Double(decoded.count))
            }
            var t0 = uptimeSeconds()
            let bodies = Self.projectRound(states, now: now)
            let projectNs = (uptimeSeconds() - t0) * 1e9 / Double(max(1, states.count))
            let validated = Array(bodies.prefix(20_000))
            t0 = uptimeSeconds()
            let violations = Self.validateRound(validated)
            let validateNs = (uptimeSeconds() - t0) * 1e9 / Double(max(1, validated.count))
            print("core_events=\(events)")
            print("core_decoded_events=\(decoded.count)")
            print("core_users=\(states.count)")
            print("core_validated_bodies=\(validated.count)")
            print("core_rounds=\(max(1, rounds))")
            print("core_decode_ns=\(Int(decodeNs))")
            print("core_fold_ns=\(Int(foldNs))")
            print("core_project_ns=\(Int(projectNs))")
            print("core_validate_ns=\(Int(validateNs))")
            print("core_schema_violations=\(violations)")
            print("core_decoded_inline_bytes=\(MemoryLayout<Decoded>.size)")
            print("core_engine_ns=\(Int(engineNs(traffic, now: now)))")
        }

        @inline(never)
        static func decodeRound(_ messages: [[UInt8]], now: Int64, into decoded: inout [SegmentEvent]) {
            let decoder = SegmentDecoder()
            for m in messages {
                for d in decoder.decode(m, nowMs: now) { if case .event(let e) = d { decoded.append(e) } }
            }
        }

        @inline(never)
        static func foldRound(_ decoded: [SegmentEvent], now: Int64) -> [String: UserState] {
            let folder = Folder()
            var states: [String: UserState] = [:]
            for (i, e) in decoded.enumerated() {
                folder.fold(e, timeMs: e.timeMs ?? now, offset: Int64(i), into: &states[e.identity, default: UserState()])
            }
            return states
        }

        @inline(never)
        static func projectRound(_ states: [String: UserState], now: Int64) -> [[UInt8]] {
            let projector = Projector()
            var adj = Adjustments()
            var bodies: [[UInt8]] = []
            for (id, s) in states { if let b = projector.body(identifyId: id, state: s, nowMs: now, adjustments: &adj) { bodies.append(b) } }
            return bodies
        }

        @inline(never)
        static func validateRound(_ bodies: [[UInt8]]) -> Int {
            var violations = 0
            for b in bodies { violations += FoldspaceSchema.violations(body: b, pathId: nil).isEmpty ? 0 : 1 }
            return violations
        }

        /// The engine's whole cost of an event on one thread (decode, look up, fold,
        /// debounce, offsets), without Kafka: what the poll thread and its decode helpers
        /// share. 16 partitions, a user's events in one of them (by key, as produced),
        /// handed over in batches of 1,000 from one partition after another.
        func engineNs(_ traffic: [TrafficGenerator.Message], now: Int64) -> Double {
            var o = EngineOptions()
            o.debounceMs = 600_000
            o.maxWaitMs = 600_000
            o.maxDirtyUsers = 10_000_000
            o.decodeThreads = ProcessInfo.processInfo.environment["CORE_DECODE_THREADS"].flatMap(Int.init) ?? 1
            let tps = (0..<16).map { TopicPartition("bench", Int32($0)) }
            var byPartition = [[[UInt8]]](repeating: [], count: 16)
            for m in traffic {
                var h: UInt32 = 2_166_136_261 // FNV-1a of the key
                for b in m.key.utf8 { h = (h ^ UInt32(b)) &* 16_777_619 }
                byPartition[Int(h % 16)].append(m.value)
            }
            let storage = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: traffic.reduce(0) { $0 + $1.value.count })
            defer { storage.deallocate() }
            var batches: [[ConsumedMessage]] = []
            var at = 0
            var next = [Int](repeating: 0, count: 16)
            var queued = 0
            while queued < traffic.count {
                for p in 0..<16 where next[p] < byPartition[p].count {
                    var batch: [ConsumedMessage] = []
                    for i in next[p]..<min(byPartition[p].count, next[p] + 1000) {
                        let m = byPartition[p][i]
                        let region = UnsafeMutableBufferPointer(rebasing: storage[at..<(at + m.count)])
                        _ = region.initialize(from: m)
                        batch.append(ConsumedMessage(topicPartition: tps[p], offset: Int64(i), timestampMs: now,
                                                     key: UnsafeBufferPointer(start: nil, count: 0),
                                                     value: UnsafeBufferPointer(region)))
                        at += m.count
                    }
                    next[p] += batch.count
                    queued += batch.count
                    batches.append(batch)
                }
            }
            var best = Double.infinity
            for _ in 0..<max(1, rounds) {
                let engine = SyncEngine(options: o, deadLetters: Memory.NoDeadLetters(), logger: quiet)
                engine.partitionsAssigned(tps)
                let t0 = uptimeSeconds()
                Self.engineRound(engine, batches)
                best = min(best, (uptimeSeconds() - t0) * 1e9 / Double(traffic.count))
            }
            return best
        }

        @inline(never)
        static func engineRound(_ engine: SyncEngine, _ batches: [[ConsumedMessage]]) {
            for b in batches { engine.consume(b) }
        }
    }
}


extension FoldspaceBench {
    /// Restore speed: `users` users folded across `partitions` source partitions, their
    /// changelog records written to `topic` (as checkpoints write them), then read back
    /// twice: raw (every record of every partition into memory, as the restore's read
    /// does) and by the engine's restore (read, decode, load). Prints records/s of each.
    struct Restore: AsyncParsableCommand {
        @Option var brokers: String
        @Option var topic = "bench-state"
        @Option var users = 1_000_000
        @Option var partitions = 32
        @Flag(help: "The topic holds the records of an earlier run: read them only (for profiling).")
        var readOnly = false

        final class CaptureStore: StateStore, @unchecked Sendable {
            let lock = NSLock()
            var records: [(partition: Int32, key: [UInt8], value: [UInt8]?)] = []
            let partitions: Int32
            init(partitions: Int32) { self.partitions = partitions }
            var sourcePartitions: Int32 { partitions }
            func statePartition(for sourcePartition: Int32) -> Int32 { sourcePartition % partitions }
            func read(partition: Int32) throws -> [(key: [UInt8], value: [UInt8]?)] { [] }
            func write(_ r: [(partition: Int32, key: [UInt8], value: [UInt8]?)]) throws { lock.withLock { records += r } }
            func commit(_ offsets: [TopicPartition: Int64]) throws {}
            func committedPastStart(_ tp: TopicPartition) throws -> Int64? { nil }
        }

        func run() async throws {
            let sources = (0..<Int32(partitions)).map { TopicPartition("bench-src", $0) }
            var o = EngineOptions()
            o.durable = true
            o.maxDirtyUsers = 10_000_000
            if !readOnly { try write(sources, o) }

            // 2. Raw: every record of every partition read into memory, with the reader
            //    the restore uses (one client, all partitions at once).
            let config = KafkaClientConfig(["bootstrap.servers": brokers])
            var t0 = uptimeSeconds()
            let raw = try PartitionReader(config: config).read(topic: topic, partitions: Array(0..<Int32(partitions)))
                .values.reduce(0) { $0 + $1.count }
            let rawSeconds = uptimeSeconds() - t0
            print("restore_raw_rate=\(Int(Double(raw) / max(rawSeconds, 1e-9)))")

            // 3. The engine's restore of every partition: read, decode, load.
            let store = try KafkaStateStore(topic: topic, partitions: partitions, sourcePartitions: partitions,
                                            config: config, logger: quiet, transactional: false)
            let reader = SyncEngine(options: o, deadLetters: Memory.NoDeadLetters(), logger: quiet)
            reader.setStateStore(store)
            t0 = uptimeSeconds()
            reader.partitionsAssigned(sources)
            let seconds = uptimeSeconds() - t0
            let restored = reader.snapshot().restoredUsers
            store.close()
            print("restore_users=\(restored)")
            print("restore_rate=\(Int(Double(restored) / max(seconds, 1e-9)))")
        }

        /// 1. The records, as checkpoints write them.
        func write(_ sources: [TopicPartition], _ o: EngineOptions) throws {
            let capture = CaptureStore(partitions: Int32(partitions))
            let writer = SyncEngine(options: o, deadLetters: Memory.NoDeadLetters(), logger: quiet)
            writer.setStateStore(capture)
            writer.partitionsAssigned(sources)
            var storage: [[UInt8]] = []
            for start in stride(from: 0, to: users, by: 1_000) {
                storage.removeAll(keepingCapacity: true)
                for i in start..<min(users, start + 1_000) {
                    storage.append(Array(#"{"type":"identify","userId":"user-\#(i)","timestamp":"2025-11-20T10:00:00Z","traits":{"email":"user-\#(i)@example.com","name":"User \#(i)","title":"Engineer"},"context":{"location":{"city":"Berlin","country":"Germany"}}}"#.utf8))
                }
                var batch: [ConsumedMessage] = []
                for (k, v) in storage.enumerated() {
                    let i = start + k
                    v.withUnsafeBufferPointer { p in
                        batch.append(ConsumedMessage(topicPartition: sources[i % partitions], offset: Int64(i / partitions), timestampMs: nil,
                                                     key: UnsafeBufferPointer(start: nil, count: 0), value: p))
                    }
                }
                withExtendedLifetime(storage) { writer.consume(batch) }
            }
            _ = writer.checkpoint()
            let records = capture.lock.withLock { capture.records }
            let producer = try KafkaProducer(config: KafkaClientConfig([
                "bootstrap.servers": brokers, "compression.codec": "zstd", "linger.ms": "50",
                "batch.num.messages": "10000", "queue.buffering.max.messages": "2000000",
            ]), logger: quiet)
            for r in records { try producer.send(topic: topic, partition: r.partition, key: r.key, value: r.value) }
            guard producer.flush(timeoutMs: 120_000) else { throw ValidationError("changelog records not written") }
            producer.close()
            print("restore_records=\(records.count)")
            print("restore_record_bytes=\(records.reduce(0) { $0 + $1.key.count + ($1.value?.count ?? 0) } / max(1, records.count))")
        }
    }
}
