import ArgumentParser
import Delivery
import Events
import Folding
import FoldspaceAPI
import Foundation
import Kafka
import Logging
import Simulation
import SyncService

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

extension FoldspaceBench {
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
            var c = SyncConfiguration.local(
                brokers: brokers, topic: topic, group: "lat-\(UUID().uuidString.prefix(8))",
                foldspaceURL: sandbox.baseURL)
            c.stateMode = .memory
            c.engine.debounceMs = Int64(ProcessInfo.processInfo.environment["LATENCY_DEBOUNCE_MS"] ?? "1000") ?? 1_000
            c.engine.maxWaitMs = 5_000
            c.engine.requestsPerSecond = 1_000_000
            c.engine.burst = 1_000_000
            c.engine.maxInFlight = ProcessInfo.processInfo.environment["LATENCY_MAX_IN_FLIGHT"].flatMap(Int.init) ?? 64
            let pipeline = try SyncPipeline(config: c, keys: APIKeyStore(key: "bench"), logger: quiet)
            let task = Task { try await pipeline.run() }
            while !pipeline.snapshot().ready { try await Task.sleep(for: .milliseconds(50)) }
            try await Task.sleep(for: .seconds(1))
            let p = try KafkaProducer(
                config: KafkaClientConfig([
                    "bootstrap.servers": brokers, "compression.codec": "zstd", "linger.ms": "5", "log_level": "3",
                ]), logger: quiet)
            let pad = String(repeating: "x", count: 300)
            // Warm the producer up first: until it has the partition leaders, librdkafka
            // holds messages back (a while, on the mock), and that wait is not the daemon's.
            try p.send(
                topic: topic, key: Array("lat-warmup".utf8),
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
                    let json =
                        #"{"type":"track","userId":"lat-\#(u)","event":"Clicked","timestamp":\#(now),"properties":{"pad":"\#(pad)"}}"#
                    try p.send(topic: topic, key: Array("lat-\(u)".utf8), value: Array(json.utf8))
                    sent += 1
                }
                try await Task.sleep(for: .milliseconds(2))
            }
            p.flush()
            try await Task.sleep(for: .seconds(7))
            let snap = pipeline.snapshot()
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
}
