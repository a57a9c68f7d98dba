import Foundation

/// Which decode chunks of a batch are claimed and which are done, shared by the poll
/// thread and the decode helpers.
final class ChunkProgress: @unchecked Sendable {
    private let condition = NSCondition()
    private var next = 0
    private var done: [Bool]

    init(chunks: Int) { done = Array(repeating: false, count: chunks) }

    /// The next chunk nobody has taken, now taken by the caller.
    func claim() -> Int? {
        condition.lock()
        defer { condition.unlock() }
        guard next < done.count else { return nil }
        next += 1
        return next - 1
    }

    func finish(_ c: Int) {
        condition.lock()
        done[c] = true
        condition.broadcast()
        condition.unlock()
    }

    func isDone(_ c: Int) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        return done[c]
    }

    /// Waits until chunk `c` is done.
    func wait(for c: Int) {
        condition.lock()
        while !done[c] { condition.wait() }
        condition.unlock()
    }
}
