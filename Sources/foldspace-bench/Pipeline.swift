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
    /// The real pipeline against the topic and a fast local stand-in.
    struct Pipeline: AsyncParsableCommand {
        @Option var brokers: String
        @Option var topic: String
        @Option var expect: Int

        func run() async throws {
            let sandbox = FoldspaceSandbox(apiKeys: ["bench"])
            sandbox.setRecordBodies(false)
            try await sandbox.start()
            var c = SyncConfiguration.local(
                brokers: brokers, topic: topic, group: "bench-\(UUID().uuidString.prefix(8))",
                foldspaceURL: sandbox.baseURL)
            c.stateMode = .memory
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
                let n = pipeline.eventsRead
                if n > 0 && first == 0 { first = uptimeSeconds() }
                if n > seen {
                    seen = n
                    last = uptimeSeconds()
                }
                if n >= expect { break }
                try await Task.sleep(for: .milliseconds(5))
            }
            let stats = pipeline.snapshot()
            print("folded_events=\(seen)")
            print("folded_rate=\(Int(Double(seen) / max(last - first, 1e-6)))")
            print("users=\(stats.users)")
            print("fetcher_wakeups=\(pipeline.fetcherWakeups)")
            print("zstd_frames_sized=\(ZstdSizeHint.framesSized)")
            // Phase 2: flush everyone at once; PUT/s against the stand-in.
            let putStart = uptimeSeconds()
            let before = sandbox.requestCount
            pipeline.requestStop()  // the drain sends every dirty user, unthrottled here
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
}
