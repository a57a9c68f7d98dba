import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

extension SyncEngine {
    /// Numbers a dead letter about to be queued and records what it holds back from
    /// being committed. Called with the lock held.
    func reserveDeadLetter(_ hold: DeadLetterHold) -> UInt64 {
        let seq = deadLetterSeq
        deadLetterSeq &+= 1
        undeliveredDeadLetters[seq] = hold
        return seq
    }

    /// As ``reserveDeadLetter(_:)`` for a user's rejected body: in memory mode the
    /// offsets that body covered stay held (taken out of the entry, so settling does not
    /// release them) until the letter is written. Called with the lock held.
    func reserveDeadLetter(for entry: inout UserEntry) -> UInt64 {
        guard !options.durable else {
            pendingUserLetters[entry.identity, default: 0] += 1
            return reserveDeadLetter(.user(entry.identity))
        }
        let taken = entry.holds
        entry.holds = Holds()
        return reserveDeadLetter(.holds(taken))
    }

    /// Revoked partitions' offsets are no longer this instance's to hold: a letter
    /// delivered after they come back must not release a hold taken since. Called with
    /// the lock held, before the partitions are deactivated.
    func forgetDeadLetterHolds(of revoked: Set<OffsetTracker.PartitionIndex>, droppedUsers: Set<String>) {
        for (seq, hold) in undeliveredDeadLetters {
            switch hold {
            case .offset(let p, _) where revoked.contains(p):
                undeliveredDeadLetters[seq] = DeadLetterHold.none
            case .user(let key) where droppedUsers.contains(key):
                // The user left with its state stored unsettled; if it comes back, a
                // letter of this time must not mark a later one written.
                undeliveredDeadLetters[seq] = DeadLetterHold.none
            case .holds(let h):
                var kept = Holds()
                h.forEach { p, o in if !revoked.contains(p) { _ = kept.add(p, o) } }
                undeliveredDeadLetters[seq] = .holds(kept)
            default: break
            }
        }
    }

    /// A dead letter was written: what it held back may be committed.
    func deadLetterDelivered(_ seq: UInt64) {
        lock.withLock {
            switch undeliveredDeadLetters.removeValue(forKey: seq) {
            case .offset(let p, let o)?: offsets.release(p, offset: o)
            case .holds(var h)?: release(&h)
            case .user(let key)?:
                if let n = pendingUserLetters[key] {
                    pendingUserLetters[key] = n > 1 ? n - 1 : nil
                    // The next checkpoint stores the user settled.
                    if n <= 1 { _ = users.modify(key) { entry in markForCheckpoint(key, &entry) } }
                }
            case .none?, nil: break
            }
            publishOffsets()
        }
    }

    /// Durable mode: waits until every dead letter numbered below `seq` is written, up
    /// to `timeoutMs`. Returns whether they all were.
    func waitForDeadLetters(below seq: UInt64, timeoutMs: Int64) -> Bool {
        // Real time, not the engine's clock: this waits for another thread's work.
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(max(0, timeoutMs)) * 1_000_000
        while true {
            let done = lock.withLock { undeliveredDeadLetters.keys.allSatisfy { $0 >= seq } }
            if done { return true }
            if DispatchTime.now().uptimeNanoseconds >= deadline { return false }
            Thread.sleep(forTimeInterval: 0.005)
        }
    }
}
