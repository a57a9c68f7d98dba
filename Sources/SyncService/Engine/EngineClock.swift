import Foundation

/// Clocks, injectable for tests: a monotonic one for timers and the wall clock for
/// event-time plausibility and `Retry-After` dates.
public struct EngineClock: Sendable {
    public var monotonicMs: @Sendable () -> Int64
    public var epochMs: @Sendable () -> Int64

    public init(monotonicMs: @escaping @Sendable () -> Int64, epochMs: @escaping @Sendable () -> Int64) {
        self.monotonicMs = monotonicMs
        self.epochMs = epochMs
    }

    public static let system = EngineClock(
        monotonicMs: { Int64(DispatchTime.now().uptimeNanoseconds / 1_000_000) },
        epochMs: { Int64(Date().timeIntervalSince1970 * 1000) })
}
