import Delivery
import FoldspaceAPI
import Foundation
import Kafka
import Logging
import TestSupport
import Testing

@testable import SyncService

private func startAdmin(idleTimeout: Duration = .seconds(60), maxConnections: Int = 64) async throws -> AdminServer {
    try await AdminServer.start(
        host: "127.0.0.1", port: 0, metrics: { "m 1\n" }, healthy: { true }, ready: { true },
        idleTimeout: idleTimeout, maxConnections: maxConnections)
}

@Suite struct AdminServerTests {
    @Test func otherMethodsGet405WithAllow() async throws {
        let admin = try await startAdmin()
        for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
            let c = try RawConnection(port: admin.port)
            c.send("\(method) /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            let r = try #require(await c.response())
            #expect(r.head.hasPrefix("HTTP/1.1 405"), "\(method): \(r.head)")
            #expect(r.head.lowercased().contains("\r\nallow: get, head"), "\(r.head)")
        }
        await admin.stop()
    }

    @Test func headAnswersWithTheHeadersAndNoBody() async throws {
        let admin = try await startAdmin()
        let c = try RawConnection(port: admin.port)
        c.send("HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        let all = try #require(await c.untilClose())
        let text = String(decoding: all, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 200"), "\(text)")
        // The GET body's length, and not one byte of body after the head.
        #expect(text.lowercased().contains("content-length: 4\r\n"), "\(text)")
        #expect(text.hasSuffix("\r\n\r\n"), "\(text)")
        await admin.stop()
    }

    @Test func anIdleConnectionIsClosed() async throws {
        // The server closes the connection (not the client's 30 s receive timeout, and
        // not the server's default of a minute). No bound on how soon: the machines
        // that run the tests are busy, and timing is not what this checks.
        let admin = try await startAdmin(idleTimeout: .milliseconds(300))
        let c = try RawConnection(port: admin.port, receiveTimeoutMs: 30_000)
        #expect(await c.next() == .closed)
        await admin.stop()
    }

    @Test func connectionsOverTheCapAreRefusedAndFreedSlotsReused() async throws {
        let admin = try await startAdmin(maxConnections: 2)
        var held = try (0..<2).map { _ in try RawConnection(port: admin.port) }
        for c in held {
            c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(await c.response()?.head.hasPrefix("HTTP/1.1 200") == true)
        }
        let over = try RawConnection(port: admin.port)
        over.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(await over.untilClose()?.isEmpty == true, "a third connection was served")
        // A closed connection frees its slot (the server sees the close asynchronously).
        held.removeFirst()
        var served = false
        for _ in 0..<50 where !served {
            let c = try RawConnection(port: admin.port)
            c.send("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            served = await c.response()?.head.hasPrefix("HTTP/1.1 200") == true
            if !served { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(served)
        #expect(held.count == 1)
        await admin.stop()
    }

    /// The admin endpoints answer while every thread of Swift's cooperative pool is busy:
    /// a liveness probe must not wait for the tasks it is there to watch (in CI the test
    /// process's own parallel tests exhausted the pool, and 405 answers did not come).
    ///
    /// Blocking the whole pool while other tests run starves them too: an attempt whose
    /// blockers do not all start within a second (other tests hold threads) lets go of the
    /// ones that did and tries again a little later. Holding them for up to 20 s each
    /// (as it first did) stalled every other test of the process past its timeouts.
    @Test func answersWhileTheCooperativePoolIsBlocked() async throws {
        let admin = try await startAdmin()
        let port = admin.port
        let width = ProcessInfo.processInfo.activeProcessorCount
        var outcome: (allBlocked: Bool, head: String?) = (false, nil)
        for _ in 0..<60 where !outcome.allBlocked {
            // Everything that waits runs on a Dispatch thread: the pool is what is blocked.
            outcome = await withCheckedContinuation { done in
                DispatchQueue.global().async {
                    let started = DispatchSemaphore(value: 0)
                    let release = DispatchSemaphore(value: 0)
                    var blockers: [Task<Void, Never>] = []
                    for _ in 0..<width {
                        blockers.append(
                            Task.detached {
                                started.signal()
                                release.wait()
                            })
                    }
                    let deadline = DispatchTime.now() + .milliseconds(250)
                    var allBlocked = true
                    for _ in 0..<width where started.wait(timeout: deadline) == .timedOut { allBlocked = false }
                    var head: String? = nil
                    if allBlocked, let c = try? RawConnection(port: port, receiveTimeoutMs: 5000) {
                        c.send("POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        head = c.readResponse()?.head
                    }
                    // Each blocker, started or still queued, gets its release.
                    for _ in blockers { release.signal() }
                    done.resume(returning: (allBlocked, head))
                }
            }
            if !outcome.allBlocked { try await Task.sleep(for: .seconds(1)) }
        }
        #expect(outcome.allBlocked, "the blocking tasks never all started at once")
        #expect(outcome.head?.hasPrefix("HTTP/1.1 405") == true, "\(outcome.head ?? "no answer")")
        await admin.stop()
    }

    @Test func stopClosesOpenConnections() async throws {
        let admin = try await startAdmin()
        let c = try RawConnection(port: admin.port, receiveTimeoutMs: 5000)
        c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(await c.response()?.head.hasPrefix("HTTP/1.1 200") == true)
        await admin.stop()
        #expect(await c.next() == .closed)
    }
}

@Suite struct MetricsExpositionTests {
    func sampleExposition() -> String {
        var s = EngineStats()
        s.folded = 7
        s.invalid[.notJSON] = 2
        s.countRequest(.acknowledged)
        s.countRequest(.acknowledged)
        s.countRequest(.retryable(reason: "503"))
        s.countRequest(.retryable(reason: "timeout"))
        s.countRequest(.retryable(reason: "connection"))
        s.countRequest(.unauthorized(status: 401))
        s.rateLimit = 12.5
        s.requestDuration.observe(0.02)
        var k = KafkaStatistics()
        k.brokers = [
            .init(name: "127.0.0.1:9092/1", state: "UP", rttAvgSeconds: 0.0015, rttP99Seconds: 0.004),
            .init(name: "127.0.0.1:9093/2", state: "DOWN", rttAvgSeconds: nil, rttP99Seconds: nil),
        ]
        k.rebalances = 3
        k.fetchQueueBytes = 4096
        k.fetchQueueMessages = 10
        return MetricsText.render(
            s, lag: [("bad \"quoted\" \\ topic\nnext", 0, 5)], fetcherWakeups: 1, zstdBatchesSized: 2, kafka: k,
            producerQueues: [("dead-letters", 4)], process: ProcessMetrics.read())
    }

    @Test func theWholeExpositionParsesWithPrometheusClient() throws {
        let text = sampleExposition()
        let families = try parsePrometheus(text)
        var byName: [String: [String: Any]] = [:]
        for f in families { byName[f["name"] as? String ?? ""] = f }
        // Every family has HELP and TYPE (the parser gives "unknown" and "" without them).
        for f in families {
            #expect((f["type"] as? String) != "unknown", "\(f["name"] ?? "")")
            #expect(!((f["help"] as? String) ?? "").isEmpty, "\(f["name"] ?? "")")
        }
        // Every sample line became a sample: nothing dropped or merged.
        let sampleLines = text.split(separator: "\n").filter { !$0.hasPrefix("#") }.count
        #expect(families.reduce(0) { $0 + (($1["samples"] as? [Any])?.count ?? 0) } == sampleLines)
        func samples(_ family: String) -> [(labels: [String: String], value: Double)] {
            ((byName[family]?["samples"] as? [[String: Any]]) ?? []).map {
                (($0["labels"] as? [String: String]) ?? [:], ($0["value"] as? Double) ?? .nan)
            }
        }
        #expect(samples("foldspace_sync_rate_limit_requests_per_second").map(\.value) == [12.5])
        #expect(byName["foldspace_sync_rate_limit_rps"] == nil)
        // Status codes only in requests_total; transport failures by kind elsewhere.
        let codes = Dictionary(uniqueKeysWithValues: samples("foldspace_sync_requests").map { ($0.labels["code"] ?? "", $0.value) })
        #expect(codes == ["2xx": 2, "503": 1, "401": 1])
        let errors = Dictionary(uniqueKeysWithValues: samples("foldspace_sync_request_errors").map { ($0.labels["kind"] ?? "", $0.value) })
        #expect(errors == ["timeout": 1, "connection": 1])
        // Label values escaped: the parser gives back the original string.
        #expect(samples("foldspace_sync_consumer_lag").first?.labels["topic"] == "bad \"quoted\" \\ topic\nnext")
        #expect(samples("foldspace_sync_invalid_events").first?.labels["reason"] == "not-json")
        let build = try #require(samples("foldspace_sync_build_info").first)
        #expect(
            build.value == 1 && build.labels["version"] == foldspaceSyncVersion && build.labels["librdkafka_version"] == librdkafkaVersion)
        #expect(librdkafkaVersion.hasPrefix("2."))
        #expect(byName["foldspace_sync_build_info"]?["type"] as? String == "gauge")
        // The process collector's standard names and types.
        #expect(byName["process_cpu_seconds"]?["type"] as? String == "counter")
        #expect(samples("process_cpu_seconds").first.map { $0.value > 0 } == true)
        #expect(samples("process_resident_memory_bytes").first.map { $0.value > 1_000_000 } == true)
        #expect(samples("process_open_fds").first.map { $0.value >= 3 } == true)
        let started = try #require(samples("process_start_time_seconds").first?.value)
        #expect(abs(started - Date().timeIntervalSince1970) < 86_400, "\(started)")
        // librdkafka's statistics.
        let rtt = samples("foldspace_sync_kafka_broker_rtt_seconds")
        #expect(rtt.count == 1 && rtt.first?.labels["broker"] == "127.0.0.1:9092/1" && rtt.first?.value == 0.0015, "\(rtt)")
        #expect(samples("foldspace_sync_kafka_broker_rtt_p99_seconds").first?.value == 0.004)
        #expect(
            Set(samples("foldspace_sync_kafka_broker_up").map { "\($0.labels["broker"] ?? "")=\($0.value)" })
                == ["127.0.0.1:9092/1=1.0", "127.0.0.1:9093/2=0.0"])
        #expect(samples("foldspace_sync_kafka_rebalances").map(\.value) == [3])
        #expect(byName["foldspace_sync_kafka_rebalances"]?["type"] as? String == "counter")
        #expect(samples("foldspace_sync_kafka_fetch_queue_bytes").map(\.value) == [4096])
        #expect(samples("foldspace_sync_kafka_fetch_queue_messages").map(\.value) == [10])
        #expect(
            samples("foldspace_sync_kafka_producer_queue_messages").map { "\($0.labels["producer"] ?? "")=\($0.value)" } == [
                "dead-letters=4.0"
            ])
    }

    @Test func processMetricsFollowTheProcess() throws {
        // The descriptors are the whole process's, and tests running beside this one open
        // and close theirs: the count is judged over attempts, one of which sees only ours.
        var seen: [Int] = []
        var before = try #require(ProcessMetrics.read())
        var after = before
        for _ in 0..<50 {
            before = try #require(ProcessMetrics.read())
            let fds = (0..<5).map { _ in open("/dev/null", O_RDONLY) }
            after = try #require(ProcessMetrics.read())
            for fd in fds { close(fd) }
            seen.append(after.openFds - before.openFds)
            if seen.last == 5 { break }
        }
        #expect(seen.last == 5, "open descriptors moved by \(seen), never by the 5 opened")
        #expect(after.startTimeSeconds == before.startTimeSeconds)
        #expect(after.cpuSeconds >= before.cpuSeconds)
        // A command name with spaces and parentheses does not shift the fields.
        let stat =
            "42 (a b) c)) S "
            + (4...52).map { n in n == 14 ? "300" : n == 15 ? "200" : n == 22 ? "1000" : n == 24 ? "10" : "0" }.joined(separator: " ")
        let m = try #require(
            ProcessMetrics.parse(
                stat: stat, procStat: "cpu 1 2\nbtime 1700000000\n", openFds: 3, maxFds: 1024,
                ticksPerSecond: 100, pageSize: 4096))
        #expect(m.cpuSeconds == 5 && m.residentBytes == 40960 && m.startTimeSeconds == 1_700_000_010)
        #expect(ProcessMetrics.parse(stat: "garbage", procStat: "", openFds: 0, maxFds: nil, ticksPerSecond: 100, pageSize: 4096) == nil)
    }

    @Test func librdkafkaStatisticsParse() throws {
        let json = """
            {"name":"c#consumer-1","type":"consumer","msg_cnt":0,
             "brokers":{"127.0.0.1:1/bootstrap":{"name":"127.0.0.1:1/bootstrap","nodeid":-1,"state":"UP","rtt":{"avg":0,"p99":0,"cnt":0}},
                        "127.0.0.1:2/2":{"name":"127.0.0.1:2/2","nodeid":2,"state":"UP","rtt":{"avg":2500,"p99":9000,"cnt":4}}},
             "topics":{"events":{"partitions":{"0":{"fetchq_cnt":3,"fetchq_size":300},"1":{"fetchq_cnt":2,"fetchq_size":200},
                                               "-1":{"fetchq_cnt":99,"fetchq_size":9999}}}},
             "cgrp":{"state":"up","rebalance_cnt":2}}
            """
        let s = try #require(KafkaStatistics.parse(json))
        #expect(s.brokers == [.init(name: "127.0.0.1:2/2", state: "UP", rttAvgSeconds: 0.0025, rttP99Seconds: 0.009)])
        #expect(s.rebalances == 2 && s.fetchQueueMessages == 5 && s.fetchQueueBytes == 500)
        #expect(KafkaStatistics.parse("not json") == nil)
    }
}

/// Log lines written to a temporary file through the handler, read back.
final class CapturedLog {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("log-\(UUID().uuidString)").path
    let fd: Int32
    init() { fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0o600) }
    deinit {
        close(fd)
        unlink(path)
    }
    var lines: [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n", omittingEmptySubsequences: false)
            .dropLast().map(String.init)
    }
    func logger(_ format: StderrLogHandler.Format, syslogPrefix: Bool = false) -> Logger {
        var l = Logger(label: "test") { StderrLogHandler(label: $0, format: format, fd: self.fd, syslogPrefix: syslogPrefix) }
        l.logLevel = .trace
        return l
    }
}

@Suite struct LogFormatTests {
    @Test func jsonValuesKeepTheirTypes() throws {
        let log = CapturedLog()
        log.logger(.json).info(
            "typed",
            metadata: [
                "count": .stringConvertible(42), "ratio": .stringConvertible(1.5), "ok": .stringConvertible(true),
                "text": "42", "nested": .dictionary(["a": "b", "list": .array(["x", .stringConvertible(2)])]),
            ])
        let line = try #require(log.lines.first)
        let o = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "\(line)")
        #expect((o["count"] as? NSNumber)?.intValue == 42 && !(o["count"] is String), "\(line)")
        #expect((o["ratio"] as? NSNumber)?.doubleValue == 1.5, "\(line)")
        #expect(o["ok"] as? Bool == true, "\(line)")
        #expect(o["text"] as? String == "42", "a string stays a string: \(line)")
        let nested = try #require(o["nested"] as? [String: Any], "\(line)")
        #expect(nested["a"] as? String == "b")
        #expect((nested["list"] as? [Any])?.count == 2 && (nested["list"] as? [Any])?.last as? Int == 2, "\(line)")
    }

    @Test func metadataCannotOverwriteReservedKeys() throws {
        let log = CapturedLog()
        log.logger(.json).warning("the real message", metadata: ["level": "debug", "msg": "forged", "ts": "0", "logger": "other"])
        let line = try #require(log.lines.first)
        let o = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "\(line)")
        #expect(
            o["level"] as? String == "warning" && o["msg"] as? String == "the real message" && o["logger"] as? String == "test", "\(line)")
        #expect((o["ts"] as? String)?.hasPrefix("20") == true, "\(line)")
        // The colliding values are kept, under a prefixed name.
        #expect(o["md_level"] as? String == "debug" && o["md_msg"] as? String == "forged", "\(line)")
        // One key once: a JSON object with duplicate keys is ambiguous.
        #expect(line.components(separatedBy: "\"level\":").count == 2, "\(line)")
    }

    @Test func timestampsAreRFC3339AndSafeAcrossThreads() {
        #expect(logTimestamp(epochMs: 0) == "1970-01-01T00:00:00.000Z")
        #expect(logTimestamp(epochMs: 1_796_320_800_123) == "2026-12-03T18:00:00.123Z")
        #expect(logTimestamp(epochMs: 951_782_400_999) == "2000-02-29T00:00:00.999Z")
        let wrong = NSLock()
        nonisolated(unsafe) var mismatches = 0
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            for i in 0..<2000 {
                let ms = Int64(1_700_000_000_000 + t * 1_000_000 + i * 1001)
                let expected = logTimestamp(epochMs: ms)
                if logTimestamp(epochMs: ms) != expected || expected.count != 24 { wrong.withLock { mismatches += 1 } }
            }
        }
        #expect(mismatches == 0)
    }

    @Test func journalDetectionComparesDeviceAndInode() throws {
        let log = CapturedLog()
        var st = stat()
        #expect(fstat(log.fd, &st) == 0)
        #expect(LogSetup.isJournal(journalStream: "\(st.st_dev):\(st.st_ino)", fd: log.fd))
        #expect(!LogSetup.isJournal(journalStream: "\(st.st_dev):\(st.st_ino &+ 1)", fd: log.fd))
        #expect(!LogSetup.isJournal(journalStream: nil, fd: log.fd))
        #expect(!LogSetup.isJournal(journalStream: "garbage", fd: log.fd))
    }

    @Test func journalLinesCarrySyslogPriorities() throws {
        for format in [StderrLogHandler.Format.json, .text] {
            let log = CapturedLog()
            let l = log.logger(format, syslogPrefix: true)
            l.critical("c")
            l.error("e")
            l.warning("w")
            l.notice("n")
            l.info("i")
            l.debug("d")
            l.trace("t")
            #expect(log.lines.map { String($0.prefix(3)) } == ["<2>", "<3>", "<4>", "<5>", "<6>", "<7>", "<7>"], "\(log.lines)")
            // Without the journal, no prefix.
            let plain = CapturedLog()
            plain.logger(format).warning("w")
            #expect(plain.lines.first?.hasPrefix("<") == false)
        }
    }

    @Test func textFormatCannotBeSplitIntoForgedLines() throws {
        let log = CapturedLog()
        let hostile = "broker said\n2026-01-01T00:00:00.000Z ERROR [foldspace-sync] forged line"
        log.logger(.text).warning("kafka error \(hostile)", metadata: ["reason": "\(hostile)", "plain": "x"])
        #expect(log.lines.count == 1, "\(log.lines)")
        let line = try #require(log.lines.first)
        #expect(line.contains(#"reason="broker said\n2026"#), "\(line)")
        #expect(line.contains(" plain=x"), "\(line)")
    }
}

/// Keeps every line a logger writes.
final class LineCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [(level: Logger.Level, message: String, metadata: Logger.Metadata)] = []
    var lines: [(level: Logger.Level, message: String, metadata: Logger.Metadata)] { lock.withLock { items } }
    func add(_ l: Logger.Level, _ m: String, _ md: Logger.Metadata) { lock.withLock { items.append((l, m, md)) } }

    var logger: Logger {
        var l = Logger(label: "collect") { _ in Handler(collector: self) }
        l.logLevel = .info
        return l
    }

    struct Handler: LogHandler {
        let collector: LineCollector
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            collector.add(event.level, "\(event.message)", metadata.merging(event.metadata ?? [:]) { $1 })
        }
    }
}

@Suite struct LogFloodTests {
    /// With the broker down, every queued message fails: one line (with the count), not
    /// one per message.
    @Test func failedDeliveriesAreSummarised() async throws {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic("dl", partitions: 1)
        cluster.setBroker(1, up: false)
        let log = LineCollector()
        let producer = try KafkaProducer(
            config: KafkaClientConfig([
                "bootstrap.servers": cluster.bootstrapServers, "message.timeout.ms": "500", "log_level": "0",
            ]), logger: log.logger)
        for i in 0..<40 { try producer.send(topic: "dl", key: nil, value: Array("m\(i)".utf8)) }
        #expect(await eventually(.seconds(20)) { producer.deliveryCounts.failed == 40 })
        let failures = log.lines.filter { $0.message == "kafka delivery failed" }
        #expect(failures.count == 1, "\(failures.count) lines for 40 failures")
        #expect(failures.first?.metadata["count"].map { "\($0)" } == "1")
        producer.close()
    }

    /// Dead letters that cannot be written (the broker is down) are retried, and their
    /// failures log once an interval, not once per letter and attempt.
    @Test func failingDeadLettersAreSummarised() async throws {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic("dl", partitions: 1)
        cluster.setBroker(1, up: false)
        let log = LineCollector()
        let producer = try KafkaProducer(
            config: KafkaClientConfig([
                "bootstrap.servers": cluster.bootstrapServers, "message.timeout.ms": "300", "log_level": "0",
            ]), logger: log.logger)
        let sink = KafkaDeadLetters(producer: producer, topic: "dl", logger: log.logger, retryDelayMs: 50)
        for _ in 0..<25 { sink.deadLetter(kind: .invalidEvent, key: nil, value: [UInt8](repeating: 65, count: 5000), headers: []) }
        #expect(await eventually(.seconds(20)) { sink.retries >= 50 }, "\(sink.retries) retries")
        let lines = log.lines.filter { $0.message.hasPrefix("cannot write dead letter") }
        #expect(lines.count == 1, "\(lines.count) lines for \(sink.retries) failures")
        sink.close(timeoutMs: 1_000)
        producer.close()
    }

    @Test func rateSummaryCountsPerIntervalWithAnInjectedClock() {
        var r = RateSummary(intervalMs: 1000)
        #expect(r.note("a", nowMs: 0) == 1)  // the first logs at once
        #expect(r.note("a", nowMs: 10) == nil)
        #expect(r.note("a", nowMs: 999) == nil)
        #expect(r.note("b", nowMs: 500) == 1)  // keys are separate
        #expect(r.due(nowMs: 999).isEmpty)
        #expect(r.note("a", nowMs: 1000) == 3)  // two counted + this one
        #expect(r.note("a", nowMs: 1200) == nil)
        #expect(r.note("a", nowMs: 1300) == nil)
        // The periodic check reports what was counted once the interval passed ("b" had
        // nothing pending and is forgotten, so its next event logs at once).
        let due = r.due(nowMs: 2100)
        #expect(due.map(\.key) == ["a"] && due.map(\.count) == [2])
        #expect(r.note("b", nowMs: 2100) == 1)
        #expect(r.due(nowMs: 2200).isEmpty)
        // A clock that goes back does not silence a key for ever.
        #expect(r.note("b", nowMs: 0) == 1)
        let clock = ManualMs()
        let s = LogSummariser(intervalMs: 100, clock: { clock.now })
        #expect(s.note("x") == 1 && s.note("x") == nil)
        clock.now = 150
        #expect(s.due().map(\.count) == [1])
    }
}

final class ManualMs: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Int64 = 0
    var now: Int64 {
        get { lock.withLock { value } }
        set { lock.withLock { value = newValue } }
    }
}
