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
        @Flag(help: "Identity resolution on (identity.merge: true): calls not on their user's task are routed.")
        var identityMerge = false
        @Option(
            help:
                "The consumer group (default: a new one). With --identity-merge, its <group>-repartition and <group>-identities must exist with the source's partition count (the mock cluster takes no Admin requests)."
        )
        var group: String?

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
            env["FOLDSPACE_SYNC_GROUP"] = group ?? "bin-\(UUID().uuidString.prefix(8))"
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
            if identityMerge { env["FOLDSPACE_SYNC_IDENTITY_MERGE"] = "true" }
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
            var first: (t: Double, n: Int, cpu: Double?)?
            var last = (t: 0.0, n: 0, cpu: Double?.none)
            let pid = process.processIdentifier
            while uptimeSeconds() - started < 300 && process.isRunning {
                guard let (data, _) = try? await URLSession.shared.data(from: url) else {
                    try await Task.sleep(for: .milliseconds(10))
                    continue
                }
                let n = Self.folded(String(decoding: data, as: UTF8.self))
                let t = uptimeSeconds()
                if n > 0 && first == nil { first = (t, n, Self.cpuSeconds(pid)) }
                if n > last.n { last = (t, n, Self.cpuSeconds(pid)) }
                if n >= expect { break }
                try await Task.sleep(for: .milliseconds(10))
            }
            print("binary_state=\(state)")
            print("binary_identity_merge=\(identityMerge)")
            print("binary_folded_events=\(last.n)")
            if let first, last.t > first.t {
                print("binary_folded_rate=\(Int(Double(last.n - first.n) / (last.t - first.t)))")
                // The daemon's CPU time (all its threads) per event folded over the same
                // span: steadier than the rate on a shared machine, where the rate also
                // measures what else runs.
                if let c0 = first.cpu, let c1 = last.cpu, last.n > first.n {
                    print("binary_cpu_ns_per_event=\(Int((c1 - c0) * 1e9 / Double(last.n - first.n)))")
                }
            }
            if last.n > 0 { print("binary_start_to_last_s=\(String(format: "%.2f", last.t - started))") }
            process.terminate()
            process.waitUntilExit()
            await sandbox.stop()
        }

        /// Process `pid`'s CPU time so far (user and system, all threads), from
        /// `/proc/<pid>/stat` read as the daemon's own process metrics read theirs; nil
        /// where there is none.
        static func cpuSeconds(_ pid: Int32) -> Double? {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return nil }
            return ProcessMetrics.parse(
                stat: stat, procStat: "", openFds: 0, maxFds: nil, ticksPerSecond: Int(sysconf(Int32(_SC_CLK_TCK))), pageSize: 4096
            )?.cpuSeconds
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
}
