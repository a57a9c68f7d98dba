import ArgumentParser
import Events
import Folding
import Foundation
import Kafka

extension FoldspaceBench {
    /// Where a produced topic's events sit, against the daemon's `owner(id)`
    /// (``KeyPartitioner/murmur2``, docs/identity.md): the share of messages on the
    /// partition their key hashes to (librdkafka's `murmur2_random` agrees with the
    /// daemon's murmur2), and the share on the partition that owns their user's identity
    /// (all of them when keyed by identity; about one in N when keyed by messageId).
    struct Placement: AsyncParsableCommand {
        @Option var brokers: String
        @Option var topic: String
        @Option var expect: Int
        @Option(help: "The topic's partition count (owner(id) is murmur2(id) mod this).") var partitions: Int32

        final class Tally: ConsumerHandler, @unchecked Sendable {
            let lock = NSLock()
            let partitions: Int32
            let decoder = SegmentDecoder()
            var messages = 0
            var keyOwned = 0
            var identityOwned = 0
            var withoutIdentity = 0
            var partitionsSeen = Set<Int32>()

            init(partitions: Int32) { self.partitions = partitions }

            func consume(_ batch: [ConsumedMessage]) {
                var keyOwned = 0
                var identityOwned = 0
                var withoutIdentity = 0
                var seen = Set<Int32>()
                for m in batch {
                    let p = m.topicPartition.partition
                    seen.insert(p)
                    if KeyPartitioner.murmur2.partition(of: UnsafeRawBufferPointer(m.key), count: partitions) == p { keyOwned += 1 }
                    // The message's first call names its user (the generator sends one a message).
                    if let id = decoder.decode(m.value, nowMs: 0).first?.identity {
                        if KeyPartitioner.murmur2.partition(of: id, count: partitions) == p { identityOwned += 1 }
                    } else {
                        withoutIdentity += 1
                    }
                }
                lock.withLock {
                    messages += batch.count
                    self.keyOwned += keyOwned
                    self.identityOwned += identityOwned
                    self.withoutIdentity += withoutIdentity
                    partitionsSeen.formUnion(seen)
                }
            }
            func partitionsAssigned(_ partitions: [TopicPartition]) {}
            func partitionsRevoked(_ partitions: [TopicPartition]) {}
            var wantsPause: Bool { false }
        }

        func run() async throws {
            guard partitions > 0 else { throw ValidationError("--partitions must be positive") }
            let h = Tally(partitions: partitions)
            let props = ["bootstrap.servers": brokers, "group.id": "placement-\(UUID().uuidString.prefix(8))", "log_level": "3"]
            let c = try KafkaConsumer(config: KafkaClientConfig(props), topics: [topic], handler: h, logger: quiet)
            c.start()
            let deadline = uptimeSeconds() + 300
            while h.lock.withLock({ h.messages }) < expect && uptimeSeconds() < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            c.stop()
            let (n, key, identity, without, seen) = h.lock.withLock {
                (h.messages, h.keyOwned, h.identityOwned, h.withoutIdentity, h.partitionsSeen.count)
            }
            let share = { (k: Int) in String(format: "%.4f", Double(k) / Double(max(1, n))) }
            print("placement_messages=\(n)")
            print("placement_partitions_seen=\(seen)")
            print("placement_key_owned=\(share(key))")
            print("placement_identity_owned=\(share(identity))")
            print("placement_without_identity=\(without)")
        }
    }
}
