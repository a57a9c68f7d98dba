import CRdKafka
import Foundation
import Logging

/// The poll thread: fetches batches, hands them to the handler, pauses under
/// back-pressure, wakes a stalled fetcher, and closes the consumer at the end.
extension KafkaConsumer {
    func pollLoop() {
        var messages = [UnsafeMutablePointer<rd_kafka_message_t>?](repeating: nil, count: maxBatch)
        var batch: [ConsumedMessage] = []
        batch.reserveCapacity(maxBatch)
        var topicCache: [UnsafeMutableRawPointer: String] = [:]
        // Messages come in runs of one topic: the last one's name is reused unhashed.
        var lastTopic: (handle: UnsafeMutableRawPointer, name: String)?
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            let (stop, isFatal) = lock.withLock { () -> (Bool, Bool) in
                lastLoopNs = now
                return (stopRequested, fatal)
            }
            if stop || isFatal { break }

            // Back-pressure: pause fetching while the handler is over capacity, but keep
            // polling so rebalance callbacks are still served.
            let wantsPause = handler.wantsPause || lock.withLock { fetchingStopped }
            if wantsPause != paused { setPaused(wantsPause) }
            // Partitions the handler is now ready for (their state restored).
            let ready = lock.withLock { () -> [TopicPartition] in
                defer { released = [] }
                return released.filter { assigned.contains($0) && !held.contains($0) }
            }
            if !ready.isEmpty && !paused {
                _ = withPartitionList(ready.map { ($0, nil) }) { rd_kafka_resume_partitions(rk, $0) }
            }
            // Seeks the handler asks, before it consumes again (also when nothing came: a
            // partition just released may be asked to be read again before any of it is).
            performSeeks()

            var n = messages.withUnsafeMutableBufferPointer { buf in
                rd_kafka_consume_batch_queue(queue, 0, buf.baseAddress, maxBatch)
            }
            if n == 0 {
                if !paused { nudgeFetcherIfStalled() }
                // Nothing ready: block briefly in consumer_poll, which also serves callbacks.
                if let m = rd_kafka_consumer_poll(rk, 100) {
                    messages[0] = m
                    n = 1
                }
            }
            if n <= 0 { continue }
            batch.removeAll(keepingCapacity: true)
            for i in 0..<n {
                guard let m = messages[i] else { continue }
                if m.pointee.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                    reportMessageError(m)
                    continue
                }
                let topicName: String
                guard let rkt = m.pointee.rkt.map(UnsafeMutableRawPointer.init) else { continue }
                if let last = lastTopic, last.handle == rkt {
                    topicName = last.name
                } else if let cached = topicCache[rkt] {
                    topicName = cached
                } else {
                    topicName = String(cString: rd_kafka_topic_name(OpaquePointer(rkt)))
                    topicCache[rkt] = topicName
                }
                lastTopic = (rkt, topicName)
                var tsType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
                let ts = rd_kafka_message_timestamp(m, &tsType)
                let value =
                    m.pointee.payload.map {
                        UnsafeBufferPointer(start: $0.assumingMemoryBound(to: UInt8.self), count: m.pointee.len)
                    } ?? UnsafeBufferPointer(start: nil, count: 0)
                let key =
                    m.pointee.key.map {
                        UnsafeBufferPointer(start: $0.assumingMemoryBound(to: UInt8.self), count: m.pointee.key_len)
                    } ?? UnsafeBufferPointer(start: nil, count: 0)
                batch.append(
                    ConsumedMessage(
                        topicPartition: TopicPartition(topicName, m.pointee.partition),
                        offset: m.pointee.offset,
                        timestampMs: tsType == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? nil : ts,
                        key: key, value: value))
            }
            if !batch.isEmpty { handler.consume(batch) }
            batch.removeAll(keepingCapacity: true)
            // Freeing a batch's messages (an allocation each, and the fetch buffers they
            // share) is left to another thread: this one is the pipeline's busiest.
            nonisolated(unsafe) let spent = Array(messages[0..<n])  // handed over: this thread drops them
            for i in 0..<n { messages[i] = nil }
            releases.async(group: releasing) {
                for m in spent { if let m { rd_kafka_message_destroy(m) } }
            }
        }
        // Every message must be back before the consumer closes.
        releasing.wait()
        close()
        lock.withLock { loopEnded = true }
        finished.signal()
    }

    /// Wakes librdkafka's fetcher when the queue has run dry while the partitions still
    /// have messages to read.
    ///
    /// This librdkafka (2.0) stops fetching a partition once the consumer queue is over
    /// `queued.min.messages` or `queued.max.messages.kbytes`, and decides again only when
    /// the broker's thread next wakes: on network traffic, on a request of its own, or
    /// after up to a second. A poll thread that drains the queue faster waits out the
    /// rest of that second (later versions have `fetch.queue.backoff.ms` for it). Any
    /// request to the partition leaders wakes their threads, so the consumer asks them
    /// for the end offsets, off the poll thread, at most every 20 ms and only while the
    /// cached watermarks show messages not yet read: a consumer that has caught up never
    /// sends one.
    func nudgeFetcherIfStalled() {
        let now = DispatchTime.now().uptimeNanoseconds
        let due = lock.withLock { !nudging && now &- lastNudgeNs >= 20_000_000 }
        guard due else { return }
        let behind = lag().filter { $0.value > 0 }.map(\.key)
        guard !behind.isEmpty else { return }
        lock.withLock {
            nudging = true
            lastNudgeNs = now
            nudges += 1
        }
        DispatchQueue.global().async { [self] in
            // Offsets for "latest" (-1): a ListOffsets request to each partition's leader.
            _ = withPartitionList(behind.map { ($0, Int64(RD_KAFKA_OFFSET_END)) }) { list in
                rd_kafka_offsets_for_times(rk, list, 1000)
            }
            lock.withLock { nudging = false }
        }
    }

    /// Moves the partitions the handler asks (``ConsumerHandler/takeSeeks()``) to the
    /// offsets it names. Poll thread.
    func performSeeks() {
        let seeks = handler.takeSeeks()
        guard !seeks.isEmpty else { return }
        let failed: String? = withPartitionList(seeks.map { ($0.0, $0.1) }) { list in
            if let e = rd_kafka_seek_partitions(rk, list, Self.seekTimeout) {
                defer { rd_kafka_error_destroy(e) }
                return String(cString: rd_kafka_error_string(e))
            }
            // Each partition's own outcome is in its entry.
            let errors = (0..<Int(list.pointee.cnt)).compactMap { i -> String? in
                let e = list.pointee.elems[i]
                return e.err == RD_KAFKA_RESP_ERR_NO_ERROR ? nil : "[\(e.partition)] \(String(cString: rd_kafka_err2str(e.err)))"
            }
            return errors.isEmpty ? nil : errors.joined(separator: ", ")
        }
        if let failed {
            // The partition then waits (the handler expects the offset back) until a
            // rebalance: said, since nothing else would show it.
            logger.error(
                "reading a partition again from an offset failed; it is not read on until it is assigned again",
                metadata: ["error": "\(failed)", "partitions": "\(seeks.map(\.0))"])
        }
    }

    /// 10 s for a seek. librdkafka before 2.1.0 reads the timeout as microseconds
    /// (librdkafka #4230): 10,000 waited 10 ms, and a seek still under way was reported
    /// as failed.
    static let seekTimeout: Int32 = rd_kafka_version() < 0x0201_0000 ? 10_000_000 : 10_000

    /// How many times the fetcher was woken by ``nudgeFetcherIfStalled()``.
    public var fetcherNudges: Int { lock.withLock { nudges } }

    func reportMessageError(_ m: UnsafeMutablePointer<rd_kafka_message_t>) {
        let err = m.pointee.err
        if err == RD_KAFKA_RESP_ERR__PARTITION_EOF { return }
        let text = rd_kafka_message_errstr(m).map { String(cString: $0) } ?? ""
        logger.warning(
            "kafka consume error",
            metadata: [
                "code": "\(String(cString: rd_kafka_err2name(err)))", "reason": "\(text)",
            ])
    }

    func setPaused(_ pause: Bool) {
        // Resuming leaves the held partitions paused.
        let parts = Array(lock.withLock { pause ? assigned : assigned.subtracting(held) })
        paused = pause
        guard !parts.isEmpty else { return }
        _ = withPartitionList(parts.map { ($0, nil) }) { list in
            pause ? rd_kafka_pause_partitions(rk, list) : rd_kafka_resume_partitions(rk, list)
        }
        logger.info(pause ? "paused fetching: too many users waiting for delivery" : "resumed fetching")
    }

    /// Leaves the group. `rd_kafka_consumer_close` serves the final revocation through
    /// our rebalance callback on this thread (settle, commit), then commits what
    /// auto-commit still holds and leaves.
    func close() {
        let err = rd_kafka_consumer_close(rk)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            logger.warning("kafka close", metadata: ["error": "\(KafkaError(err, context: "close"))"])
        }
    }

}
