import Foundation
import TestSupport
import Testing

@testable import Kafka

#if os(Linux)  // the hint replaces a library's definition only under ELF's flat namespace
    /// librdkafka's zstd batches without a stated size, decompressed once (``ZstdSizeHint``).
    @Suite(.serialized) struct ZstdSizeHintTests {
        @Test func librdkafkaCallsTheHint() {
            // The test executable, like the daemon's, defines ZSTD_getFrameContentSize and the
            // dynamic linker binds librdkafka's call to it.
            #expect(ZstdSizeHint.isInstalled)
        }

        /// Consumes the topic from the start in a new group and returns the values read and
        /// librdkafka's count of decompressions that had to start again in a larger buffer.
        private func consumeAll(_ cluster: MockCluster, topic: String, count: Int, group: String) async throws -> ([String], Int) {
            var config = consumerConfig(cluster, group: group)
            config["statistics.interval.ms"] = "100"
            let (consumer, handler) = try startedConsumer(cluster, group: group, topic: topic, config: config)
            #expect(await eventually(.seconds(30)) { handler.values.count == count })
            // Statistics (every 100 ms) emitted after the last fetch.
            try await Task.sleep(for: .milliseconds(300))
            #expect(await eventually { consumer.latestStatistics != nil })
            let grows = Self.zbufGrow(consumer.latestStatistics ?? "")
            consumer.stop()
            return (handler.values, grows)
        }

        /// The sum of `zbuf_grow` over the brokers in librdkafka's statistics.
        static func zbufGrow(_ json: String) -> Int {
            guard let root = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
                let brokers = root["brokers"] as? [String: [String: Any]]
            else { return -1 }
            return brokers.values.reduce(0) { $0 + (($1["zbuf_grow"] as? Int) ?? 0) }
        }

        @Test func aBatchWithoutItsSizeIsDecompressedOnce() async throws {
            // This librdkafka's producer streams zstd batches, so their frames carry no size;
            // JSON compresses far more than the 2x librdkafka guesses first.
            let cluster = try MockCluster(brokers: 1)
            try cluster.createTopic("t-zstd", partitions: 1)
            let values = (0..<2000).map {
                #"{"type":"track","userId":"user-\#($0)","event":"Clicked","properties":{"pad":"\#(String(repeating: "abc", count: 60))"}}"#
            }
            try produce(cluster, topic: "t-zstd", values)

            let sizedBefore = ZstdSizeHint.framesSized
            let (hinted, hintedGrows) = try await consumeAll(cluster, topic: "t-zstd", count: values.count, group: "g-zstd-on")
            #expect(hinted == values)
            #expect(hintedGrows == 0, "librdkafka decompressed again \(hintedGrows) times")
            #expect(ZstdSizeHint.framesSized > sizedBefore)

            // Without the hint, librdkafka's own guessing: the same messages, each batch
            // decompressed again into larger buffers, and nothing answered by the hint.
            // (The switch is process-wide: other suites' consumers go without it meanwhile,
            // and a call already past the switch may still count: let those finish first.)
            ZstdSizeHint.setEnabled(false)
            defer { ZstdSizeHint.setEnabled(true) }
            try await Task.sleep(for: .milliseconds(100))
            let sizedOff = ZstdSizeHint.framesSized
            let (plain, plainGrows) = try await consumeAll(cluster, topic: "t-zstd", count: values.count, group: "g-zstd-off")
            #expect(plain == values)
            #expect(plainGrows > 0)
            #expect(ZstdSizeHint.framesSized == sizedOff)
        }
    }
#endif
