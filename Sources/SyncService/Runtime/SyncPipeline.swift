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
    private let logger: Logger
    private let keys: APIKeyStore
    private let senderOverride: UserUpdateSender?
    private let stopStream: AsyncStream<Void>
    private let stopContinuation: AsyncStream<Void>.Continuation
    private let lock = NSLock()
    private var consumer: KafkaConsumer?
    private var admin: AdminServer?
    private var producer: KafkaProducer?
    private var deadLetterWriter: KafkaDeadLetters?
    private var started = false
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
                maxMessageBytes: kafka["message.max.bytes"].flatMap { Int($0) } ?? 1_000_000)
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
        var stateStore: KafkaStateStore? = nil
        if config.engine.durable {
            // Offsets are committed by checkpoints, after the state they cover is written.
            kafka["enable.auto.commit"] = "false"
            let topic = config.effectiveStateTopic
            let prepareConfig = kafka
            let layout = try await Self.blocking {
                try KafkaStateStore.prepare(topic: topic, sourceTopic: self.config.topics[0], config: prepareConfig, logger: self.logger)
            }
            let store = try KafkaStateStore(
                topic: topic, partitions: layout.state, sourcePartitions: layout.source,
                config: kafka, logger: logger, transactional: config.stateTransactions,
                groupConsumer: { consumerLink.value })
            stateStore = store
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
        // A process stopped as long as the session timeout lost its partitions: it must
        // not send what it holds (FreezeWatch).
        // The group expires a member a session after its last heartbeat, which may be a
        // heartbeat interval before the stop: the limit is that much shorter, and half a
        // second more.
        let sessionTimeoutMs = kafka["session.timeout.ms"].flatMap { Int64($0) } ?? 10_000
        let heartbeatMs = kafka["heartbeat.interval.ms"].flatMap { Int64($0) } ?? 3_000
        let freezeLimitMs = max(1_000, sessionTimeoutMs - heartbeatMs - 500)
        let freezeWatch = FreezeWatch(limitMs: freezeLimitMs) { [logger] seconds in
            engineLink.value?.halt()
            logger.critical(
                "the process did not run for about as long as the group's session timeout (stopped or paused): another instance may own its partitions now; it sends nothing more and exits to rejoin",
                metadata: [
                    "seconds": .stringConvertible((seconds * 10).rounded() / 10),
                    "session_timeout_ms": .stringConvertible(sessionTimeoutMs),
                ])
        }
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
        let consumer = try KafkaConsumer(config: kafka, topics: config.topics, handler: engine, logger: logger)
        consumerLink.value = consumer
        // Held by the pipeline from here on: a start that fails below must not free a
        // consumer that was subscribed and never started (librdkafka 2.0.2 asserts).
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

        let sender: UserUpdateSender
        var client: FoldspaceClient? = nil
        if let s = senderOverride {
            sender = s
        } else {
            var o = FoldspaceClient.Options(baseURL: config.foldspaceURL)
            o.caFile = config.caFile
            o.connectTimeoutMs = config.connectTimeoutMs
            o.requestTimeoutMs = config.requestTimeoutMs
            o.maxConnections = config.engine.maxInFlight
            let c = try FoldspaceClient(options: o, keys: keys, epochMs: EngineClock.system.epochMs)
            client = c
            sender = c
        }
        let (host, port) = parseHostPort(config.adminListen) ?? ("127.0.0.1", 9464)
        let alive = loopsAlive
        let notifier = SystemdNotifier()
        let admin: AdminServer
        do {
            admin = try await AdminServer.start(
                host: host, port: port,
                metrics: { [stateStore] in
                    var queues: [(producer: String, messages: Int)] = []
                    if let stateStore { queues.append(("state", stateStore.queueLength)) }
                    if let deadLetterProducer { queues.append(("dead-letters", deadLetterProducer.queueLength)) }
                    return MetricsText.render(
                        engine.snapshot(), lag: consumer.lag().map { ($0.key.topic, $0.key.partition, $0.value) },
                        fetcherWakeups: consumer.fetcherNudges, zstdBatchesSized: ZstdSizeHint.framesSized,
                        kafka: consumer.statistics, producerQueues: queues, process: ProcessMetrics.read())
                },
                healthy: { alive.healthy && !kafkaFatal() },
                ready: { engine.snapshot().ready })
        } catch {
            // The admin address is taken (or cannot be bound): the HTTP client must be
            // shut down before it is released (async-http-client traps otherwise).
            await client?.shutdown()
            throw error
        }
        lock.withLock {
            self.admin = admin
            started = true
        }
        logger.info("admin server listening", metadata: ["address": "\(host):\(admin.port)"])
        logger.info(
            "foldspace-sync running",
            metadata: [
                "version": "\(foldspaceSyncVersion)", "topics": "\(config.topics.joined(separator: ","))",
                "group": "\(config.group)", "foldspace_url": "\(config.foldspaceURL)",
            ])
        consumer.start()
        alive.beat()

        let probeKeys = keys
        let flusher = Flusher(
            engine: engine, sender: sender, maxInFlight: config.engine.maxInFlight,
            beforeProbe: { _ = try? probeKeys.reload() })
        let commitInterval = config.commitIntervalMs
        let logger = self.logger
        // Started in this order, shut down in the reverse one: stop requests first, then
        // the sweeps and checkpoints, then the consumer (which drains through the flusher
        // and commits), then the rest, the admin server last.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: AdminEndpoint(admin: admin)),
            .init(service: Loop("flusher") { await flusher.run() }),
            .init(
                service: liveness(
                    flusher: flusher, consumer: consumer, alive: alive, notifier: notifier,
                    pollLimit: Double(config.engine.drainTimeoutMs) / 1000 + 10)),
            .init(service: keyReloads(keys: keys, engine: engine, logger: logger)),
            .init(service: catchUpReports(engine: engine, consumer: consumer, logger: logger)),
            // Run until asked to stop, or until the consumer ends on a fatal error.
            .init(
                service: Consuming(
                    consumer: consumer, engine: engine, durable: config.engine.durable,
                    drainMs: config.shutdownTimeoutMs / 2, fatal: kafkaFatal, stop: { [weak self] in self?.requestStop() }),
                successTerminationBehavior: .gracefullyShutdownGroup),
        ]
        if config.engine.durable {
            services.append(
                .init(
                    service: Every("checkpoints", .milliseconds(commitInterval)) {
                        _ = await Self.blocking { engine.checkpoint() }
                    }))
        }
        // The user table is walked in slices: users by type, and inactive_user_ttl.
        services.append(.init(service: Every("sweeps", .seconds(1)) { engine.sweep() }))
        services.append(
            .init(
                service: StopRequests(requests: stopStream) {
                    logger.info("shutting down: settling users and committing offsets")
                    notifier.stopping()
                }, successTerminationBehavior: .gracefullyShutdownGroup))
        notifier.ready(status: "consuming \(config.topics.joined(separator: ",")) as group \(config.group)")
        // The group's own log lines are about its mechanics: debug and below only.
        var groupLogger = logger
        groupLogger.logLevel = max(logger.logLevel, .info)
        let group = ServiceGroup(configuration: .init(services: services, logger: groupLogger))
        // The group runs in a task of its own (which keeps the task locals through which a
        // parent ServiceGroup's graceful shutdown, SIGTERM's, reaches it): cancelling
        // run() shuts it down in order, as a stop request does, instead of cancelling
        // every part at once (the flusher before the consumer's final drain).
        let running = Task { try? await group.run() }
        await withTaskCancellationHandler {
            await running.value
        } onCancel: {
            Task { await group.triggerGracefulShutdown() }
        }

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
