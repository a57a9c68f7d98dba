import FoldspaceSandbox
import Foundation
import Testing

/// Events with several visits per user, and an independent reference of what the last
/// delivered body must say: visits (sessions split by gaps over 30 minutes), first and
/// last seen.
struct VisitScenario {
    let users: Int
    let base = Int64(Date().timeIntervalSince1970 * 1000) - 10 * 86_400_000
    private(set) var times: [String: [Int64]] = [:]

    init(users: Int) { self.users = users }

    /// Events `range` of the stream: event i belongs to user i % users; every 3rd event
    /// of a user starts a new visit (2 h later), the others are a minute apart.
    mutating func messages(_ range: Range<Int>) -> [(key: String, value: String)] {
        range.map { i in
            let id = "v\(i % users)"
            let k = i / users
            let t = base + Int64(k / 3) * 7_200_000 + Int64(k % 3) * 60_000 + Int64(i % users)
            times[id, default: []].append(t)
            let type = k % 2 == 0 ? "page" : "track"
            return (id, #"{"type":"\#(type)","event":"Step","userId":"\#(id)","messageId":"m\#(i)","timestamp":"\#(iso8601(t))","context":{"library":{"name":"analytics-node","version":"6.0.0"}}}"#)
        }
    }

    func expected(_ id: String) -> (visits: Int, first: Int64, last: Int64) {
        let sorted = (times[id] ?? []).sorted()
        var visits = sorted.isEmpty ? 0 : 1
        for (a, b) in zip(sorted, sorted.dropFirst()) where b - a > 30 * 60_000 { visits += 1 }
        return (visits, sorted.first ?? 0, sorted.last ?? 0)
    }

    /// Every user's last acknowledged body must match the reference exactly.
    func verify(_ sandbox: FoldspaceSandbox, _ context: String = "") {
        let latest = sandbox.latestAcknowledged()
        for u in 0..<users {
            let id = "v\(u)"
            let want = expected(id)
            guard let body = latest[id]?.json else {
                Issue.record("\(context): \(id) never delivered")
                continue
            }
            #expect(body["numberOfVisits"] as? Int == want.visits, "\(context): visits of \(id)")
            #expect(body["firstVisitDate"] as? Int64 == want.first, "\(context): firstVisitDate of \(id)")
            #expect(body["lastSeenDate"] as? Int64 == want.last, "\(context): lastSeenDate of \(id)")
        }
    }

    func allDelivered(_ sandbox: FoldspaceSandbox) -> Bool {
        let latest = sandbox.latestAcknowledged()
        return (0..<users).allSatisfy { u in
            let id = "v\(u)"
            return latest[id]?.json?["lastSeenDate"] as? Int64 == expected(id).last
                && latest[id]?.json?["numberOfVisits"] as? Int == expected(id).visits
        }
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
        var s = VisitScenario(users: 12)
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
        var s = VisitScenario(users: 16)
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
        var s = VisitScenario(users: 10)
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

    @Test func foldspaceDownKeepsMemoryBoundedAndDeliversAfterwards() async throws {
        let group = "down-\(UUID().uuidString.prefix(6))"
        let kafka = try await MockKafkaProcess(topics: ["events:2", "\(group)-state:2"])
        defer { Task { await kafka.stop() } }
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        sandbox.scriptAll(Array(repeating: .init(status: 503), count: 100_000))
        try await sandbox.start()
        var s = VisitScenario(users: 20)
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
