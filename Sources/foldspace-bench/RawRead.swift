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
    /// Plain librdkafka: a group consumer counting messages, no processing.
    struct RawRead: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "raw")
        @Option var brokers: String
        @Option var topic: String
        @Option var expect: Int

        final class Counter: ConsumerHandler, @unchecked Sendable {
            let lock = NSLock()
            var n = 0
            var first = 0.0
            var last = 0.0
            let workNs: UInt64 = UInt64(ProcessInfo.processInfo.environment["RAW_WORK_NS"] ?? "0") ?? 0
            func consume(_ batch: [ConsumedMessage]) {
                if workNs > 0 {
                    let until = DispatchTime.now().uptimeNanoseconds + workNs * UInt64(batch.count)
                    while DispatchTime.now().uptimeNanoseconds < until {}
                }
                let now = uptimeSeconds()
                lock.withLock {
                    if n == 0 { first = now }
                    n += batch.count
                    last = now
                }
            }
            func partitionsAssigned(_ partitions: [TopicPartition]) {}
            func partitionsRevoked(_ partitions: [TopicPartition]) {}
            var wantsPause: Bool { false }
        }

        func run() async throws {
            ZstdSizeHint.setEnabled(FoldspaceBench.zstdHintFromEnvironment)
            let h = Counter()
            var props = ["bootstrap.servers": brokers, "group.id": "raw-\(UUID().uuidString.prefix(8))", "log_level": "3"]
            props.merge(environmentProperties("RAW_PROPS")) { $1 }
            let c = try KafkaConsumer(config: KafkaClientConfig(props), topics: [topic], handler: h, logger: quiet)
            c.start()
            let deadline = uptimeSeconds() + 300
            while h.lock.withLock({ h.n }) < expect && uptimeSeconds() < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            let (n, first, last) = h.lock.withLock { (h.n, h.first, h.last) }
            c.stop()
            print("raw_messages=\(n)")
            print("raw_rate=\(Int(Double(n) / max(last - first, 1e-6)))")
            print("raw_zstd_frames_sized=\(ZstdSizeHint.framesSized)")
        }
    }
}
