import Foundation
import Simulation
import Testing

/// `foldspace-sync run` on topic `events` as a member of `group`, durable, reporting to
/// `sandbox` quickly (200 ms debounce, 300 ms checkpoints, a 6 s session), with
/// ``VisitReference``'s PQL model and `env` on top.
func startGroupMember(
    _ kafka: MockKafkaProcess, _ sandbox: FoldspaceSandbox, group: String, apiKey: String, env: [String: String] = [:]
) throws -> Child {
    try Child(
        [
            "run", "--brokers", kafka.bootstrap, "--topic", "events", "--group", group,
            "--foldspace-url", sandbox.baseURL, "--debounce", "200ms", "--max-wait", "1s",
            "--admin-listen", "127.0.0.1:0",
        ],
        env: [
            "FOLDSPACE_API_KEY": apiKey, "FOLDSPACE_SYNC_SEND_NUMBER_OF_VISITS": "true",
            "FOLDSPACE_SYNC_COMMIT_INTERVAL": "300ms", "FOLDSPACE_SYNC_SHUTDOWN_TIMEOUT": "10s",
            "FOLDSPACE_SYNC_KAFKA_PROPERTIES": "session.timeout.ms=6000,heartbeat.interval.ms=500",
        ]
        .merging(VisitReference.pqlEnvironment) { a, _ in a }.merging(env) { _, b in b })
}

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
        try startGroupMember(kafka, sandbox, group: group, apiKey: apiKey)
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
        try await Task.sleep(for: .seconds(1))  // a checkpoint after the last fold
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
}
