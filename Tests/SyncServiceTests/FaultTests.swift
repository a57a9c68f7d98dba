import FoldspaceSandbox
import Foundation
import Kafka
import Testing
@testable import SyncService

/// Kafka faults injected into librdkafka's mock cluster while the real pipeline runs in
/// durable mode; the verifier compares every user's last delivered body with an
/// independent fold of all its events.
@Suite(.serialized) struct FaultTests {
    /// Events for `users` users; user i's k-th event starts a new visit every 3rd event.
    struct Reference {
        let users: Int
        let base = Int64(Date().timeIntervalSince1970 * 1000) - 5 * 86_400_000
        var times: [String: [Int64]] = [:]

        mutating func messages(_ range: Range<Int>) -> [(key: String, value: String)] {
            range.map { i in
                let id = "f\(i % users)"
                let k = i / users
                let t = base + Int64(k / 3) * 7_200_000 + Int64(k % 3) * 60_000
                times[id, default: []].append(t)
                return (id, #"{"type":"page","userId":"\#(id)","timestamp":\#(t)}"#)
            }
        }

        func expected(_ id: String) -> (visits: Int, first: Int64, last: Int64) {
            let s = (times[id] ?? []).sorted()
            var v = s.isEmpty ? 0 : 1
            for (a, b) in zip(s, s.dropFirst()) where b - a > 30 * 60_000 { v += 1 }
            return (v, s.first ?? 0, s.last ?? 0)
        }

        func delivered(_ sandbox: FoldspaceSandbox) -> Bool {
            let latest = sandbox.latestAcknowledged()
            return (0..<users).allSatisfy { u in
                let id = "f\(u)", want = expected(id)
                guard let b = latest[id]?.json else { return false }
                return b["numberOfVisits"] as? Int == want.visits && b["firstVisitDate"] as? Int64 == want.first
                    && b["lastSeenDate"] as? Int64 == want.last
            }
        }
    }

    func durable(_ h: PipelineHarness, group: String) throws {
        try h.cluster.createTopic("\(group)-state", partitions: 2)
        try h.start { c in
            c.group = group
            c.stateMode = "durable"
            c.commitIntervalMs = 300
            c.engine.fold.sendNumberOfVisits = true
            c.kafkaProperties["retry.backoff.ms"] = "50"
        }
    }

    @Test func brokerLossAndReturnLosesNothing() async throws {
        let h = try await PipelineHarness(partitions: 2)
        var r = Reference(users: 8)
        try h.produce(r.messages(0..<80))
        try durable(h, group: "fault-broker")
        #expect(await eventually { r.delivered(h.sandbox) })
        h.cluster.setBroker(1, up: false)
        try await Task.sleep(for: .seconds(3))
        h.cluster.setBroker(1, up: true)
        try h.produce(r.messages(80..<160))
        #expect(await eventually(.seconds(60)) { r.delivered(h.sandbox) })
        try await h.stop()
    }

    @Test func injectedRequestErrorsAreRetriedAndNothingIsCountedTwice() async throws {
        let h = try await PipelineHarness(partitions: 2)
        var r = Reference(users: 8)
        try h.produce(r.messages(0..<80))
        // JoinGroup (11) and FindCoordinator-side errors first, then Fetch (1),
        // OffsetCommit (8) and Produce (0) failures while running.
        h.cluster.pushRequestErrors(apiKey: 11, error: 15, count: 2) // COORDINATOR_NOT_AVAILABLE
        try durable(h, group: "fault-errors")
        #expect(await eventually { r.delivered(h.sandbox) })
        h.cluster.pushRequestErrors(apiKey: 1, error: 7, count: 5)   // Fetch: REQUEST_TIMED_OUT
        h.cluster.pushRequestErrors(apiKey: 8, error: 7, count: 3)   // OffsetCommit: REQUEST_TIMED_OUT
        h.cluster.pushRequestErrors(apiKey: 0, error: 7, count: 3)   // Produce (the changelog): REQUEST_TIMED_OUT
        try h.produce(r.messages(80..<200))
        #expect(await eventually(.seconds(60)) { r.delivered(h.sandbox) })
        try await Task.sleep(for: .seconds(1))
        let s = h.pipeline.engine.snapshot()
        #expect(s.checkpoints > 0)
        try await h.stop()
    }
}
