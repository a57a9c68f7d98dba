import ArgumentParser
import Delivery
import Events
import Folding
import FoldspaceAPI
import Foundation
import Kafka
import Logging
import Simulation
import SyncService

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

extension FoldspaceBench {
    /// Memory per tracked user: 1M users folded into the engine directly.
    struct Memory: AsyncParsableCommand {
        @Option var users = 1_000_000
        @Flag(help: "Deliver every user as it is folded (steady state: users held, none dirty), instead of holding all dirty.")
        var settled = false

        struct NoDeadLetters: DeadLetterSink {
            func deadLetter(
                kind: DeadLetterKind, key: [UInt8]?, value: [UInt8], headers: [(String, String)],
                delivered: @escaping @Sendable () -> Void
            ) { delivered() }
        }

        func run() async throws {
            var o = EngineOptions()
            o.debounceMs = settled ? 0 : 600_000
            o.maxWaitMs = settled ? 0 : 600_000
            o.maxDirtyUsers = 10_000_000
            o.requestsPerSecond = 1e12
            o.burst = 1e12
            o.maxInFlight = 1_000_000
            if let v = ProcessInfo.processInfo.environment["MEMORY_DECODE_THREADS"].flatMap(Int.init) { o.decodeThreads = v }
            let engine = SyncEngine(options: o, deadLetters: NoDeadLetters(), logger: quiet)
            let tp = TopicPartition("bench", 0)
            engine.partitionsAssigned([tp])
            var gen = PaddedTraffic(users: users)
            let before = rssKiB()
            let t0 = uptimeSeconds()
            var consumeSeconds = 0.0
            var offset: Int64 = 0
            let batchSize = 1000
            var storage: [[UInt8]] = []
            for start in stride(from: 0, to: users, by: batchSize) {
                storage.removeAll(keepingCapacity: true)
                for i in start..<min(users, start + batchSize) {
                    // One identify per user: every user tracked, each with typical traits.
                    var m = gen.next(i)
                    let id = "user-\(i)"
                    m.value = Array(
                        #"{"type":"identify","userId":"\#(id)","timestamp":"2025-11-20T10:00:00Z","traits":{"email":"\#(id)@example.com","name":"User \#(i)","title":"Engineer","createdAt":"2025-01-01T00:00:00Z"},"context":{"location":{"city":"Berlin","country":"Germany"},"timezone":"Europe/Berlin"}}"#
                            .utf8)
                    storage.append(m.value)
                }
                var batch: [ConsumedMessage] = []
                for v in storage {
                    v.withUnsafeBufferPointer { p in
                        batch.append(
                            ConsumedMessage(
                                topicPartition: tp, offset: offset, timestampMs: nil,
                                key: UnsafeBufferPointer(start: nil, count: 0), value: p))
                    }
                    offset += 1
                }
                // The buffers stay alive in `storage` while the batch is consumed.
                let c0 = uptimeSeconds()
                withExtendedLifetime(storage) { engine.consume(batch) }
                consumeSeconds += uptimeSeconds() - c0
                // Settled: every changed user is sent and acknowledged (what a running
                // daemon converges to between bursts).
                while settled, case .send(let jobs) = engine.takeDue(limit: 10_000) {
                    for j in jobs { engine.complete(j, outcome: .acknowledged) }
                }
            }
            print("engine_consume_rate=\(Int(Double(users) / max(consumeSeconds, 1e-9)))")
            print("memory_total_seconds=\(String(format: "%.1f", uptimeSeconds() - t0))")
            let after = rssKiB()
            let s = engine.snapshot()
            print("memory_users=\(s.users)")
            print("memory_dirty_users=\(s.dirtyUsers)")
            print("bytes_per_user\(settled ? "_settled" : "")=\((after - before) * 1024 / max(1, s.users))")
            print("user_entry_inline_bytes=\(SyncEngine.userEntryInlineBytes)")
            print("user_state_inline_bytes=\(MemoryLayout<UserState>.stride)")
            print("delivery_inline_bytes=\(MemoryLayout<DeliveryState>.size) holds_inline_bytes=\(MemoryLayout<Holds>.size)")
            print("memory_peak_rss_kib=\(rssKiB("VmHWM:"))")
        }
    }
}
