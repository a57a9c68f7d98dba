import Foundation

/// How many users are dirty and since when, in buckets of ``bucketMs``: the oldest
/// dirty user's age without walking every user. Updated on every dirty/clean transition.
struct DirtyTally {
    static let bucketMs: Int64 = 100
    private(set) var count = 0
    /// Dirty users per bucket of their `dirtySinceMs`.
    private var buckets: [Int64: Int] = [:]

    mutating func became(since ms: Int64) {
        count += 1
        buckets[Self.bucket(ms), default: 0] += 1
    }

    mutating func cleared(since ms: Int64) {
        count -= 1
        let k = Self.bucket(ms)
        if let n = buckets[k], n > 1 { buckets[k] = n - 1 } else { buckets[k] = nil }
    }

    mutating func moved(from old: Int64, to new: Int64) {
        guard Self.bucket(old) != Self.bucket(new) else { return }
        cleared(since: old)
        became(since: new)
    }

    /// The start of the oldest bucket holding a dirty user: at most ``bucketMs`` before
    /// the oldest user's `dirtySinceMs`.
    var oldestSinceMs: Int64? { buckets.keys.min().map { $0 * Self.bucketMs } }

    private static func bucket(_ ms: Int64) -> Int64 { ms >= 0 ? ms / bucketMs : (ms - bucketMs + 1) / bucketMs }
}
