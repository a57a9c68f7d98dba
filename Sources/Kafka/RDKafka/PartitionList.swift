import CRdKafka
import Foundation

/// Builds an `rd_kafka_topic_partition_list_t` and frees it after `body`.
func withPartitionList<R>(
    _ entries: [(TopicPartition, Int64?)], metadata: String? = nil,
    _ body: (UnsafeMutablePointer<rd_kafka_topic_partition_list_t>) throws -> R
) rethrows -> R {
    let list = rd_kafka_topic_partition_list_new(Int32(max(entries.count, 1)))!
    defer { rd_kafka_topic_partition_list_destroy(list) }
    for (tp, offset) in entries {
        let p = rd_kafka_topic_partition_list_add(list, tp.topic, tp.partition)!
        if let offset { p.pointee.offset = offset }
        if let metadata, !metadata.isEmpty {
            // The list frees it (with free()).
            let bytes = Array(metadata.utf8)
            let m = malloc(bytes.count)!
            bytes.withUnsafeBytes { m.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            p.pointee.metadata = m
            p.pointee.metadata_size = bytes.count
        }
    }
    return try body(list)
}

/// Reads the entries of a partition list.
func partitions(of list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) -> [TopicPartition] {
    guard let list else { return [] }
    var out: [TopicPartition] = []
    out.reserveCapacity(Int(list.pointee.cnt))
    for i in 0..<Int(list.pointee.cnt) {
        let e = list.pointee.elems[i]
        out.append(TopicPartition(String(cString: e.topic), e.partition))
    }
    return out
}
