/// When a value was written: event time first, then the source position, so that a
/// late or replayed old event never overwrites a newer value and ties are decided the
/// same way on every replay.
public struct Stamp: Comparable, Sendable, Hashable {
    public var timeMs: Int64
    public var offset: Int64

    public init(timeMs: Int64, offset: Int64) {
        self.timeMs = timeMs
        self.offset = offset
    }

    public static func < (a: Stamp, b: Stamp) -> Bool {
        a.timeMs != b.timeMs ? a.timeMs < b.timeMs : a.offset < b.offset
    }
}

/// A last-writer-wins register.
public struct Latest<Value: Equatable & Sendable>: Equatable, Sendable {
    public var value: Value
    public var stamp: Stamp

    /// Writes `value` if `stamp` is newer; returns whether the value changed.
    @inline(__always)
    public static func write(_ reg: inout Latest<Value>?, _ value: Value, at stamp: Stamp) -> Bool {
        if let r = reg {
            guard r.stamp < stamp else { return false }
            reg = Latest(value: value, stamp: stamp)
            return r.value != value
        }
        reg = Latest(value: value, stamp: stamp)
        return true
    }
}
