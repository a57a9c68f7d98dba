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
            let p = try KafkaProducer(
                config: KafkaClientConfig([
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
                    let s = pipeline.snapshot()
                    let read = pipeline.eventsRead
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
}
