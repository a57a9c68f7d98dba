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

    /// The ``offset`` of a routed call's stamp: its record's offset, then its index in the
    /// record, in one number (the offset times 2^20, plus the index, which saturates
    /// there). A record of routed calls holds calls of many source messages under one
    /// offset: with that offset alone, of two calls for one user at the same event time the
    /// first kept the register, where each in a record of its own, the later won. For
    /// calls read from `<group>-repartition` only (the engine passes it as the fold's
    /// `tieBreak`): builds before it, which may share a group's state while instances
    /// restart one by one, stamp source calls with their offsets, and a scaled stamp would
    /// win every tie against theirs. An offset beyond 2^43 (no partition reaches it)
    /// saturates, and the record's calls tie again.
    public static func position(offset: Int64, call: UInt32) -> Int64 {
        let (scaled, overflow) = offset.multipliedReportingOverflow(by: 1 << 20)
        guard !overflow else { return offset < 0 ? .min : .max }
        return scaled | Int64(min(call, (1 << 20) - 1))
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
