import Foundation
import Simulation
import Testing

/// Visitors who browse anonymously and then sign up (`identify` with both ids, or
/// `alias`), the link produced before or after their anonymous calls, shaped as Segment's
/// analytics.js sends them; and the reference each user's last delivered body must match:
/// the fold of the union of both identities' calls, computed here without the daemon's
/// code. Every call counts a visit by its time (30 min gap); "Step" tracks are counted
/// through ``VisitReference``'s PQL model, so a call counted twice moves the score.
struct IdentityScenario {
    let visitors: Int
    let tag: String
    let base = Int64(Date().timeIntervalSince1970 * 1000) - 5 * 86_400_000
    /// Each visitor's calls in the order they are produced.
    private(set) var calls: [[(identity: String, json: String)]] = []
    private(set) var times: [String: [Int64]] = [:]
    private(set) var steps: [String: Int] = [:]
    /// The earliest call time of each user: its anonymous phase.
    private(set) var firstAnonymous: [String: Int64] = [:]

    func anonymousId(_ v: Int) -> String { "anon-\(tag)-\(v)" }
    func userId(_ v: Int) -> String { "user-\(tag)-\(v)" }

    init(visitors: Int, tag: String) {
        self.visitors = visitors
        self.tag = tag
        for v in 0..<visitors { calls.append(build(v)) }
    }

    private mutating func build(_ v: Int) -> [(identity: String, json: String)] {
        let anon = anonymousId(v)
        let user = userId(v)
        let t0 = base + Int64(v) * 1_000
        func call(_ type: String, _ t: Int64, userId: String?, anonymousId: String?, extra: String = "") -> String {
            var ids = ""
            if let userId { ids += #""userId":"\#(userId)","# }
            if let anonymousId { ids += #""anonymousId":"\#(anonymousId)","# }
            let iso = iso8601(t)
            return
                #"{"type":"\#(type)",\#(ids)"messageId":"ajs-\#(UUID().uuidString.lowercased())","timestamp":"\#(iso)","originalTimestamp":"\#(iso)","sentAt":"\#(iso8601(t + 40))","context":{"library":{"name":"analytics.js","version":"5.2.0"},"page":{"path":"/pricing","url":"https://example.com/pricing"},"userAgent":"Mozilla/5.0"}\#(extra)}"#
        }
        var anonymous: [(String, String)] = []
        // Three visits on three days, two calls the first day (one visit), a Step on the last.
        for (k, dt) in [0, 12 * 60_000, 26 * 3_600_000, 50 * 3_600_000].enumerated() {
            let t = t0 + Int64(dt)
            let step = k == 3
            anonymous.append(
                (
                    anon,
                    step
                        ? call("track", t, userId: nil, anonymousId: anon, extra: #","event":"Step","properties":{"plan":"trial"}"#)
                        : call("page", t, userId: nil, anonymousId: anon, extra: #","name":"Pricing","properties":{"path":"/pricing"}"#)
                ))
            times[user, default: []].append(t)
            if step { steps[user, default: 0] += 1 }
        }
        firstAnonymous[user] = t0
        // The sign-up, 15 min after the last anonymous call: an identify with both ids, or
        // an alias naming the anonymous id.
        let signUp = t0 + 50 * 3_600_000 + 15 * 60_000
        let link =
            v % 2 == 0
            ? call(
                "identify", signUp, userId: user, anonymousId: anon,
                extra: #","traits":{"email":"\#(user)@example.com","createdAt":"\#(iso8601(signUp))"}"#)
            : call("alias", signUp, userId: user, anonymousId: nil, extra: #","previousId":"\#(anon)""#)
        times[user, default: []].append(signUp)
        // Then the user's own calls: a Step in the same visit (with the anonymous id too, as
        // analytics.js keeps sending it), a Step and a page the next day.
        var known: [(String, String)] = []
        for (k, dt) in [20 * 60_000, 20 * 3_600_000, 20 * 3_600_000 + 5 * 60_000].enumerated() {
            let t = signUp + Int64(dt)
            let step = k < 2
            known.append(
                (
                    user,
                    step
                        ? call("track", t, userId: user, anonymousId: k == 0 ? anon : nil, extra: #","event":"Step""#)
                        : call("page", t, userId: user, anonymousId: nil, extra: #","name":"Reports""#)
                ))
            times[user, default: []].append(t)
            if step { steps[user, default: 0] += 1 }
        }
        // A third of the visitors are linked before their anonymous calls are produced.
        return v % 3 == 0 ? [(user, link)] + anonymous + known : anonymous + [(user, link)] + known
    }

    /// Every call, interleaved by visitor (each visitor's own order kept), keyed by its
    /// identity (userId, else anonymousId) or by a messageId.
    func messages(byMessageId: Bool) -> [(key: String, value: String)] {
        var out: [(key: String, value: String)] = []
        let longest = calls.map(\.count).max() ?? 0
        for i in 0..<longest {
            for c in calls where i < c.count {
                out.append((byMessageId ? "m-\(UUID().uuidString)" : c[i].identity, c[i].json))
            }
        }
        return out
    }

    func expected(_ user: String) -> (visits: Int, first: Int64, last: Int64, steps: Int) {
        let v = VisitReference.visits(times[user] ?? [])
        return (v.visits, v.first, v.last, steps[user] ?? 0)
    }

    /// What differs between each user's last acknowledged body and the reference, and
    /// requests for an anonymous identity that arrived after its link had committed: after
    /// its user's body held the anonymous history and a checkpoint interval more
    /// (`settleMs`).
    func mismatches(_ sandbox: FoldspaceSandbox, settleMs: Int64 = 1_500) -> [String] {
        let requests = sandbox.requests
        let latest = sandbox.latestAcknowledged()
        var out: [String] = []
        for v in 0..<visitors {
            let user = userId(v)
            let want = expected(user)
            guard let body = latest[user]?.json else {
                out.append("\(user): never delivered")
                continue
            }
            out += VisitReference.differences(user, body, visits: want.visits, first: want.first, last: want.last, steps: want.steps)
            if body["userType"] as? String != "USER" { out.append("\(user): userType \(String(describing: body["userType"]))") }
            // The first acknowledged body of the user with the anonymous history in it.
            let merged = requests.first {
                $0.identifyId == user && (200..<300).contains($0.status) && $0.json?["firstVisitDate"] as? Int64 == want.first
            }
            if let merged {
                let anon = anonymousId(v)
                let late = requests.filter { $0.identifyId == anon && $0.arrivedMs > merged.respondedMs + settleMs }
                if !late.isEmpty { out.append("\(anon): \(late.count) requests after \(user) held its history") }
            }
        }
        return out
    }
}

/// Identity resolution from outside (docs/identity.md): two instances of the binary in one
/// group on the mock cluster, the visitors' calls keyed by identity and by messageId. The
/// first half is read by both; one instance is then stopped (SIGTERM, or SIGKILL) while
/// the third quarter is being read, and the survivor reads the rest. Each user's last
/// acknowledged body equals the fold of the union of its identities' calls, and no
/// anonymous identity is sent after its user held its history.
///
/// SIGKILL: the mock shows a transaction's records as they land, so a kill leaves part of
/// a checkpoint readable. Before routed records waited for their transaction's notice and
/// restores stopped at the last committed transaction's markers (docs/identity.md,
/// "Transactions on brokers that show aborted records"), some users were left without
/// their anonymous history (once in a CI run, keys by identity).
///
/// SIGTERM, keys by messageId, about 1 run in 50 under load (4 at once on 2 cores): the
/// survivor was delivered some of the stopped instance's calls while their partition was
/// held paused for its restore (librdkafka 2.0.2), routed them with the task's graph not
/// loaded, and routed them again after the restore (a Step counted twice for several
/// users). Such messages are now left unread and the partition read again from the first
/// of them (``RestoreTests``); 180 runs passed after that, under the same load.
///
/// The mock does not apply a transaction's offsets to the group, and the daemon's plain
/// commit after them fails in the rebalance ("Group rebalance in progress"): the survivor
/// reads the stopped instance's partitions again from older offsets. Before the
/// changelog's markers bounded what it skips (``SyncEngine/replayFloors``), it routed those
/// calls a second time and double counted a Step for several users on every run.
@Suite(.serialized) struct IdentityEndToEndTests {
    let apiKey = "identity-key"

    func start(_ kafka: MockKafkaProcess, _ sandbox: FoldspaceSandbox, group: String) throws -> Child {
        try startGroupMember(kafka, sandbox, group: group, apiKey: apiKey, env: ["FOLDSPACE_SYNC_IDENTITY_MERGE": "true"])
    }

    @Test(arguments: [false, true], [SIGTERM, SIGKILL])
    func anonymousVisitorsWhoSignUpEndAsOneUserEach(byMessageId: Bool, stop: Int32) async throws {
        let group = "ident-\(UUID().uuidString.prefix(6))"
        let kafka = try await MockKafkaProcess(
            topics: ["events:4", "\(group)-state:4", "\(group)-repartition:4", "\(group)-identities:4"])
        defer { Task { await kafka.stop() } }
        try await Self.stopOneMidStream(
            byMessageId: byMessageId, stop: stop, apiKey: apiKey,
            start: { try start(kafka, $0, group: group) },
            produce: { try kcatProduce(bootstrap: kafka.bootstrap, topic: "events", $0, partitioner: "murmur2_random") },
            inspect: { ids in
                let c = try Child(
                    ["inspect", "--brokers", kafka.bootstrap, "--topic", "events", "--group", group] + ids,
                    env: ["FOLDSPACE_SYNC_IDENTITY_MERGE": "true", "FOLDSPACE_SYNC_SEND_NUMBER_OF_VISITS": "true"])
                #expect(await c.wait(timeout: .seconds(30)) == 0, "\(c.stderr.suffix(1000))")
                return (try? JSONSerialization.jsonObject(with: Data(c.stdout.utf8)) as? [[String: Any]]) ?? []
            })
    }

    /// Two instances read the first half of the scenario's calls; one is stopped by `stop`
    /// after the third quarter was produced; the survivor reads the rest, and every user's
    /// last acknowledged body must match the reference.
    static func stopOneMidStream(
        byMessageId: Bool, stop: Int32, apiKey: String, start: (FoldspaceSandbox) throws -> Child,
        produce: ([(key: String, value: String)]) throws -> Void,
        inspect: (([String]) async throws -> [[String: Any]])? = nil
    ) async throws {
        let sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        try await sandbox.start()
        let s = IdentityScenario(visitors: 24, tag: byMessageId ? "m" : "k")
        let messages = s.messages(byMessageId: byMessageId)
        let a = try start(sandbox)
        let b = try start(sandbox)
        #expect(await waitUntil(.seconds(40)) { a.stderr.contains("partitions assigned") && b.stderr.contains("partitions assigned") })
        // Keys by identity as the Java client places them (murmur2): no call needs routing
        // unless a link moves it.
        let (half, threeQuarters) = (messages.count / 2, messages.count * 3 / 4)
        try produce(Array(messages[..<half]))
        #expect(await waitUntil(.seconds(60)) { sandbox.latestAcknowledged().count >= s.visitors / 2 })
        try produce(Array(messages[half..<threeQuarters]))
        a.signal(stop)
        if stop == SIGTERM { #expect(await a.wait(timeout: .seconds(30)) == 0) }
        try produce(Array(messages[threeQuarters...]))
        let done = await waitUntil(.seconds(120)) { s.mismatches(sandbox).isEmpty }
        // Both instances' whole logs, kept where the failure says, for the defect's next reader.
        var kept = ""
        if !done {
            let base = FileManager.default.temporaryDirectory.appendingPathComponent("identity-e2e-\(UUID().uuidString.prefix(8))")
            try? a.stderr.write(toFile: base.path + "-a.log", atomically: true, encoding: .utf8)
            try? b.stderr.write(toFile: base.path + "-b.log", atomically: true, encoding: .utf8)
            kept = "logs: \(base.path)-{a,b}.log"
        }
        #expect(done, "\(s.mismatches(sandbox).prefix(8)) \(kept) \(b.stderr.suffix(1500))")
        #expect(sandbox.violationCount == 0)
        // `inspect` from outside: an anonymous id linked by an identify (visitor 0) and one
        // linked by an alias (visitor 1) show their user as canonical, with its state; the
        // user lists both of its ids. The changelog is written every commit_interval
        // (300 ms here) and may lag the body acknowledged: asked again until the user's
        // stored body has its visits (at most 30 s), as an operator would.
        if let inspect {
            for v in 0..<2 {
                let (anon, user) = (s.anonymousId(v), s.userId(v))
                var entries: [[String: Any]] = []
                let deadline = ContinuousClock.now + .seconds(30)
                repeat {
                    entries = try await inspect([anon, user])
                    if (entries.last?["body"] as? [String: Any])?["numberOfVisits"] as? Int == s.expected(user).visits { break }
                    try await Task.sleep(for: .milliseconds(300))
                } while ContinuousClock.now < deadline
                #expect(entries.count == 2, "\(entries)")
                let a = entries.first ?? [:]
                let u = entries.last ?? [:]
                #expect((a["identity"] as? [String: Any])?["canonicalId"] as? String == user, "\(a)")
                #expect(a["stateOf"] as? String == user && a["found"] as? Bool == true, "\(a)")
                #expect((u["identity"] as? [String: Any])?["linkedIds"] as? [String] == [anon], "\(u)")
                #expect((u["body"] as? [String: Any])?["numberOfVisits"] as? Int == s.expected(user).visits, "\(u)")
            }
        }
        b.signal(SIGTERM)
        #expect(await b.wait(timeout: .seconds(30)) == 0)
        if stop == SIGKILL { _ = await a.wait(timeout: .seconds(10)) }
        await sandbox.stop()
    }
}
