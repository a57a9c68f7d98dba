import Foundation

/// Notices that the whole process was stopped (SIGSTOP, a frozen cgroup) for about as
/// long as the consumer group's session timeout: the group may then have given its
/// partitions to another instance, which has sent since what this one still holds.
/// (A paused VM whose clock stops with it is not seen: no clock inside can tell.)
///
/// A thread that does nothing but sleep 100 ms is late by seconds only when the
/// process did not run. Each round it records when it ran; the flusher sends only while
/// that is recent (``allowsSending``), so after a stop nothing leaves before the watch
/// has looked; and a gap of the limit (the session timeout less a heartbeat interval and
/// a margin) or more is a freeze (``hasFrozen``):
/// the daemon stops sending for good and exits 1 to rejoin, as a fenced one does.
final class FreezeWatch: @unchecked Sendable {
    private let lock = NSLock()
    private var lastTickNs: UInt64
    private var frozen = false
    private var running = true
    private let limitNs: UInt64
    private let onFreeze: @Sendable (Double) -> Void

    init(limitMs: Int64, onFreeze: @escaping @Sendable (Double) -> Void) {
        limitNs = UInt64(max(1_000, limitMs)) * 1_000_000
        lastTickNs = DispatchTime.now().uptimeNanoseconds
        self.onFreeze = onFreeze
    }

    func start() {
        let t = Thread { [self] in
            while lock.withLock({ running }) {
                Thread.sleep(forTimeInterval: 0.1)
                let now = DispatchTime.now().uptimeNanoseconds
                let gap: UInt64? = lock.withLock {
                    let gap = now &- lastTickNs
                    lastTickNs = now
                    guard gap >= limitNs, !frozen else { return nil }
                    frozen = true
                    return gap
                }
                if let gap { onFreeze(Double(gap) / 1e9) }
            }
        }
        t.name = "freeze-watch"
        t.start()
    }

    func stop() { lock.withLock { running = false } }

    /// The watch ran within the last second and saw no freeze.
    var allowsSending: Bool {
        let now = DispatchTime.now().uptimeNanoseconds
        return lock.withLock { !frozen && now &- lastTickNs < 1_000_000_000 }
    }

    var hasFrozen: Bool { lock.withLock { frozen } }
}
