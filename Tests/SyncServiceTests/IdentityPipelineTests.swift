import FoldspaceAPI
import Foundation
import Kafka
import Simulation
import TestSupport
import Testing

@testable import SyncService

/// Identity resolution through the pipeline on librdkafka's mock cluster: one instance,
/// two tasks, keys by messageId, so that calls are routed through `<group>-repartition`.
@Suite(.serialized) struct IdentityPipelineTests {
    /// With a `commit_interval` of ten minutes too: calls routed to another task are read
    /// there only once a checkpoint commits them, which they do not wait the interval for
    /// (``Checkpoints``). And with no room to hold routed records for their notices: each
    /// waiting partition is read again (a seek) once its notice was seen
    /// (``TransactionGate``).
    /// Those three through Kafka (as if another instance held the other task), and once
    /// with the calls handed to the other task in the process, as one instance does.
    @Test(arguments: [(Int64(200), 64 << 20, false), (600_000, 64 << 20, false), (200, 0, false), (200, 64 << 20, true)])
    func visitorsKeyedByMessageIdEndAsOneUserEach(commitIntervalMs: Int64, heldBytesCap: Int, inProcess: Bool) async throws {
        let h = try await PipelineHarness(partitions: 2)
        let group = "ident-\(UUID().uuidString.prefix(8))"
        for t in ["-repartition", "-identities", "-state"] { try h.cluster.createTopic(group + t, partitions: 2) }
        var messages: [(key: String, value: String)] = []
        let visitors = 6
        for v in 0..<visitors {
            for c in IdentityEngineTests.anonymous + [IdentityEngineTests.signUp] + IdentityEngineTests.after {
                let call = c.replacingOccurrences(of: "a-77", with: "a-\(v)").replacingOccurrences(of: "person-0005", with: "person-\(v)")
                messages.append((UUID().uuidString, call))
            }
        }
        try h.produce(messages)
        try h.start { c in
            c.group = group
            c.stateMode = .durable
            c.commitIntervalMs = commitIntervalMs
            c.engine.fold.sendNumberOfVisits = true
            c.engine.identity.merge = true
            c.engine.identity.heldBytesCap = heldBytesCap
            c.engine.identity.inProcessHops = inProcess
        }
        let done = await eventually {
            let latest = h.sandbox.latestAcknowledged()
            return (0..<visitors).allSatisfy { v in
                guard let b = latest["person-\(v)"]?.body,
                    let json = try? JSONSerialization.jsonObject(with: Data(b)) as? [String: Any]
                else { return false }
                return json["numberOfVisits"] as? Int == 4 && json["firstVisitDate"] as? Int64 == 1_763_373_600_000
            }
        }
        let latest = h.sandbox.latestAcknowledged()
        #expect(done, "bodies: \((0..<visitors).map { latest["person-\($0)"].map { String(decoding: $0.body, as: UTF8.self) } ?? "none" })")
        if inProcess {
            #expect((h.pipeline.engine?.snapshot().handedInProcess ?? 0) > 0, "nothing was handed over in the process")
        } else {
            #expect((h.pipeline.engine?.snapshot().forwarded ?? 0) > 0, "nothing was routed")
        }
        if heldBytesCap == 0 { #expect((h.pipeline.engine?.snapshot().routedRereads ?? 0) > 0, "nothing was read again") }
        #expect(h.sandbox.violationCount == 0)
        try await h.stop()
    }

    /// A task's restore reads its changelog partition up to its last transaction: with a
    /// state topic that is not co-partitioned (two tasks sharing a partition) there is no
    /// such end, and identity.merge refuses to start.
    @Test func aStateTopicNotCoPartitionedIsRefused() async throws {
        let h = try await PipelineHarness(partitions: 2)
        let group = "ident-\(UUID().uuidString.prefix(8))"
        for t in ["-repartition", "-identities"] { try h.cluster.createTopic(group + t, partitions: 2) }
        try h.cluster.createTopic(group + "-state", partitions: 1)
        try h.start { c in
            c.group = group
            c.stateMode = .durable
            c.engine.identity.merge = true
        }
        await #expect(throws: ConfigurationError.self) { try await h.task.value }
        do {
            try await h.task.value
        } catch {
            #expect("\(error)".contains("the state topic has 1 partitions but"), "\(error)")
        }
        await h.sandbox.stop()
    }
}
