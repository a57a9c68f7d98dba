/// When consuming pauses for capacity, with hysteresis: it pauses above either limit
/// (users awaiting delivery, bytes of dead letters not yet written) and resumes only once
/// both are below 80 % of theirs, so that it does not flap at the edge.
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
        } else if paused && dirtyUsers < maxDirtyUsers * 8 / 10 && backlog < maxDeadLetterBacklogBytes / 10 * 8 {
            paused = false
        }
        return paused
    }
}
