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
    public let engine: SyncEngine
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
            let writer = KafkaDeadLetters(producer: p, topic: topic, logger: logger,
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
        engine = SyncEngine(options: engineOptions, deadLetters: sink, logger: logger)
        (stopStream, stopContinuation) = AsyncStream.makeStream()
    }

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
        var stateStore: KafkaStateStore? = nil
        if config.engine.durable {
            // Offsets are committed by checkpoints, after the state they cover is written.
            kafka["enable.auto.commit"] = "false"
            let topic = config.effectiveStateTopic
            let prepareConfig = kafka
            let layout = try await Self.blocking {
                try KafkaStateStore.prepare(topic: topic, sourceTopic: self.config.topics[0], config: prepareConfig, logger: self.logger)
            }
            let store = try KafkaStateStore(topic: topic, partitions: layout.state, sourcePartitions: layout.source,
                                            config: kafka, logger: logger, transactional: config.stateTransactions)
            stateStore = store
            engine.setStateStore(store)
        }
        // Process-wide, and on unless a configuration turns it off.
        if !config.zstdSizeHint { ZstdSizeHint.setEnabled(false) }
        #if os(Linux)
        if config.zstdSizeHint && !ZstdSizeHint.isInstalled {
            logger.warning("zstd_size_hint: librdkafka does not call this executable's hint; zstd batches without a stated size are sized by librdkafka's guesses")
        }
        #endif
        let consumer = try KafkaConsumer(config: kafka, topics: config.topics, handler: engine, logger: logger)
        stateStore?.attach(consumer: consumer)
        // Restores run off the poll thread; the consumer holds each partition paused
        // until its state is loaded.
        engine.setRestoredSink { [weak consumer] in consumer?.release($0) }
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
        let freezeWatch = FreezeWatch(limitMs: freezeLimitMs) { [logger, engine] seconds in
            engine.halt()
            logger.critical("the process did not run for about as long as the group's session timeout (stopped or paused): another instance may own its partitions now; it sends nothing more and exits to rejoin", metadata: [
                "seconds": .stringConvertible((seconds * 10).rounded() / 10), "session_timeout_ms": .stringConvertible(sessionTimeoutMs),
            ])
        }
        freezeWatch.start()
        defer { freezeWatch.stop() }
        engine.setSendGate { freezeWatch.allowsSending }
        let kafkaFatal: @Sendable () -> Bool = { [stateStore] in
            consumer.hasFatalError || (stateStore?.hasFatalError ?? false) || (deadLetterProducer?.hasFatalError ?? false)
                || freezeWatch.hasFrozen
        }
        engine.setOffsetSink { consumer.storeOffsets($0) }
        engine.setPartitionTotal { consumer.subscribedPartitionCount() }
        engine.setHighWatermarkSource { consumer.highWatermark($0) }

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
        let engine = self.engine
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
                    return MetricsText.render(engine.snapshot(), lag: consumer.lag().map { ($0.key.topic, $0.key.partition, $0.value) },
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
            self.consumer = consumer
            self.admin = admin
            started = true
        }
        logger.info("admin server listening", metadata: ["address": "\(host):\(admin.port)"])
        logger.info("foldspace-sync running", metadata: [
            "version": "\(foldspaceSyncVersion)", "topics": "\(config.topics.joined(separator: ","))",
            "group": "\(config.group)", "foldspace_url": "\(config.foldspaceURL)",
        ])
        consumer.start()
        alive.beat()

        let probeKeys = keys
        let flusher = Flusher(engine: engine, sender: sender, maxInFlight: config.engine.maxInFlight,
                              beforeProbe: { _ = try? probeKeys.reload() })
        let flushTask = Task { await flusher.run() }
        let commitInterval = config.commitIntervalMs
        let checkpointTask: Task<Void, Never>? = config.engine.durable ? Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(commitInterval))
                if Task.isCancelled { break }
                await Self.blocking { engine.checkpoint() }
            }
        } : nil
        // The user table is walked in slices: users by type, and inactive_user_ttl.
        let sweepTask = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                if Task.isCancelled { break }
                engine.sweep()
            }
        }
        // After each assignment, one line saying how fast its backlog was read: once the
        // consumer is within a batch of the end of every partition it holds.
        let catchUpWatch = Task { [logger = self.logger] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(100))
                guard engine.awaitingCatchUp else { continue }
                let assigned = consumer.assignment
                let lag = consumer.lag()
                guard !assigned.isEmpty, lag.count == assigned.count, lag.values.reduce(0, +) < 1_000,
                      let c = engine.takeCatchUp(backlog: lag.values.reduce(0, +)) else { continue }
                var metadata: Logger.Metadata = [
                    "events": .stringConvertible(c.events), "partitions": .stringConvertible(assigned.count),
                    "fold_seconds": .stringConvertible((c.foldSeconds * 1000).rounded() / 1000),
                    "seconds_since_assignment": .stringConvertible((c.sinceAssignmentSeconds * 100).rounded() / 100),
                ]
                // A rate only over a span long enough to mean one.
                if c.foldSeconds >= 0.05, let rate = Int(exactly: (Double(c.events) / c.foldSeconds).rounded(.down)) {
                    metadata["events_per_second"] = .stringConvertible(rate)
                }
                logger.info("caught up with the assigned partitions", metadata: metadata)
            }
        }
        notifier.ready(status: "consuming \(config.topics.joined(separator: ",")) as group \(config.group)")
        // Liveness: both loops must go round. The poll thread may legitimately sit in a
        // rebalance callback for up to the drain timeout.
        let pollLimit = Double(config.engine.drainTimeoutMs) / 1000 + 10
        let heartbeat = Task {
            var lastRounds = -1
            var lastWatchdog = ContinuousClock.now
            while !Task.isCancelled {
                let rounds = flusher.rounds.value
                if rounds != lastRounds && consumer.secondsSincePoll < pollLimit && !consumer.hasFatalError {
                    alive.beat()
                    if let interval = notifier.watchdogInterval, ContinuousClock.now - lastWatchdog >= interval {
                        notifier.watchdog()
                        lastWatchdog = ContinuousClock.now
                    }
                }
                lastRounds = rounds
                try? await Task.sleep(for: min(.seconds(1), notifier.watchdogInterval ?? .seconds(1)))
            }
        }
        let keys = self.keys
        let logger = self.logger
        let hupTask = Task {
            for await _ in await UnixSignalsSequence(trapping: .sighup) {
                do {
                    let changed = try keys.reload()
                    logger.info("SIGHUP: API key re-read", metadata: ["changed": "\(changed)"])
                    engine.keyReloaded()
                } catch {
                    logger.error("SIGHUP: cannot re-read the API key", metadata: ["error": "\(error)"])
                }
            }
        }

        // Run until asked to stop, or until the consumer ends on a fatal error.
        let stopStream = self.stopStream
        await withTaskGroup(of: Void.self) { group in
            group.addTask { try? await gracefulShutdown() }
            group.addTask { for await _ in stopStream { return } }
            group.addTask {
                while !consumer.isFinished && !kafkaFatal() && !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(200))
                }
            }
            await group.next()
            group.cancelAll()
        }
        logger.info("shutting down: settling users and committing offsets")
        notifier.stopping()
        checkpointTask?.cancel()
        await checkpointTask?.value
        sweepTask.cancel()
        await sweepTask.value
        let durable = config.engine.durable
        let drainMs = config.shutdownTimeoutMs / 2
        // Fenced, or a client failed: nothing more is sent (what this instance holds may
        // be older than what another instance sent since).
        if kafkaFatal() { engine.halt() }
        await Self.blocking {
            if durable && !kafkaFatal() {
                // Stop fetching, send what is pending while time allows (the state is
                // checkpointed either way), then close: the final revocation
                // checkpoints and commits.
                consumer.stopFetching()
                engine.drain(partitions: nil, timeoutMs: drainMs)
            }
            consumer.stop()
        }
        flushTask.cancel()
        await flushTask.value
        heartbeat.cancel()
        catchUpWatch.cancel()
        hupTask.cancel()
        await admin.stop()
        await client?.shutdown()
        deadLetterWriter?.close()
        producer?.close()
        stateStore?.close()
        let stats = engine.snapshot()
        // Unsettled: still held, or let go unsettled by the final revocation (the next
        // owner sends those; the "partitions settled" line says the same per partition set).
        logger.info("stopped", metadata: [
            "events_folded": .stringConvertible(stats.folded),
            "users_unsettled": .stringConvertible(stats.dirtyUsers &+ stats.unsettledAtLastRevocation),
        ])
        if kafkaFatal() {
            throw RuntimeFailure("a Kafka client hit a fatal error, or this instance was fenced by a newer owner of its partitions (see the critical log line); exiting so that the process is restarted")
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
