import CRdKafka
import Foundation
import Logging

/// A producer with its own poll thread for delivery reports.
///
/// Used for dead letters (and by the demo and tests to write events). Every message is
/// copied into librdkafka; ``flush(timeoutMs:)`` waits until all are acknowledged.
public final class KafkaProducer: @unchecked Sendable {
    private let rk: OpaquePointer
    private let context: CallbackContext
    private let logger: Logger
    private let lock = NSLock()
    private var running = true
    private var thread: Thread?
    private let stopped = DispatchSemaphore(value: 0)
    private var failed = 0
    private var delivered = 0
    private var fatal = false
    /// Failed deliveries log one line per error kind per interval, with the count: a
    /// broker outage fails every queued message, and one line each would flood the log.
    private let failureLog: LogSummariser
    /// Topics looked up ahead of their first message (``prepare(topics:timeoutMs:)``),
    /// kept open for the producer's life.
    private var prepared: [OpaquePointer] = []

    public static let defaults: [String: String] = [
        "enable.idempotence": "true",
        "acks": "all",
        "linger.ms": "20",
        "compression.codec": "zstd",
    ]

    public init(
        config: KafkaClientConfig, logger: Logger,
        failureLog: LogSummariser = LogSummariser()
    ) throws(KafkaError) {
        self.failureLog = failureLog
        guard config["bootstrap.servers"] != nil else { throw KafkaError(message: "kafka producer needs bootstrap.servers") }
        var cfg = KafkaClientConfig(Self.defaults)
        for (k, v) in config.properties { cfg[k] = v }
        self.logger = logger
        let context = CallbackContext(logger: logger)
        self.context = context
        rk = try RDKafkaClient.create(RD_KAFKA_PRODUCER, config: cfg, what: "kafka producer") { conf in
            installLogging(conf, context: context)
            rd_kafka_conf_set_dr_msg_cb(conf) { rk, msg, opaque in
                guard let opaque, let msg else { return }
                let ctx = Unmanaged<CallbackContext>.fromOpaque(opaque).takeUnretainedValue()
                ctx.producer?.delivery(err: msg.pointee.err)
                // A message sent with `onDelivery` carries its callback (retained once).
                if let p = msg.pointee._private {
                    let err = msg.pointee.err
                    Unmanaged<DeliveryCallback>.fromOpaque(p).takeRetainedValue()
                        .body(err == RD_KAFKA_RESP_ERR_NO_ERROR ? nil : KafkaError(err, context: "delivery"))
                }
            }
        }
        context.producer = self
        let t = Thread { [self] in
            while lock.withLock({ running }) {
                rd_kafka_poll(rk, 100)
                logFailureSummaries()
            }
            logFailureSummaries()
            stopped.signal()
        }
        t.name = "kafka-producer-poll"
        thread = t
        t.start()
    }

    deinit {
        close()
        for rkt in prepared { rd_kafka_topic_destroy(rkt) }
        rd_kafka_destroy(rk)
    }

    /// Looks `topics` up (their partitions' leaders) before anything is produced to them.
    /// librdkafka before 2.10.1 holds the first message produced to a topic it has not
    /// seen until its next periodic metadata query, up to a second later (librdkafka
    /// #5032): a changelog writer, new at each claim, paid it for each topic of its first
    /// transaction, one flush after the other (2.9 s on the mock for three topics).
    public func prepare(topics: [String], timeoutMs: Int32 = 10_000) throws(KafkaError) {
        for topic in topics {
            guard let rkt = rd_kafka_topic_new(rk, topic, nil) else { throw KafkaError(message: "cannot open topic \(topic)") }
            lock.withLock { prepared.append(rkt) }
            var md: UnsafePointer<rd_kafka_metadata>?
            let err = rd_kafka_metadata(rk, 0, rkt, &md, timeoutMs)
            if let md { rd_kafka_metadata_destroy(md) }
            guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(err, context: "metadata for \(topic)") }
        }
    }

    private func delivery(err: rd_kafka_resp_err_t) {
        lock.withLock {
            if err == RD_KAFKA_RESP_ERR_NO_ERROR { delivered += 1 } else { failed += 1 }
        }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            let name = String(cString: rd_kafka_err2name(err))
            if let n = failureLog.note(name) {
                logger.error("kafka delivery failed", metadata: ["error": "\(name)", "count": .stringConvertible(n)])
            }
        }
    }

    /// Failures counted since their kind's last line, once its interval has passed.
    private func logFailureSummaries() {
        for (name, n) in failureLog.due() {
            logger.error("kafka delivery failed", metadata: ["error": "\(name)", "count": .stringConvertible(n)])
        }
    }

    /// Whether librdkafka reported a fatal error (an idempotent producer's sequence is
    /// lost, …): the instance can write nothing more, and the process must restart.
    public var hasFatalError: Bool { lock.withLock { fatal } }

    func noteFatal() { lock.withLock { fatal = true } }

    /// Raises a fatal error as librdkafka would (its own testing hook), for tests of
    /// what the daemon does then.
    public func raiseFatalErrorForTesting() {
        _ = rd_kafka_test_fatal_error(rk, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, "raised by a test")
    }

    // MARK: Transactions (a producer made with `transactional.id`)

    /// Registers the transactional id with its coordinator: any earlier producer with the
    /// same id is fenced from then on (its open transaction aborted, its next call failing
    /// with a fatal error), and this one may begin transactions.
    public func initTransactions(timeoutMs: Int32 = 30_000) throws(KafkaError) {
        if let e = rd_kafka_init_transactions(rk, Int32(timeoutMs)) { throw KafkaError(consuming: e, context: "init transactions") }
    }

    public func beginTransaction() throws(KafkaError) {
        if let e = rd_kafka_begin_transaction(rk) { throw KafkaError(consuming: e, context: "begin transaction") }
    }

    /// Adds source offsets to the open transaction: committed for `group` only if the
    /// transaction commits (the group coordinator also refuses them from a member of an
    /// older generation).
    public func sendOffsetsToTransaction(
        _ offsets: [TopicPartition: Int64], group: KafkaGroupMetadata,
        timeoutMs: Int32 = 30_000
    ) throws(KafkaError) {
        guard !offsets.isEmpty else { return }
        let e: OpaquePointer? = withPartitionList(offsets.map { ($0.key, $0.value) }, metadata: commitMetadata) {
            rd_kafka_send_offsets_to_transaction(rk, $0, group.handle, Int32(timeoutMs))
        }
        if let e { throw KafkaError(consuming: e, context: "send offsets to transaction") }
    }

    /// Flushes the transaction's messages and commits it.
    public func commitTransaction(timeoutMs: Int32 = 60_000) throws(KafkaError) {
        if let e = rd_kafka_commit_transaction(rk, Int32(timeoutMs)) { throw KafkaError(consuming: e, context: "commit transaction") }
    }

    public func abortTransaction(timeoutMs: Int32 = 30_000) throws(KafkaError) {
        if let e = rd_kafka_abort_transaction(rk, Int32(timeoutMs)) { throw KafkaError(consuming: e, context: "abort transaction") }
    }

    /// Messages queued in librdkafka and not yet acknowledged (or failed).
    public var queueLength: Int { Int(rd_kafka_outq_len(rk)) }

    /// Messages acknowledged and failed so far.
    public var deliveryCounts: (delivered: Int, failed: Int) { lock.withLock { (delivered, failed) } }

    /// Queues one message. `partition` nil lets the partitioner choose by key.
    /// Blocks briefly (and retries) while librdkafka's queue is full.
    public func send(
        topic: String, partition: Int32? = nil, key: [UInt8]?, value: [UInt8]?,
        headers: [(String, String)] = []
    ) throws(KafkaError) {
        try send(topic: topic, partition: partition, key: key, value: value, headers: headers, onDelivery: nil)
    }

    /// As ``send(topic:partition:key:value:headers:)``; `onDelivery` is called once, on
    /// the producer's poll thread, with nil once the message is written, or the error it
    /// failed with (after librdkafka's own retries). Not called when this throws.
    /// `timestampMs`: the message's CreateTime (nil: now).
    public func send(
        topic: String, partition: Int32? = nil, key: [UInt8]?, value: [UInt8]?,
        headers: [(String, String)] = [], timestampMs: Int64? = nil,
        onDelivery: (@Sendable (KafkaError?) -> Void)?
    ) throws(KafkaError) {
        let callback = onDelivery.map { Unmanaged.passRetained(DeliveryCallback($0)).toOpaque() }
        while true {
            var hdrs: OpaquePointer? = nil
            if !headers.isEmpty {
                hdrs = rd_kafka_headers_new(headers.count)
                for (k, v) in headers { _ = rd_kafka_header_add(hdrs, k, -1, v, -1) }
            }
            // A nil value is a null payload: a tombstone on a compacted topic.
            let err = (value ?? []).withUnsafeBytes { vb in
                (key ?? []).withUnsafeBytes { kb in
                    fs_rd_kafka_produce(
                        rk, topic, partition ?? RD_KAFKA_PARTITION_UA,
                        key == nil ? nil : kb.baseAddress, key == nil ? 0 : kb.count,
                        value == nil ? nil : vb.baseAddress, value == nil ? 0 : vb.count, hdrs, callback,
                        timestampMs ?? 0)
                }
            }
            if err == RD_KAFKA_RESP_ERR_NO_ERROR { return }
            if let hdrs { rd_kafka_headers_destroy(hdrs) }
            if err == RD_KAFKA_RESP_ERR__QUEUE_FULL {
                rd_kafka_poll(rk, 10)
                continue
            }
            if let callback { Unmanaged<DeliveryCallback>.fromOpaque(callback).release() }
            throw KafkaError(err, context: "produce to \(topic)")
        }
    }

    /// Sends records and waits until each is acknowledged (with `acks=all` and
    /// idempotence, the defaults here). Throws if any failed or the wait timed out, so
    /// that the caller does not commit offsets past unwritten state.
    public func sendAndWait(
        topic: String, _ records: [(partition: Int32, key: [UInt8], value: [UInt8]?)],
        timeoutMs: Int32 = 30_000
    ) throws(KafkaError) {
        guard !records.isEmpty else { return }
        let before = deliveryCounts
        for r in records { try send(topic: topic, partition: r.partition, key: r.key, value: r.value) }
        let flushed = rd_kafka_flush(rk, timeoutMs)
        let after = deliveryCounts
        if flushed != RD_KAFKA_RESP_ERR_NO_ERROR {
            throw KafkaError(flushed, context: "waiting for \(records.count) state records")
        }
        if after.failed > before.failed {
            throw KafkaError(message: "\(after.failed - before.failed) state records were not written", isRetriable: true)
        }
    }

    /// Waits until every queued message is delivered or failed, up to `timeoutMs`.
    @discardableResult
    public func flush(timeoutMs: Int32 = 10_000) -> Bool {
        rd_kafka_flush(rk, timeoutMs) == RD_KAFKA_RESP_ERR_NO_ERROR
    }

    /// Stops the poll thread after flushing what is queued.
    public func close() {
        let wasRunning = lock.withLock { () -> Bool in
            let r = running
            running = false
            return r
        }
        guard wasRunning else { return }
        rd_kafka_flush(rk, 5000)
        stopped.wait()
    }

    /// The number of partitions of `topic`, from the cluster's metadata.
    static func partitionCount(rk: OpaquePointer, topic: String, timeoutMs: Int32) throws(KafkaError) -> Int {
        guard let rkt = rd_kafka_topic_new(rk, topic, nil) else {
            throw KafkaError(message: "cannot open topic \(topic)")
        }
        defer { rd_kafka_topic_destroy(rkt) }
        var md: UnsafePointer<rd_kafka_metadata>?
        let err = rd_kafka_metadata(rk, 0, rkt, &md, timeoutMs)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR, let md else { throw KafkaError(err, context: "metadata for \(topic)") }
        defer { rd_kafka_metadata_destroy(md) }
        guard md.pointee.topic_cnt > 0 else { throw KafkaError(message: "no metadata for \(topic)") }
        let t = md.pointee.topics[0]
        if t.err != RD_KAFKA_RESP_ERR_NO_ERROR { throw KafkaError(t.err, context: "topic \(topic)") }
        return Int(t.partition_cnt)
    }
}

/// A message's delivery callback, passed through librdkafka as the message's opaque.
final class DeliveryCallback: @unchecked Sendable {
    let body: @Sendable (KafkaError?) -> Void
    init(_ body: @escaping @Sendable (KafkaError?) -> Void) { self.body = body }
}

/// A consumer's group metadata (group id, generation, member id), owned.
public final class KafkaGroupMetadata: @unchecked Sendable {
    let handle: OpaquePointer
    init(_ handle: OpaquePointer) { self.handle = handle }
    deinit { rd_kafka_consumer_group_metadata_destroy(handle) }
}
