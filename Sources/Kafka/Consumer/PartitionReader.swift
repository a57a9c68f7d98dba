import CRdKafka
import Foundation

/// Reads whole partitions (a changelog, for restores and `inspect`) with one client kept
/// for many reads: creating a client, asking for its metadata and opening connections
/// took longer than reading a partition of 30,000 records. Reads `read_committed` (a
/// changelog written in transactions holds a fenced owner's aborted writes), up to the
/// high watermark asked `read_uncommitted` (asked `read_committed` it is the last stable
/// offset, which another producer's open transaction holds back: the read then waits for
/// that transaction to end). One read at a time; thread-safe.
public final class PartitionReader: @unchecked Sendable {
    private let rk: OpaquePointer
    private let queue: OpaquePointer
    /// For the high watermarks only.
    private let watermarks: OpaquePointer
    private let lock = NSLock()

    public init(config: KafkaClientConfig) throws(KafkaError) {
        var cfg = KafkaClientConfig(config.properties)
        cfg["group.id"] = "foldspace-sync-restore"
        cfg["group.instance.id"] = nil
        cfg["enable.auto.commit"] = "false"
        cfg["enable.auto.offset.store"] = "false"
        cfg["enable.partition.eof"] = "true"
        cfg["isolation.level"] = "read_committed"
        cfg["partition.assignment.strategy"] = nil
        // A read ends at the high watermark: nothing is gained by the broker holding a
        // fetch at the end of the log (the default waits 500 ms).
        if cfg["fetch.wait.max.ms"] == nil { cfg["fetch.wait.max.ms"] = "10" }
        // Every partition's fetch queue forwards to the one queue read here, and a
        // partition's "enough queued" check reads that queue's length: with the default
        // (100,000 messages) all partitions stopped fetching once that many were queued
        // in all, and the fetcher looked again only at its next wakeup (up to half a
        // second). The read went at half kcat's rate, its consumer idle in between.
        // Memory stays bounded by queued.max.messages.kbytes.
        if cfg["queued.min.messages"] == nil { cfg["queued.min.messages"] = "1000000" }
        let rk = try RDKafkaClient.create(RD_KAFKA_CONSUMER, config: cfg, what: "restore client")
        var wcfg = cfg
        wcfg["isolation.level"] = "read_uncommitted"
        let wk: OpaquePointer
        do {
            wk = try RDKafkaClient.create(RD_KAFKA_CONSUMER, config: wcfg, what: "restore client")
        } catch {
            rd_kafka_destroy(rk)
            throw error
        }
        rd_kafka_poll_set_consumer(rk)
        self.rk = rk
        watermarks = wk
        queue = rd_kafka_queue_get_consumer(rk)
    }

    deinit {
        rd_kafka_queue_destroy(queue)
        _ = rd_kafka_assign(rk, nil)
        rd_kafka_destroy(rk)
        rd_kafka_destroy(watermarks)
    }

    /// Every record of the partition, oldest first (with `fromLast`, only the last).
    public func read(
        topic: String, partition: Int32, timeoutMs: Int32 = 60_000,
        fromLast: Bool = false
    ) throws(KafkaError) -> [(key: [UInt8], value: [UInt8]?)] {
        try read(topic: topic, partitions: [partition], timeoutMs: timeoutMs, fromLast: fromLast)[partition]?.records ?? []
    }

    /// The records of the partition's last `offsets` offsets (control records of
    /// transactions take offsets too, and are not returned), oldest first.
    public func readTail(topic: String, partition: Int32, offsets: Int64, timeoutMs: Int32) throws(KafkaError) -> [(
        key: [UInt8], value: [UInt8]?
    )] {
        try read(topic: topic, partitions: [partition], timeoutMs: timeoutMs, tail: max(1, offsets))[partition]?.records ?? []
    }

    /// Every record of each of `partitions`, oldest first per partition, read together
    /// (one fetch session for all: a partition after the other paid the round trips of
    /// each). With `fromLast`, only each one's last record.
    ///
    /// `timeoutMs` is the longest wait for progress (each start-up call, then each wait
    /// for the next record), not a bound on the whole read: a changelog that takes
    /// longer than that to read was failed at every attempt, its partitions held for ever.
    public func read(
        topic: String, partitions: [Int32], timeoutMs: Int32 = 60_000,
        fromLast: Bool = false
    ) throws(KafkaError) -> [Int32: PackedRecords] {
        try read(topic: topic, partitions: partitions, timeoutMs: timeoutMs, tail: fromLast ? 1 : nil)
    }

    /// As ``read(topic:partitions:timeoutMs:fromLast:)``, from `tail` offsets before each
    /// partition's end (nil: from its start).
    func read(topic: String, partitions: [Int32], timeoutMs: Int32, tail: Int64?) throws(KafkaError) -> [Int32: PackedRecords] {
        lock.lock()
        defer { lock.unlock() }
        let patience = UInt64(max(0, timeoutMs)) * 1_000_000
        let callMs = min(10_000, max(1, timeoutMs))
        var out: [Int32: PackedRecords] = [:]
        // Where each partition ends; the ones with nothing to read are done already.
        var ends: [Int32: Int64] = [:]
        var starts: [(TopicPartition, Int64?)] = []
        for p in Set(partitions) {
            var low: Int64 = 0
            var high: Int64 = 0
            let wm = rd_kafka_query_watermark_offsets(watermarks, topic, p, &low, &high, callMs)
            if wm != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(wm, context: "watermarks of \(topic)[\(p)]") }
            out[p] = PackedRecords()
            guard high > low else { continue }
            ends[p] = high
            starts.append((TopicPartition(topic, p), tail.map { max(low, high - $0) } ?? Int64(RD_KAFKA_OFFSET_BEGINNING)))
        }
        if ends.isEmpty { return out }
        // The partitions' leaders known before they are assigned: assigned first, each
        // waited for its leader on a one-second timer before its first fetch.
        if let rkt = rd_kafka_topic_new(rk, topic, nil) {
            var md: UnsafePointer<rd_kafka_metadata>?
            if rd_kafka_metadata(rk, 0, rkt, &md, callMs) == RD_KAFKA_RESP_ERR_NO_ERROR, let md {
                rd_kafka_metadata_destroy(md)
            }
            rd_kafka_topic_destroy(rkt)
        }
        let assigned: rd_kafka_resp_err_t = withPartitionList(starts) { rd_kafka_assign(rk, $0) }
        if assigned != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(assigned, context: "assign \(topic)") }
        defer { _ = rd_kafka_assign(rk, nil) }
        let batch = 4_096
        var messages = [UnsafeMutablePointer<rd_kafka_message_t>?](repeating: nil, count: batch)
        // The topic's handle, once a message named it: compared by pointer after that (a
        // name built per message cost more than the rest of the loop).
        var topicHandle: OpaquePointer?
        var deadline = DispatchTime.now().uptimeNanoseconds + patience
        while DispatchTime.now().uptimeNanoseconds < deadline {
            // librdkafka's batch call waits until the batch is full or the timeout passes:
            // with 200 ms, every batch short of 4,096 messages (each fetch's tail) waited
            // for it, and the read went at a third of kcat's rate. 5 ms hands over what
            // has arrived.
            let n = messages.withUnsafeMutableBufferPointer { rd_kafka_consume_batch_queue(queue, 5, $0.baseAddress, batch) }
            guard n > 0 else { continue }
            var failure: KafkaError?
            var progressed = false
            for i in 0..<n {
                guard let m = messages[i] else { continue }
                defer { rd_kafka_message_destroy(m) }
                if failure != nil { continue }
                let p = m.pointee.partition
                // A partition done, or a message left from an earlier read: not ours.
                guard let end = ends[p], let rkt = m.pointee.rkt else { continue }
                if rkt != topicHandle {
                    guard String(cString: rd_kafka_topic_name(rkt)) == topic else { continue }
                    topicHandle = rkt
                }
                if m.pointee.err == RD_KAFKA_RESP_ERR__PARTITION_EOF {
                    if m.pointee.offset >= end { ends[p] = nil }
                    progressed = true
                    continue
                }
                if m.pointee.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                    failure = KafkaError(m.pointee.err, context: "reading \(topic)[\(p)]")
                    continue
                }
                let key = UnsafeRawBufferPointer(start: m.pointee.key, count: m.pointee.key == nil ? 0 : m.pointee.key_len)
                let value = m.pointee.payload.map { UnsafeRawBufferPointer(start: $0, count: m.pointee.len) }
                out[p, default: PackedRecords()].append(key: key, value: value)
                progressed = true
                if m.pointee.offset + 1 >= end { ends[p] = nil }
            }
            if let failure { throw failure }
            if ends.isEmpty { return out }
            if progressed { deadline = DispatchTime.now().uptimeNanoseconds + patience }
        }
        throw KafkaError(message: "reading \(topic) \(ends.keys.sorted()): nothing read for \(timeoutMs) ms")
    }
}
