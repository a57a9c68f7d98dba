import Foundation
import TestSupport
import Testing

@testable import Kafka

/// The reader of whole partitions (restores, `inspect`): its timeout is the longest wait
/// for progress, not a bound on the whole read. A changelog larger than the timeout's
/// worth of reading was failed at every attempt, and its partitions held for ever.
@Suite struct PartitionReaderTests {
    /// A mock broker with one partition of `batches` records, each produced as its own
    /// batch (the mock answers a fetch with one batch per partition).
    static func log(batches: Int) throws -> (MockCluster, KafkaClientConfig) {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic("log", partitions: 1)
        let config = KafkaClientConfig(["bootstrap.servers": cluster.bootstrapServers])
        let producer = try KafkaProducer(config: config, logger: quiet)
        for b in 0..<batches {
            try producer.send(topic: "log", partition: 0, key: Array("k\(b)".utf8), value: Array("v\(b)".utf8))
            #expect(producer.flush(timeoutMs: 10_000))
        }
        producer.close()
        return (cluster, config)
    }

    // Seconds of blocking reads each: off the cooperative pool (``offThePool``).

    @Test func aReadThatKeepsProgressingIsNotCutByItsTimeout() async throws {
        let batches = 12
        let (read, took) = try await offThePool { () throws -> ([Int32: PackedRecords], Duration) in
            let (cluster, config) = try Self.log(batches: batches)
            // Every round trip 200 ms: twelve fetches take well over the 1 s timeout, and
            // no wait for one is near it.
            _ = cluster.control("rtt 1 200")
            let started = ContinuousClock.now
            let read = try PartitionReader(config: config).read(topic: "log", partitions: [0], timeoutMs: 1_000)
            return (read, ContinuousClock.now - started)
        }
        #expect(read[0]?.count == batches)
        #expect(read[0]?.records.last?.value == Array("v\(batches - 1)".utf8))
        // The read did outlast the timeout: otherwise this test would show nothing.
        #expect(took > .seconds(1), "\(took)")
    }

    @Test func aReadThatStallsFailsAfterItsTimeout() async throws {
        let (first, stalled) = try await offThePool { () throws -> (Int?, Bool) in
            let (cluster, config) = try Self.log(batches: 1)
            let reader = try PartitionReader(config: config)
            let first = try reader.read(topic: "log", partitions: [0], timeoutMs: 5_000)[0]?.count
            // The broker stops answering: the read fails instead of waiting for ever.
            _ = cluster.control("rtt 1 4000")
            do {
                _ = try reader.read(topic: "log", partitions: [0], timeoutMs: 1_000)
                return (first, false)
            } catch {
                return (first, true)
            }
        }
        #expect(first == 1)
        #expect(stalled, "a read from a broker that stopped answering returned")
    }
}
