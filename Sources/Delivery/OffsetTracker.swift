/// Decides which source offsets may be committed, per partition.
///
/// In memory mode, offset O of a partition is committable once every user touched by
/// events up to O is settled (acknowledged by Foldspace or dead-lettered). Each dirty
/// user holds, per partition, the lowest offset it has not settled ("holds"); the
/// committable offset is the lowest hold, or one past the highest offset seen when
/// nothing is held. Commits only move forward.
///
/// Partitions are small integers (``PartitionIndex``) so that holds stay cheap to keep
/// in each user's entry.
public struct OffsetTracker: Sendable {
    public typealias PartitionIndex = Int32

    struct Partition: Sendable {
        var highestSeen: Int64 = -1
        /// Refcounts of held offsets; several users can hold one offset (a batch
        /// envelope carries many users in one message).
        var holds: [Int64: Int32] = [:]
        var heap = MinHeap<Int64>()
        var lastReported: Int64 = -1
        var active = true
    }

    var partitions: [Partition] = []

    public init() {}

    /// Registers a partition (on assignment) and returns its index; a partition seen
    /// before gets its old index back with fresh state.
    public mutating func activate(_ index: PartitionIndex) {
        while partitions.count <= Int(index) { partitions.append(Partition()) }
        partitions[Int(index)] = Partition()
    }

    /// Drops a partition's state (after revocation).
    public mutating func deactivate(_ index: PartitionIndex) {
        guard Int(index) < partitions.count else { return }
        partitions[Int(index)] = Partition()
        partitions[Int(index)].active = false
    }

    /// An offset was consumed from the partition (whatever it held).
    @inline(__always)
    public mutating func saw(_ index: PartitionIndex, offset: Int64) {
        let i = Int(index)
        if offset > partitions[i].highestSeen { partitions[i].highestSeen = offset }
    }

    /// A user starts holding `offset`.
    public mutating func hold(_ index: PartitionIndex, offset: Int64) {
        let i = Int(index)
        if let n = partitions[i].holds[offset] {
            partitions[i].holds[offset] = n + 1
        } else {
            partitions[i].holds[offset] = 1
            partitions[i].heap.push(offset, at: offset)
        }
    }

    /// A user releases its hold on `offset`.
    ///
    /// Released offsets leave the heap lazily, when ``committable(_:)`` meets them at its
    /// top; durable mode never asks for it (checkpoints commit what was consumed), so the
    /// heap is also rebuilt from the live holds whenever it holds more than twice as many
    /// entries as they are (plus a little): it stays O(holds), at O(1) amortized a release.
    public mutating func release(_ index: PartitionIndex, offset: Int64) {
        let i = Int(index)
        guard i < partitions.count, let n = partitions[i].holds[offset] else { return }
        if n <= 1 { partitions[i].holds[offset] = nil } else { partitions[i].holds[offset] = n - 1 }
        if partitions[i].heap.count > 2 * partitions[i].holds.count + Self.heapSlack {
            var heap = MinHeap<Int64>()
            for o in partitions[i].holds.keys { heap.push(o, at: o) }
            partitions[i].heap = heap
        }
    }

    /// Released entries the heap may carry beyond twice the live holds before a rebuild.
    static let heapSlack = 32

    /// The offset to commit for a partition (the next one to read), or nil if nothing
    /// was consumed yet.
    public mutating func committable(_ index: PartitionIndex) -> Int64? {
        let i = Int(index)
        guard i < partitions.count, partitions[i].active, partitions[i].highestSeen >= 0 else { return nil }
        while let top = partitions[i].heap.peek, partitions[i].holds[top.key] == nil {
            _ = partitions[i].heap.pop()
        }
        return partitions[i].heap.peek?.key ?? (partitions[i].highestSeen + 1)
    }

    /// Committable offsets that moved forward since the last call, by partition index.
    public mutating func advanced() -> [(PartitionIndex, Int64)] {
        var out: [(PartitionIndex, Int64)] = []
        for i in partitions.indices {
            guard let c = committable(PartitionIndex(i)), c > partitions[i].lastReported else { continue }
            partitions[i].lastReported = c
            out.append((PartitionIndex(i), c))
        }
        return out
    }

    /// One past the highest offset consumed from the partition (the position to commit
    /// once everything consumed is durable), or nil if nothing was consumed.
    public func consumedPosition(_ index: PartitionIndex) -> Int64? {
        let i = Int(index)
        guard i < partitions.count, partitions[i].active, partitions[i].highestSeen >= 0 else { return nil }
        return partitions[i].highestSeen + 1
    }

    /// Offsets still held in a partition.
    public func holdCount(_ index: PartitionIndex) -> Int {
        Int(index) < partitions.count ? partitions[Int(index)].holds.count : 0
    }
}

/// A user's holds: at most one per partition, the lowest unsettled offset there.
/// Nearly every user lives on one partition, so the first hold is stored inline.
public struct Holds: Sendable, Equatable {
    // The first hold inline (offset -1: none), any others (a user whose events came from
    // several partitions) in an array: 24 bytes for the common case.
    private var firstOffset: Int64 = -1
    private var firstPartition: OffsetTracker.PartitionIndex = 0
    private var more: [(OffsetTracker.PartitionIndex, Int64)] = []

    public init() {}

    public static func == (a: Holds, b: Holds) -> Bool {
        a.firstOffset == b.firstOffset && (a.firstOffset < 0 || a.firstPartition == b.firstPartition)
            && a.more.elementsEqual(b.more, by: { $0 == $1 })
    }

    public var isEmpty: Bool { firstOffset < 0 }

    /// Adds a hold on `offset` unless the user already holds an earlier offset of that
    /// partition. Returns whether the tracker must record a new hold.
    public mutating func add(_ p: OffsetTracker.PartitionIndex, _ offset: Int64) -> Bool {
        if firstOffset >= 0 {
            if firstPartition == p { return false }
            if more.contains(where: { $0.0 == p }) { return false }
            more.append((p, offset))
            return true
        }
        firstPartition = p
        firstOffset = offset
        return true
    }

    public func forEach(_ body: (OffsetTracker.PartitionIndex, Int64) -> Void) {
        if firstOffset >= 0 { body(firstPartition, firstOffset) }
        for m in more { body(m.0, m.1) }
    }

    public mutating func removeAll() {
        firstOffset = -1
        more = []
    }
}
