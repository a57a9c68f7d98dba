import Delivery
import Foundation
import Logging

/// Sends due users to Foldspace: takes jobs from the ``SyncEngine`` (which applies the
/// debounce and the rate limiter), runs at most `maxInFlight` requests at once, and
/// reports each answer back.
public final class Flusher: Sendable {
    private let engine: SyncEngine
    private let sender: UserUpdateSender
    private let maxInFlight: Int
    private let inFlight = InFlightCounter()
    /// Rounds of the loop, for liveness.
    let rounds = InFlightCounter()
    private let beforeProbe: @Sendable () -> Void

    /// - Parameter beforeProbe: runs before each circuit-breaker probe (re-reads the key
    ///   file, so a rotated key heals without a signal).
    public init(
        engine: SyncEngine, sender: UserUpdateSender, maxInFlight: Int,
        beforeProbe: @escaping @Sendable () -> Void = {}
    ) {
        self.engine = engine
        self.sender = sender
        self.maxInFlight = max(1, maxInFlight)
        self.beforeProbe = beforeProbe
    }

    /// Runs until the task is cancelled, then waits for requests in flight.
    public func run() async {
        let clock = ContinuousClock()
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled {
                rounds.add(1)
                let free = maxInFlight - inFlight.value
                if free <= 0 {
                    try? await clock.sleep(for: .milliseconds(1))
                    continue
                }
                switch engine.takeDue(limit: free) {
                case .send(let jobs):
                    for job in jobs {
                        inFlight.add(1)
                        group.addTask { [engine, sender, inFlight, beforeProbe] in
                            if job.isProbe { beforeProbe() }
                            while let wait = engine.retryAfterRemainingMs() {
                                do {
                                    try await Task.sleep(for: .milliseconds(wait))
                                } catch {
                                    // Cancelled (shutdown) inside a Retry-After pause: the
                                    // user goes back unsent. Looping on a sleep that throws
                                    // at once spun a core until the pause ended.
                                    engine.returnUnsent(job)
                                    inFlight.add(-1)
                                    return
                                }
                            }
                            // Checked again right before the wire: a job taken before the
                            // process was stopped, or that waited out a pause, may no longer go.
                            guard engine.maySend() else {
                                engine.returnUnsent(job)
                                inFlight.add(-1)
                                return
                            }
                            let start = ContinuousClock.now
                            let outcome = await sender.send(identifyId: job.identifyId, body: job.body)
                            let elapsed = ContinuousClock.now - start
                            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
                            engine.complete(job, outcome: outcome, seconds: seconds)
                            inFlight.add(-1)
                        }
                    }
                case .sleepUntil(let wake):
                    // Timers are checked at least every 20 ms: new dirty users need no
                    // wake-up call, and the latency cost is bounded.
                    var ms: Int64 = 20
                    if let wake { ms = min(ms, max(1, wake - EngineClock.system.monotonicMs())) }
                    try? await clock.sleep(for: .milliseconds(ms))
                }
            }
        }
    }
}

final class InFlightCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    var value: Int { lock.withLock { n } }
    func add(_ d: Int) { lock.withLock { n += d } }
}
