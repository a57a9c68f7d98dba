import Foundation
import Simulation
import TestSupport
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

private let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

private func which(_ tool: String) -> String? {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let p = "\(dir)/\(tool)"
        if FileManager.default.isExecutableFile(atPath: p) { return p }
    }
    return nil
}

/// Runs a command and returns its exit status and combined output.
private func run(_ args: [String], cwd: URL = repoRoot) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    p.currentDirectoryURL = cwd
    let out = Pipe()
    p.standardOutput = out
    p.standardError = out
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// A Unix datagram socket standing in for systemd's notification socket.
final class NotifySocket: @unchecked Sendable {
    let path: String
    private let fd: Int32
    private let lock = NSLock()
    private var messages: [String] = []
    private var open = true

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("notify-\(UUID().uuidString.prefix(8))").path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket() failed") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard ok == 0 else { throw TestFailure("bind() failed") }
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        Thread.detachNewThread { [self] in
            var buf = [UInt8](repeating: 0, count: 4096)
            while lock.withLock({ open }) {
                let n = recv(fd, &buf, buf.count, 0)
                if n > 0 { lock.withLock { messages.append(String(decoding: buf[..<n], as: UTF8.self)) } }
            }
        }
    }

    var received: [String] { lock.withLock { messages } }

    func close() {
        lock.withLock { open = false }
        Thread.sleep(forTimeInterval: 0.3)
        _ = Glibc.close(fd)
        unlink(path)
    }
}

@Suite(.serialized) struct OperationsTests {
    @Test func notifiesSystemdReadyWatchdogAndStopping() async throws {
        let kafka = try await MockKafkaProcess(topics: ["events:1"])
        defer { Task { await kafka.stop() } }
        let sandbox = FoldspaceSandbox(apiKeys: ["k"])
        try await sandbox.start()
        let sock = try NotifySocket()
        defer { sock.close() }
        let daemon = try Child(
            [
                "run", "--brokers", kafka.bootstrap, "--topic", "events", "--group", "sd-\(UUID().uuidString.prefix(6))",
                "--foldspace-url", sandbox.baseURL, "--admin-listen", "127.0.0.1:0",
            ],
            env: ["FOLDSPACE_API_KEY": "k", "NOTIFY_SOCKET": sock.path, "WATCHDOG_USEC": "600000"])
        #expect(await waitUntil(.seconds(20)) { sock.received.contains { $0.contains("READY=1") } }, "\(daemon.stderr.suffix(1000))")
        #expect(await waitUntil(.seconds(10)) { sock.received.filter { $0.contains("WATCHDOG=1") }.count >= 2 })
        #expect(!sock.received.contains { $0.contains("STOPPING=1") })
        daemon.signal(SIGTERM)
        #expect(await daemon.wait(timeout: .seconds(30)) == 0)
        #expect(await waitUntil(.seconds(5)) { sock.received.contains { $0.contains("STOPPING=1") } })
        let ready = sock.received.firstIndex { $0.contains("READY=1") }!
        let stopping = sock.received.firstIndex { $0.contains("STOPPING=1") }!
        #expect(ready < stopping)
        await sandbox.stop()
    }

    // The systemd unit and the Kubernetes manifests: DeploymentTests.swift.

    @Test func metricsExposeTheNamedSeriesAndMatchTheTraffic() async throws {
        let kafka = try await MockKafkaProcess(topics: ["events:2"])
        defer { Task { await kafka.stop() } }
        let sandbox = FoldspaceSandbox(apiKeys: ["k"])
        try await sandbox.start()
        var s = Scenario()
        for i in 0..<15 {
            s.track("m\(i)", at: Int64(i))
            s.track("m\(i)", at: Int64(i) + 10)
        }
        var messages = s.messages
        messages.append(("bad", "{not json"))
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", messages)
        let daemon = try Child(
            [
                "run", "--brokers", kafka.bootstrap, "--topic", "events", "--group", "met-\(UUID().uuidString.prefix(6))",
                "--foldspace-url", sandbox.baseURL, "--admin-listen", "127.0.0.1:0", "--debounce", "200ms",
            ],
            // Durable state (the default), checkpointing often enough to be seen.
            env: [
                "FOLDSPACE_API_KEY": "k", "FOLDSPACE_SYNC_COMMIT_INTERVAL": "200ms",
                // librdkafka's statistics every 500 ms, not 15 s, to be seen.
                "FOLDSPACE_SYNC_KAFKA_PROPERTIES": "statistics.interval.ms=500",
            ])
        #expect(await waitUntil(.seconds(30)) { sandbox.latestAcknowledged().count == 15 })
        let port = try #require(await adminPort(daemon), "\(daemon.stderr.suffix(1000))")
        let url = URL(string: "http://127.0.0.1:\(port)/metrics")!
        func value(_ name: String, in text: String) -> Int {
            text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Int($0.split(separator: " ")[1]) } ?? -1
        }
        // The state changelog's first write waits for the producer's metadata: every user
        // reaches it within a few checkpoints. And the stand-in counts a request when it
        // answers, the daemon when the answer has reached it: a scrape in between saw 13
        // of 15 (a CI run).
        var text = ""
        for _ in 0..<100 {
            text = String(decoding: try await URLSession.shared.data(from: url).0, as: UTF8.self)
            if value("foldspace_sync_checkpoint_users_total", in: text) >= 15,
                text.contains("\nfoldspace_sync_kafka_fetch_queue_bytes "),
                value(#"foldspace_sync_requests_total{code="2xx"}"#, in: text) == sandbox.requestCount,
                value("foldspace_sync_request_duration_seconds_count", in: text) == sandbox.requestCount
            {
                break
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        for series in [
            "foldspace_sync_events_total", "foldspace_sync_requests_total", "foldspace_sync_request_duration_seconds_bucket",
            "foldspace_sync_send_lateness_seconds_bucket",
            "foldspace_sync_users", "foldspace_sync_dirty_users", "foldspace_sync_oldest_dirty_seconds",
            "foldspace_sync_dead_letters_total", "foldspace_sync_consumer_lag", "foldspace_sync_breaker_open",
            "foldspace_sync_rate_limit_requests_per_second", "foldspace_sync_kafka_fetcher_wakeups_total",
            "foldspace_sync_kafka_zstd_batches_sized_total", "foldspace_sync_checkpoint_duration_seconds_bucket",
            "foldspace_sync_restored_users_total", "foldspace_sync_restore_failures_total",
        ] {
            #expect(text.contains(series), "missing \(series)")
        }
        // The whole exposition through a real parser: every family typed and described,
        // every sample line a sample, the build and process series there.
        let families = try parsePrometheus(text)
        for f in families {
            #expect(f["type"] as? String != "unknown" && !((f["help"] as? String) ?? "").isEmpty, "\(f["name"] ?? "")")
        }
        #expect(
            families.reduce(0) { $0 + (($1["samples"] as? [Any])?.count ?? 0) }
                == text.split(separator: "\n").filter { !$0.hasPrefix("#") }.count)
        let familyNames = Set(families.compactMap { $0["name"] as? String })
        for name in [
            "foldspace_sync_build_info", "process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
            "process_start_time_seconds", "foldspace_sync_request_errors", "foldspace_sync_kafka_fetch_queue_bytes",
        ] {
            #expect(familyNames.contains(name), "missing family \(name)")
        }
        // kcat (Debian's librdkafka) streams its zstd batches: no stated size, so each
        // batch read was sized by the hint.
        let sized = text.split(separator: "\n").first { $0.hasPrefix("foldspace_sync_kafka_zstd_batches_sized_total ") }
            .flatMap { Int($0.split(separator: " ")[1]) }
        #expect((sized ?? 0) >= 1, "\(sized as Any)")
        #expect(text.contains(#"foldspace_sync_events_total{result="folded"} 30"#))
        #expect(text.contains(#"foldspace_sync_events_total{result="invalid"} 1"#))
        #expect(text.contains(#"foldspace_sync_requests_total{code="2xx"} \#(sandbox.requestCount)"#))
        #expect(text.contains("foldspace_sync_users 15"))
        #expect(text.contains(#"foldspace_sync_dead_letters_total{kind="invalid-event"} 1"#))
        #expect(text.contains("foldspace_sync_request_duration_seconds_count \(sandbox.requestCount)"))
        // Every user was written to the changelog by a checkpoint; none failed.
        #expect(value(#"foldspace_sync_checkpoints_total{result="ok"}"#, in: text) >= 1)
        #expect(value(#"foldspace_sync_checkpoints_total{result="failed"}"#, in: text) == 0)
        #expect(value("foldspace_sync_checkpoint_users_total", in: text) >= 15)
        #expect(
            value("foldspace_sync_checkpoint_duration_seconds_count", in: text)
                == value(#"foldspace_sync_checkpoints_total{result="ok"}"#, in: text))
        let (ready, _) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)/readyz")!)
        #expect(String(decoding: ready, as: UTF8.self) == "ready\n")
        daemon.signal(SIGTERM)
        #expect(await daemon.wait(timeout: .seconds(30)) == 0)
        // Logs are JSON lines when stderr is not a terminal.
        let lines = daemon.stderr.split(separator: "\n")
        // One line says the backlog was read (30 events; the last batch may still have
        // been folding when the lag was looked at).
        let caughtUp = lines.filter { $0.contains("caught up with the assigned partitions") }
        #expect(caughtUp.count == 1, "\(daemon.stderr.suffix(2000))")
        if let line = caughtUp.first, let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] {
            // Numbers as JSON numbers.
            #expect((o["partitions"] as? NSNumber)?.intValue == 2 && !(o["partitions"] is String), "\(line)")
            #expect((1...30).contains((o["events"] as? NSNumber)?.intValue ?? 0), "\(line)")
        }
        let stopped = lines.last { $0.contains("\"msg\":\"stopped\"") }
        let stoppedFields = stopped.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(
            (stoppedFields?["events_folded"] as? NSNumber)?.intValue == 30 && !(stoppedFields?["events_folded"] is String),
            "\(stopped ?? "no stopped line")")
        #expect(lines.count > 3)
        for l in lines {
            let o = try? JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any]
            #expect(o?["level"] is String && o?["msg"] is String && o?["ts"] is String, "not a JSON log line: \(l)")
        }
        await sandbox.stop()
    }

    /// Under systemd with stderr on the journal (JOURNAL_STREAM names its device and
    /// inode), every line starts with its syslog priority, so `journalctl -p` filters.
    @Test func underTheJournalEveryLineCarriesItsPriority() async throws {
        let kafka = try await MockKafkaProcess(topics: ["events:1"])
        defer { Task { await kafka.stop() } }
        let sandbox = FoldspaceSandbox(apiKeys: ["k"])
        try await sandbox.start()
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("journal-\(UUID().uuidString)").path
        FileManager.default.createFile(atPath: path, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: path) }
        var st = stat()
        #expect(stat(path, &st) == 0)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try binaryPath())
        p.arguments = [
            "run", "--brokers", kafka.bootstrap, "--topic", "events", "--group", "jrn-\(UUID().uuidString.prefix(6))",
            "--foldspace-url", sandbox.baseURL, "--admin-listen", "127.0.0.1:0",
        ]
        var env = ProcessInfo.processInfo.environment
        env["FOLDSPACE_API_KEY"] = "k"
        env["FOLDSPACE_SYNC_STATE"] = "memory"
        env["JOURNAL_STREAM"] = "\(st.st_dev):\(st.st_ino)"
        p.environment = env
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        func text() -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
        #expect(await waitUntil(.seconds(30)) { text().contains("admin server listening") }, "\(text().suffix(1000))")
        kill(p.processIdentifier, SIGTERM)
        #expect(await waitUntil(.seconds(30)) { !p.isRunning })
        let lines = text().split(separator: "\n")
        #expect(!lines.isEmpty)
        for l in lines {
            let prefix = l.prefix(3)
            #expect(["<2>", "<3>", "<4>", "<5>", "<6>", "<7>"].contains(prefix) && l.dropFirst(3).hasPrefix("{"), "\(l)")
        }
        #expect(lines.first { $0.contains("admin server listening") }?.hasPrefix("<6>{") == true)
        await sandbox.stop()
    }

    @Test func adminServerBindsLoopbackByDefaultAndMetricsHoldNoSecret() async throws {
        let kafka = try await MockKafkaProcess(topics: ["events:1"])
        defer { Task { await kafka.stop() } }
        let key = "admin-secret-\(UUID().uuidString.prefix(8))"
        let sandbox = FoldspaceSandbox(apiKeys: [key])
        try await sandbox.start()
        // The default address is loopback (the port is fixed, so the daemon below asks
        // for a free one on the default host instead: another process may hold 9464).
        let defaults = try Child(["check-config", "--brokers", "b:1", "--topic", "t", "--group", "g"], env: ["FOLDSPACE_API_KEY": key])
        #expect(await defaults.wait(timeout: .seconds(20)) == 0)
        #expect(defaults.stdout.contains("admin_listen: 127.0.0.1:9464"), "\(defaults.stdout)")
        let daemon = try Child(
            [
                "run", "--brokers", kafka.bootstrap, "--topic", "events", "--group", "adm-\(UUID().uuidString.prefix(6))",
                "--foldspace-url", sandbox.baseURL, "--admin-listen", "127.0.0.1:0",
            ],
            env: ["FOLDSPACE_API_KEY": key, "FOLDSPACE_SYNC_STATE": "memory"])
        #expect(await waitUntil(.seconds(30)) { daemon.stderr.contains("admin server listening") }, "\(daemon.stderr.suffix(1000))")
        let bound = try #require(await adminPort(daemon), "\(daemon.stderr.suffix(1000))")
        #expect(bound != 0)
        // /proc/net/tcp{,6}: local address and port in hex, state 0A is LISTEN.
        let port = String(format: "%04X", bound)
        var listeners: [String] = []
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            // Read to the end in a loop: a procfs file reports size 0, and a read sized by
            // it can stop at the first page (the listener was missed in a busy full run).
            let text = String(decoding: (try? FileHandle(forReadingFrom: URL(fileURLWithPath: file)).readToEnd()) ?? Data(), as: UTF8.self)
            for line in text.split(separator: "\n").dropFirst() {
                let f = line.split(separator: " ")
                if f.count > 3, f[1].hasSuffix(":\(port)"), f[3] == "0A" { listeners.append(String(f[1])) }
            }
        }
        #expect(listeners == ["0100007F:\(port)"], "admin listeners: \(listeners)")
        let (data, _) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(bound)/metrics")!)
        let metrics = String(decoding: data, as: UTF8.self)
        #expect(metrics.contains("foldspace_sync_users"))
        #expect(!metrics.contains(key))
        daemon.signal(SIGTERM)
        #expect(await daemon.wait(timeout: .seconds(30)) == 0)
        #expect(!(daemon.stdout + daemon.stderr).contains(key))
        await sandbox.stop()
    }
}
