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
    struct Produce: AsyncParsableCommand {
        @Option var brokers: String
        @Option var topic: String
        @Option var events = 1_000_000
        @Option var users = 100_000

        func run() async throws {
            let p = try KafkaProducer(
                config: KafkaClientConfig([
                    "bootstrap.servers": brokers, "compression.codec": "zstd", "linger.ms": "50",
                    "batch.size": "1000000", "queue.buffering.max.messages": "500000", "log_level": "3",
                ]), logger: quiet)
            var t = PaddedTraffic(users: users)
            var bytes = 0
            for n in 0..<events {
                let m = t.next(n)
                bytes += m.value.count
                try p.send(topic: topic, key: Array(m.key.utf8), value: m.value)
            }
            p.flush(timeoutMs: 120_000)
            let c = p.deliveryCounts
            print("produced=\(c.delivered)")
            print("produce_failed=\(c.failed)")
            print("avg_event_bytes=\(bytes / max(1, events))")
        }
    }
}
