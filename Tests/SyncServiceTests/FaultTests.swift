import Foundation
import Kafka
import Simulation
import TestSupport
import Testing

@testable import SyncService

/// Kafka faults injected into librdkafka's mock cluster while the real pipeline runs in
/// durable mode; the verifier compares every user's last delivered body with an
/// independent fold of all its events.
@Suite(.serialized) struct FaultTests {
    func durable(_ h: PipelineHarness, group: String) throws {
        try h.cluster.createTopic("\(group)-state", partitions: 2)
        try h.start { c in
            c.group = group
            c.stateMode = .durable
            c.commitIntervalMs = 300
            c.engine.fold.sendNumberOfVisits = true
            // The model ``VisitReference`` checks the "Step" count through.
            c.engine.fold.pql.visitWeight = 0
            c.engine.fold.pql.dayWeight = 0
            c.engine.fold.pql.k = VisitReference.pqlK
            c.engine.fold.pql.halfLifeDays = 10_000_000
            c.engine.fold.keyEvents = [.init(name: "Step", weight: VisitReference.stepWeight, cap: 1_000_000)]
            c.kafkaProperties["retry.backoff.ms"] = "50"
        }
    }

    @Test func brokerLossAndReturnLosesNothing() async throws {
        let h = try await PipelineHarness(partitions: 2)
        var r = VisitReference(users: 8, prefix: "f")
        try h.produce(r.messages(0..<80))
        try durable(h, group: "fault-broker")
        #expect(await eventually { r.allDelivered(h.sandbox) })
        h.cluster.setBroker(1, up: false)
        try await Task.sleep(for: .seconds(3))
        h.cluster.setBroker(1, up: true)
        try h.produce(r.messages(80..<160))
        #expect(await eventually(.seconds(60)) { r.allDelivered(h.sandbox) }, "\(r.mismatches(h.sandbox).prefix(5))")
        try await h.stop()
    }

    /// The verifier itself: a double count (here: events delivered twice, at new offsets,
    /// which the reference does not know of) must show. Visits and first/last seen do
    /// not change when an event is counted again; the "Step" count does.
    @Test func theVerifierSeesADoubleCount() async throws {
        let h = try await PipelineHarness(partitions: 2)
        var r = VisitReference(users: 4, prefix: "d")
        let messages = r.messages(0..<40)
        try h.produce(messages)
        try durable(h, group: "fault-double")
        #expect(await eventually { r.allDelivered(h.sandbox) }, "\(r.mismatches(h.sandbox).prefix(5))")
        // User d1's track events again (as a replay that was not skipped would count them).
        try h.produce(messages.filter { $0.key == "d1" && $0.value.contains(#""type":"track""#) })
        #expect(
            await eventually(.seconds(30)) { r.mismatches(h.sandbox).contains { $0.hasPrefix("d1: pqlScore") } },
            "\(r.mismatches(h.sandbox))")
        #expect(r.mismatches(h.sandbox).allSatisfy { $0.hasPrefix("d1: pqlScore") }, "\(r.mismatches(h.sandbox))")
        try await h.stop()
    }

    @Test func injectedRequestErrorsAreRetriedAndNothingIsCountedTwice() async throws {
        let h = try await PipelineHarness(partitions: 2)
        var r = VisitReference(users: 8, prefix: "f")
        try h.produce(r.messages(0..<80))
        // JoinGroup (11) and FindCoordinator-side errors first, then Fetch (1),
        // OffsetCommit (8) and Produce (0) failures while running.
        h.cluster.pushRequestErrors(apiKey: 11, error: 15, count: 2)  // COORDINATOR_NOT_AVAILABLE
        try durable(h, group: "fault-errors")
        #expect(await eventually { r.allDelivered(h.sandbox) })
        h.cluster.pushRequestErrors(apiKey: 1, error: 7, count: 5)  // Fetch: REQUEST_TIMED_OUT
        h.cluster.pushRequestErrors(apiKey: 8, error: 7, count: 3)  // OffsetCommit: REQUEST_TIMED_OUT
        h.cluster.pushRequestErrors(apiKey: 0, error: 7, count: 3)  // Produce (the changelog): REQUEST_TIMED_OUT
        try h.produce(r.messages(80..<200))
        #expect(await eventually(.seconds(60)) { r.allDelivered(h.sandbox) }, "\(r.mismatches(h.sandbox).prefix(5))")
        try await Task.sleep(for: .seconds(1))
        let s = h.pipeline.snapshot()
        #expect(s.checkpoints > 0)
        try await h.stop()
    }
}
