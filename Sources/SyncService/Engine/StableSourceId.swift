import Kafka

/// FNV-1a (32 bits) of `topic` and the partition number: the same on every instance
/// and every run, so applied offsets in user state stay meaningful after a move.
func stableSourceId(_ tp: TopicPartition) -> UInt32 {
    var h: UInt32 = 0x811C_9DC5
    for b in tp.topic.utf8 {
        h ^= UInt32(b)
        h = h &* 0x0100_0193
    }
    for shift in stride(from: 0, to: 32, by: 8) {
        h ^= UInt32(truncatingIfNeeded: Int64(tp.partition) >> Int64(shift)) & 0xFF
        h = h &* 0x0100_0193
    }
    return h
}
