import Delivery
import FoldspaceAPI
import Foundation
import Kafka
import Logging
import ServiceLifecycle
import UnixSignals

/// The daemon as one service: consumer, engine, flusher, dead letters and admin HTTP,
/// started and stopped in order.
///
/// Shutdown (SIGTERM/SIGINT, or ``requestStop()``): the consumer stops fetching and
/// closes; its final revocation flushes every dirty user (up to `shutdown_timeout`),
/// stores and commits the settled offsets and leaves the group. Only then do the
/// flusher, the HTTP client and the dead-letter producer stop.
public final class SyncPipeline: Service, @unchecked Sendable {
    public let config: SyncConfiguration
    private let engineOptions: EngineOptions
    private let deadLetterSink: DeadLetterSink
    private var runningEngine: SyncEngine?
    let logger: Logger
    let keys: APIKeyStore
    let senderOverride: UserUpdateSender?
    let stopStream: AsyncStream<Void>
    private let stopContinuation: AsyncStream<Void>.Continuation
    private let lock = NSLock()
    private var consumer: KafkaConsumer?
    private var admin: AdminServer?
    private var producer: KafkaProducer?
    private var deadLetterWriter: KafkaDeadLetters?
    private let loopsAlive = LoopsAlive()

    /// - Parameter sender: replaces the Foldspace HTTP client (tests).
    public init(config: SyncConfiguration, keys: APIKeyStore, logger: Logger, sender: UserUpdateSender? = nil) throws {
        self.config = config
        self.logger = logger
        self.keys = keys
        self.senderOverride = sender
        var producer: KafkaProducer? = nil
        var deadLetterWriter: KafkaDeadLetters? = nil
        var kafka = KafkaClientConfig(try config.resolvedKafkaProperties())
        kafka["group.instance.id"] = nil
        let sink: DeadLetterSink
        if let topic = config.deadLetterTopic {
            let p = try KafkaProducer(config: kafka, logger: logger)
            producer = p
            let writer = KafkaDeadLetters(
                producer: p, topic: topic, logger: logger,
                maxMessageBytes: kafka.messageMaxBytes)
            deadLetterWriter = writer
            sink = writer
        } else {
            sink = LoggingDeadLetters(logger: logger)
        }
        self.producer = producer
        self.deadLetterWriter = deadLetterWriter
        var engineOptions = config.engine
        engineOptions.foldspaceURL = config.foldspaceURL
        // An unanswered request may still be processed for about as long as we waited.
        engineOptions.unknownOutcomeResendMs = 2 * config.requestTimeoutMs
        self.engineOptions = engineOptions
        deadLetterSink = sink
        (stopStream, stopContinuation) = AsyncStream.makeStream()
    }

    /// The engine, once ``run()`` has made it (it is made with the consumer and the
    /// state store it links to).
    public var engine: SyncEngine? { lock.withLock { runningEngine } }

    /// The engine's counters (all zero, not ready, before ``run()`` has made it).
    public func snapshot() -> EngineStats { engine?.snapshot() ?? EngineStats() }

    /// Calls read so far (see ``SyncEngine/eventsRead``); 0 before ``run()``.
    public var eventsRead: Int { engine?.eventsRead ?? 0 }

    /// The admin server's port once running (useful with `admin_listen` port 0).
    public var adminPort: Int? { lock.withLock { admin?.port } }

    /// How often the consumer woke librdkafka's fetcher on a drained queue.
    public var fetcherWakeups: Int { lock.withLock { consumer }?.fetcherNudges ?? 0 }

    /// Asks the pipeline to shut down as on SIGTERM.
    public func requestStop() { stopContinuation.yield() }

    /// Raises a fatal error in the dead-letter producer (tests of what follows).
    func raiseDeadLetterProducerFatalErrorForTesting() { producer?.raiseFatalErrorForTesting() }

    public func run() async throws {
        var kafka = KafkaClientConfig(try config.resolvedKafkaProperties())
        kafka["group.id"] = config.group
        if kafka["client.id"] == nil { kafka["client.id"] = "foldspace-sync" }
        // The engine and the consumer need each other: the consumer calls the engine
        // (its handler), the engine (and its state store) store offsets in the consumer and
        // ask it for partition counts. The engine is made first and reaches the consumer
        // through `consumerLink`, filled before the consumer starts (nothing calls it earlier).
        let consumerLink = Late<KafkaConsumer>()
        let engineLink = Late<SyncEngine>()
        let stateStore = try await prepareStateStore(&kafka, groupConsumer: { consumerLink.value })
        // Identity resolution (docs/identity.md): the group reads the source and the
        // repartition topic, assigned by range so that each task's partitions stay together.
        var engineOptions = self.engineOptions
        var topics = config.topics
        if engineOptions.identity.merge, stateStore != nil {
            let (group, source, prepareConfig, logger) = (config.group, config.topics[0], kafka, self.logger)
            let partitions = try await Self.blocking {
                try IdentityTopics.prepare(group: group, sourceTopic: source, config: prepareConfig, logger: logger)
            }
            // A task's restore reads its changelog partition up to the task's last
            // transaction (docs/identity.md): a partition shared by two tasks (fewer state
            // partitions than tasks; source p is stored in p mod their count) has no such end.
            if let store = stateStore, Int(store.partitions) < partitions {
                throw ConfigurationError(
                    "identity.merge: the state topic has \(store.partitions) partitions but \(source) has \(partitions); "
                        + "each task needs its own changelog partition (recreate the state topic, compacted, with \(partitions) partitions)"
                )
            }
            engineOptions.identity.partitions = Int32(partitions)
            engineOptions.identity.repartitionTopic = IdentityTopics.repartition(group: group)
            engineOptions.identity.identitiesTopic = IdentityTopics.identities(group: group)
            topics.append(IdentityTopics.repartition(group: group))
            // The repartition topic is read whole and only as committed: a record of an
            // aborted transaction read, or a new group's first records skipped, would count
            // a call twice or lose it.
            for (key, value) in [
                ("partition.assignment.strategy", "range"), ("isolation.level", "read_committed"), ("auto.offset.reset", "earliest"),
            ] {
                if let set = kafka[key], set != value {
                    logger.warning(
                        "identity.merge: a Kafka property is overridden",
                        metadata: ["property": "\(key)", "set": "\(set)", "used": "\(value)"])
                }
                kafka[key] = value
            }
        } else {
            engineOptions.identity.merge = false
        }
        // Process-wide, and on unless a configuration turns it off.
        if !config.zstdSizeHint { ZstdSizeHint.setEnabled(false) }
        #if os(Linux)
            if config.zstdSizeHint && !ZstdSizeHint.isInstalled {
                logger.warning(
                    "zstd_size_hint: librdkafka does not call this executable's hint; zstd batches without a stated size are sized by librdkafka's guesses"
                )
            }
        #endif
        // A fatal error of any Kafka client (the consumer, the state writer, the
        // dead-letter writer) fails /healthz and stops the process with status 1: the
        // instance can no longer do its work, and a restart is the remedy.
        let deadLetterProducer = lock.withLock { producer }
        let freezeWatch = makeFreezeWatch(kafka, onFreeze: { engineLink.value?.halt() })
        let engine = SyncEngine(
            options: engineOptions, deadLetters: deadLetterSink, logger: logger,
            links: EngineLinks(
                stateStore: stateStore,
                storeOffsets: { consumerLink.value?.storeOffsets($0) },
                // Restores run off the poll thread; the consumer holds each partition paused
                // until its state is loaded.
                restored: { consumerLink.value?.release($0) },
                sendGate: { freezeWatch.allowsSending },
                partitionTotal: { consumerLink.value?.subscribedPartitionCount() ?? 0 },
                highWatermark: { consumerLink.value?.highWatermark($0) }))
        engineLink.value = engine
        let consumer = try KafkaConsumer(config: kafka, topics: topics, handler: engine, logger: logger)
        consumerLink.value = consumer
        // Held by the pipeline from here on: a start that fails below does not free a
        // consumer that was subscribed and never started (its destruction would close it
        // on whichever thread let go of it last).
        lock.withLock {
            runningEngine = engine
            self.consumer = consumer
        }
        freezeWatch.start()
        defer { freezeWatch.stop() }
        let kafkaFatal: @Sendable () -> Bool = { [stateStore] in
            consumer.hasFatalError || (stateStore?.hasFatalError ?? false) || (deadLetterProducer?.hasFatalError ?? false)
                || freezeWatch.hasFrozen
        }

        let (sender, client) = try makeSender()
        let alive = loopsAlive
        let notifier = SystemdNotifier()
        let admin: AdminServer
        do {
            admin = try await startAdmin(
                engine: engine, consumer: consumer, stateStore: stateStore, deadLetterProducer: deadLetterProducer,
                healthy: { alive.healthy && !kafkaFatal() })
        } catch {
            // The admin address is taken (or cannot be bound): the HTTP client must be
            // shut down before it is released (async-http-client traps otherwise).
            await client?.shutdown()
            throw error
        }
        lock.withLock { self.admin = admin }
        logger.info(
            "foldspace-sync running",
            metadata: [
                "version": "\(foldspaceSyncVersion)", "topics": "\(config.topics.joined(separator: ","))",
                "group": "\(config.group)", "foldspace_url": "\(config.foldspaceURL)",
            ])
        consumer.start()
        alive.beat()

        let services = services(
            engine: engine, consumer: consumer, sender: sender, admin: admin, alive: alive, notifier: notifier, fatal: kafkaFatal)
        notifier.ready(status: "consuming \(config.topics.joined(separator: ",")) as group \(config.group)")
        await runInOrder(services)

        await client?.shutdown()
        deadLetterWriter?.close()
        producer?.close()
        stateStore?.close()
        let stats = engine.snapshot()
        // Unsettled: still held, or let go unsettled by the final revocation (the next
        // owner sends those; the "partitions settled" line says the same per partition set).
        logger.info(
            "stopped",
            metadata: [
                "events_folded": .stringConvertible(stats.folded),
                "users_unsettled": .stringConvertible(stats.dirtyUsers &+ stats.unsettledAtLastRevocation),
            ])
        if kafkaFatal() {
            throw RuntimeFailure(
                "a Kafka client hit a fatal error, or this instance was fenced by a newer owner of its partitions (see the critical log line); exiting so that the process is restarted"
            )
        }
    }
}

extension SyncPipeline {
    /// Runs blocking work (librdkafka calls that wait) on a thread of its own, off
    /// Swift's cooperative pool.
    static func blocking<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
            Thread.detachNewThread { c.resume(with: Result { try work() }) }
        }
    }

    static func blocking<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
            Thread.detachNewThread { c.resume(returning: work()) }
        }
    }
}

/// A reference filled once, after what holds it was made: the one way round a cycle of
/// parts that need each other at construction.
final class Late<T: AnyObject & Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private weak var object: T?

    var value: T? {
        get { lock.withLock { object } }
        set { lock.withLock { object = newValue } }
    }
}

/// The heartbeat behind `/healthz`: the pipeline's loops beat every second.
final class LoopsAlive: @unchecked Sendable {
    private let lock = NSLock()
    private var last = DispatchTime.now()

    func beat() { lock.withLock { last = .now() } }

    var healthy: Bool {
        lock.withLock { DispatchTime.now().uptimeNanoseconds - last.uptimeNanoseconds < 10_000_000_000 }
    }
}

/// A failure while running that a restart can mend (exit status 1), as opposed to a
/// ``ConfigurationError`` found at start (exit status 2).
public struct RuntimeFailure: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
