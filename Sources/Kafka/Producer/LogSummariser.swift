import Foundation

/// Turns a stream of repeated log-worthy events into one line per key per interval, with
/// counts, so that a broker outage failing every message logs a line a minute instead of
/// one per message. Pure: the caller passes the time (an injected clock), so tests drive it.
///
/// The first event of a key logs at once (`count` 1). Later events inside the interval are
/// counted silently; the first event after the interval, or ``due(nowMs:)`` called
/// periodically, reports how many happened since the last line.
public struct RateSummary: Sendable {
    public let intervalMs: Int64
    private var windows: [String: (startMs: Int64, suppressed: Int)] = [:]

    public init(intervalMs: Int64) { self.intervalMs = max(1, intervalMs) }

    /// One event for `key`: the number of events this line stands for (this one
    /// included) when it should be logged now, nil when it is counted for later.
    public mutating func note(_ key: String, nowMs: Int64) -> Int? {
        if var w = windows[key] {
            if nowMs.subtractingReportingOverflow(w.startMs).partialValue >= intervalMs || nowMs < w.startMs {
                let n = w.suppressed == Int.max ? Int.max : w.suppressed + 1
                windows[key] = (nowMs, 0)
                return n
            }
            if w.suppressed < Int.max { w.suppressed += 1 }
            windows[key] = w
            return nil
        }
        windows[key] = (nowMs, 0)
        return 1
    }

    /// Keys whose interval has passed with events counted but not logged, and how many;
    /// their windows restart empty. Keys with nothing pending are forgotten, so that the
    /// next event logs at once again.
    public mutating func due(nowMs: Int64) -> [(key: String, count: Int)] {
        var out: [(key: String, count: Int)] = []
        for (k, w) in windows where nowMs.subtractingReportingOverflow(w.startMs).partialValue >= intervalMs || nowMs < w.startMs {
            if w.suppressed > 0 {
                out.append((k, w.suppressed))
                windows[k] = (nowMs, 0)
            } else {
                windows[k] = nil
            }
        }
        return out.sorted { $0.key < $1.key }
    }
}

/// A ``RateSummary`` behind a lock, on the monotonic clock unless one is injected.
public final class LogSummariser: @unchecked Sendable {
    private let lock = NSLock()
    private var summary: RateSummary
    private let clock: @Sendable () -> Int64

    public init(intervalMs: Int64 = 60_000, clock: @escaping @Sendable () -> Int64 = LogSummariser.monotonicMs) {
        summary = RateSummary(intervalMs: intervalMs)
        self.clock = clock
    }

    public func note(_ key: String) -> Int? {
        let now = clock()
        return lock.withLock { summary.note(key, nowMs: now) }
    }

    public func due() -> [(key: String, count: Int)] {
        let now = clock()
        return lock.withLock { summary.due(nowMs: now) }
    }

    public static let monotonicMs: @Sendable () -> Int64 = {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) &* 1000 &+ Int64(ts.tv_nsec / 1_000_000)
    }
}
