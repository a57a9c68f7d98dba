import CRdKafka
import Foundation
import Logging

/// A consumer-group member polled on a dedicated thread.
///
/// librdkafka is never called from Swift's cooperative pool: one `Thread` polls, serves
/// rebalance callbacks synchronously and hands messages to the ``ConsumerHandler`` in
/// batches. Offsets are stored only through ``storeOffsets(_:)``
/// (`enable.auto.offset.store=false`), and librdkafka's auto-commit commits what was
/// stored; revocation and close commit synchronously.
public final class KafkaConsumer: @unchecked Sendable {
    public let topics: [String]
    let rk: OpaquePointer
    let queue: OpaquePointer
    private let context: CallbackContext
    let logger: Logger
    let handler: ConsumerHandler
    let maxBatch: Int
    let lock = NSLock()
    var stopRequested = false
    var fatal = false
    private var thread: Thread?
    let finished = DispatchSemaphore(value: 0)
    var assigned: Set<TopicPartition> = []
    /// Each assigned partition's committed offset as read after the assignment (or
    /// `RD_KAFKA_OFFSET_INVALID`: none). Until a partition's first message librdkafka
    /// knows no position for it, and its lag would be counted from the oldest retained
    /// message: an instance restarted on an idle, fully committed topic showed the
    /// whole topic as lag.
    var committedAtAssignment: [TopicPartition: Int64] = [:]
    /// Where a partition without a committed offset starts (`auto.offset.reset`).
    let startsAtEnd: Bool
    var paused = false
    /// Assigned partitions kept paused until the handler releases them, and those it
    /// released since the poll thread last looked (resumed there).
    var held: Set<TopicPartition> = []
    var released: [TopicPartition] = []
    var loopEnded = false
    var fetchingStopped = false

    /// Where consumed messages are destroyed, in order, off the poll thread.
    let releases = DispatchQueue(label: "foldspace-sync.kafka.release")
    let releasing = DispatchGroup()

    var lastLoopNs: UInt64 = DispatchTime.now().uptimeNanoseconds
    var nudging = false
    var lastNudgeNs: UInt64 = 0
    var nudges = 0

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
        // had to hold over a second of folding; with it, 64 MiB (a fraction of a second
        // of folding) folds as fast as 128 MiB did, with less peak RSS, and 32 MiB was
        // slower. The measurements: docs/performance.md ("Figures behind the code").
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
    public init(
        config: KafkaClientConfig, topics: [String], handler: ConsumerHandler,
        logger: Logger, maxBatch: Int = 1000
    ) throws(KafkaError) {
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
        let context = CallbackContext(logger: logger)
        self.context = context
        rk = try RDKafkaClient.create(RD_KAFKA_CONSUMER, config: cfg, what: "kafka consumer") { conf in
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
        }
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
        -> [TopicPartition: (offset: Int64, metadata: String)]
    {
        var result: [TopicPartition: (offset: Int64, metadata: String)] = [:]
        let err: rd_kafka_resp_err_t = withPartitionList(partitions.map { ($0, nil) }) { list in
            let e = rd_kafka_committed(rk, list, timeoutMs)
            guard e == RD_KAFKA_RESP_ERR_NO_ERROR else { return e }
            for i in 0..<Int(list.pointee.cnt) {
                let el = list.pointee.elems[i]
                // A partition's own error: its offset is unknown, not absent.
                if el.err != RD_KAFKA_RESP_ERR_NO_ERROR { return el.err }
                let metadata =
                    el.metadata.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: el.metadata_size), as: UTF8.self) } ?? ""
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

    /// librdkafka's latest statistics JSON, when `statistics.interval.ms` is set.
    var latestStatistics: String? { context.statistics }
    /// The broker RTTs, rebalances and fetch queue from librdkafka's latest statistics
    /// (every `statistics.interval.ms`, 15 s by default here); nil until the first.
    public var statistics: KafkaStatistics? { context.parsedStatistics }
}
