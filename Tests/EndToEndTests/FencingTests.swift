import Foundation
import Simulation
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Exactly-once state against a broker that fences (tansu; see ``TansuBroker``): a former
/// owner that wakes up after its partitions moved writes nothing that counts.
@Suite(.serialized) struct FencingTests {
    let apiKey = "fence-key-\(UUID().uuidString.prefix(8))"
    /// The zombie's own key: the stand-in tells its requests apart by it.
    let zombieKey = "zombie-key-\(UUID().uuidString.prefix(8))"

    func daemon(
        _ tansu: TansuBroker, _ sandbox: FoldspaceSandbox, group: String, commitInterval: String,
        key: String? = nil, debounce: String = "200ms", maxWait: String = "1s"
    ) throws -> Child {
        var env = tansu.environment
        env["FOLDSPACE_API_KEY"] = key ?? apiKey
        env["FOLDSPACE_SYNC_SEND_NUMBER_OF_VISITS"] = "true"
        env["FOLDSPACE_SYNC_COMMIT_INTERVAL"] = commitInterval
        env["FOLDSPACE_SYNC_SHUTDOWN_TIMEOUT"] = "10s"
        // One record per batch: tansu's high watermark counts batches (restores read to it).
        env["FOLDSPACE_SYNC_KAFKA_PROPERTIES"] = "session.timeout.ms=6000,heartbeat.interval.ms=500,batch.num.messages=1,log_level=3"
        for (k, v) in VisitReference.pqlEnvironment { env[k] = v }
        return try Child(
            [
                "run", "--brokers", tansu.bootstrap, "--topic", "events", "--group", group,
                "--foldspace-url", sandbox.baseURL, "--debounce", debounce, "--max-wait", maxWait,
                "--admin-listen", "127.0.0.1:0",
            ], env: env)
    }

    /// Lines of a daemon's log that say which partitions it was given.
    func assignedBoth(_ d: Child) -> Bool {
        d.stderr.split(separator: "\n").contains {
            $0.contains("partitions assigned") && $0.contains("events[0]") && $0.contains("events[1]")
        }
    }

    /// A changelog that is not compacted loses users after its retention: refused at
    /// start (exit 2, a configuration error), naming the topic and its policy.
    @Test func aChangelogThatIsNotCompactedIsRefused() async throws {
        let group = "policy-\(UUID().uuidString.prefix(6))"
        let tansu = try await TansuBroker(topics: [("events", 1, [:]), ("\(group)-state", 1, ["cleanup.policy": "delete"])])
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        try await sandbox.start()
        let d = try daemon(tansu, sandbox, group: group, commitInterval: "1s")
        #expect(await d.wait(timeout: .seconds(60)) == 2, "\(d.stderr.suffix(1500))")
        #expect(d.stderr.contains("\(group)-state has cleanup.policy=delete"), "\(d.stderr.suffix(1500))")
        await sandbox.stop()
        await tansu.stop()
    }

    /// A changelog that takes smaller record batches than the producer writes (Kafka
    /// refuses such a batch whole: every checkpoint writing one would fail for good):
    /// refused at start (exit 2), naming the topic, its limit and the ways out. (tansu
    /// keeps a topic's `max.message.bytes` and describes it, but does not enforce it.)
    @Test func aChangelogThatTakesSmallerBatchesThanTheProducerWritesIsRefused() async throws {
        let group = "limit-\(UUID().uuidString.prefix(6))"
        let tansu = try await TansuBroker(topics: [
            ("events", 1, [:]), ("\(group)-state", 1, ["cleanup.policy": "compact", "max.message.bytes": "8192"]),
        ])
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        try await sandbox.start()
        let d = try daemon(tansu, sandbox, group: group, commitInterval: "1s")
        #expect(await d.wait(timeout: .seconds(60)) == 2, "\(d.stderr.suffix(1500))")
        #expect(d.stderr.contains("\(group)-state takes record batches of at most 8192 bytes"), "\(d.stderr.suffix(1500))")
        await sandbox.stop()
        await tansu.stop()
    }

    @Test func aZombieIsFencedAndTheNewOwnersStateWins() async throws {
        let group = "zombie-\(UUID().uuidString.prefix(6))"
        let tansu = try await TansuBroker(topics: [("events", 2, [:]), ("\(group)-state", 2, ["cleanup.policy": "compact"])])
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey, zombieKey])
        try await sandbox.start()
        var verifier = FaultVerifier(reference: VisitReference(users: 6, prefix: "zombie-"), sandbox: sandbox)
        try tansu.produce(topic: "events", verifier.reference.messages(0..<60))

        // A folds everything, but sends only after a 5 s quiet period and checkpoints
        // once a minute: when it is stopped, its requests and changelog writes are still
        // to come.
        let a = try daemon(tansu, sandbox, group: group, commitInterval: "60s", key: zombieKey, debounce: "5s", maxWait: "10s")
        let port = try #require(await adminPort(a), "\(a.stderr.suffix(1000))")
        var folded = false
        let deadline = ContinuousClock.now + .seconds(60)
        while !folded && ContinuousClock.now < deadline {
            if let (data, _) = try? await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)/metrics")!) {
                folded = String(decoding: data, as: UTF8.self).contains(#"foldspace_sync_events_total{result="folded"} 60"#)
            }
            if !folded { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(folded, "\(a.stderr.suffix(1500))")
        a.signal(SIGSTOP)

        // B takes over once A's session has timed out: claiming the partitions fences A's
        // changelog writers; B reads the events again from the last commit (none).
        let b = try daemon(tansu, sandbox, group: group, commitInterval: "300ms")
        #expect(await waitUntil(.seconds(60)) { assignedBoth(b) }, "\(b.stderr.suffix(2000))")
        try tansu.produce(topic: "events", verifier.reference.messages(60..<120))
        await verifier.settleAndVerify([b], "B took over")

        // A wakes up believing it owns both partitions, with users due to be sent and 60
        // events' worth of state to write: it sends nothing (it notices it was stopped
        // past its session), the broker refuses its transaction, and it exits to rejoin.
        a.signal(SIGCONT)
        let status = await a.wait(timeout: .seconds(60))
        #expect(status == 1, "the zombie: \(a.stderr.suffix(3000))")
        #expect(
            a.stderr.contains("did not run for as long as the group's session timeout") || a.stderr.contains("fenced"),
            "\(a.stderr.suffix(2000))")
        #expect(sandbox.requests.filter { $0.apiKey == zombieKey }.isEmpty, "the zombie sent what it held")

        // What the changelog holds is B's: a new owner would restore every user with
        // each Step event counted once (a zombie's write of its older state would show).
        var env = tansu.environment
        for (k, v) in VisitReference.pqlEnvironment { env[k] = v }
        let users = (0..<6).map { verifier.reference.id($0) }
        func changelogSteps() async throws -> [String: Int] {
            let inspect = try Child(["inspect", "--brokers", tansu.bootstrap, "--topic", "events", "--group", group] + users, env: env)
            #expect(await inspect.wait(timeout: .seconds(30)) == 0, "\(inspect.stderr.suffix(1000))")
            let entries = (try? JSONSerialization.jsonObject(with: Data(inspect.stdout.utf8)) as? [[String: Any]]) ?? []
            var steps: [String: Int] = [:]
            for e in entries {
                let counts = (e["state"] as? [String: Any])?["keyEventCounts"] as? [String: Any]
                steps[e["identifyId"] as? String ?? ""] = counts?["Step"] as? Int
            }
            return steps
        }
        let steps = try await changelogSteps()
        for u in users {
            #expect(steps[u] == verifier.reference.steps[u], "\(u): the changelog counts \(String(describing: steps[u])) Step events")
        }

        // B goes on.
        try tansu.produce(topic: "events", verifier.reference.messages(120..<150))
        await verifier.settleAndVerify([b], "after the zombie")
        b.signal(SIGTERM)
        #expect(await b.wait(timeout: .seconds(40)) == 0, "\(b.stderr.suffix(1000))")
        #expect(!(a.stderr + b.stderr).contains(apiKey), "the API key reached the logs")
        await sandbox.stop()
        await tansu.stop()
    }
}
