import CRdKafka
import Foundation

/// Watermarks and lag: what /metrics reports per assigned partition, from librdkafka's
/// cached watermarks and the committed offsets read at each assignment.
extension KafkaConsumer {
    /// The partition's first retained offset and high watermark, asked of its leader.
    public func watermarks(_ tp: TopicPartition, timeoutMs: Int32 = 5000) throws(KafkaError) -> (low: Int64, high: Int64) {
        var low: Int64 = 0
        var high: Int64 = 0
        let err = rd_kafka_query_watermark_offsets(rk, tp.topic, tp.partition, &low, &high, timeoutMs)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(err, context: "watermarks of \(tp)") }
        return (low, high)
    }

    /// A partition's high watermark as last fetched (librdkafka's cached value; nil
    /// before a fetch has told it).
    public func highWatermark(_ tp: TopicPartition) -> Int64? {
        var low: Int64 = 0
        var high: Int64 = 0
        guard rd_kafka_get_watermark_offsets(rk, tp.topic, tp.partition, &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR,
            high >= 0
        else { return nil }
        return high
    }

    /// Lag per assigned partition: high watermark minus the consumer's position,
    /// from librdkafka's cached watermarks (no broker round trip).
    public func lag() -> [TopicPartition: Int64] {
        let parts = assignment
        var out: [TopicPartition: Int64] = [:]
        let positions: [TopicPartition: Int64] = withPartitionList(parts.map { ($0, nil) }) { list in
            _ = rd_kafka_position(rk, list)
            var r: [TopicPartition: Int64] = [:]
            for i in 0..<Int(list.pointee.cnt) {
                let el = list.pointee.elems[i]
                r[TopicPartition(String(cString: el.topic), el.partition)] = el.offset
            }
            return r
        }
        let committed = lock.withLock { committedAtAssignment }
        for tp in parts {
            var low: Int64 = 0
            var high: Int64 = 0
            guard rd_kafka_get_watermark_offsets(rk, tp.topic, tp.partition, &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR,
                high >= 0
            else { continue }
            if let pos = positions[tp], pos >= 0 {
                out[tp] = max(0, high - pos)
            } else if let c = committed[tp] {
                // Nothing consumed yet: reading starts at the committed offset (not
                // before the oldest retained message), or where auto.offset.reset says.
                let start = c >= 0 ? max(c, low) : (startsAtEnd ? high : low)
                out[tp] = max(0, high - start)
            }
            // Else the committed offset is still being read: unknown for a moment.
        }
        return out
    }

    /// Reads the committed offsets of newly assigned partitions for ``lag()``, off the
    /// poll thread (a round trip to the group coordinator). On failure the lag of a
    /// partition stays unknown until its first message.
    func readCommittedOffsets(_ parts: [TopicPartition]) {
        guard !parts.isEmpty else { return }
        DispatchQueue.global().async { [self] in
            do {
                let found = try committed(parts, timeoutMs: 10_000)
                lock.withLock { for (tp, o) in found where assigned.contains(tp) { committedAtAssignment[tp] = o } }
            } catch {
                logger.warning(
                    "could not read the committed offsets; the lag of a partition shows from its first message",
                    metadata: ["error": "\(error)"])
            }
        }
    }
}
