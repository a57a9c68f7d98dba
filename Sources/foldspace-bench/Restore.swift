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
    /// Restore speed: `users` users folded across `partitions` source partitions, their
    /// changelog records written to `topic` (as checkpoints write them), then read back
    /// twice: raw (every record of every partition into memory, as the restore's read
    /// does) and by the engine's restore (read, decode, load). Prints records/s of each.
    struct Restore: AsyncParsableCommand {
        @Option var brokers: String
        @Option var topic = "bench-state"
        @Option var users = 1_000_000
        @Option var partitions = 32
        @Flag(help: "The topic holds the records of an earlier run: read them only (for profiling).")
        var readOnly = false

        final class CaptureStore: StateStore, @unchecked Sendable {
            let lock = NSLock()
            var records: [(partition: Int32, key: [UInt8], value: [UInt8]?)] = []
            let partitions: Int32
            init(partitions: Int32) { self.partitions = partitions }
            var sourcePartitions: Int32 { partitions }
            func statePartition(for sourcePartition: Int32) -> Int32 { sourcePartition % partitions }
            func read(partition: Int32) throws -> [(key: [UInt8], value: [UInt8]?)] { [] }
            func write(_ r: [(partition: Int32, key: [UInt8], value: [UInt8]?)]) throws { lock.withLock { records += r } }
            func commit(_ offsets: [TopicPartition: Int64]) throws {}
            func committedPastStart(_ tp: TopicPartition) throws -> Int64? { nil }
        }

        func run() async throws {
            let sources = (0..<Int32(partitions)).map { TopicPartition("bench-src", $0) }
            var o = EngineOptions()
            o.durable = true
            o.maxDirtyUsers = 10_000_000
            if !readOnly { try write(sources, o) }

            // 2. Raw: every record of every partition read into memory, with the reader
            //    the restore uses (one client, all partitions at once).
            let config = KafkaClientConfig(["bootstrap.servers": brokers])
            var t0 = uptimeSeconds()
            let raw = try PartitionReader(config: config).read(topic: topic, partitions: Array(0..<Int32(partitions)))
                .values.reduce(0) { $0 + $1.count }
            let rawSeconds = uptimeSeconds() - t0
            print("restore_raw_rate=\(Int(Double(raw) / max(rawSeconds, 1e-9)))")

            // 3. The engine's restore of every partition: read, decode, load.
            let store = try KafkaStateStore(
                topic: topic, partitions: partitions, sourcePartitions: partitions,
                config: config, logger: quiet, transactional: false)
            let reader = SyncEngine(
                options: o, deadLetters: Memory.NoDeadLetters(), logger: quiet,
                links: EngineLinks(stateStore: store))
            t0 = uptimeSeconds()
            reader.partitionsAssigned(sources)
            let seconds = uptimeSeconds() - t0
            let restored = reader.snapshot().restoredUsers
            store.close()
            print("restore_users=\(restored)")
            print("restore_rate=\(Int(Double(restored) / max(seconds, 1e-9)))")
        }

        /// 1. The records, as checkpoints write them.
        func write(_ sources: [TopicPartition], _ o: EngineOptions) throws {
            let capture = CaptureStore(partitions: Int32(partitions))
            let writer = SyncEngine(
                options: o, deadLetters: Memory.NoDeadLetters(), logger: quiet,
                links: EngineLinks(stateStore: capture))
            writer.partitionsAssigned(sources)
            var storage: [[UInt8]] = []
            for start in stride(from: 0, to: users, by: 1_000) {
                storage.removeAll(keepingCapacity: true)
                for i in start..<min(users, start + 1_000) {
                    storage.append(
                        Array(
                            #"{"type":"identify","userId":"user-\#(i)","timestamp":"2025-11-20T10:00:00Z","traits":{"email":"user-\#(i)@example.com","name":"User \#(i)","title":"Engineer"},"context":{"location":{"city":"Berlin","country":"Germany"}}}"#
                                .utf8))
                }
                var batch: [ConsumedMessage] = []
                for (k, v) in storage.enumerated() {
                    let i = start + k
                    v.withUnsafeBufferPointer { p in
                        batch.append(
                            ConsumedMessage(
                                topicPartition: sources[i % partitions], offset: Int64(i / partitions), timestampMs: nil,
                                key: UnsafeBufferPointer(start: nil, count: 0), value: p))
                    }
                }
                withExtendedLifetime(storage) { writer.consume(batch) }
            }
            _ = writer.checkpoint()
            let records = capture.lock.withLock { capture.records }
            let producer = try KafkaProducer(
                config: KafkaClientConfig([
                    "bootstrap.servers": brokers, "compression.codec": "zstd", "linger.ms": "50",
                    "batch.num.messages": "10000", "queue.buffering.max.messages": "2000000",
                ]), logger: quiet)
            for r in records { try producer.send(topic: topic, partition: r.partition, key: r.key, value: r.value) }
            guard producer.flush(timeoutMs: 120_000) else { throw ValidationError("changelog records not written") }
            producer.close()
            print("restore_records=\(records.count)")
            print("restore_record_bytes=\(records.reduce(0) { $0 + $1.key.count + ($1.value?.count ?? 0) } / max(1, records.count))")
        }
    }
}
