/// When consuming pauses for capacity, with hysteresis: it pauses above either limit
/// (users awaiting delivery, bytes of dead letters not yet written) and resumes only once
/// both are below 80 % of theirs (and at least at 0, for limits so small that 80 % of
/// them rounds down to nothing), so that it does not flap at the edge.
public struct Backpressure: Sendable, Equatable {
    public var maxDirtyUsers: Int
    public var maxDeadLetterBacklogBytes: Int
    public private(set) var paused = false

    public init(maxDirtyUsers: Int, maxDeadLetterBacklogBytes: Int) {
        self.maxDirtyUsers = maxDirtyUsers
        self.maxDeadLetterBacklogBytes = maxDeadLetterBacklogBytes
    }

    /// Takes the current load into account; returns whether consuming is to be paused.
    public mutating func update(dirtyUsers: Int, deadLetterBacklogBytes backlog: Int) -> Bool {
        if dirtyUsers > maxDirtyUsers || backlog > maxDeadLetterBacklogBytes {
            paused = true
        } else if paused && dirtyUsers < max(1, Self.eightTenths(maxDirtyUsers))
            && backlog < max(1, maxDeadLetterBacklogBytes / 10 * 8)
        {
            paused = false
        }
        return paused
    }

    /// `n * 8 / 10` without the product (a limit near Int.max would overflow it).
    static func eightTenths(_ n: Int) -> Int { n / 10 * 8 + n % 10 * 8 / 10 }
}
