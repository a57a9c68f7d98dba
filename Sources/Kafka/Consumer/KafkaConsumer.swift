import CRdKafka
import Foundation
import Logging

/// One consumed message, valid only during the ``ConsumerHandler/consume(_:)`` call that
/// receives it: key and value point into librdkafka's buffers, so nothing is copied on
/// the way to the decoder.
public struct ConsumedMessage {
    public var topicPartition: TopicPartition
    public var offset: Int64
    /// The Kafka message timestamp (create or log-append time), in epoch milliseconds.
    public var timestampMs: Int64?
    public var key: UnsafeBufferPointer<UInt8>
    public var value: UnsafeBufferPointer<UInt8>

    public init(topicPartition: TopicPartition, offset: Int64, timestampMs: Int64?,
                key: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) {
        self.topicPartition = topicPartition
        self.offset = offset
        self.timestampMs = timestampMs
        self.key = key
        self.value = value
    }
}

/// What the consumer's poll thread calls. Every method runs on that one thread, in
/// order, so an implementation sees assignments, batches and revocations serialized.
public protocol ConsumerHandler: AnyObject, Sendable {
    /// A batch of messages, in partition order. Return once they are folded: the poll
    /// thread fetches the next batch only then, which bounds what is in flight.
    func consume(_ batch: [ConsumedMessage])
    /// Partitions are about to be assigned (inside the rebalance callback).
    func partitionsAssigned(_ partitions: [TopicPartition])
    /// Partitions are about to be taken away (inside the rebalance callback, before
    /// they move): settle what they owe and store their offsets, then return. The
    /// consumer commits the stored offsets synchronously right after.
    func partitionsRevoked(_ partitions: [TopicPartition])
    /// Checked after each batch: while `true`, the consumer pauses fetching.
    var wantsPause: Bool { get }
    /// Asked right after ``partitionsAssigned(_:)``: which of the new partitions must
    /// not be fetched yet (their state is being restored). They stay paused until
    /// ``KafkaConsumer/release(_:)``.
    func partitionsToHold(_ partitions: [TopicPartition]) -> [TopicPartition]
}

extension ConsumerHandler {
    public func partitionsToHold(_ partitions: [TopicPartition]) -> [TopicPartition] { [] }
}

/// A consumer-group member polled on a dedicated thread.
///
/// librdkafka is never called from Swift's cooperative pool: one `Thread` polls, serves
/// rebalance callbacks synchronously and hands messages to the ``ConsumerHandler`` in
/// batches. Offsets are stored only through ``storeOffsets(_:)``
/// (`enable.auto.offset.store=false`), and librdkafka's auto-commit commits what was
/// stored; revocation and close commit synchronously.
public final class KafkaConsumer: @unchecked Sendable {
    public let topics: [String]
    private let rk: OpaquePointer
    private let queue: OpaquePointer
    private let context: CallbackContext
    private let logger: Logger
    private let handler: ConsumerHandler
    private let maxBatch: Int
    private let lock = NSLock()
    private var stopRequested = false
    private var fatal = false
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)
    private var assigned: Set<TopicPartition> = []
    /// Each assigned partition's committed offset as read after the assignment (or
    /// `RD_KAFKA_OFFSET_INVALID`: none). Until a partition's first message librdkafka
    /// knows no position for it, and its lag would be counted from the oldest retained
    /// message: an instance restarted on an idle, fully committed topic showed the
    /// whole topic as lag.
    private var committedAtAssignment: [TopicPartition: Int64] = [:]
    /// Where a partition without a committed offset starts (`auto.offset.reset`).
    private let startsAtEnd: Bool
    private var paused = false
    /// Assigned partitions kept paused until the handler releases them, and those it
    /// released since the poll thread last looked (resumed there).
    private var held: Set<TopicPartition> = []
    private var released: [TopicPartition] = []
    private var loopEnded = false
    private var fetchingStopped = false

    /// Where consumed messages are destroyed, in order, off the poll thread.
    private let releases = DispatchQueue(label: "foldspace-sync.kafka.release")
    private let releasing = DispatchGroup()

    private var lastLoopNs: UInt64 = DispatchTime.now().uptimeNanoseconds
    private var nudging = false
    private var lastNudgeNs: UInt64 = 0
    private var nudges = 0

    /// Properties that make this consumer safe, set unless the operator overrides them.
    public static let defaults: [String: String] = [
        "enable.auto.offset.store": "false",
        "enable.auto.commit": "true",
        "auto.commit.interval.ms": "5000",
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": "false",
        "session.timeout.ms": "10000",
        // Prefetch enough that the fetcher is rarely stopped. Once the consumer queue is
        // over either threshold, this librdkafka's fetcher stops and decides again only
        // when its broker thread next wakes, up to a second later; the poll loop wakes it
        // when the queue runs dry (nudgeFetcherIfStalled). Without that wake-up a queue
        // had to hold over a second of folding (256 MiB at ~470k events/s); with it,
        // 64 MiB (~110k of the benchmark's events, ~0.17 s of folding) folds as fast as
        // 128 MiB did (the binary: medians 582k/640k and 644k/606k events/s in two runs
        // of interleaved rounds; the pipeline: ~731k/~730k in eight pairs) with ~100 MB
        // less peak RSS; 32 MiB was slower (~657k). See docs/performance.md.
        "queued.min.messages": "300000",
        "queued.max.messages.kbytes": "65536",
        // A broker answers a waiting Fetch as soon as data arrives, so this wait only
        // bounds idle round trips (20/s per broker at 50 ms). Brokers that hold an empty
        // Fetch for the whole wait (librdkafka's mock cluster, some Kafka-compatible
        // servers) add up to it to every event's latency: librdkafka's 500 ms put p99
        // event → PUT at 1.5 s for a 1 s debounce on the mock; 50 ms, at 1.06 s.
        "fetch.wait.max.ms": "50",
        // The statistics /metrics reports (broker RTT, rebalances, fetch queue): one JSON
        // document per interval, kept as text and parsed only when scraped.
        "statistics.interval.ms": "15000",
    ]

    /// - Parameters:
    ///   - config: librdkafka properties; `group.id` and `bootstrap.servers` are required.
    ///     `enable.auto.offset.store` is always `false`: storing early could lose data.
    public init(config: KafkaClientConfig, topics: [String], handler: ConsumerHandler,
                logger: Logger, maxBatch: Int = 1000) throws(KafkaError) {
        guard config["group.id"] != nil else { throw KafkaError(message: "kafka consumer needs group.id") }
        guard !topics.isEmpty else { throw KafkaError(message: "kafka consumer needs at least one topic") }
        var cfg = KafkaClientConfig(Self.defaults)
        for (k, v) in config.properties { cfg[k] = v }
        cfg["enable.auto.offset.store"] = "false"
        startsAtEnd = ["latest", "end", "largest"].contains(cfg["auto.offset.reset"] ?? "")
        self.topics = topics
        self.handler = handler
        self.logger = logger
        self.maxBatch = maxBatch
        self.context = CallbackContext(logger: logger)
        let conf = try cfg.makeConf()
        installLogging(conf, context: context)
        rd_kafka_conf_set_rebalance_cb(conf) { rk, err, list, opaque in
            guard let rk, let opaque else { return }
            let ctx = Unmanaged<CallbackContext>.fromOpaque(opaque).takeUnretainedValue()
            ctx.consumer?.rebalance(rk: rk, err: err, list: list)
        }
        // Every `statistics.interval.ms`: keep the text; parsing waits for a scrape.
        rd_kafka_conf_set_stats_cb(conf) { _, json, length, opaque in
            guard let json, let opaque else { return 0 }
            let ctx = Unmanaged<CallbackContext>.fromOpaque(opaque).takeUnretainedValue()
            ctx.statistics = String(decoding: UnsafeRawBufferPointer(start: json, count: length), as: UTF8.self)
            return 0
        }
        var errbuf = [CChar](repeating: 0, count: 512)
        guard let handle = rd_kafka_new(RD_KAFKA_CONSUMER, conf, &errbuf, errbuf.count) else {
            rd_kafka_conf_destroy(conf)
            throw KafkaError(message: "cannot create kafka consumer: \(errorText(errbuf))")
        }
        rk = handle
        rd_kafka_poll_set_consumer(rk)
        queue = rd_kafka_queue_get_consumer(rk)
        context.consumer = self
        let subscribed: rd_kafka_resp_err_t = withPartitionList(topics.map { (TopicPartition($0, RD_KAFKA_PARTITION_UA), nil) }) {
            rd_kafka_subscribe(rk, $0)
        }
        if subscribed != RD_KAFKA_RESP_ERR_NO_ERROR {
            rd_kafka_queue_destroy(queue)
            rd_kafka_destroy(rk)
            throw KafkaError(subscribed, context: "subscribe")
        }
    }

    deinit {
        rd_kafka_queue_destroy(queue)
        rd_kafka_destroy(rk)
    }

    /// Starts the poll thread.
    public func start() {
        let t = Thread { [self] in self.pollLoop() }
        t.name = "kafka-poll"
        thread = t
        t.start()
    }

    /// Asks the poll thread to stop, close the consumer (a final revocation, a commit,
    /// and leaving the group), and waits for it.
    public func stop() {
        lock.withLock { stopRequested = true }
        if thread != nil { finished.wait() }
    }

    /// Seconds since the poll loop last went round (it does at least every 100 ms while
    /// healthy; a rebalance callback may hold it longer while it settles partitions).
    public var secondsSincePoll: Double {
        let last = lock.withLock { lastLoopNs }
        return Double(DispatchTime.now().uptimeNanoseconds &- last) / 1e9
    }

    /// Stops fetching for good (shutdown): partitions are paused, callbacks still served.
    public func stopFetching() {
        lock.withLock { fetchingStopped = true }
    }

    /// Whether the poll loop has ended (after ``stop()``, or on a fatal error).
    public var isFinished: Bool { lock.withLock { loopEnded } }

    public var hasFatalError: Bool { lock.withLock { fatal } }

    func noteFatal() {
        lock.withLock { fatal = true }
    }

    /// Stores offsets to commit: `offset` is the next one to read, so everything before
    /// it is settled. Thread-safe. Offsets of partitions no longer assigned are ignored.
    public func storeOffsets(_ offsets: [TopicPartition: Int64]) {
        guard !offsets.isEmpty else { return }
        let err: rd_kafka_resp_err_t = withPartitionList(offsets.map { ($0.key, $0.value) }) {
            rd_kafka_offsets_store(rk, $0)
        }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR__STATE {
            logger.debug("offset store", metadata: ["error": "\(String(cString: rd_kafka_err2name(err)))"])
        }
    }

    /// Commits the stored offsets and waits for the broker's answer.
    public func commitStoredSync() {
        let err = rd_kafka_commit(rk, nil, 0)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR__NO_OFFSET {
            logger.warning("offset commit failed", metadata: ["error": "\(String(cString: rd_kafka_err2name(err)))"])
        }
    }

    /// Commits the given offsets (the next offset to read, per partition) and waits for
    /// the broker's answer.
    public func commitSync(_ offsets: [TopicPartition: Int64], metadata: String? = commitMetadata) throws(KafkaError) {
        guard !offsets.isEmpty else { return }
        let err: rd_kafka_resp_err_t = withPartitionList(offsets.map { ($0.key, $0.value) }, metadata: metadata) {
            rd_kafka_commit(rk, $0, 0)
        }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR && err != RD_KAFKA_RESP_ERR__NO_OFFSET {
            throw KafkaError(err, context: "commit")
        }
    }

    /// The group's current generation and this member's id, for offsets sent in a
    /// producer's transaction (nil before the consumer has joined).
    public func groupMetadata() -> KafkaGroupMetadata? {
        rd_kafka_consumer_group_metadata(rk).map(KafkaGroupMetadata.init)
    }

    /// The committed offsets of `partitions`, asked of the group coordinator.
    public func committed(_ partitions: [TopicPartition], timeoutMs: Int32 = 5000) throws(KafkaError) -> [TopicPartition: Int64] {
        try committedWithMetadata(partitions, timeoutMs: timeoutMs).mapValues(\.offset)
    }

    /// As ``committed(_:timeoutMs:)``, with the metadata each offset was committed with
    /// (``commitMetadata`` when foldspace-sync committed it).
    public func committedWithMetadata(_ partitions: [TopicPartition], timeoutMs: Int32 = 5000) throws(KafkaError)
        -> [TopicPartition: (offset: Int64, metadata: String)] {
        var result: [TopicPartition: (offset: Int64, metadata: String)] = [:]
        let err: rd_kafka_resp_err_t = withPartitionList(partitions.map { ($0, nil) }) { list in
            let e = rd_kafka_committed(rk, list, timeoutMs)
            guard e == RD_KAFKA_RESP_ERR_NO_ERROR else { return e }
            for i in 0..<Int(list.pointee.cnt) {
                let el = list.pointee.elems[i]
                // A partition's own error: its offset is unknown, not absent.
                if el.err != RD_KAFKA_RESP_ERR_NO_ERROR { return el.err }
                let metadata = el.metadata.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: el.metadata_size), as: UTF8.self) } ?? ""
                result[TopicPartition(String(cString: el.topic), el.partition)] = (el.offset, metadata)
            }
            return e
        }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(err, context: "committed") }
        return result
    }

    /// The number of partitions of all subscribed topics, from cluster metadata (a broker
    /// round trip: call it on rebalance, not per message). Topics whose metadata cannot
    /// be read count as zero.
    public func subscribedPartitionCount(timeoutMs: Int32 = 2000) -> Int {
        topics.reduce(0) { sum, t in
            sum + ((try? KafkaProducer.partitionCount(rk: rk, topic: t, timeoutMs: timeoutMs)) ?? 0)
        }
    }

    /// The current assignment as seen by the poll thread.
    public var assignment: Set<TopicPartition> { lock.withLock { assigned } }

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
              high >= 0 else { return nil }
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
                  high >= 0 else { continue }
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

    // MARK: Poll thread

    private func pollLoop() {
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
                let value = m.pointee.payload.map {
                    UnsafeBufferPointer(start: $0.assumingMemoryBound(to: UInt8.self), count: m.pointee.len)
                } ?? UnsafeBufferPointer(start: nil, count: 0)
                let key = m.pointee.key.map {
                    UnsafeBufferPointer(start: $0.assumingMemoryBound(to: UInt8.self), count: m.pointee.key_len)
                } ?? UnsafeBufferPointer(start: nil, count: 0)
                batch.append(ConsumedMessage(
                    topicPartition: TopicPartition(topicName, m.pointee.partition),
                    offset: m.pointee.offset,
                    timestampMs: tsType == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? nil : ts,
                    key: key, value: value))
            }
            if !batch.isEmpty { handler.consume(batch) }
            batch.removeAll(keepingCapacity: true)
            // Freeing a batch's messages (an allocation each, and the fetch buffers they
            // share) is left to another thread: this one is the pipeline's busiest.
            nonisolated(unsafe) let spent = Array(messages[0..<n]) // handed over: this thread drops them
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
    private func nudgeFetcherIfStalled() {
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

    /// Reads the committed offsets of newly assigned partitions for ``lag()``, off the
    /// poll thread (a round trip to the group coordinator). On failure the lag of a
    /// partition stays unknown until its first message.
    private func readCommittedOffsets(_ parts: [TopicPartition]) {
        guard !parts.isEmpty else { return }
        DispatchQueue.global().async { [self] in
            do {
                let found = try committed(parts, timeoutMs: 10_000)
                lock.withLock { for (tp, o) in found where assigned.contains(tp) { committedAtAssignment[tp] = o } }
            } catch {
                logger.warning("could not read the committed offsets; the lag of a partition shows from its first message",
                               metadata: ["error": "\(error)"])
            }
        }
    }

    /// How many times the fetcher was woken by ``nudgeFetcherIfStalled()``.
    public var fetcherNudges: Int { lock.withLock { nudges } }

    /// librdkafka's latest statistics JSON, when `statistics.interval.ms` is set.
    var latestStatistics: String? { context.statistics }
    /// The broker RTTs, rebalances and fetch queue from librdkafka's latest statistics
    /// (every `statistics.interval.ms`, 15 s by default here); nil until the first.
    public var statistics: KafkaStatistics? { context.parsedStatistics }

    private func reportMessageError(_ m: UnsafeMutablePointer<rd_kafka_message_t>) {
        let err = m.pointee.err
        if err == RD_KAFKA_RESP_ERR__PARTITION_EOF { return }
        let text = rd_kafka_message_errstr(m).map { String(cString: $0) } ?? ""
        logger.warning("kafka consume error", metadata: [
            "code": "\(String(cString: rd_kafka_err2name(err)))", "reason": "\(text)",
        ])
    }

    /// Lets partitions held at their assignment (``ConsumerHandler/partitionsToHold(_:)``)
    /// be fetched. Thread-safe; the poll thread resumes them on its next round.
    public func release(_ partitions: [TopicPartition]) {
        lock.withLock {
            held.subtract(partitions)
            released.append(contentsOf: partitions)
        }
    }

    private func setPaused(_ pause: Bool) {
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
    private func close() {
        let err = rd_kafka_consumer_close(rk)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            logger.warning("kafka close", metadata: ["error": "\(KafkaError(err, context: "close"))"])
        }
    }

    /// The rebalance callback, on the poll thread: assignment first tells the handler,
    /// revocation lets it settle and then commits before giving the partitions up.
    fileprivate func rebalance(rk: OpaquePointer, err: rd_kafka_resp_err_t,
                               list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) {
        let cooperative = String(cString: rd_kafka_rebalance_protocol(rk)) == "COOPERATIVE"
        let parts = partitions(of: list)
        switch err {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            handler.partitionsAssigned(parts)
            let hold = handler.partitionsToHold(parts)
            lock.withLock {
                assigned.formUnion(parts)
                // A restore may have finished (and released) already.
                let early = Set(released)
                held.formUnion(hold.filter { !early.contains($0) })
            }
            if cooperative {
                if let e = rd_kafka_incremental_assign(rk, list) {
                    logger.error("incremental assign", metadata: ["error": "\(KafkaError(consuming: e, context: "assign"))"])
                }
            } else {
                let e = rd_kafka_assign(rk, list)
                if e != RD_KAFKA_RESP_ERR_NO_ERROR { logger.error("assign", metadata: ["error": "\(KafkaError(e, context: "assign"))"]) }
            }
            // Paused before this callback returns: nothing of them is fetched until then.
            let pausing = paused ? parts : hold
            if !pausing.isEmpty {
                _ = withPartitionList(pausing.map { ($0, nil) }) { rd_kafka_pause_partitions(rk, $0) }
            }
            readCommittedOffsets(parts)
            logger.info("partitions assigned", metadata: ["partitions": "\(parts.map(\.description).joined(separator: ","))"])
        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
            handler.partitionsRevoked(parts)
            if rd_kafka_assignment_lost(rk) == 0 {
                commitStoredSync()
            }
            lock.withLock {
                assigned.subtract(parts)
                held.subtract(parts)
                released.removeAll { parts.contains($0) }
                for tp in parts { committedAtAssignment[tp] = nil }
            }
            if cooperative {
                if let e = rd_kafka_incremental_unassign(rk, list) {
                    logger.error("incremental unassign", metadata: ["error": "\(KafkaError(consuming: e, context: "unassign"))"])
                }
            } else {
                _ = rd_kafka_assign(rk, nil)
            }
            logger.info("partitions revoked", metadata: ["partitions": "\(parts.map(\.description).joined(separator: ","))"])
        default:
            logger.error("rebalance error", metadata: ["error": "\(KafkaError(err, context: "rebalance"))"])
            _ = rd_kafka_assign(rk, nil)
            lock.withLock {
                assigned.removeAll()
                held.removeAll()
                committedAtAssignment.removeAll()
            }
        }
    }
}
