import Delivery
import FoldspaceAPI
import Foundation
import Kafka
import Logging
import ServiceLifecycle

// The parts ``SyncPipeline/run()`` assembles, each made here.
extension SyncPipeline {
    /// Durable mode: the changelog's layout checked (or the topic created) and the store
    /// that writes it; offsets are then committed by checkpoints, after the state they
    /// cover is written. Memory mode: nil.
    func prepareStateStore(_ kafka: inout KafkaClientConfig, groupConsumer: @escaping @Sendable () -> KafkaConsumer?)
        async throws -> KafkaStateStore?
    {
        guard config.engine.durable else { return nil }
        kafka["enable.auto.commit"] = "false"
        let topic = config.effectiveStateTopic
        let prepareConfig = kafka
        let sourceTopic = config.topics[0]
        let logger = self.logger
        let layout = try await Self.blocking {
            try KafkaStateStore.prepare(topic: topic, sourceTopic: sourceTopic, config: prepareConfig, logger: logger)
        }
        return try KafkaStateStore(
            topic: topic, partitions: layout.state, sourcePartitions: layout.source,
            config: kafka, logger: logger, transactional: config.stateTransactions,
            alsoWrites: config.engine.identity.merge
                ? [IdentityTopics.repartition(group: config.group), IdentityTopics.identities(group: config.group)] : [],
            groupConsumer: groupConsumer)
    }

    /// A process stopped as long as the session timeout lost its partitions: it must not
    /// send what it holds. The group expires a member a session after its last
    /// heartbeat, which may be a heartbeat interval before the stop: the limit is that
    /// much shorter, and half a second more.
    func makeFreezeWatch(_ kafka: KafkaClientConfig, onFreeze halt: @escaping @Sendable () -> Void) -> FreezeWatch {
        let sessionTimeoutMs = kafka["session.timeout.ms"].flatMap { Int64($0) } ?? 10_000
        let heartbeatMs = kafka["heartbeat.interval.ms"].flatMap { Int64($0) } ?? 3_000
        let freezeLimitMs = max(1_000, sessionTimeoutMs - heartbeatMs - 500)
        return FreezeWatch(limitMs: freezeLimitMs) { [logger] seconds in
            halt()
            logger.critical(
                "the process did not run for about as long as the group's session timeout (stopped or paused): another instance may own its partitions now; it sends nothing more and exits to rejoin",
                metadata: [
                    "seconds": .stringConvertible((seconds * 10).rounded() / 10),
                    "session_timeout_ms": .stringConvertible(sessionTimeoutMs),
                ])
        }
    }

    /// The Foldspace HTTP client (or the sender a test gave), and the client to shut
    /// down at the end.
    func makeSender() throws -> (UserUpdateSender, FoldspaceClient?) {
        if let s = senderOverride { return (s, nil) }
        var o = FoldspaceClient.Options(baseURL: config.foldspaceURL)
        o.caFile = config.caFile
        o.connectTimeoutMs = config.connectTimeoutMs
        o.requestTimeoutMs = config.requestTimeoutMs
        o.maxConnections = config.engine.maxInFlight
        let c = try FoldspaceClient(options: o, keys: keys, epochMs: EngineClock.system.epochMs)
        return (c, c)
    }

    /// The admin HTTP server: `/metrics`, `/healthz`, `/readyz`.
    func startAdmin(
        engine: SyncEngine, consumer: KafkaConsumer, stateStore: KafkaStateStore?, deadLetterProducer: KafkaProducer?,
        healthy: @escaping @Sendable () -> Bool
    ) async throws -> AdminServer {
        let (host, port) = parseHostPort(config.adminListen) ?? ("127.0.0.1", 9464)
        let admin = try await AdminServer.start(
            host: host, port: port,
            metrics: {
                var queues: [(producer: String, messages: Int)] = []
                if let stateStore { queues.append(("state", stateStore.queueLength)) }
                if let deadLetterProducer { queues.append(("dead-letters", deadLetterProducer.queueLength)) }
                return MetricsText.render(
                    engine.snapshot(), lag: consumer.lag().map { ($0.key.topic, $0.key.partition, $0.value) },
                    fetcherWakeups: consumer.fetcherNudges, zstdBatchesSized: ZstdSizeHint.framesSized,
                    kafka: consumer.statistics, producerQueues: queues, process: ProcessMetrics.read())
            },
            healthy: healthy,
            ready: { engine.snapshot().ready })
        logger.info("admin server listening", metadata: ["address": "\(host):\(admin.port)"])
        return admin
    }

    /// The long-running parts, in the order they start. They stop in the reverse one:
    /// stop requests first, then the sweeps and checkpoints, then the consumer (which
    /// drains through the flusher and commits), then the rest, the admin server last.
    func services(
        engine: SyncEngine, consumer: KafkaConsumer, sender: UserUpdateSender, admin: AdminServer, alive: LoopsAlive,
        notifier: SystemdNotifier, fatal: @escaping @Sendable () -> Bool
    ) -> [ServiceGroupConfiguration.ServiceConfiguration] {
        let keys = self.keys
        let logger = self.logger
        let flusher = Flusher(
            engine: engine, sender: sender, maxInFlight: config.engine.maxInFlight,
            beforeProbe: { _ = try? keys.reload() })
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
                    drainMs: config.shutdownTimeoutMs / 2, fatal: fatal, stop: { [weak self] in self?.requestStop() }),
                successTerminationBehavior: .gracefullyShutdownGroup),
        ]
        if config.engine.durable {
            services.append(
                .init(
                    service: Checkpoints(
                        engine: engine, intervalMs: Int64(config.commitIntervalMs), merging: engine.options.identity.merge,
                        checkpoint: { await Self.blocking { engine.checkpoint() } },
                        notices: { await Self.blocking { engine.writeNotices() } })))
        }
        // The user table is walked in slices: users by type, and inactive_user_ttl.
        services.append(.init(service: Every("sweeps", .seconds(1)) { engine.sweep() }))
        services.append(
            .init(
                service: StopRequests(requests: stopStream) {
                    logger.info("shutting down: settling users and committing offsets")
                    notifier.stopping()
                }, successTerminationBehavior: .gracefullyShutdownGroup))
        return services
    }

    /// Runs `services` in one ServiceGroup until it has shut down. The group runs in a
    /// task of its own (which keeps the task locals through which a parent ServiceGroup's
    /// graceful shutdown, SIGTERM's, reaches it): cancelling run() shuts it down in
    /// order, as a stop request does, instead of cancelling every part at once (the
    /// flusher before the consumer's final drain).
    func runInOrder(_ services: [ServiceGroupConfiguration.ServiceConfiguration]) async {
        // The group's own log lines are about its mechanics: debug and below only.
        var groupLogger = logger
        groupLogger.logLevel = max(logger.logLevel, .info)
        let group = ServiceGroup(configuration: .init(services: services, logger: groupLogger))
        let running = Task { try? await group.run() }
        await withTaskCancellationHandler {
            await running.value
        } onCancel: {
            Task { await group.triggerGracefulShutdown() }
        }
    }
}
