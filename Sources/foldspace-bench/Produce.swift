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
        /// What each message is keyed by: both place the message with librdkafka's
        /// `murmur2_random`, the Java client's default and the partitioner the daemon's
        /// `owner(id)` is (``KeyPartitioner/murmur2``, docs/identity.md).
        enum Keys: String, ExpressibleByArgument, CaseIterable {
            /// The user's identity (its `userId`): every event lands on its owner's
            /// partition, so nothing will need routing.
            case identity
            /// The call's own `messageId` (unique per message, as a collector that keys by
            /// it sends): one user's events spread over every partition.
            case messageId = "message-id"
        }

        @Option var brokers: String
        @Option var topic: String
        @Option var events = 1_000_000
        @Option var users = 100_000
        @Option(help: "identity (the user's id) or message-id (the call's messageId).") var keys = Keys.identity

        func run() async throws {
            let p = try KafkaProducer(
                config: KafkaClientConfig([
                    "bootstrap.servers": brokers, "compression.codec": "zstd", "linger.ms": "50",
                    "batch.size": "1000000", "queue.buffering.max.messages": "500000", "log_level": "3",
                    "partitioner": KeyPartitioner.murmur2.librdkafkaPartitioner,
                ]), logger: quiet)
            // The same seeds in both modes: the same payloads in the same order (but for
            // their times, taken from the clock), only the keys and so the partitions differ.
            var t = PaddedTraffic(users: users)
            var bytes = 0
            var unkeyed = 0
            for n in 0..<events {
                let m = t.next(n)
                bytes += m.value.count
                let key: [UInt8]
                switch keys {
                case .identity: key = Array(m.key.utf8)
                case .messageId:
                    if let id = Self.messageId(in: m.value) {
                        key = Array(id)
                    } else {
                        // Never for the generated traffic; counted rather than keyed by the user.
                        unkeyed += 1
                        key = Array(UUID().uuidString.utf8)
                    }
                }
                try p.send(topic: topic, key: key, value: m.value)
            }
            p.flush(timeoutMs: 120_000)
            let c = p.deliveryCounts
            print("produced=\(c.delivered)")
            print("produce_failed=\(c.failed)")
            print("produce_keys=\(keys.rawValue)")
            print("produce_without_message_id=\(unkeyed)")
            print("avg_event_bytes=\(bytes / max(1, events))")
        }

        /// The value of the first `"messageId":"…"` in a payload (the generator writes it
        /// plainly, without escapes), or nil.
        static func messageId(in value: [UInt8]) -> ArraySlice<UInt8>? {
            let marker = Array(#""messageId":""#.utf8)
            guard value.count > marker.count else { return nil }
            for start in 0...(value.count - marker.count) where value[start..<(start + marker.count)].elementsEqual(marker) {
                let from = start + marker.count
                guard let end = value[from...].firstIndex(of: UInt8(ascii: "\"")), end > from else { return nil }
                return value[from..<end]
            }
            return nil
        }
    }
}
