import Foundation
import Kafka
import Logging
import Simulation
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The one verifier every fault case ends with: each user's last acknowledged body equals
/// an independent fold of all its events (visits, first and last seen: a lost event shows;
/// the "Step" key event's count read back from the PQL score: a double count shows), no request arrived inside a `Retry-After` window, no request broke
/// the schema, and every daemon still running stayed within a peak RSS bound.
struct FaultVerifier {
    var reference: VisitReference
    let sandbox: FoldspaceSandbox
    var peakRSSLimitKiB = 400 * 1024

    func settleAndVerify(_ running: [Child], _ context: String, timeout: Duration = .seconds(60)) async {
        _ = await waitUntil(timeout) { reference.allDelivered(sandbox) }
        let mismatches = reference.mismatches(sandbox)
        #expect(mismatches.isEmpty, "\(context): \(mismatches.prefix(8)); \(running.last?.stderr.suffix(1500) ?? "")")
        let inside = sandbox.retryAfterViolations
        #expect(inside.isEmpty, "\(context): \(inside.count) requests inside Retry-After: \(inside.prefix(5))")
        #expect(sandbox.violationCount == 0, "\(context): \(sandbox.violationCount) requests broke the schema")
        for d in running {
            #expect(d.process.isRunning, "\(context): a daemon exited: \(d.stderr.suffix(1500))")
            let rss = peakRSSKiB(d.process.processIdentifier)
            #expect(rss > 0 && rss < peakRSSLimitKiB, "\(context): peak RSS \(rss) KiB")
        }
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

/// Every fault of the suite against the built binary: the Kafka cluster in another
/// process (faults injected through `mock-kafka`'s control input), events produced by
/// `kcat`, Foldspace as a scripted in-process stand-in, and ``FaultVerifier`` at the end.
/// Durable state (the default) throughout.
@Suite(.serialized) struct FaultSuiteTests {
    let apiKey = "fault-key-\(UUID().uuidString.prefix(8))"

    struct Setup {
        let kafka: MockKafkaProcess
        let sandbox: FoldspaceSandbox
        let group: String
        var verifier: FaultVerifier
    }

    func setUp(_ name: String, partitions: Int = 4, brokers: Int = 1, users: Int = 12, moreStateTopics: [String] = []) async throws -> Setup
    {
        let group = "\(name)-\(UUID().uuidString.prefix(6))"
        let kafka = try await MockKafkaProcess(
            topics: ["events:\(partitions)", "\(group)-state:\(partitions)"]
                + moreStateTopics.map { "\(group)-\($0):\(partitions)" }, brokers: brokers)
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        try await sandbox.start()
        return Setup(
            kafka: kafka, sandbox: sandbox, group: group,
            verifier: FaultVerifier(reference: VisitReference(users: users, prefix: "\(name)-"), sandbox: sandbox))
    }

    func tearDown(_ s: Setup, _ daemons: [Child]) async {
        for d in daemons { d.signal(SIGTERM) }
        for d in daemons {
            let code = await d.wait(timeout: .seconds(40))
            #expect(code == 0, "exit \(String(describing: code)): \(d.stderr.suffix(3000))")
        }
        let output = daemons.map { $0.stdout + $0.stderr }.joined()
        #expect(!output.contains(apiKey), "the API key reached the logs")
        await s.sandbox.stop()
        await s.kafka.stop()
    }

    func daemon(_ s: Setup, env: [String: String] = [:], args: [String] = [], keyFromEnvironment: Bool = true) throws -> Child {
        var e = [
            "FOLDSPACE_SYNC_SEND_NUMBER_OF_VISITS": "true",
            "FOLDSPACE_SYNC_COMMIT_INTERVAL": "300ms", "FOLDSPACE_SYNC_SHUTDOWN_TIMEOUT": "10s",
            "FOLDSPACE_SYNC_KAFKA_PROPERTIES": "session.timeout.ms=6000,heartbeat.interval.ms=500,retry.backoff.ms=50",
        ]
        for (k, v) in VisitReference.pqlEnvironment { e[k] = v }  // the "Step" count the verifier reads back
        if keyFromEnvironment { e["FOLDSPACE_API_KEY"] = apiKey }
        for (k, v) in env { e[k] = v }
        return try Child(
            [
                "run", "--brokers", s.kafka.bootstrap, "--topic", "events", "--group", s.group,
                "--foldspace-url", s.sandbox.baseURL, "--debounce", "200ms", "--max-wait", "1s",
                "--admin-listen", "127.0.0.1:0",
            ] + args, env: e)
    }

    func produce(_ s: inout Setup, _ range: Range<Int>) throws {
        try kcatProduce(bootstrap: s.kafka.bootstrap, topic: "events", s.verifier.reference.messages(range))
    }

    // MARK: Kafka faults

    @Test func brokerLossAndLeaderMoves() async throws {
        var s = try await setUp("brokers", brokers: 3)
        try produce(&s, 0..<120)
        let d = try daemon(s)
        #expect(await waitUntil { s.verifier.reference.allDelivered(s.sandbox) }, "\(d.stderr.suffix(1500))")
        // A broker goes away for a while (events keep being produced: those for its
        // partitions wait in the producer), partitions change leaders, it comes back.
        try await s.kafka.control("broker-down 2")
        let during = s.verifier.reference.messages(120..<240)
        let bootstrap = s.kafka.bootstrap
        let producing = Task.detached { try kcatProduce(bootstrap: bootstrap, topic: "events", during) }
        try await Task.sleep(for: .seconds(3))
        try await s.kafka.control("leader events 0 3")
        try await s.kafka.control("leader events 1 1")
        try await s.kafka.control("broker-up 2")
        try await producing.value
        try await s.kafka.control("leader events 2 2")
        try produce(&s, 240..<360)
        await s.verifier.settleAndVerify([d], "broker loss and leader moves")
        await tearDown(s, [d])
    }

    @Test func requestErrorsOnFetchCommitJoinAndProduce() async throws {
        var s = try await setUp("reqerr")
        try produce(&s, 0..<120)
        try await s.kafka.control("errors JoinGroup 2 15")  // COORDINATOR_NOT_AVAILABLE on the first joins
        let d = try daemon(s)
        #expect(await waitUntil { s.verifier.reference.allDelivered(s.sandbox) }, "\(d.stderr.suffix(1500))")
        try await s.kafka.control("errors Fetch 5")  // REQUEST_TIMED_OUT
        try await s.kafka.control("errors OffsetCommit 3")
        try await s.kafka.control("errors Produce 3")  // the changelog's writes
        try produce(&s, 120..<300)
        await s.verifier.settleAndVerify([d], "request errors")
        await tearDown(s, [d])
    }

    // MARK: Foldspace faults

    @Test func foldspaceDownForSixtySeconds() async throws {
        var s = try await setUp("down", partitions: 2, users: 20)
        s.sandbox.scriptAll(Array(repeating: .init(status: 503), count: 1_000_000))
        try produce(&s, 0..<200)
        let d = try daemon(s)
        let start = ContinuousClock.now
        // Events keep coming while Foldspace is down.
        for k in 1..<6 {
            try await Task.sleep(for: .seconds(10))
            try produce(&s, (k * 200)..<((k + 1) * 200))
        }
        try await Task.sleep(until: start + .seconds(60))
        #expect(s.sandbox.latestAcknowledged().isEmpty)
        #expect(d.process.isRunning)
        s.sandbox.clearScripts()  // Foldspace is back
        await s.verifier.settleAndVerify([d], "after 60 s of Foldspace down")
        await tearDown(s, [d])
    }

    @Test func a429Storm() async throws {
        var s = try await setUp("storm", users: 30)
        // Every request for a while is refused with Retry-After: 1 (and one with 2).
        s.sandbox.scriptAll(
            Array(repeating: .init(status: 429, retryAfter: "1"), count: 20)
                + [.init(status: 429, retryAfter: "2")] + Array(repeating: .init(status: 429, retryAfter: "1"), count: 10))
        try produce(&s, 0..<300)
        let d = try daemon(s)
        await s.verifier.settleAndVerify([d], "a 429 storm", timeout: .seconds(90))
        #expect(s.sandbox.requests.filter { $0.status == 429 }.count == 31)
        await tearDown(s, [d])
    }

    /// Answers that once settled users silently, crashed, or were trusted too soon: a
    /// redirect (the breaker opens, nobody is settled or dead-lettered), a 429 whose
    /// Retry-After is an HTTP-date with an eleven-digit year (it overflowed and trapped),
    /// and answers slower than the request timeout (the outcome is unknown: the newest
    /// state goes again after the next acknowledgement).
    @Test func redirectsAbsurdRetryAfterAndTimeouts() async throws {
        var s = try await setUp("answers", users: 6)
        s.sandbox.scriptAll([
            .init(status: 307), .init(status: 307),
            .init(status: 429, retryAfter: "Sun, 06 Nov 99999999999 08:49:37 GMT"),
            .init(status: 200, delayMs: 2_500), .init(status: 200, delayMs: 2_500),
        ])
        try produce(&s, 0..<60)
        let d = try daemon(
            s, env: ["FOLDSPACE_SYNC_REQUEST_TIMEOUT": "1s", "FOLDSPACE_SYNC_BREAKER_PROBE_INTERVAL": "500ms"],
            args: ["--dead-letter-topic", "dead-letters"])
        await s.verifier.settleAndVerify([d], "redirects, an absurd Retry-After and timeouts")
        #expect(d.process.isRunning)
        #expect(d.stderr.contains("Foldspace answers 307 for every user"), "the breaker named the status")
        let statuses = s.sandbox.requests.map(\.status)
        #expect(statuses.filter { $0 == 307 }.count == 2)
        // Two requests timed out (their answers came after 1 s, so Foldspace applied them
        // then): each of those users was sent again after that late application, so the
        // stale write did not have the last word.
        // (The stand-in records a request when it answers: wait for the slow two.)
        var late: [FoldspaceSandbox.Received] = []
        #expect(
            await waitUntil(.seconds(30)) {
                late = s.sandbox.requests.filter { $0.respondedMs - $0.arrivedMs >= 2_000 }
                return late.count == 2
            }, "\(s.sandbox.requests.map { ($0.identifyId, $0.status, $0.respondedMs - $0.arrivedMs) })")
        #expect(
            await waitUntil(.seconds(30)) {
                late.allSatisfy { r in (s.sandbox.latestAcknowledged()[r.identifyId]?.arrivedMs ?? 0) > r.respondedMs }
            }, "a late write kept the last word")
        // Every user ends acknowledged with its newest state (the verifier), and nothing
        // was dead-lettered.
        let letters = (try? kcatConsume(bootstrap: s.kafka.bootstrap, topic: "dead-letters", format: "%k\n")) ?? ""
        #expect(letters.isEmpty, "\(letters)")
        await tearDown(s, [d])
    }

    /// `inspect` reads the changelog from outside: a user's state, the body that would go
    /// now (equal to what Foldspace acknowledged, once settled), the positions applied;
    /// an unknown id is said to be missing.
    @Test func inspectShowsWhatTheChangelogHolds() async throws {
        var s = try await setUp("inspect", partitions: 2, users: 3)
        try produce(&s, 0..<30)
        let d = try daemon(s)
        await s.verifier.settleAndVerify([d], "before inspect")
        let user = "inspect-1"
        var entries: [[String: Any]] = []
        // The changelog is written every commit_interval (300 ms here): until the settled
        // state is there, the body may still differ.
        let deadline = ContinuousClock.now + .seconds(30)
        repeat {
            // With the daemon's configuration (its PQL model, numberOfVisits), as an
            // operator would run it.
            var env = VisitReference.pqlEnvironment
            env["FOLDSPACE_SYNC_SEND_NUMBER_OF_VISITS"] = "true"
            let c = try Child(
                ["inspect", "--brokers", s.kafka.bootstrap, "--topic", "events", "--group", s.group, user, "nobody"],
                env: env)
            #expect(await c.wait(timeout: .seconds(30)) == 0, "\(c.stderr.suffix(1000))")
            entries = (try? JSONSerialization.jsonObject(with: Data(c.stdout.utf8)) as? [[String: Any]]) ?? []
            if entries.first?["differsFromAcknowledged"] as? Bool == false { break }
            try await Task.sleep(for: .milliseconds(300))
        } while ContinuousClock.now < deadline
        #expect(entries.count == 2)
        let u = entries.first ?? [:]
        #expect(u["found"] as? Bool == true)
        #expect(u["differsFromAcknowledged"] as? Bool == false, "\(u)")
        let body = u["body"] as? [String: Any]
        let acked = s.sandbox.latestAcknowledged()[user]?.json
        #expect(body?["lastSeenDate"] as? Int64 == acked?["lastSeenDate"] as? Int64)
        #expect(body?["numberOfVisits"] as? Int64 == acked?["numberOfVisits"] as? Int64)
        #expect(((u["state"] as? [String: Any])?["keyEventCounts"] as? [String: Any])?["Step"] != nil)
        let positions = u["appliedPositions"] as? [[String: Any]] ?? []
        #expect(!positions.isEmpty && positions.allSatisfy { ($0["source"] as? String)?.hasPrefix("events[") == true }, "\(positions)")
        #expect(entries.last?["identifyId"] as? String == "nobody")
        #expect(entries.last?["found"] as? Bool == false)
        await tearDown(s, [d])
    }

    /// `foldspace-sync resync` against a running daemon: every user once more (same body),
    /// then one listed user only, counted in /metrics; the fold is untouched.
    @Test func resyncResendsThroughTheRunningDaemon() async throws {
        var s = try await setUp("resync", partitions: 2, users: 6)
        try produce(&s, 0..<60)
        let d = try daemon(s)
        await s.verifier.settleAndVerify([d], "before resync")
        let users = (0..<6).map { s.verifier.reference.id($0) }
        func acknowledged() -> [String: Int] {
            var n: [String: Int] = [:]
            for r in s.sandbox.requests where (200..<300).contains(r.status) { n[r.identifyId, default: 0] += 1 }
            return n
        }
        let before = acknowledged()
        let bodies = s.sandbox.latestAcknowledged().mapValues { $0.body }
        let all = try Child(["resync", "--all", "--brokers", s.kafka.bootstrap, "--topic", "events", "--group", s.group])
        #expect(await all.wait(timeout: .seconds(30)) == 0, "\(all.stderr.suffix(1000))")
        let written = try JSONSerialization.jsonObject(with: Data(all.stdout.utf8)) as? [String: Any]
        #expect((written?["control_records"] as? [String: Int]) == ["events": 2], "\(all.stdout)")
        #expect(
            await waitUntil(.seconds(30)) { users.allSatisfy { acknowledged()[$0] == (before[$0] ?? 0) + 1 } },
            "\(acknowledged()) after \(before); \(d.stderr.suffix(1500))")
        for u in users { #expect(s.sandbox.latestAcknowledged()[u]?.body == bodies[u], "\(u): the same state again") }

        let one = try Child(["resync", users[1], "--brokers", s.kafka.bootstrap, "--topic", "events", "--group", s.group])
        #expect(await one.wait(timeout: .seconds(30)) == 0, "\(one.stderr.suffix(1000))")
        #expect(await waitUntil(.seconds(30)) { acknowledged()[users[1]] == (before[users[1]] ?? 0) + 2 })
        let port = try #require(await adminPort(d), "\(d.stderr.suffix(1000))")
        let (data, _) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)/metrics")!)
        let metrics = String(decoding: data, as: UTF8.self)
        #expect(metrics.contains("foldspace_sync_resync_requests_total 4"), "two requests, each on both partitions")
        #expect(metrics.contains("foldspace_sync_resync_users_total 7"), "six users, then one")
        #expect(metrics.contains("foldspace_sync_resync_pending_partitions 0"))
        let now = acknowledged()
        for u in users where u != users[1] { #expect(now[u] == (before[u] ?? 0) + 1, "\(u) was not listed") }
        // Still folding as before: more events, and the verifier's counts.
        try produce(&s, 60..<90)
        await s.verifier.settleAndVerify([d], "after resync")
        await tearDown(s, [d])
    }

    /// A changelog partition holding a record the daemon cannot decode: that partition is
    /// held (nothing of it is consumed, /readyz says not ready, /healthz stays alive), the
    /// other goes on; a tombstone for the damaged key heals it, and nothing is lost.
    @Test func aRestoreThatFailsHoldsItsPartitionUntilItHeals() async throws {
        var s = try await setUp("heal", partitions: 2, users: 8)
        try runKcat(
            ["-P", "-b", s.kafka.bootstrap, "-t", "\(s.group)-state", "-p", "0", "-K", "\t", "-X", "log_level=3"],
            input: Data("damaged\tnot a state record\n".utf8))
        try produce(&s, 0..<80)
        let d = try daemon(s)
        let port = try #require(await adminPort(d), "\(d.stderr.suffix(1000))")
        func status(_ path: String) async -> Int? {
            guard let (_, r) = try? await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)\(path)")!) else { return nil }
            return (r as? HTTPURLResponse)?.statusCode
        }
        #expect(
            await waitUntil(.seconds(60)) { d.stderr.components(separatedBy: "state restore failed").count > 2 },
            "\(d.stderr.suffix(2000))")
        // The other partition is restored and consumed: some users arrive, not all.
        #expect(await waitUntil(.seconds(30)) { !s.sandbox.latestAcknowledged().isEmpty })
        #expect(!s.verifier.reference.allDelivered(s.sandbox), "partition 0 was consumed with no state")
        #expect(await status("/readyz") == 503)
        #expect(await status("/healthz") == 200, "a restore never stalls liveness")
        try runKcat(
            ["-P", "-b", s.kafka.bootstrap, "-t", "\(s.group)-state", "-p", "0", "-K", "\t", "-Z", "-X", "log_level=3"],
            input: Data("damaged\t\n".utf8))
        await s.verifier.settleAndVerify([d], "after the tombstone")
        #expect(await status("/readyz") == 200)
        await tearDown(s, [d])
    }

    /// A changelog lost under the group's committed offsets (deleted, recreated empty, or
    /// `state_topic` pointed elsewhere; here the last): the daemon must not consume on
    /// with no state, which sends every user regressed (visits from zero, a later first
    /// visit) and checkpoints that over what was lost. It holds the partitions, says so,
    /// and sends nothing.
    @Test func aLostChangelogHoldsItsPartitionsInsteadOfSendingRegressedUsers() async throws {
        var s = try await setUp("lost", partitions: 2, users: 8, moreStateTopics: ["empty"])
        try produce(&s, 0..<80)
        let first = try daemon(s)
        await s.verifier.settleAndVerify([first], "before the changelog is lost")
        first.signal(SIGTERM)
        #expect(await first.wait(timeout: .seconds(40)) == 0, "\(first.stderr.suffix(1000))")
        // The group's offsets are committed (on the mock, by the plain commit that follows
        // each transaction): what makes the empty changelog a lost one.
        let committed = try Child(
            [
                "python3", "-c",
                """
                import sys
                from confluent_kafka import Consumer, TopicPartition
                c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2]})
                print(sorted(p.offset for p in c.committed([TopicPartition("events", p) for p in (0, 1)], timeout=10)))
                c.close()
                """, s.kafka.bootstrap, s.group,
            ], executable: "/usr/bin/env")
        #expect(await committed.wait(timeout: .seconds(30)) == 0, "\(committed.stderr.suffix(1000))")
        #expect(!committed.stdout.contains("-"), "offsets not committed: \(committed.stdout)")
        let sent = s.sandbox.requestCount
        let d = try daemon(s, env: ["FOLDSPACE_SYNC_STATE_TOPIC": "\(s.group)-empty"])
        let port = try #require(await adminPort(d), "\(d.stderr.suffix(1000))")
        func get(_ path: String) async -> (Int, String)? {
            guard let (data, r) = try? await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)\(path)")!) else {
                return nil
            }
            return ((r as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
        }
        try produce(&s, 80..<160)
        // Both partitions refused, each at least twice (so the events above were there
        // to be consumed for a while).
        #expect(
            await waitUntil(.seconds(60)) {
                d.stderr.components(separatedBy: "the changelog holds nothing for this partition").count > 4
            }, "\(d.stderr.suffix(2000))")
        #expect(await get("/readyz")?.0 == 503)
        let metrics = await get("/metrics")?.1 ?? ""
        let refused = metrics.split(separator: "\n").first { $0.hasPrefix("foldspace_sync_restore_changelog_missing_total ") }
            .flatMap { Int($0.split(separator: " ").last ?? "") }
        #expect((refused ?? 0) >= 4, "\(refused.map(String.init) ?? "no metric")")
        #expect(s.sandbox.requestCount == sent, "users sent with no state")
        d.signal(SIGTERM)
        #expect(await d.wait(timeout: .seconds(40)) == 0, "\(d.stderr.suffix(1000))")
        // The way out that keeps the state right: the group's offsets reset to the
        // earliest (as `kafka-consumer-groups --reset-offsets --to-earliest` does), so the
        // retained history is folded again into the new changelog.
        let reset = try Child(
            [
                "python3", "-c",
                """
                import sys, time
                from confluent_kafka import Consumer, KafkaException, TopicPartition
                c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2], "enable.auto.commit": False,
                              "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
                # As a member of the group (librdkafka's mock refuses a commit from outside a
                # group that has had members): join, then commit the earliest offsets.
                got = []
                c.subscribe(["events"], on_assign=lambda _, parts: got.extend(parts))
                deadline = time.time() + 60
                while len(got) < 2 and time.time() < deadline:
                    c.poll(0.2)
                c.commit(offsets=[TopicPartition("events", p, 0) for p in (0, 1)], asynchronous=False)
                c.close()
                """, s.kafka.bootstrap, s.group,
            ], executable: "/usr/bin/env")
        #expect(await reset.wait(timeout: .seconds(60)) == 0, "\(reset.stderr.suffix(1500))")
        let again = try daemon(s, env: ["FOLDSPACE_SYNC_STATE_TOPIC": "\(s.group)-empty"])
        await s.verifier.settleAndVerify([again], "after the offsets were reset to the earliest")
        #expect(!again.stderr.contains("the changelog holds nothing"), "\(again.stderr.suffix(1500))")
        await tearDown(s, [again])
    }

    /// From outside, as users run it: traffic from Segment's own Python library through a
    /// collector that writes one batch envelope per user and batch (several calls of a
    /// user share a Kafka offset), the daemon killed with SIGKILL at a random point after
    /// it began sending, the second half sent while it is down, then a new process. The
    /// verifier's Step count shows a call lost or counted twice.
    @Test func aRealSegmentClientThroughABatchingCollectorWithKill9BetweenHalves() async throws {
        var s = try await setUp("segment", partitions: 2, users: 8)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/segment-outside.py").path
        let writeKey = "write-key-\(UUID().uuidString.prefix(8))"
        let collector = try Child(
            [
                "python3", script, "collector", "--bootstrap", s.kafka.bootstrap, "--topic", "events",
                "--write-key", writeKey,
            ], executable: "/usr/bin/env")
        defer { collector.signal(SIGTERM) }
        #expect(await waitUntil(.seconds(30)) { collector.stdout.contains("listening ") }, "\(collector.stderr.suffix(1000))")
        let port = try #require(collector.stdout.split(separator: "\n").first { $0.hasPrefix("listening ") }?.split(separator: " ").last)
        func send(_ range: Range<Int>) throws {
            let events = s.verifier.reference.messages(range).map(\.value).joined(separator: "\n")
            let client = try Child(
                ["python3", script, "client", "--host", "http://127.0.0.1:\(port)", "--write-key", writeKey],
                withInput: true, executable: "/usr/bin/env")
            client.input!.fileHandleForWriting.write(Data(events.utf8))
            try client.input!.fileHandleForWriting.close()
            client.process.waitUntilExit()
            #expect(client.process.terminationStatus == 0, "the Segment client: \(client.stderr.suffix(1500))")
        }
        try send(0..<160)
        let first = try daemon(s)
        #expect(await waitUntil(.seconds(60)) { !s.sandbox.latestAcknowledged().isEmpty }, "\(first.stderr.suffix(1500))")
        try await Task.sleep(for: .milliseconds(Int.random(in: 0...1_000)))
        first.signal(SIGKILL)
        _ = await first.wait(timeout: .seconds(10))
        try send(160..<320)
        // The collector wrote envelopes of several calls of one user.
        let last = collector.stdout.split(separator: "\n").last { $0.hasPrefix("wrote ") } ?? ""
        let counts = last.split(separator: " ").compactMap { Int($0.split(separator: "=").last ?? "") }
        #expect(counts.count == 2 && counts[1] == 320 && counts[0] < counts[1] / 2, "\(last)")
        let second = try daemon(s)
        await s.verifier.settleAndVerify([second], "a Segment client's batches, SIGKILL between the halves")
        #expect(!second.stderr.contains("invalid"), "\(second.stderr.suffix(1500))")
        await tearDown(s, [second])
    }

    /// Twenty SIGKILLs at random points while events arrive and checkpoints (every
    /// 300 ms, each a transaction) are written, batch envelopes among the events: the
    /// verifier's Step count shows any event lost or counted twice across the restarts.
    @Test func twentySigkillsDuringCheckpoints() async throws {
        var s = try await setUp("kill9", partitions: 2, users: 10)
        var rng = SystemRandomNumberGenerator()
        let fast = ["FOLDSPACE_SYNC_KAFKA_PROPERTIES": "session.timeout.ms=3000,heartbeat.interval.ms=300,retry.backoff.ms=50"]
        var produced = 0
        for round in 0..<20 {
            let d = try daemon(s, env: fast)
            #expect(await waitUntil(.seconds(60)) { d.stderr.contains("partitions assigned") }, "round \(round): \(d.stderr.suffix(1500))")
            // Half the slice as single events, half as one batch envelope per user.
            let slice = s.verifier.reference.messages(produced..<produced + 20)
            produced += 20
            try kcatProduce(bootstrap: s.kafka.bootstrap, topic: "events", Array(slice.prefix(10)))
            var envelopes: [String: [String]] = [:]
            for m in slice.dropFirst(10) { envelopes[m.key, default: []].append(m.value) }
            try kcatProduce(
                bootstrap: s.kafka.bootstrap, topic: "events",
                envelopes.map { (key: $0.key, value: #"{"batch":[\#($0.value.joined(separator: ","))]}"#) })
            try await Task.sleep(for: .milliseconds(Int.random(in: 100...1_500, using: &rng)))
            d.signal(SIGKILL)
            _ = await d.wait(timeout: .seconds(10))
        }
        let last = try daemon(s, env: fast)
        // Up before it is judged (and stopped): when the killed ones had sent everything
        // already, the verifier settled at once, and the SIGTERM of the teardown reached
        // the new process before it handled signals (exit by signal 15).
        #expect(await waitUntil(.seconds(60)) { last.stderr.contains("partitions assigned") }, "\(last.stderr.suffix(1500))")
        await s.verifier.settleAndVerify([last], "after 20 SIGKILLs", timeout: .seconds(120))
        await tearDown(s, [last])
    }

    @Test func fiveSecondsOfLatency() async throws {
        var s = try await setUp("slow", users: 16)
        s.sandbox.setLatency(ms: 5_000)
        try produce(&s, 0..<160)
        let d = try daemon(s)
        try await Task.sleep(for: .seconds(3))
        try produce(&s, 160..<320)  // changes while requests are in flight
        await s.verifier.settleAndVerify([d], "5 s latency", timeout: .seconds(90))
        s.sandbox.setLatency(ms: 0)
        await tearDown(s, [d])
    }

    @Test func unauthorizedThenKeyRotationBySighup() async throws {
        var s = try await setUp("rotate", users: 8)
        let keyFile = FileManager.default.temporaryDirectory.appendingPathComponent("key-\(UUID().uuidString)")
        try "old-key-that-was-revoked\n".write(to: keyFile, atomically: true, encoding: .utf8)
        try produce(&s, 0..<80)
        let d = try daemon(s, args: ["--api-key-file", keyFile.path], keyFromEnvironment: false)
        #expect(await waitUntil(.seconds(30)) { s.sandbox.requests.contains { $0.status == 401 } })
        try await Task.sleep(for: .seconds(1))
        // The breaker is open: besides what was already in flight, nothing more is sent
        // (the next probe is 30 s away), and nothing is dropped.
        let refused = s.sandbox.requestCount
        #expect(refused <= 8)
        try produce(&s, 80..<160)
        try await Task.sleep(for: .milliseconds(1500))
        #expect(s.sandbox.requestCount == refused)
        try "\(apiKey)\n".write(to: keyFile, atomically: true, encoding: .utf8)
        d.signal(SIGHUP)
        await s.verifier.settleAndVerify([d], "after the key was rotated")
        #expect(d.stderr.contains("refuses the API key"))
        #expect(!d.stderr.contains("old-key-that-was-revoked"))
        await tearDown(s, [d])
    }

    // MARK: Process faults

    @Test func sigkillInTheMiddleOfFlushes() async throws {
        var s = try await setUp("kill", partitions: 3, users: 12)
        try produce(&s, 0..<240)
        let first = try daemon(s)
        // Kill as soon as delivery starts: likely before the checkpoint of what was folded.
        #expect(await waitUntil(.seconds(30)) { s.sandbox.requestCount >= 1 }, "\(first.stderr.suffix(1500))")
        first.signal(SIGKILL)
        _ = await first.wait(timeout: .seconds(10))
        try produce(&s, 240..<480)
        let second = try daemon(s)
        await s.verifier.settleAndVerify([second], "after kill -9")
        #expect(second.stderr.contains("partition restored"))
        await tearDown(s, [second])
    }

    @Test func sigtermDuringARebalance() async throws {
        var s = try await setUp("rebal")
        try produce(&s, 0..<240)
        let a = try daemon(s)
        #expect(await waitUntil(.seconds(30)) { a.stderr.contains("partitions assigned") })
        // b joins: the group rebalances; a is told to stop while that is under way.
        let b = try daemon(s)
        // The rebalance is under way once a gives partitions up to b.
        #expect(await waitUntil(.seconds(30)) { a.stderr.contains("partitions revoked") }, "\(a.stderr.suffix(1500))")
        a.signal(SIGTERM)
        #expect(await a.wait(timeout: .seconds(40)) == 0, "\(a.stderr.suffix(1500))")
        try produce(&s, 240..<480)
        await s.verifier.settleAndVerify([b], "after SIGTERM during a rebalance")
        await tearDown(s, [b])
    }

    // MARK: Hostile input

    @Test func hostileInputIsCountedAndDeadLetteredWhileGoodEventsFlow() async throws {
        var s = try await setUp("hostile", partitions: 2, users: 6)
        let tenThousand = #"{"batch":["# + Array(repeating: #"{"type":"track","userId":"b"}"#, count: 10_000).joined(separator: ",") + "]}"
        let hostile: [(reason: String, value: [UInt8])] = [
            ("not-json", Array("this is not json".utf8)),
            ("not-object", Array("[1,2,3]".utf8)),
            (
                "too-deep",
                Array(
                    (#"{"type":"track","userId":"d","x":"# + String(repeating: "[", count: 65) + String(repeating: "]", count: 65) + "}")
                        .utf8)
            ),
            ("invalid-utf8", Array(#"{"type":"track","userId":""#.utf8) + [0xC3, 0x28, 0xFF] + Array(#""}"#.utf8)),
            ("not-json", Array(#"{"type":"track","userId":"a"#.utf8) + [0] + Array(#"b"}"#.utf8)),
            // Over the default max_message_bytes (1 MiB), and over the producer's default
            // message.max.bytes too: its dead letter is truncated, not dropped.
            ("too-large", Array((#"{"type":"track","userId":"big","pad":""# + String(repeating: "x", count: 1_100_000) + #""}"#).utf8)),
            ("number-out-of-range", Array(#"{"type":"track","userId":"n","timestamp":1e999}"#.utf8)),
            ("wrong-type", Array(#"{"type":"identify","userId":"w","traits":{"email":1}}"#.utf8)),
            ("wrong-type", Array(#"{"type":"track","userId":"w","context":{"location":{"city":3}}}"#.utf8)),
            ("wrong-type", Array(#"{"type":"identify","userId":"w","traits":{"pqlScore":"high"}}"#.utf8)),
            ("batch-too-large", Array(tenThousand.utf8)),
            ("duplicate-key", Array(#"{"type":"track","userId":"a","userId":"b"}"#.utf8)),
        ]
        // Good events before, between and after the garbage.
        var values: [[UInt8]] = []
        for (i, m) in s.verifier.reference.messages(0..<60).enumerated() {
            values.append(Array(m.value.utf8))
            if i % 5 == 0, i / 5 < hostile.count { values.append(hostile[i / 5].value) }
        }
        // A far-future timestamp is not dead-lettered: the event is folded at its Kafka time, and counted.
        values.append(Array(#"{"type":"track","userId":"future","timestamp":"2999-01-01T00:00:00Z"}"#.utf8))
        // Valid, but with a 900 KB name: folded, the name cut to Foldspace's 255 characters.
        let hugeName = String(repeating: "N", count: 900_000)
        values.append(
            Array(
                #"{"type":"identify","userId":"huge","timestamp":"\#(iso8601(s.verifier.reference.base))","traits":{"name":"\#(hugeName)"}}"#
                    .utf8))
        try kcatProduceValues(bootstrap: s.kafka.bootstrap, topic: "events", values)
        // No payload time and a Kafka CreateTime near Int64.max, twice for one user: this
        // made every start of the daemon trap. Now invalid (bad-timestamp), dead-lettered.
        let absurd = try KafkaProducer(
            config: KafkaClientConfig(["bootstrap.servers": s.kafka.bootstrap, "log_level": "3"]),
            logger: Logger(label: "test"))
        for _ in 0..<2 {
            try absurd.send(
                topic: "events", key: Array("clock".utf8), value: Array(#"{"type":"track","event":"Step","userId":"clock"}"#.utf8),
                timestampMs: .max - 1, onDelivery: nil)
        }
        #expect(absurd.flush(timeoutMs: 10_000))
        absurd.close()
        let expected = hostile + [("bad-timestamp", []), ("bad-timestamp", [])]
        // Every limit at its default.
        let d = try daemon(s, args: ["--dead-letter-topic", "dead-letters"])
        #expect(await waitUntil { s.sandbox.latestAcknowledged()["future"] != nil })
        await s.verifier.settleAndVerify([d], "hostile input")
        let future = s.sandbox.latestAcknowledged()["future"]?.json?["lastSeenDate"] as? Int64 ?? .max
        #expect(future <= Int64(Date().timeIntervalSince1970 * 1000), "the far-future time was used")

        // Every hostile message is one dead letter naming its reason and source position.
        var headers: [String] = []
        _ = await waitUntil(.seconds(30)) {
            headers = (try? kcatConsumeHeaders(bootstrap: s.kafka.bootstrap, topic: "dead-letters")) ?? []
            return headers.count >= expected.count
        }
        #expect(headers.count == expected.count, "\(headers)")
        let reasons = headers.compactMap { h in h.split(separator: ",").first { $0.hasPrefix("reason=") }?.dropFirst(7) }.map(String.init)
        #expect(reasons.sorted() == expected.map(\.reason).sorted())
        #expect(headers.allSatisfy { $0.contains("source.topic=events") && $0.contains("source.offset=") })
        #expect(headers.filter { $0.contains("truncated=true") }.count == 1, "the too-large one, cut to fit")
        #expect(headers.contains { $0.contains("reason=too-large") && $0.contains("original.bytes=") })
        let huge = s.sandbox.latestAcknowledged()["huge"]?.json?["name"] as? String
        #expect(huge == String(repeating: "N", count: 255))
        let deadLetters = (try? kcatConsume(bootstrap: s.kafka.bootstrap, topic: "dead-letters", format: "%k %s\n")) ?? ""
        #expect(!deadLetters.isEmpty && !deadLetters.contains(apiKey), "the API key reached a dead letter")

        // Counted: by reason, and the far-future time separately.
        let port = try #require(await adminPort(d), "\(d.stderr.suffix(1000))")
        let (data, _) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)/metrics")!)
        let metrics = String(decoding: data, as: UTF8.self)
        #expect(metrics.contains(#"foldspace_sync_events_total{result="invalid"} \#(expected.count)"#), "\(metrics.prefix(3000))")
        for (reason, n) in Dictionary(expected.map { ($0.reason, 1) }, uniquingKeysWith: +) {
            #expect(metrics.contains(#"foldspace_sync_invalid_events_total{reason="\#(reason)"} \#(n)"#), "\(reason)")
        }
        #expect(metrics.contains("foldspace_sync_implausible_time_total 1"))
        #expect(!metrics.contains(apiKey))

        // It committed to the end of the topic: stopped and started again, the daemon
        // has nothing left to read (no lag from the committed offsets) and folds nothing.
        d.signal(SIGTERM)
        #expect(await d.wait(timeout: .seconds(40)) == 0, "\(d.stderr.suffix(1000))")
        let again = try daemon(s, args: ["--dead-letter-topic", "dead-letters"])
        var after = ""
        var caughtUp = false
        let deadline = ContinuousClock.now + .seconds(60)
        while !caughtUp && ContinuousClock.now < deadline {
            if let l = again.stderr.split(separator: "\n").first(where: { $0.contains("admin server listening") }),
                let r = l.range(of: "127.0.0.1:"), let p = Int(l[r.upperBound...].prefix { $0.isNumber }),
                let (data, _) = try? await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(p)/metrics")!)
            {
                after = String(decoding: data, as: UTF8.self)
                let lag = after.split(separator: "\n").filter { $0.hasPrefix("foldspace_sync_consumer_lag{") }
                caughtUp =
                    again.stderr.components(separatedBy: "partition restored").count - 1 == 2
                    && lag.count == 2 && lag.allSatisfy { $0.hasSuffix(" 0") }
            }
            if !caughtUp { try await Task.sleep(for: .milliseconds(200)) }
        }
        #expect(caughtUp, "\(after.split(separator: "\n").filter { $0.contains("consumer_lag") }) \(again.stderr.suffix(1500))")
        #expect(after.contains(#"foldspace_sync_events_total{result="folded"} 0"#), "read again after a restart")
        #expect(after.contains(#"foldspace_sync_events_total{result="invalid"} 0"#), "read again after a restart")
        await tearDown(s, [again])
    }
}

/// Every record's headers (`k=v,k=v`) of a topic, read from the beginning with kcat.
func kcatConsumeHeaders(bootstrap: String, topic: String) throws -> [String] {
    try kcatConsume(bootstrap: bootstrap, topic: topic, format: "%h\n").split(separator: "\n").map(String.init)
}
