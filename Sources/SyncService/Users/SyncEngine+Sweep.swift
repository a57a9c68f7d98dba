import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

extension SyncEngine {
    /// Walks the next `limit` slots of the user table: counts users by type (published
    /// when a round of sweeps ends) and, with `inactive_user_ttl`, drops users whose last
    /// event is that much older than their partition's latest one, if nothing of theirs
    /// is pending: not dirty, no request in
    /// flight, no offset held. In durable mode each gets a tombstone at the next
    /// checkpoint. Cheap enough to call every second: the whole table is walked in
    /// rounds, never under the lock at once.
    public func sweep(limit: Int = 65_536) {
        let nowEpoch = clock.epochMs()
        lock.withLock {
            let ttl = options.inactiveUserTTLMs
            // Per partition: its stream time (never past the wall clock) less the TTL.
            let cutoffs = streamTimeMs.map { t in
                ttl > 0 && t != .min ? min(t, nowEpoch).subtracting(saturating: ttl) : Int64.min
            }
            var expired: [(String, OffsetTracker.PartitionIndex)] = []
            let next = users.scan(from: sweepCursor, limit: max(1, limit)) { e in
                if ttl > 0, Int(e.home) < cutoffs.count, e.state.lastSeenMs < cutoffs[Int(e.home)], !e.delivery.isDirty,
                    !e.delivery.inFlight, e.holds.isEmpty, e.flightHolds.isEmpty, pendingUserLetters[e.identity] == nil
                {
                    expired.append((e.identity, e.home))
                    return
                }
                switch projector.userType(e.state) {
                case .anonymous: typeTally[0] += 1
                case .lead: typeTally[1] += 1
                case .user: typeTally[2] += 1
                }
            }
            for (key, home) in expired {
                users[key] = nil
                if options.durable { pendingTombstones[home, default: []].append(key) }
            }
            stats.expiredUsers += expired.count
            resyncStep(nowMono: clock.monotonicMs(), slots: max(1, limit))
            if next == 0 {
                usersByType = typeTally
                typeTally = [0, 0, 0]
            }
            sweepCursor = next
        }
    }
}
