import FoldspaceSandbox
import Foundation
import Testing

extension VisitReference {
    /// Every user's last acknowledged body must match the reference exactly.
    func verify(_ sandbox: FoldspaceSandbox, _ context: String) {
        let m = mismatches(sandbox)
        #expect(m.isEmpty, "\(context): \(m.prefix(10))")
    }
}

@Suite(.serialized) struct DurableStateEndToEndTests {
    let apiKey = "durable-key"

    func start(_ kafka: MockKafkaProcess, _ sandbox: FoldspaceSandbox, group: String) throws -> Child {
        try Child(["run", "--brokers", kafka.bootstrap, "--topic", "events", "--group", group,
                   "--foldspace-url", sandbox.baseURL, "--debounce", "200ms", "--max-wait", "1s",
                   "--admin-listen", "127.0.0.1:0"],
                  env: ["FOLDSPACE_API_KEY": apiKey, "FOLDSPACE_SYNC_SEND_NUMBER_OF_VISITS": "true",
                        "FOLDSPACE_SYNC_COMMIT_INTERVAL": "300ms", "FOLDSPACE_SYNC_SHUTDOWN_TIMEOUT": "10s",
                        "FOLDSPACE_SYNC_KAFKA_PROPERTIES": "session.timeout.ms=6000,heartbeat.interval.ms=500"])
    }

    @Test func killNineMidStreamThenRestartIsExact() async throws {
        let group = "kill-\(UUID().uuidString.prefix(6))"
        let kafka = try await MockKafkaProcess(topics: ["events:3", "\(group)-state:3"])
        defer { Task { await kafka.stop() } }
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        try await sandbox.start()
        var s = VisitReference(users: 12)
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", s.messages(0..<240))
        let first = try start(kafka, sandbox, group: group)
        // Kill as soon as delivery starts: likely before the first checkpoint of what was folded.
        #expect(await waitUntil(.seconds(30)) { sandbox.requestCount >= 1 }, "\(first.stderr.suffix(1500))")
        first.signal(SIGKILL)
        _ = await first.wait(timeout: .seconds(10))
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", s.messages(240..<480))
        let second = try start(kafka, sandbox, group: group)
        #expect(await waitUntil(.seconds(60)) { s.allDelivered(sandbox) }, "\(second.stderr.suffix(2000))")
        s.verify(sandbox, "after kill -9")
        second.signal(SIGTERM)
        #expect(await second.wait(timeout: .seconds(30)) == 0)
        #expect(second.stderr.contains("partition restored"))
        await sandbox.stop()
    }

    @Test func survivorTakesOverAKilledInstance() async throws {
        let group = "pair-\(UUID().uuidString.prefix(6))"
        let kafka = try await MockKafkaProcess(topics: ["events:4", "\(group)-state:4"])
        defer { Task { await kafka.stop() } }
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        try await sandbox.start()
        var s = VisitReference(users: 16)
        let a = try start(kafka, sandbox, group: group)
        let b = try start(kafka, sandbox, group: group)
        #expect(await waitUntil(.seconds(30)) { a.stderr.contains("partitions assigned") && b.stderr.contains("partitions assigned") })
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", s.messages(0..<320))
        #expect(await waitUntil(.seconds(30)) { s.allDelivered(sandbox) })
        try await Task.sleep(for: .seconds(1)) // a checkpoint after the last fold
        a.signal(SIGKILL)
        _ = await a.wait(timeout: .seconds(10))
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", s.messages(320..<640))
        #expect(await waitUntil(.seconds(60)) { s.allDelivered(sandbox) }, "\(b.stderr.suffix(2000))")
        s.verify(sandbox, "after one of two was killed")
        b.signal(SIGTERM)
        #expect(await b.wait(timeout: .seconds(30)) == 0)
        await sandbox.stop()
    }

    @Test func rollingRestartWithSigtermLosesNothingAndCountsNothingTwice() async throws {
        let group = "roll-\(UUID().uuidString.prefix(6))"
        let kafka = try await MockKafkaProcess(topics: ["events:4", "\(group)-state:4"])
        defer { Task { await kafka.stop() } }
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        try await sandbox.start()
        var s = VisitReference(users: 10)
        var a = try start(kafka, sandbox, group: group)
        var b = try start(kafka, sandbox, group: group)
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", s.messages(0..<150))
        #expect(await waitUntil(.seconds(40)) { s.allDelivered(sandbox) })
        // Restart a, then b, producing while each is down.
        a.signal(SIGTERM)
        #expect(await a.wait(timeout: .seconds(30)) == 0)
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", s.messages(150..<300))
        a = try start(kafka, sandbox, group: group)
        #expect(await waitUntil(.seconds(40)) { s.allDelivered(sandbox) })
        b.signal(SIGTERM)
        #expect(await b.wait(timeout: .seconds(30)) == 0)
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", s.messages(300..<450))
        b = try start(kafka, sandbox, group: group)
        #expect(await waitUntil(.seconds(60)) { s.allDelivered(sandbox) }, "\(a.stderr.suffix(1500))")
        s.verify(sandbox, "after a rolling restart")
        a.signal(SIGTERM)
        b.signal(SIGTERM)
        #expect(await a.wait(timeout: .seconds(30)) == 0)
        #expect(await b.wait(timeout: .seconds(30)) == 0)
        await sandbox.stop()
    }

    @Test func sigtermDuringARebalanceLosesNothing() async throws {
        let group = "rebal-\(UUID().uuidString.prefix(6))"
        let kafka = try await MockKafkaProcess(topics: ["events:4", "\(group)-state:4"])
        defer { Task { await kafka.stop() } }
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        try await sandbox.start()
        var s = VisitReference(users: 12)
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", s.messages(0..<240))
        let a = try start(kafka, sandbox, group: group)
        #expect(await waitUntil(.seconds(30)) { a.stderr.contains("partitions assigned") })
        // b joins: the group rebalances; a is told to stop while that is under way.
        let b = try start(kafka, sandbox, group: group)
        try await Task.sleep(for: .milliseconds(300))
        a.signal(SIGTERM)
        #expect(await a.wait(timeout: .seconds(40)) == 0, "\(a.stderr.suffix(1500))")
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", s.messages(240..<480))
        #expect(await waitUntil(.seconds(60)) { s.allDelivered(sandbox) }, "\(b.stderr.suffix(1500))")
        s.verify(sandbox, "after SIGTERM during a rebalance")
        b.signal(SIGTERM)
        #expect(await b.wait(timeout: .seconds(30)) == 0)
        await sandbox.stop()
    }

    @Test func foldspaceDownKeepsMemoryBoundedAndDeliversAfterwards() async throws {
        let group = "down-\(UUID().uuidString.prefix(6))"
        let kafka = try await MockKafkaProcess(topics: ["events:2", "\(group)-state:2"])
        defer { Task { await kafka.stop() } }
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        sandbox.scriptAll(Array(repeating: .init(status: 503), count: 100_000))
        try await sandbox.start()
        var s = VisitReference(users: 20)
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", s.messages(0..<400))
        let d = try start(kafka, sandbox, group: group)
        try await Task.sleep(for: .seconds(8))
        #expect(sandbox.latestAcknowledged().isEmpty)
        let rss = peakRSSKiB(d.process.processIdentifier)
        #expect(rss > 0 && rss < 400 * 1024, "peak RSS \(rss) KiB while Foldspace was down")
        sandbox.clearScripts() // Foldspace is back
        #expect(await waitUntil(.seconds(60)) { s.allDelivered(sandbox) }, "\(d.stderr.suffix(1500))")
        s.verify(sandbox, "after Foldspace came back")
        d.signal(SIGTERM)
        #expect(await d.wait(timeout: .seconds(30)) == 0)
        await sandbox.stop()
    }
}

/// VmHWM of a process, in KiB (0 if unknown).
func peakRSSKiB(_ pid: Int32) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
    return 0
}
