import Foundation
import Simulation
import Testing

/// The built binary against a mock cluster in another process, events produced by kcat,
/// and an in-process Foldspace stand-in that enforces the documented schema.
@Suite(.serialized) struct BinaryEndToEndTests {
    let apiKey = "fs-test-key-\(UUID().uuidString.prefix(8))"

    func runDaemon(
        _ kafka: MockKafkaProcess, _ sandbox: FoldspaceSandbox, group: String,
        debounce: String = "300ms", maxWait: String = "2s", extra: [String] = []
    ) throws -> Child {
        try Child(
            [
                "run", "--brokers", kafka.bootstrap, "--topic", "events", "--group", group,
                "--foldspace-url", sandbox.baseURL, "--debounce", debounce, "--max-wait", maxWait,
                "--admin-listen", "127.0.0.1:0", "--log-level", "debug",
            ] + extra,
            env: ["FOLDSPACE_API_KEY": apiKey, "FOLDSPACE_SYNC_KAFKA_PROPERTIES": "session.timeout.ms=6000"])
    }

    func check(_ sandbox: FoldspaceSandbox, against reference: [String: ReferenceUser]) {
        let latest = sandbox.latestAcknowledged()
        for (id, ref) in reference {
            guard let r = latest[id], let body = r.json else {
                Issue.record("user \(id) was never delivered")
                continue
            }
            #expect(body["identifyId"] as? String == id)
            #expect(body["firstVisitDate"] as? Int64 == ref.first, "firstVisitDate of \(id)")
            #expect(body["lastSeenDate"] as? Int64 == ref.last, "lastSeenDate of \(id)")
            #expect(body["email"] as? String == ref.email?.value, "email of \(id)")
            #expect(body["userType"] as? String == (ref.sawUserId ? "USER" : "ANONYMOUS"))
        }
    }

    @Test func deliversEveryUserOncePerBurstWithValidRequests() async throws {
        let kafka = try await MockKafkaProcess(topics: ["events:4"])
        defer { Task { await kafka.stop() } }
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        try await sandbox.start()

        var s = Scenario()
        let ids = (0..<40).map { "user-\($0)" } + ["a/b c", "ünïcødé", "x?y#z%2F", "../../etc"]
        for (i, id) in ids.enumerated() {
            s.identify(id, at: Int64(i) * 1000, email: "\(i)@example.com", name: "José O'Neil \(i)")
            for k in 1...5 { s.track(id, at: Int64(i) * 1000 + Int64(k) * 10) }
            s.identify(id, at: Int64(i) * 1000 + 100, email: "new\(i)@example.com", name: "Zoë")
        }
        s.track("anon-1", at: 5, anonymous: true)
        var messages = s.messages
        // A group call and a createdAt trait for one user: subscription and signUpDate.
        messages.append(
            (
                "user-1",
                #"{"type":"group","userId":"user-1","groupId":"acct-42","timestamp":"\#(iso8601(s.base + 1050))","traits":{"name":"Acme","email":"billing@acme.io"}}"#
            ))
        messages.append(
            (
                "user-2",
                #"{"type":"identify","userId":"user-2","timestamp":"\#(iso8601(s.base + 2050))","traits":{"createdAt":"2024-03-01T00:00:00Z","title":"VP Sales"}}"#
            ))
        // Garbage on the topic must not stop anything.
        messages.insert(("g1", "not json"), at: 3)
        messages.insert(("g2", "[1,2,3]"), at: 10)
        messages.insert(("g3", String(repeating: "[", count: 500) + String(repeating: "]", count: 500)), at: 20)
        messages.insert(("g4", #"{"type":"identify","userId":{"nested":true}}"#), at: 30)
        messages.insert(("g5", #"{"type":"track","userId":"big","pad":""# + String(repeating: "x", count: 300_000) + #""}"#), at: 40)
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", messages)

        let daemon = try runDaemon(kafka, sandbox, group: "e2e-\(UUID().uuidString.prefix(6))")
        let allIds = Set(s.reference.keys)
        let delivered = await waitUntil(.seconds(60)) { Set(sandbox.latestAcknowledged().keys).isSuperset(of: allIds) }
        #expect(delivered, "delivered \(sandbox.latestAcknowledged().count) of \(allIds.count); stderr: \(daemon.stderr.suffix(2000))")
        try await Task.sleep(for: .seconds(3))  // anything further would be a second PUT
        // The two extra calls sit inside the users' existing time ranges.
        check(sandbox, against: s.reference)
        let latest = sandbox.latestAcknowledged()
        #expect(latest["user-1"]?.json?["allSubscriptionIdentifiers"] as? [String] == ["acct-42"])
        #expect(latest["user-1"]?.json?["email"] as? String == "new1@example.com")  // group traits are not the user's
        #expect(latest["user-2"]?.json?["signUpDate"] as? Int64 == 1_709_251_200_000)
        #expect(latest["user-2"]?.json?["role"] as? String == "VP Sales")
        #expect(latest["user-0"]?.json?["name"] as? String == "Zoe")
        for r in latest.values {
            let score = r.json?["pqlScore"] as? Double
            #expect(score != nil && (0...100).contains(score!), "pqlScore of \(r.identifyId)")
        }

        let requests = sandbox.requests
        #expect(requests.allSatisfy { $0.violations.isEmpty }, "\(requests.filter { !$0.violations.isEmpty }.map(\.violations))")
        #expect(requests.allSatisfy { $0.apiKey == apiKey })
        #expect(requests.allSatisfy { $0.userAgent?.hasPrefix("foldspace-sync/") == true })
        #expect(requests.allSatisfy { $0.contentType == "application/json" })
        // One PUT per user for a burst (a user may split across the max wait at most once).
        #expect(requests.count <= allIds.count + 2, "\(requests.count) PUTs for \(allIds.count) users")
        // Each id travels as exactly one percent-encoded path segment.
        let weird = requests.first { $0.identifyId == "a/b c" }
        #expect(weird?.rawPath == "/v1/user/a%2Fb%20c")
        #expect(requests.first { $0.identifyId == "x?y#z%2F" }?.rawPath == "/v1/user/x%3Fy%23z%252F")

        daemon.signal(SIGTERM)
        let status = await daemon.wait(timeout: .seconds(30))
        #expect(status == 0)
        let output = daemon.stdout + daemon.stderr
        #expect(!output.contains(apiKey), "the API key leaked into the output")
        #expect(!output.contains("@example.com"), "an email reached the logs")
        await sandbox.stop()
    }

    @Test func sigtermMidStreamLosesNothing() async throws {
        let kafka = try await MockKafkaProcess(topics: ["events:2"])
        defer { Task { await kafka.stop() } }
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        try await sandbox.start()
        let group = "e2e-term-\(UUID().uuidString.prefix(6))"

        var s = Scenario()
        for i in 0..<30 {
            s.identify("u\(i)", at: Int64(i) * 100, email: "u\(i)@example.com", name: "U \(i)")
            s.track("u\(i)", at: Int64(i) * 100 + 50)
        }
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", s.messages)
        // A long debounce: when SIGTERM comes, every user is still waiting to be sent.
        let first = try runDaemon(kafka, sandbox, group: group, debounce: "30s", maxWait: "60s")
        let folded = await waitUntil(.seconds(30)) { first.stderr.contains("partitions assigned") }
        #expect(folded)
        try await Task.sleep(for: .seconds(2))
        #expect(sandbox.requestCount == 0)
        first.signal(SIGTERM)
        let status = await first.wait(timeout: .seconds(40))
        #expect(status == 0, "\(first.stderr.suffix(2000))")
        // Everything folded before the signal was flushed on the way out.
        check(sandbox, against: s.reference)
        let beforeRestart = sandbox.requestCount

        // More events, then a new instance in the same group: it starts after the
        // committed offsets, so nothing is sent twice and nothing is missed.
        var more = Scenario()
        for i in 0..<10 { more.track("u\(i)", at: 10_000 + Int64(i)) }
        try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", more.messages)
        let second = try runDaemon(kafka, sandbox, group: group)
        let done = await waitUntil(.seconds(40)) { sandbox.requestCount >= beforeRestart + 10 }
        #expect(done, "\(second.stderr.suffix(2000))")
        try await Task.sleep(for: .seconds(2))
        let latest = sandbox.latestAcknowledged()
        for i in 0..<10 {
            #expect(latest["u\(i)"]?.json?["lastSeenDate"] as? Int64 == more.reference["u\(i)"]?.last)
        }
        // Users with no new events were not re-sent by the second instance.
        #expect(sandbox.requestCount == beforeRestart + 10)
        second.signal(SIGTERM)
        #expect(await second.wait(timeout: .seconds(30)) == 0)
        await sandbox.stop()
    }

    @Test func checkConfigRejectsBadConfigurationNamingTheKey() async throws {
        let cases: [([String], String)] = [
            (["check-config", "--brokers", "b:1", "--group", "g"], "topics"),
            (["check-config", "--brokers", "b:1", "--topic", "t", "--group", "g", "--debounce", "fast"], "debounce"),
            (["check-config", "--brokers", "b:1", "--topic", "t", "--group", "g", "--foldspace-url", "ftp://x"], "foldspace_url"),
            (["check-config", "--topic", "t", "--group", "g"], "brokers"),
        ]
        for (args, key) in cases {
            let c = try Child(args, env: ["FOLDSPACE_API_KEY": "k"])
            #expect(await c.wait(timeout: .seconds(20)) == 2)  // a configuration error
            #expect(c.stderr.contains(key), "\(args): \(c.stderr)")
        }
        let ok = try Child(["check-config", "--brokers", "b:1", "--topic", "t", "--group", "g"], env: ["FOLDSPACE_API_KEY": apiKey])
        #expect(await ok.wait(timeout: .seconds(20)) == 0)
        #expect(ok.stdout.contains("api_key: <redacted>"))
        #expect(!ok.stdout.contains(apiKey))
    }
}
