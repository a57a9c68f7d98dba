import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

extension SyncEngine {
    /// Calls read so far (folded, invalid, ignored, skipped): O(1), for progress loops.
    public var eventsRead: Int {
        lock.withLock { stats.folded + stats.ignored + stats.skippedReplays + stats.invalid.values.reduce(0, +) }
    }

    /// All counters and gauges. Computing the oldest dirty age walks the users, so call
    /// it at scrape intervals, not in a tight loop.
    public func snapshot() -> EngineStats {
        let now = clock.monotonicMs()
        return lock.withLock {
            var s = stats
            s.users = users.count
            s.usersByType = [.anonymous: usersByType[0], .lead: usersByType[1], .user: usersByType[2]]
            s.dirtyUsers = dirty.count
            // From the tally, not a walk over every user: a scrape held the lock, and so
            // the poll thread, for a time that grew with the users.
            s.oldestDirtyMs = dirty.oldestSinceMs.map { max(0, now - $0) } ?? 0
            s.breakerOpen = limiter.breakerOpen
            s.breakerStatus = limiter.breakerOpen ? limiter.breakerStatus : 0
            s.rateLimit = limiter.currentRate
            // Ready: joined, and every assigned partition restored (no partition is
            // fine). An open breaker is foldspace_sync_breaker_open and an alert, not
            // unreadiness: that would block drains and hide the metrics that fire it.
            s.ready = hasBeenAssigned && restoringGeneration.isEmpty
            if options.identity.merge {
                // Kept by each graph as it changes: a walk over the entries at every scrape
                // held the lock for as long (a 10 ms scrape cut the fold to a third).
                s.identity = retiredIdentity
                for r in routers.values {
                    s.identity.add(r)
                    let l = r.graph.linkedSummary
                    s.usersWithLinks += l.users
                    s.linkedIdentities += l.linked
                    s.mostLinked = max(s.mostLinked, l.most)
                }
            }
            return s
        }
    }

    /// The body the engine would send for a user now (tests and debugging).
    public func projection(of identifyId: String) -> [UInt8]? {
        lock.withLock {
            guard let e = users[identifyId] else { return nil }
            var adj = Adjustments()
            return projector.body(identifyId: identifyId, state: e.state, nowMs: clock.epochMs(), adjustments: &adj)
        }
    }
}
