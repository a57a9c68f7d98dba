import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

extension SyncEngine {
    /// What the flusher should do next.
    public enum Next: Sendable {
        case send([FlushJob])
        case sleepUntil(Int64?)
    }

    /// Takes up to `limit` due users, each with a rate-limiter permit, and marks them in
    /// flight. Returns when to look again if none can go now.
    public func takeDue(limit: Int) -> Next {
        let now = clock.monotonicMs()
        let nowEpoch = clock.epochMs()
        return lock.withLock {
            // A fenced instance's state may be older than what its successor sent.
            if halted { return .sleepUntil(nil) }
            // Not while the process may just have been woken from a stop (FreezeWatch).
            if let gate = sendGate, !gate() { return .sleepUntil(now + 100) }
            var jobs: [FlushJob] = []
            var wake: Int64? = nil
            if limiter.breakerOpen && now - lastBreakerLogMs >= 60_000 {
                lastBreakerLogMs = now
                logBreaker("sending is paused, nothing is dropped", dirtyUsers: dirty.count)
            }
            while jobs.count < limit {
                guard let next = debouncer.nextCheckMs else { break }
                if next > now {
                    wake = next
                    break
                }
                let permit = limiter.acquire(nowMs: now)
                if case .waitUntil(let t) = permit {
                    wake = t
                    break
                }
                let keys = debouncer.popDue(nowMs: now, limit: 1, force: draining) { users[$0]?.delivery }
                guard let key = keys.first else {
                    limiter.refund(permit)
                    continue
                }
                guard var entry = users[key],
                    let body = projector.body(identifyId: key, state: entry.state, nowMs: nowEpoch, adjustments: &stats.adjustments)
                else {
                    limiter.refund(permit)
                    continue
                }
                let hash = bodyHash(body)
                // `identity.send_anonymous: false`: an identity that never carried a userId
                // is held back as if sent; linked to a user, its history is sent with it.
                // One whose hand-over was refused (its state stays a user of its own) is sent:
                // its history would reach Foldspace no other way.
                let heldBack =
                    !options.identity.sendAnonymous && projector.userType(entry.state) == .anonymous
                    && !isLinkedHere(key, home: entry.home)
                if hash == entry.delivery.settledHash || heldBack {
                    // The same body Foldspace already has (or one held back): nothing to send.
                    let since = entry.delivery.dirtySinceMs
                    debouncer.suppressed(&entry.delivery)
                    release(&entry.holds)
                    dirty.cleared(since: since)
                    if heldBack { stats.anonymousHeldBack += 1 } else { stats.suppressed += 1 }
                    markForCheckpoint(key, &entry)
                    users[key] = entry
                    limiter.refund(permit)
                    continue
                }
                stats.sendLateness.observe(Double(max(0, now - debouncer.dueMs(entry.delivery))) / 1000)
                debouncer.willSend(&entry.delivery)
                users[key] = entry
                jobs.append(FlushJob(identifyId: key, body: body, hash: hash, isProbe: permit == .probe))
                if permit == .probe { break }
            }
            publishOffsets()
            return jobs.isEmpty ? .sleepUntil(wake) : .send(jobs)
        }
    }

    /// Records Foldspace's answer for a job and carries out what ``DeliveryPolicy``
    /// decides for it (settle, dead-letter and settle, or retry).
    public func complete(_ job: FlushJob, outcome: DeliveryOutcome, seconds: Double? = nil) {
        let now = clock.monotonicMs()
        var letter: (kind: DeadLetterKind, status: Int, response: String, seq: UInt64)? = nil
        lock.withLock {
            let delay = backoff.delayMs(attempt: Int(users[job.identifyId]?.delivery.attempts ?? 0), using: &rng)
            let recorded = limiter.record(
                outcome, wasProbe: job.isProbe, nowMs: now, backoffMs: delay,
                user: identitySeed.hash(job.identifyId))
            stats.countRequest(outcome)
            if let seconds { stats.requestDuration.observe(seconds) }
            switch recorded.breaker {
            case .opened:
                lastBreakerLogMs = now
                logBreaker(
                    "sending is paused until it answers otherwise; one probe every \(options.breakerProbeIntervalMs / 1000) s",
                    dirtyUsers: dirty.count)
            case .closed:
                logger.info("Foldspace answers again; sending resumed")
            case nil:
                break
            }
            guard var entry = users[job.identifyId] else { return }
            switch deliveryPolicy.action(
                for: outcome, settles: recorded.settles, nowMs: now, backoffMs: delay,
                pausedUntilMs: limiter.pausedUntilMs)
            {
            case .settle:
                settle(job, &entry, now)
            case .deadLetter(let kind, let status, let response):
                letter = (kind, status, response, reserveDeadLetter(for: &entry))
                settle(job, &entry, now)
                stats.deadLetters[kind, default: 0] += 1
            case .retry(let at, let reason, let unknownOutcome):
                fail(job, &entry, retryAtMs: at, reason: reason, unknownOutcome: unknownOutcome)
            }
            markForCheckpoint(job.identifyId, &entry)
            users[job.identifyId] = entry
            publishOffsets()
        }
        if let letter {
            deadLetters.deadLetter(
                kind: letter.kind, key: Array(job.identifyId.utf8), value: job.body,
                headers: [
                    ("reason", letter.kind.rawValue), ("status", String(letter.status)), ("response", String(letter.response.prefix(1024))),
                ]
            ) { [weak self] in self?.deadLetterDelivered(letter.seq) }
        }
    }

    /// Hands back a job that was taken but never sent (the flusher stopped inside a
    /// `Retry-After` pause): the user stays dirty, due again at once, its offsets held.
    public func returnUnsent(_ job: FlushJob) {
        let now = clock.monotonicMs()
        lock.withLock {
            if job.isProbe { limiter.refund(.probe) }
            guard var entry = users[job.identifyId] else { return }
            fail(job, &entry, retryAtMs: now, reason: "unsent")
            users[job.identifyId] = entry
        }
    }

    /// The breaker's error line: which status, at which URL, and what it means. Called
    /// with the lock held.
    func logBreaker(_ what: String, dirtyUsers: Int) {
        let status = limiter.breakerStatus
        let cause =
            status == 401 || status == 403
            ? "Foldspace refuses the API key (SIGHUP re-reads the key file)"
            : "Foldspace answers \(status) for every user: not about any one user (a wrong foldspace_url, a redirect, a proxy)"
        logger.error(
            "\(cause); \(what)",
            metadata: [
                "status": "\(status)", "foldspace_url": "\(options.foldspaceURL)", "dirty_users": "\(dirtyUsers)",
            ])
    }

    func settle(_ job: FlushJob, _ entry: inout UserEntry, _ now: Int64) {
        release(&entry.holds)
        entry.holds = entry.flightHolds
        entry.flightHolds = Holds()
        let since = entry.delivery.dirtySinceMs
        if debouncer.settled(job.identifyId, &entry.delivery, hash: job.hash, nowMs: now) {
            dirty.cleared(since: since)
        } else {
            // Changed while in flight: dirty since those changes now.
            dirty.moved(from: since, to: entry.delivery.dirtySinceMs)
        }
    }

    func fail(_ job: FlushJob, _ entry: inout UserEntry, retryAtMs: Int64, reason: String, unknownOutcome: Bool = false) {
        stats.retries[reason, default: 0] += 1
        // Keep the lowest hold per partition: flight holds are later than holds.
        entry.flightHolds.forEach { p, o in
            if entry.holds.add(p, o) == false {
                offsets.release(p, offset: o)
            }
        }
        entry.flightHolds = Holds()
        debouncer.failed(job.identifyId, &entry.delivery, retryAtMs: retryAtMs, unknownOutcome: unknownOutcome)
    }

    func release(_ holds: inout Holds) {
        holds.forEach { p, o in offsets.release(p, offset: o) }
        holds.removeAll()
    }

    /// Hands offsets that moved forward to the consumer; called with the lock held.
    func publishOffsets() {
        guard !options.durable else { return }
        let adv = offsets.advanced()
        guard !adv.isEmpty, let storeOffsets else { return }
        var m: [TopicPartition: Int64] = [:]
        for (i, o) in adv where assigned.contains(i) { m[partitionsByIndex[Int(i)]] = min(o, revokingFloors[i] ?? .max) }
        if !m.isEmpty { storeOffsets(m) }
    }

    /// Milliseconds until a client-wide `Retry-After` pause ends, or nil when none is in
    /// force. The flusher checks it again right before a request goes on the wire, so a
    /// request taken before a 429 arrived does not land inside the window.
    public func retryAfterRemainingMs() -> Int64? {
        let now = clock.monotonicMs()
        return lock.withLock {
            let until = limiter.pausedUntilMs
            return until > now ? until - now : nil
        }
    }

    /// Whether a request may go on the wire now: not halted, and the send gate open.
    public func maySend() -> Bool {
        if lock.withLock({ halted }) { return false }
        return sendGate?() ?? true
    }
}
