import Delivery
import FoldspaceAPI
import Foundation
import Kafka
import Logging
import ServiceLifecycle
import UnixSignals

// The long-running parts of a running pipeline, one `Service` each. ``SyncPipeline``
// runs them in one `ServiceGroup`, which starts them in the order listed and shuts them
// down in the reverse order, each after the one listed after it has ended.

/// A part that runs `body` until the group shuts it down (`body` is then cancelled, and
/// the part ends when it returns).
struct Loop: Service, CustomStringConvertible {
    let description: String
    let body: @Sendable () async -> Void

    init(_ name: String, _ body: @escaping @Sendable () async -> Void) {
        description = name
        self.body = body
    }

    func run() async {
        await cancelWhenGracefulShutdown(body)
    }
}

/// A part that does `work` every `interval` until the group shuts it down (a round under
/// way is finished first).
struct Every: Service, CustomStringConvertible {
    let description: String
    let interval: Duration
    let work: @Sendable () async -> Void

    init(_ name: String, _ interval: Duration, _ work: @escaping @Sendable () async -> Void) {
        description = name
        self.interval = interval
        self.work = work
    }

    func run() async {
        await cancelWhenGracefulShutdown { [interval, work] in
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                if Task.isCancelled { break }
                await work()
            }
        }
    }
}

/// The periodic checkpoint, every `commit_interval`. With identity resolution also sooner
/// when calls routed to other tasks wait for it (their tasks read them only once it has
/// committed them, so the interval was each hop's latency, and with keys by messageId the
/// whole backlog waited for it): ``routedBurst`` of them, or any for ``routedWaitMs``, when
/// they are at least as many as the users it would write, or those are fewer than
/// ``routedBurst``. A checkpoint writes every user changed since the last: with keys by
/// identity (a few routed records, link requests and merges, beside many changed users)
/// checkpoints every 200 ms, or every second, rewrote the busy users over and over and cut
/// the fold to 0.63× of merging off (0.52× every second); there a hop waits up to the
/// interval. While the fold is idle, what waits goes every 200 ms
/// (``decide(_:intervalMs:merging:)``).
struct Checkpoints: Service, CustomStringConvertible {
    let description = "checkpoints"
    let engine: SyncEngine
    let intervalMs: Int64
    let merging: Bool
    /// Whether the checkpoint succeeded: after a failure, the next waits the interval
    /// (records that cannot be written yet would start one every second).
    let checkpoint: @Sendable () async -> Bool
    /// Identity resolution: a transaction of the notices owed alone
    /// (``SyncEngine/writeNotices()``), when no checkpoint is due.
    var notices: (@Sendable () async -> Bool)? = nil

    static let routedBurst = 10_000
    static let routedWaitMs: Int64 = 1_000
    /// The fewest milliseconds between two checkpoints started for routed calls.
    static let routedSpacingMs: Int64 = 200
    /// How long no call must be read for the fold to count as idle.
    static let idleMs: Int64 = 500

    /// What the loop does at a tick.
    enum Action: Equatable {
        case wait, checkpoint, notices
    }

    /// What is known at a tick: milliseconds since the last checkpoint started, since the
    /// last transaction of notices alone, and since a call was last read; the routed
    /// records waiting (the notices owed among them) and the users a checkpoint would
    /// write; the notices owed; whether the last checkpoint failed, or held tasks back
    /// (their dead letters not written yet).
    struct Tick {
        var sinceMs: Int64
        var sinceNoticesMs: Int64
        var quietMs: Int64
        var waiting = 0
        var users = 0
        var noticesOwed = 0
        var failed = false
        var heldBack = false
    }

    /// The policy, pure (`CheckpointPolicyTests`). A checkpoint every `intervalMs`. With
    /// identity resolution, sooner:
    /// - for routed records, when the checkpoint would mostly write them, or a small one:
    ///   ``routedBurst`` of them, or any for ``routedWaitMs``;
    /// - while the fold is idle (no call read for ``idleMs``), for anything waiting (routed
    ///   records, or notices owed, which the checkpoint's transactions then write), every
    ///   ``routedSpacingMs``: rewriting its users then slows nothing, and each hop of a
    ///   routed call (forwarded again, a second hop; or read only once the notices of its
    ///   writer's next transaction come) would otherwise wait a second for each. (One busy
    ///   task of the instance keeps it from being idle.) Not after a checkpoint that held
    ///   tasks back for their dead letters: those would be tried again five times a second.
    ///
    /// Otherwise the notices owed, alone, after ``routedWaitMs`` since the last checkpoint
    /// and the last such transaction: the routed records they resolve would otherwise wait
    /// for the interval.
    static func decide(_ t: Tick, intervalMs: Int64, merging: Bool) -> Action {
        if t.sinceMs >= intervalMs { return .checkpoint }
        guard merging, !t.failed, t.sinceMs >= routedSpacingMs else { return .wait }
        let idle = t.quietMs >= idleMs && !t.heldBack
        if t.waiting > 0
            && (idle || (t.waiting >= t.users || t.users < routedBurst) && (t.waiting >= routedBurst || t.sinceMs >= routedWaitMs))
        {
            return .checkpoint
        }
        if t.noticesOwed > 0 && t.sinceMs >= routedWaitMs && t.sinceNoticesMs >= routedWaitMs { return .notices }
        return .wait
    }

    func run() async {
        await cancelWhenGracefulShutdown { [engine, intervalMs, merging, checkpoint, notices] in
            var last = ContinuousClock.now
            var lastNotices = ContinuousClock.now
            var failed = false
            var read = -1
            var lastRead = ContinuousClock.now
            func ms(since t: ContinuousClock.Instant) -> Int64 {
                let d = ContinuousClock.now - t
                return d < .zero ? -1 : d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
            }
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(merging ? 100 : intervalMs))
                if Task.isCancelled { break }
                // Whether no call was read for half a second: the fold is idle (a single
                // empty look is no proof: a busy fold has gaps of 100 ms).
                let readNow = merging ? engine.callsRead : 0
                if readNow != read { (read, lastRead) = (readNow, ContinuousClock.now) }
                var tick = Tick(sinceMs: ms(since: last), sinceNoticesMs: ms(since: lastNotices), quietMs: ms(since: lastRead))
                if merging && tick.sinceMs < intervalMs {
                    (tick.waiting, tick.users) = engine.checkpointBacklog
                    tick.noticesOwed = notices == nil ? 0 : engine.noticesOwed
                    tick.failed = failed
                    tick.heldBack = engine.lastCheckpointHeldBack
                }
                switch Self.decide(tick, intervalMs: intervalMs, merging: merging) {
                case .wait: continue
                case .notices:
                    guard let notices else { continue }
                    lastNotices = ContinuousClock.now
                    // After a failure, not again before the interval.
                    if !(await notices()) { lastNotices = ContinuousClock.now + .milliseconds(intervalMs) }
                case .checkpoint:
                    last = ContinuousClock.now
                    failed = !(await checkpoint())
                }
            }
        }
    }
}

/// The first part shut down: it says so (log, systemd), and it ends the group when
/// ``SyncPipeline/requestStop()`` asks.
struct StopRequests: Service, CustomStringConvertible {
    let description = "stop requests"
    let requests: AsyncStream<Void>
    let stopping: @Sendable () -> Void

    func run() async {
        await cancelWhenGracefulShutdown { [requests] in
            for await _ in requests { return }
        }
        stopping()
    }
}

/// The consumer: it consumes (on its own poll thread) until the group shuts down; then
/// it stops fetching, sends what is pending while time allows (durable mode), and
/// closes, its final revocation checkpointing and committing. The flusher, listed before
/// it, is still running meanwhile. A consumer that ends on a fatal error asks for the
/// group's shutdown (`stop`) and waits for its turn in it, so that the sweeps and
/// checkpoints listed after it have ended before it closes.
struct Consuming: Service, CustomStringConvertible {
    let description = "consumer"
    let consumer: KafkaConsumer
    let engine: SyncEngine
    let durable: Bool
    let drainMs: Int64
    let fatal: @Sendable () -> Bool
    let stop: @Sendable () -> Void

    func run() async {
        await cancelWhenGracefulShutdown { [consumer, fatal] in
            while !consumer.isFinished && !fatal() && !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        if !Task.isShuttingDownGracefully && !Task.isCancelled {
            // Ended on its own: a fatal error. Nothing more is sent from now on (what
            // this instance holds may be older than what another instance sent since),
            // while the parts listed after this one end first.
            if fatal() { engine.halt() }
            stop()
            try? await gracefulShutdown()
        }
        // Fenced, or a client failed: nothing more is sent (what this instance holds may
        // be older than what another instance sent since).
        if fatal() { engine.halt() }
        await SyncPipeline.blocking { [consumer, engine, durable, drainMs, fatal] in
            if durable && !fatal() {
                // Stop fetching, send what is pending while time allows (the state is
                // checkpointed either way), then close: the final revocation
                // checkpoints and commits.
                consumer.stopFetching()
                engine.drain(partitions: nil, timeoutMs: drainMs)
            }
            consumer.stop()
        }
    }
}

/// The admin HTTP server (metrics, health, readiness): started before the group, the
/// last part stopped.
struct AdminEndpoint: Service, CustomStringConvertible {
    let description = "admin server"
    let admin: AdminServer

    func run() async {
        try? await gracefulShutdown()
        await admin.stop()
    }
}

/// `/healthz` and the systemd watchdog: both beat only while the flusher goes round and
/// the consumer polls. The poll thread may legitimately sit in a rebalance callback for
/// up to the drain timeout, hence `pollLimit`.
func liveness(
    flusher: Flusher, consumer: KafkaConsumer, alive: LoopsAlive, notifier: SystemdNotifier,
    pollLimit: Double
) -> Loop {
    Loop("liveness") {
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
}

/// SIGHUP re-reads the API key file (and lets the breaker probe at once).
func keyReloads(keys: APIKeyStore, engine: SyncEngine, logger: Logger) -> Loop {
    Loop("SIGHUP key reloads") {
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
}

/// After each assignment, one line saying how fast its backlog was read: once the
/// consumer is within a batch of the end of every partition it holds.
func catchUpReports(engine: SyncEngine, consumer: KafkaConsumer, logger: Logger) -> Every {
    Every("catch-up reports", .milliseconds(100)) {
        guard engine.awaitingCatchUp else { return }
        let assigned = consumer.assignment
        let lag = consumer.lag()
        guard !assigned.isEmpty, lag.count == assigned.count, lag.values.reduce(0, +) < 1_000,
            let c = engine.takeCatchUp(backlog: lag.values.reduce(0, +))
        else { return }
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
