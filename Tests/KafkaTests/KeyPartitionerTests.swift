import CRdKafka
import Foundation
import Simulation
import TestSupport
import Testing

@testable import Folding
@testable import Kafka

/// ``KeyPartitioner`` against the published vectors of the Java client and librdkafka, and
/// against librdkafka itself: its partitioner functions called directly, and the partitions
/// a librdkafka producer actually wrote keyed messages to.
@Suite struct KeyPartitionerTests {
    private func hash(_ p: KeyPartitioner, _ bytes: some Sequence<UInt8>) -> UInt32 {
        Array(bytes).withUnsafeBytes { p.hash($0) }
    }

    @Test func murmur2MatchesTheJavaClientsVectors() {
        // Kafka's UtilsTest.testMurmur2: Utils.murmur2 of the UTF-8 bytes, as a signed int.
        let java: [(String, Int32)] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            ("abc", 479_470_107),
        ]
        for (key, expected) in java {
            #expect(Int32(bitPattern: hash(.murmur2, key.utf8)) == expected, "\(key)")
        }
    }

    @Test func murmur2MatchesLibrdkafkasVectorsAtEveryAlignment() {
        // rdmurmur2.c's unit test, whose suffixes start 1 to 3 bytes past the array's start:
        // the word loads are unaligned there.
        let short = Array("1234".utf8)
        let long = Array("PreAmbleWillBeRemoved,ThePrePartThatIs".utf8)
        let cases: [(ArraySlice<UInt8>, UInt32)] = [
            (ArraySlice("kafka".utf8), 0xd067_cf64),
            (ArraySlice("giberish123456789".utf8), 0x8f55_2b0c),
            (short[0...], 0x9fc9_7b14), (short[1...], 0xe7c0_09ca), (short[2...], 0x8739_30da), (short[3...], 0x5a4b_5ca1),
            (long[0...], 0x7842_4f1c), (long[1...], 0x4a62_b377), (long[2...], 0xe0e4_e09e), (long[3...], 0x62b8_b43f),
            ([], 0x106e_08d9),
        ]
        for (bytes, expected) in cases {
            let direct = bytes.withUnsafeBytes { KeyPartitioner.murmur2.hash($0) }
            #expect(direct == expected, "\(String(decoding: bytes, as: UTF8.self))")
        }
    }

    @Test func crc32IsZlibs() {
        #expect(hash(.crc32, "123456789".utf8) == 0xcbf4_3926)
        #expect(hash(.crc32, "The quick brown fox jumps over the lazy dog".utf8) == 0x414f_a339)
        #expect(hash(.crc32, []) == 0)
    }

    @Test func emptyKeysAreHashedLikeAnyOther() {
        // murmur2 of no bytes is 0x106e08d9 (the Java client's partition for an empty
        // key); crc32 of no bytes is 0, so partition 0 (librdkafka's `consistent`).
        #expect(KeyPartitioner.murmur2.partition(of: "", count: 7) == Int32(0x106e_08d9 % 7))
        #expect(KeyPartitioner.crc32.partition(of: "", count: 7) == 0)
        #expect(KeyPartitioner.murmur2.partition(of: [], count: 1000) == KeyPartitioner.murmur2.partition(of: "", count: 1000))
    }

    @Test func theOverloadsAgree() {
        var rng = SplitMix64(seed: 24)
        for key in Self.keys(300, using: &rng) {
            let count = Int32.random(in: 1...500, using: &rng)
            for p in KeyPartitioner.allCases {
                let bytes = Array(key.utf8)
                let raw = bytes.withUnsafeBytes { p.partition(of: $0, count: count) }
                #expect(p.partition(of: bytes, count: count) == raw)
                #expect(p.partition(of: key, count: count) == raw)
                // A slice of a larger string reads only its own bytes.
                let framed = "<" + key + ">"
                #expect(p.partition(of: framed.dropFirst().dropLast(), count: count) == raw)
            }
        }
    }

    /// librdkafka's partitioner functions, called as its producer calls them: the non-random
    /// variants never touch the topic argument.
    private static func librdkafka(_ p: KeyPartitioner, _ key: UnsafeRawBufferPointer, count: Int32) -> Int32 {
        switch p {
        case .murmur2: rd_kafka_msg_partitioner_murmur2(nil, key.baseAddress, key.count, count, nil, nil)
        case .crc32: rd_kafka_msg_partitioner_consistent(nil, key.baseAddress, key.count, count, nil, nil)
        }
    }

    @Test(arguments: KeyPartitioner.allCases) func agreesWithLibrdkafkasFunctions(_ p: KeyPartitioner) {
        var rng = SplitMix64(seed: 2024)
        var counts: [Int32] = [1, 2, 3, 7, 12, 48, 1000, Int32.max]
        counts += (0..<20).map { _ in Int32.random(in: 1...Int32.max, using: &rng) }
        var disagreements = 0
        for length in 1...300 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            bytes.withUnsafeBytes { key in
                for count in counts where p.partition(of: key, count: count) != Self.librdkafka(p, key, count: count) {
                    disagreements += 1
                }
            }
        }
        for key in Self.keys(1000, using: &rng) {
            Array(key.utf8).withUnsafeBytes { raw in
                for count in counts where p.partition(of: key, count: count) != Self.librdkafka(p, raw, count: count) {
                    disagreements += 1
                }
            }
        }
        #expect(disagreements == 0)
    }

    @Test func partitionsAreInRangeAndCountsBelowOneDoNotTrap() {
        var rng = SplitMix64(seed: 7)
        for count in Int32(1)...1000 {
            let bytes = (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            for p in KeyPartitioner.allCases {
                let r = p.partition(of: bytes, count: count)
                #expect((0..<count).contains(r), "\(p) \(bytes) over \(count): \(r)")
            }
        }
        for p in KeyPartitioner.allCases {
            for count in [0, -1, -7, Int32.min] {
                #expect(p.partition(of: "user-1", count: count) == 0)
                #expect(p.partition(of: [], count: count) == 0)
            }
            #expect((0..<Int32.max).contains(p.partition(of: "user-1", count: Int32.max)))
        }
    }

    @Test func rawValuesAreTheConfigurationsNames() {
        #expect(KeyPartitioner(rawValue: "murmur2") == .murmur2)
        #expect(KeyPartitioner(rawValue: "crc32") == .crc32)
        #expect(KeyPartitioner(rawValue: "consistent") == nil)
    }

    // MARK: Through a librdkafka producer

    /// Partitions reported by a producer's delivery reports, by message index.
    private final class Deliveries: @unchecked Sendable {
        let lock = NSLock()
        var partitions: [Int: Int32] = [:]
        var failures: [String] = []
    }

    /// Produces one message per key, with partition unassigned, through a producer whose
    /// `partitioner` is `p.librdkafkaPartitioner`, and returns the partition each landed on
    /// (waits for all delivery reports).
    private static func producedPartitions(
        _ p: KeyPartitioner, keys: [String], cluster: MockCluster, topic: String
    ) throws -> Deliveries {
        let deliveries = Deliveries()
        let config = KafkaClientConfig([
            "bootstrap.servers": cluster.bootstrapServers, "partitioner": p.librdkafkaPartitioner,
            "linger.ms": "5", "log_level": "3",
        ])
        let rk = try RDKafkaClient.create(RD_KAFKA_PRODUCER, config: config, what: "partitioner test producer") { conf in
            rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(deliveries).toOpaque())
            rd_kafka_conf_set_dr_msg_cb(conf) { _, msg, opaque in
                guard let msg, let opaque else { return }
                let d = Unmanaged<Deliveries>.fromOpaque(opaque).takeUnretainedValue()
                // Each message's opaque is its index + 1 (a pointer cannot be 0).
                let index = Int(bitPattern: msg.pointee._private) - 1
                d.lock.withLock {
                    if msg.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                        d.partitions[index] = msg.pointee.partition
                    } else {
                        d.failures.append("\(index): \(String(cString: rd_kafka_err2name(msg.pointee.err)))")
                    }
                }
            }
        }
        defer { rd_kafka_destroy(rk) }
        let value = Array("v".utf8)
        for (i, key) in keys.enumerated() {
            let err = Array(key.utf8).withUnsafeBytes { k in
                value.withUnsafeBytes { v in
                    fs_rd_kafka_produce(
                        rk, topic, RD_KAFKA_PARTITION_UA, k.baseAddress, k.count, v.baseAddress, v.count, nil,
                        UnsafeMutableRawPointer(bitPattern: i + 1), 0)
                }
            }
            guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(err, context: "produce") }
        }
        // Serves the delivery reports on this thread until every message has one.
        let flushed = rd_kafka_flush(rk, 30_000)
        guard flushed == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(flushed, context: "flush") }
        return deliveries
    }

    @Test(arguments: KeyPartitioner.allCases) func agreesWithWhereAProducerPutsKeyedMessages(_ p: KeyPartitioner) async throws {
        let cluster = try MockCluster(brokers: 1)
        let topic = "t-partitioner-\(p.rawValue)"
        let count: Int32 = 7
        try cluster.createTopic(topic, partitions: Int(count))
        var rng = SplitMix64(seed: 500)
        let keys = Self.keys(500, using: &rng)
        let d = try await offThePool { try Self.producedPartitions(p, keys: keys, cluster: cluster, topic: topic) }
        let (delivered, failures) = d.lock.withLock { (d.partitions, d.failures) }
        #expect(failures.isEmpty, "\(failures.prefix(5))")
        #expect(delivered.count == keys.count)
        var mismatches: [String] = []
        for (i, key) in keys.enumerated() {
            let expected = p.partition(of: key, count: count)
            if delivered[i] != expected { mismatches.append("\(key.prefix(40)): \(String(describing: delivered[i])) vs \(expected)") }
        }
        #expect(mismatches.isEmpty, "\(mismatches.count) of \(keys.count): \(mismatches.prefix(5))")
        // The keys spread over every partition, so agreeing was not trivial.
        #expect(Set(delivered.values).count == Int(count))
    }

    // MARK: Keys

    /// Identity-like keys: short ones of 1 to 3 bytes (murmur2's tail cases), ids and
    /// UUIDs, e-mail addresses, non-ASCII text (2-, 3- and 4-byte UTF-8), and long ones.
    static func keys(_ n: Int, using rng: inout SplitMix64) -> [String] {
        let alphabet: [Character] = Array("abcxyzABCXYZ0189-_.@+ éüßçжщλπあいユーザー中文字😀🚀🇫🇷")
        func text(_ length: Int) -> String {
            String((0..<length).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] })
        }
        return (0..<n).map { i in
            switch i % 8 {
            case 0: return text(Int.random(in: 1...3, using: &rng))
            case 1: return "user-\(rng.next() % 1_000_000)"
            case 2: return UUID(uuid: Self.uuidBytes(&rng)).uuidString.lowercased()
            case 3: return "\(text(6))@example.com"
            case 4: return "ユーザー\(i)"
            case 5: return "😀\(i)é"
            case 6: return text(Int.random(in: 100...2000, using: &rng))
            default: return text(Int.random(in: 4...40, using: &rng))
            }
        }
    }

    private static func uuidBytes(_ rng: inout SplitMix64) -> uuid_t {
        let a = rng.next()
        let b = rng.next()
        func byte(_ x: UInt64, _ i: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: x >> (8 * i)) }
        return (
            byte(a, 0), byte(a, 1), byte(a, 2), byte(a, 3), byte(a, 4), byte(a, 5), byte(a, 6), byte(a, 7),
            byte(b, 0), byte(b, 1), byte(b, 2), byte(b, 3), byte(b, 4), byte(b, 5), byte(b, 6), byte(b, 7)
        )
    }
}
