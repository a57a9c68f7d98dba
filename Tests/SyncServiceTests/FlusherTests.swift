import Delivery
import Foundation
import Kafka
import TestSupport
import Testing

@testable import SyncService

@Suite struct FlusherTests {
    /// A flusher stopped while a request waits out a `Retry-After` pause returns at once
    /// and hands the user back unsent. Its loop used to retry a sleep that throws at
    /// once when cancelled: 100 % of a core until the pause ended, and no return.
    @Test func stoppingInsideARetryAfterPauseReturnsTheUserUnsent() async throws {
        var o = EngineOptions()
        o.debounceMs = 1
        o.maxWaitMs = 10
        o.breakerProbeIntervalMs = 10
        let engine = SyncEngine(options: o, deadLetters: RecordingDeadLetters(), logger: quietLogger)
        let tp = TopicPartition("events", 0)
        engine.partitionsAssigned([tp])
        feed(engine, [(tp, 0, #"{"type":"page","userId":"u","timestamp":"2025-11-24T10:00:00Z"}"#)])
        // The breaker is open, so the user goes out as a probe; just before it is sent a
        // 429 with an hour's Retry-After arrives (for another request): it waits.
        engine.complete(FlushJob(identifyId: "other", body: [], hash: 0, isProbe: false), outcome: .unauthorized(status: 401))
        let probed = Flag()
        let sender = CountingSender()
        let flusher = Flusher(engine: engine, sender: sender, maxInFlight: 4) {
            engine.complete(
                FlushJob(identifyId: "other", body: [], hash: 0, isProbe: false),
                outcome: .rateLimited(retryAfterMs: 3_600_000))
            probed.set()
        }
        let done = Flag()
        let task = Task {
            await flusher.run()
            done.set()
        }
        #expect(await eventually(.seconds(20)) { probed.isSet })
        task.cancel()
        #expect(await eventually(.seconds(20)) { done.isSet }, "the flusher did not return inside the pause")
        #expect(sender.sent == 0)
        let s = engine.snapshot()
        #expect(s.dirtyUsers == 1)
        #expect(s.retries["unsent"] == 1)
    }

    /// A job taken while sending was allowed is not put on the wire once the gate has
    /// closed (the process was stopped past its session between the take and the send):
    /// it goes back unsent.
    @Test func aJobIsCheckedAgainstTheGateRightBeforeTheWire() async throws {
        var o = EngineOptions()
        o.debounceMs = 1
        o.maxWaitMs = 10
        // Open for the take, closed from then on.
        final class Once: @unchecked Sendable {
            let lock = NSLock()
            var calls = 0
            func next() -> Bool {
                lock.withLock {
                    calls += 1
                    return calls == 1
                }
            }
        }
        let once = Once()
        let engine = SyncEngine(
            options: o, deadLetters: RecordingDeadLetters(), logger: quietLogger,
            links: EngineLinks(sendGate: { once.next() }))
        let tp = TopicPartition("events", 0)
        engine.partitionsAssigned([tp])
        feed(engine, [(tp, 0, #"{"type":"page","userId":"u","timestamp":"2025-11-24T10:00:00Z"}"#)])
        let sender = CountingSender()
        let flusher = Flusher(engine: engine, sender: sender, maxInFlight: 4) {}
        let task = Task { await flusher.run() }
        #expect(await eventually(.seconds(20)) { engine.snapshot().retries["unsent"] == 1 })
        task.cancel()
        _ = await task.value
        #expect(sender.sent == 0, "sent after the gate closed")
        #expect(engine.snapshot().dirtyUsers == 1)
    }
}
