import Folding
import FoldspaceAPI
import Foundation
import Kafka
import Logging

/// The changelog on Kafka: an idempotent producer with `acks=all` for writes, a
/// throw-away assigned consumer for restores, and the group consumer for commits.
///
/// With transactions (the default), one transactional producer per owned source
/// partition (`<group>-state-<topic>-<partition>`) writes that partition's users and
/// sends its offset in one transaction: the owner that claims a partition fences every
/// earlier producer of it (Kafka bumps the id's epoch and aborts its open transaction),
/// so a paused or partitioned former owner can write nothing after the new owner
/// restored. A fenced producer's error is fatal: the process exits and rejoins.
public final class KafkaStateStore: StateStore, @unchecked Sendable {
    public let topic: String
    /// The changelog's partition count; source partition p lives in p mod this.
    public let partitions: Int32
    /// The source topic's partition count, written into every record.
    public let sourcePartitions: Int32
    public var hasFatalError: Bool {
        producer.hasFatalError || lock.withLock { failed || owners.values.contains { $0.hasFatalError } }
    }
    /// Whether checkpoints are transactions (``SyncConfiguration/stateTransactions``).
    public let transactional: Bool
    private let producer: KafkaProducer
    private let producerConfig: KafkaClientConfig
    private let config: KafkaClientConfig
    private let logger: Logger
    private let lock = NSLock()
    /// The group's consumer, for commits and the group's metadata (nil: restores only,
    /// as in tools). A closure: the consumer is made after the engine that holds this
    /// store.
    private let groupConsumer: @Sendable () -> KafkaConsumer?
    private var reader: PartitionReader?
    /// With transactions: the producer of each claimed source partition.
    private var owners: [TopicPartition: KafkaProducer] = [:]
    /// A transaction was refused because another owner took over, or a writer failed in
    /// a way no retry mends: the process must restart.
    private var failed = false
    /// Partitions whose writer was let go after a transaction it could not end.
    private var wedged: Set<TopicPartition> = []
    /// Offsets committed in transactions whose plain commit (for brokers that do not
    /// apply transactional offset commits, such as librdkafka's mock) failed: tried again
    /// with the next checkpoint, or that partition's position is never committed there.
    private var plainPending: [TopicPartition: Int64] = [:]

    /// The topics its transactions write besides the changelog (identity resolution's
    /// repartition and identities topics): its writers look them up when claimed.
    public let alsoWrites: [String]

    public init(
        topic: String, partitions: Int, sourcePartitions: Int, config: KafkaClientConfig, logger: Logger,
        transactional: Bool = false, alsoWrites: [String] = [], groupConsumer: @escaping @Sendable () -> KafkaConsumer? = { nil }
    ) throws {
        self.alsoWrites = alsoWrites
        self.groupConsumer = groupConsumer
        self.topic = topic
        self.sourcePartitions = Int32(sourcePartitions)
        self.partitions = Int32(max(1, partitions))
        self.config = config
        self.logger = logger
        self.transactional = transactional
        var p = config.withoutConsumerProperties
        p["enable.idempotence"] = "true"
        p["acks"] = "all"
        p["linger.ms"] = "5"
        // A checkpoint writes every changed user at once (~310 bytes each: ~35 MB for
        // 100k users); lz4 about halves what the brokers receive and keep, for little
        // CPU. An operator's choice in kafka.properties stands.
        if p["compression.type"] == nil && p["compression.codec"] == nil { p["compression.type"] = "lz4" }
        producerConfig = p
        producer = try KafkaProducer(config: p, logger: logger)
    }

    /// The producer's `message.max.bytes` (librdkafka's default 1,000,000) less room for
    /// the record's framing and headers.
    public var maxRecordBytes: Int {
        let limit = producerConfig.messageMaxBytes
        return max(4_096, limit - 1_024)
    }

    /// Refuses a changelog whose `cleanup.policy` is not `compact`: with `delete` (the
    /// broker's default for a topic auto-created without it) or `compact,delete`, users
    /// not written for the retention period (7 days by default) silently lose their
    /// state. A cluster that cannot describe topic configurations (librdkafka's mock)
    /// gets a warning.
    static func checkCleanupPolicy(topic: String, key: String = "state_topic", config: KafkaClientConfig, logger: Logger) throws {
        guard
            let described = describedOrWarned(
                topic, config: config, logger: logger,
                makeSure: "its cleanup.policy is compact and its max.message.bytes not below the producer's message.max.bytes")
        else { return }
        try checkRecordLimit(described, topic: topic, key: key, producer: config)
        let policy = described["cleanup.policy"] ?? "delete"
        let parts = Set(policy.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        guard parts == ["compact"] else {
            throw ConfigurationError(
                "\(key): \(topic) has cleanup.policy=\(policy); it must be compact (with delete, users not written "
                    + "within the topic's retention lose their state). Change it, e.g. kafka-configs.sh --alter --entity-type topics "
                    + "--entity-name \(topic) --add-config cleanup.policy=compact")
        }
    }

    /// The configuration a topic the checkpoints write is created with: `base`, and the
    /// producer's `message.max.bytes` as its `max.message.bytes` when that is above
    /// Kafka's default (1,048,588), so that ``checkRecordLimit(_:topic:key:producer:)``
    /// does not refuse a topic the daemon made.
    static func creationConfig(_ base: [String: String], producer: KafkaClientConfig) -> [String: String] {
        var out = base
        let writes = producer.messageMaxBytes
        if writes > 1_048_588 { out["max.message.bytes"] = String(writes) }
        return out
    }

    /// Refuses a topic the checkpoints write whose `max.message.bytes` (the largest record
    /// batch the broker takes into it) is below the producer's `message.max.bytes`
    /// (librdkafka's default 1,000,000; Kafka's topic default, 1,048,588, is above it): the
    /// broker refuses a larger batch whole, and every checkpoint writing one would fail,
    /// for good. Said at start, with the two ways out.
    static func checkRecordLimit(_ described: [String: String], topic: String, key: String, producer: KafkaClientConfig) throws {
        guard let limit = described["max.message.bytes"].flatMap({ Int($0.trimmingCharacters(in: .whitespaces)) }), limit > 0
        else { return }
        let writes = producer.messageMaxBytes
        guard limit < writes else { return }
        throw ConfigurationError(
            "\(key): \(topic) takes record batches of at most \(limit) bytes (max.message.bytes) but the producer writes up to "
                + "\(writes) (message.max.bytes): a checkpoint writing a larger batch would be refused, for good. Raise the "
                + "topic's limit (kafka-configs.sh --alter --entity-type topics --entity-name \(topic) --add-config "
                + "max.message.bytes=\(writes)), or hold the producer to it (kafka properties message.max.bytes=\(limit) and "
                + "batch.size=\(limit))")
    }

    /// As ``checkRecordLimit(_:topic:key:producer:)``, asked of the cluster (a topic that
    /// is not compacted: `<group>-repartition`). A cluster that cannot describe it
    /// (librdkafka's mock) is not refused.
    static func checkRecordLimit(topic: String, key: String, config: KafkaClientConfig, logger: Logger) throws {
        guard
            let described = describedOrWarned(
                topic, config: config, logger: logger,
                makeSure: "its max.message.bytes is not below the producer's message.max.bytes")
        else { return }
        try checkRecordLimit(described, topic: topic, key: key, producer: config)
    }

    /// A topic's configuration (DescribeConfigs), or nil and a warning saying what to make
    /// sure of by hand, when the cluster cannot describe it (librdkafka's mock).
    private static func describedOrWarned(_ topic: String, config: KafkaClientConfig, logger: Logger, makeSure: String)
        -> [String: String]?
    {
        do {
            return try KafkaAdmin.topicConfig(config: config, topic: topic)
        } catch {
            logger.warning(
                "could not read a topic's configuration; make sure \(makeSure)",
                metadata: ["topic": "\(topic)", "error": "\(error)"])
            return nil
        }
    }

    /// The transactional id of a source partition's changelog writer.
    public static func transactionalId(group: String, _ tp: TopicPartition) -> String {
        "\(group)-state-\(tp.topic)-\(tp.partition)"
    }

    public func claim(_ partitions: [TopicPartition]) throws {
        guard transactional else { return }
        let group = config["group.id"] ?? "foldspace-sync"
        for tp in partitions where lock.withLock({ owners[tp] == nil }) {
            var p = producerConfig
            p["transactional.id"] = Self.transactionalId(group: group, tp)
            // On failure the engine holds the partition and tries again later; an error no
            // retry mends (the transactional id not authorized, transactions unsupported)
            // fails the process, which says why.
            let writer = try KafkaProducer(config: p, logger: logger)
            do throws(KafkaError) {
                try writer.initTransactions()
            } catch {
                if error.isFatal || writer.hasFatalError || error.isUnrecoverableForTransactions {
                    lock.withLock { failed = true }
                    logger.critical(
                        "the changelog writer of a partition cannot be initialised; exiting (set state.transactions: false for brokers without transactions)",
                        metadata: [
                            "partition": "\(tp)", "error": "\(error)",
                        ])
                }
                writer.close()
                throw error
            }
            // Its topics looked up now, not at its first transaction's first message to
            // each (a second's wait apiece, librdkafka #5032). Only a cost if it fails.
            do throws(KafkaError) {
                try writer.prepare(topics: [topic] + alsoWrites, timeoutMs: 1_000)
            } catch {
                logger.debug("could not look a changelog writer's topics up ahead", metadata: ["error": "\(error)"])
            }
            lock.withLock { owners[tp] = writer }
        }
    }

    public func relinquish(_ partitions: [TopicPartition]) {
        let gone = lock.withLock {
            wedged.subtract(partitions)
            for tp in partitions { plainPending[tp] = nil }
            return partitions.compactMap { owners.removeValue(forKey: $0) }
        }
        for w in gone { w.close() }
    }

    public func checkpoint(_ groups: [CheckpointGroup], deadline: DispatchTime? = nil) throws {
        guard transactional else { return try writeThenCommit(groups) }
        let consumer = groupConsumer()
        // Each call's timeout, cut to what is left before the deadline (a second at
        // least: an abort must get its chance).
        let budget: @Sendable (Int32) -> Int32 = { full in
            guard let deadline else { return full }
            let now = DispatchTime.now().uptimeNanoseconds
            let left = deadline.uptimeNanoseconds > now ? Int64((deadline.uptimeNanoseconds - now) / 1_000_000) : 0
            return Int32(max(1_000, min(Int64(full), left)))
        }
        let work = groups.filter { !$0.isEmpty }
        // The groups committed so far: a later group's failure reports them.
        var done: Set<TopicPartition> = []
        do {
            try checkpointEach(work, done: &done, consumer: consumer, deadline: deadline, budget: budget)
        } catch  where !done.isEmpty {
            throw CheckpointIncomplete(committed: done, error: error)
        }
        // The same offsets committed plainly too, best effort: Kafka has applied them
        // with the transaction already (a no-op then), but librdkafka's mock cluster does
        // not apply transactional offset commits to the group.
        let plain = lock.withLock { plainPending }
        if !plain.isEmpty {
            do {
                try commit(plain)
                lock.withLock { for (tp, o) in plain where plainPending[tp] == o { plainPending[tp] = nil } }
            } catch {
                logger.debug(
                    "plain commit after the checkpoint transactions failed; tried again with the next", metadata: ["error": "\(error)"])
            }
        }
    }

    /// One transaction per group, each on its own writer, several at once (a commit waits
    /// for its writer's flush and the coordinator: one after the other, 16 tasks' commits
    /// took 16 s on librdkafka's mock, one second each); `done` gets each group committed.
    /// The first failure, in the groups' order, is thrown once every group has ended.
    private func checkpointEach(
        _ work: [CheckpointGroup], done: inout Set<TopicPartition>, consumer: KafkaConsumer?, deadline: DispatchTime?,
        budget: @escaping @Sendable (Int32) -> Int32
    ) throws {
        let results = CommitResults(count: work.count)
        let width = min(work.count, Self.parallelCommits)
        let worker: @Sendable () -> Void = { [self] in
            while let n = results.claim() {
                do {
                    try commitGroup(work[n], consumer: consumer, deadline: deadline, budget: budget)
                    results.finish(n, nil)
                } catch {
                    results.finish(n, error)
                }
            }
        }
        let threads = (1..<max(1, width)).map { _ in Thread(block: worker) }
        for t in threads { t.start() }
        worker()
        results.waitAll()
        for (n, g) in work.enumerated() where results.errors[n] == nil { done.insert(g.source) }
        if let first = results.errors.compactMap({ $0 }).first { throw first }
    }

    /// How many tasks' transactions a checkpoint commits at once.
    static let parallelCommits = 16

    /// One group's transaction.
    private func commitGroup(
        _ g: CheckpointGroup, consumer: KafkaConsumer?, deadline: DispatchTime?, budget: (Int32) -> Int32
    ) throws {
        if let deadline, DispatchTime.now() >= deadline {
            throw KafkaError(message: "checkpoint deadline passed; \(g.source) not checkpointed", isRetriable: true)
        }
        // Another task's writer was fenced meanwhile (the tasks commit at once): this
        // instance is cut off, and writes nothing more (nor claims a writer, which would
        // fence the partition's new owner).
        if lock.withLock({ failed }) {
            throw KafkaError(message: "checkpoint of \(g.source): the store failed; not checkpointed", isRetriable: false)
        }
        // A writer dropped after a transaction it could not end is claimed again
        // (which aborts that transaction); a partition let go is never claimed here.
        if lock.withLock({ owners[g.source] == nil && wedged.contains(g.source) }) {
            try claim([g.source])
            lock.withLock { _ = wedged.remove(g.source) }
        }
        guard let writer = lock.withLock({ failed ? nil : owners[g.source] }) else {
            throw KafkaError(message: "checkpoint of \(g.source): the partition is not claimed (revoked meanwhile?)", isRetriable: true)
        }
        // Whether the changelog's markers were sent: only then can a failed transaction
        // have them readable (``landed(_:budget:)``).
        var markersSent = false
        do throws(KafkaError) {
            try writer.beginTransaction()
            if g.extra.isEmpty {
                for r in g.records { try writer.send(topic: topic, partition: r.partition, key: r.key, value: r.value) }
            } else {
                // Identity resolution: every record first; once the broker has them all, the
                // identities marker; once it has that, the changelog's markers. A source
                // marker anyone reads then means its whole transaction was written, even
                // where a crash cut it off and the broker shows what it holds of it
                // (docs/identity.md).
                func flush() throws(KafkaError) {
                    guard writer.flush(timeoutMs: budget(30_000)) else {
                        throw KafkaError(message: "checkpoint of \(g.source): its records were not written in time", isRetriable: true)
                    }
                }
                // The begin markers first: a restore reads only what follows one.
                for r in g.records where ChangelogMarker.isBegin(key: r.key) {
                    try writer.send(topic: topic, partition: r.partition, key: r.key, value: r.value)
                }
                for r in g.extra where ChangelogMarker.isBegin(key: r.key) {
                    try writer.send(topic: r.topic, partition: r.partition, key: r.key, value: r.value)
                }
                for r in g.records where !ChangelogMarker.isMarker(key: r.key) {
                    try writer.send(topic: topic, partition: r.partition, key: r.key, value: r.value)
                }
                for r in g.extra where !ChangelogMarker.isMarker(key: r.key) {
                    try writer.send(topic: r.topic, partition: r.partition, key: r.key, value: r.value)
                }
                try flush()
                if injectFailureForTesting == .beforeMarkers {
                    throw KafkaError(message: "injected failure before the markers", isRetriable: true)
                }
                for r in g.extra where ChangelogMarker.isMarker(key: r.key) && !ChangelogMarker.isBegin(key: r.key) {
                    try writer.send(topic: r.topic, partition: r.partition, key: r.key, value: r.value)
                }
                try flush()
                markersSent = true
                for r in g.records where ChangelogMarker.isMarker(key: r.key) && !ChangelogMarker.isBegin(key: r.key) {
                    try writer.send(topic: topic, partition: r.partition, key: r.key, value: r.value)
                }
                // Acknowledged before anything can fail the transaction: a marker still in
                // flight then could land after ``landed(_:budget:)`` looked.
                try flush()
                if injectFailureForTesting == .afterMarkers {
                    throw KafkaError(message: "injected failure after the markers", isRetriable: true)
                }
            }
            var offsets = g.extraOffsets
            if let o = g.offset { offsets[g.source] = o }
            if !offsets.isEmpty {
                guard let metadata = consumer?.groupMetadata() else {
                    throw KafkaError(message: "checkpoint of \(g.source): no group metadata yet", isRetriable: true)
                }
                try writer.sendOffsetsToTransaction(offsets, group: metadata, timeoutMs: budget(30_000))
            }
            try commitTransaction(writer, deadline: deadline, budget: budget)
        } catch {
            if error.isFenced || error.isFatal || writer.hasFatalError {
                // Another instance claimed the partition: this one was paused or cut
                // off past its session, and what it holds is stale. It must write and
                // send nothing more; the process exits (1) and rejoins.
                lock.withLock { failed = true }
                logger.critical(
                    "the changelog writer of a partition was fenced (another instance owns the partition now) or failed fatally; exiting to rejoin the group",
                    metadata: [
                        "partition": "\(g.source)", "error": "\(error)",
                    ])
            } else if !abort(writer, budget: budget) {
                // Neither committed nor aborted (librdkafka keeps the unfinished call
                // current, and refuses every other until it ends): the writer is let go
                // and the partition claimed again by the next checkpoint.
                logger.warning(
                    "a checkpoint transaction could neither commit nor abort; its writer is claimed anew",
                    metadata: [
                        "partition": "\(g.source)", "error": "\(error)",
                    ])
                lock.withLock {
                    if owners[g.source] === writer { owners[g.source] = nil }
                    wedged.insert(g.source)
                }
                writer.close()
            }
            // Identity resolution: a transaction that failed after its markers were
            // written is committed for every reader if the broker shows them (the mock and
            // tansu show an aborted transaction's records; Kafka does not): a restore
            // would read it as committed, so its records stand and are not written again
            // (docs/identity.md). Asked of the changelog, as a restore reads it.
            guard markersSent, !lock.withLock({ failed }), landed(g, budget: budget) else { throw error }
            logger.warning(
                "a checkpoint transaction failed after its markers were written, and the broker shows them: it counts as committed",
                metadata: ["partition": "\(g.source)", "error": "\(error)"])
        }
        // Kept at once: a later group's failure must not lose this plain commit.
        var committed = g.extraOffsets
        if let o = g.offset { committed[g.source] = o }
        lock.withLock { for (tp, o) in committed { plainPending[tp] = max(plainPending[tp] ?? o, o) } }
    }

    /// Whether merging group `g`'s source marker (the last record of its transaction) is
    /// the last source marker a `read_committed` reader finds in its changelog partition,
    /// as a restore takes it. Read from the partition's last few offsets (the marker is its
    /// transaction's last record; abort or commit markers follow it).
    private func landed(_ g: CheckpointGroup, budget: (Int32) -> Int32) -> Bool {
        let key = ChangelogMarker.key(g.source)
        guard !g.extra.isEmpty, let marker = g.records.last(where: { $0.key == key }) else { return false }
        do {
            let tail = try PartitionReader(config: config.withoutConsumerProperties).readTail(
                topic: topic, partition: marker.partition, offsets: 16, timeoutMs: budget(5_000))
            return tail.last(where: { $0.key == key })?.value == marker.value
        } catch {
            logger.warning(
                "could not read whether a failed checkpoint transaction's markers are readable; it counts as failed",
                metadata: ["partition": "\(g.source)", "error": "\(error)"])
            return false
        }
    }

    /// Tests: fail merging transactions before their markers are sent, or once they are
    /// acknowledged.
    enum InjectedFailure { case beforeMarkers, afterMarkers }
    var injectFailureForTesting: InjectedFailure?

    /// Commits the open transaction; a retriable failure (a flush or the coordinator timing
    /// out) is resumed by calling again, as librdkafka asks, a few times.
    private func commitTransaction(
        _ writer: KafkaProducer, deadline: DispatchTime?,
        budget: (Int32) -> Int32
    ) throws(KafkaError) {
        var attempt = 0
        while true {
            do throws(KafkaError) {
                try writer.commitTransaction(timeoutMs: budget(60_000))
                return
            } catch {
                attempt += 1
                let late = deadline.map { DispatchTime.now() >= $0 } ?? false
                guard error.isRetriable, !error.requiresAbort, attempt < 3, !late else { throw error }
            }
        }
    }

    /// Aborts the open transaction (retried while librdkafka says it may succeed);
    /// whether it ended.
    private func abort(_ writer: KafkaProducer, budget: (Int32) -> Int32) -> Bool {
        for _ in 0..<3 {
            do throws(KafkaError) {
                try writer.abortTransaction(timeoutMs: budget(30_000))
                return true
            } catch {
                logger.warning("aborting a failed checkpoint transaction failed", metadata: ["error": "\(error)"])
                if !error.isRetriable { return false }
            }
        }
        return false
    }

    public func statePartition(for sourcePartition: Int32) -> Int32 { sourcePartition % partitions }

    public func read(partition: Int32) throws -> [(key: [UInt8], value: [UInt8]?)] {
        try read(partitions: [partition])[partition]?.records ?? []
    }

    public func read(partitions: [Int32]) throws -> [Int32: PackedRecords] { try read(topic: topic, partitions: partitions) }

    public func read(topic: String, partitions: [Int32]) throws -> [Int32: PackedRecords] {
        // One reader for every restore of this process (made at the first).
        let reader = try lock.withLock { () throws -> PartitionReader in
            if let r = self.reader { return r }
            let r = try PartitionReader(config: config.withoutConsumerProperties)
            self.reader = r
            return r
        }
        return try reader.read(topic: topic, partitions: partitions)
    }

    public func write(_ records: [(partition: Int32, key: [UInt8], value: [UInt8]?)]) throws {
        try producer.sendAndWait(topic: topic, records)
    }

    public func commit(_ offsets: [TopicPartition: Int64]) throws {
        guard let c = groupConsumer() else { return }
        try c.commitSync(offsets)
    }

    public func committedPastStart(_ tp: TopicPartition) throws -> Int64? {
        guard let c = groupConsumer() else {
            throw KafkaError(message: "the committed offset is read through the group's consumer, which is not attached")
        }
        guard let (o, metadata) = try c.committedWithMetadata([tp], timeoutMs: 10_000)[tp], o >= 0 else { return nil }
        // Committed by foldspace-sync: consumed, wherever the log starts now (retention
        // may have caught up with a quiet partition's committed offset). Committed by
        // someone else (`--reset-offsets` writes no metadata): consumed only if past the
        // first retained offset, so that a reset to the earliest folds the history again.
        if metadata == commitMetadata { return o }
        return o > (try c.watermarks(tp, timeoutMs: 10_000).low) ? o : nil
    }

    public func endOffset(_ tp: TopicPartition) throws -> Int64? {
        guard let c = groupConsumer() else { return nil }
        return try c.watermarks(tp, timeoutMs: 10_000).high
    }

    public func close() {
        producer.close()
        relinquish(lock.withLock { Array(owners.keys) })
    }

    /// Changelog records queued and not yet acknowledged (`/metrics`).
    public var queueLength: Int { producer.queueLength }

    /// Makes sure the changelog exists, compacted, with the source's partition count,
    /// and returns its partition count.
    ///
    /// - Throws: with a clear message when a changelog that already holds state has a
    ///   different partition count. An *empty* changelog with another count (a cluster
    ///   that auto-creates topics and has no Admin API, such as librdkafka's mock) is
    ///   used with source partition p stored in changelog partition p mod count, and a
    ///   warning: restores then filter records by their source.
    public static func prepare(topic: String, sourceTopic: String, config: KafkaClientConfig, logger: Logger) throws -> (
        state: Int, source: Int
    ) {
        let admin = config.withoutConsumerProperties
        let sourcePartitions = try KafkaAdmin.partitionCount(config: admin, topic: sourceTopic)
        if !(try KafkaAdmin.listTopics(config: admin)).contains(topic) {
            do {
                _ = try KafkaAdmin.createTopicIfMissing(
                    config: admin, topic: topic, partitions: sourcePartitions,
                    topicConfig: creationConfig(["cleanup.policy": "compact"], producer: admin), logger: logger,
                    timeoutMs: 5_000)
            } catch {
                logger.warning(
                    "could not create the state topic through the Admin API",
                    metadata: [
                        "topic": "\(topic)", "error": "\(error)",
                    ])
            }
        }
        try checkCleanupPolicy(topic: topic, config: admin, logger: logger)
        let statePartitions = try KafkaAdmin.partitionCount(config: admin, topic: topic)
        if statePartitions != sourcePartitions {
            // Usable only if it holds nothing, or only what this daemon wrote for a source
            // of the current size (each record carries the source's partition count).
            for p in 0..<Int32(statePartitions) {
                guard let last = try KafkaAdmin.lastValue(config: admin, topic: topic, partition: p, logger: logger) else { continue }
                let written = (try? StateCodec.decode(last))?.sourcePartitions ?? -1
                if written != Int32(sourcePartitions) {
                    throw ConfigurationError(
                        "state_topic: \(topic) has \(statePartitions) partitions but \(sourceTopic) has \(sourcePartitions), "
                            + "and it holds state written for another layout; the changelog must be co-partitioned with the source "
                            + "(recreate it, compacted, with \(sourcePartitions) partitions)")
                }
            }
            logger.warning(
                "state topic is not co-partitioned with the source; source partition p is stored in p mod its count",
                metadata: [
                    "state_topic": "\(topic)", "state_partitions": "\(statePartitions)", "source_partitions": "\(sourcePartitions)",
                ])
        }
        return (statePartitions, sourcePartitions)
    }
}

/// The groups of one checkpoint, handed out to the threads that commit them, and how each
/// ended.
private final class CommitResults: @unchecked Sendable {
    private let condition = NSCondition()
    private var next = 0
    private var finished = 0
    private(set) var errors: [(any Error)?]

    init(count: Int) { errors = Array(repeating: nil, count: count) }

    /// The next group to commit, nil when every group is taken.
    func claim() -> Int? {
        condition.withLock {
            guard next < errors.count else { return nil }
            defer { next += 1 }
            return next
        }
    }

    func finish(_ n: Int, _ error: (any Error)?) {
        condition.withLock {
            errors[n] = error
            finished += 1
            if finished == errors.count { condition.broadcast() }
        }
    }

    func waitAll() {
        condition.withLock { while finished < errors.count { condition.wait() } }
    }
}
