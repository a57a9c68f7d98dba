import Foundation
import Kafka
import Simulation
import TestSupport
import Testing

@testable import SyncService

/// How the pipeline's parts start and stop (Runtime/): in order, whatever stops them.
@Suite struct PipelineLifecycleTests {
    /// Cancelling the task that runs the pipeline stops it as a stop request does: the
    /// consumer's final revocation drains through the flusher, which is stopped after it.
    /// Cancelled all at once, the flusher was gone before the drain and nothing was sent.
    @Test func cancellingRunStopsInOrderAndSendsWhatIsPending() async throws {
        let h = try await PipelineHarness(partitions: 1)
        try h.start { c in
            c.engine.debounceMs = 600_000  // nothing is due before the stop
            c.engine.maxWaitMs = 600_000
        }
        let users = (0..<5).map { "cancel-\($0)" }
        try h.produce(users.map { (key: $0, value: #"{"type":"track","event":"Step","userId":"\#($0)"}"#) })
        #expect(await eventually { h.pipeline.snapshot().dirtyUsers == users.count }, "the events were folded")
        #expect(h.sandbox.latestAcknowledged().isEmpty)
        h.task.cancel()
        _ = try? await h.task.value
        #expect(Set(h.sandbox.latestAcknowledged().keys) == Set(users), "the final drain sent every pending user")
        await h.sandbox.stop()
    }

    /// A start that fails after the consumer was made (here: the admin address is taken)
    /// ends with that error, the consumer (subscribed, never started) held by the pipeline
    /// rather than destroyed under it.
    @Test func aStartThatFailsAfterTheConsumerIsMadeEndsWithItsError() async throws {
        let h = try await PipelineHarness(partitions: 1)
        try h.start { c in c.adminListen = "127.0.0.1:\(h.sandbox.port)" }
        await #expect(throws: (any Error).self) { try await h.task.value }
        await h.sandbox.stop()
    }
}
