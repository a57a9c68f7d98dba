/// The Foldspace user type.
public enum UserType: String, Sendable, Equatable, CaseIterable {
    case anonymous = "ANONYMOUS"
    case lead = "LEAD"
    case user = "USER"

    public init?(trait: String) {
        switch trait.uppercased() {
        case "ANONYMOUS": self = .anonymous
        case "LEAD": self = .lead
        case "USER": self = .user
        default: return nil
        }
    }
}

/// A set of the most recent distinct values, by stamp, holding at most `limit`.
public struct RecentSet<Value: Hashable & Sendable>: Sendable, Equatable {
    /// Newest first.
    public private(set) var items: [Latest<Value>] = []

    public init() {}

    /// Records `value` at `stamp`; returns whether the set (or its order) changed.
    public mutating func insert(_ value: Value, at stamp: Stamp, limit: Int) -> Bool {
        if let i = items.firstIndex(where: { $0.value == value }) {
            guard items[i].stamp < stamp else { return false }
            items.remove(at: i)
        } else if items.count >= limit, let oldest = items.last, stamp < oldest.stamp {
            return false  // older than everything kept: it would be dropped at once
        }
        let at = items.firstIndex { $0.stamp < stamp } ?? items.count
        items.insert(Latest(value: value, stamp: stamp), at: at)
        if items.count > limit { items.removeLast(items.count - limit) }
        return true
    }
}

/// A product association as Foldspace stores it.
public struct ProductKey: Hashable, Sendable {
    public var product: String
    public var environment: Int64?
}

/// One visit: the first and last event time of a run of events with no gap longer than
/// the visit gap.
public struct VisitSpan: Sendable, Equatable {
    public var start: Int64
    public var end: Int64
}

/// Where a user's events from one source partition were last applied: the message's
/// offset, the call's index within the message (the calls of a batch envelope share its
/// offset), and the message's Kafka time in whole seconds (0: unknown; seconds keep the
/// inline position at 20 bytes, and telling a recreated topic apart needs no more).
public struct AppliedPosition: Sendable, Equatable {
    /// A stable id of the source partition (a hash of topic and partition).
    public var source: UInt32
    public var offset: Int64
    public var call: UInt32
    public var kafkaSeconds: UInt32

    public init(source: UInt32, offset: Int64, call: UInt32 = 0, kafkaSeconds: UInt32) {
        self.source = source
        self.offset = offset
        self.call = call
        self.kafkaSeconds = kafkaSeconds
    }

    /// As the engine knows it: the Kafka time in milliseconds (negative: unknown).
    public init(source: UInt32, offset: Int64, call: UInt32 = 0, kafkaMs: Int64 = -1) {
        self.init(source: source, offset: offset, call: call, kafkaSeconds: kafkaMs < 0 ? 0 : UInt32(clamping: kafkaMs / 1000))
    }
}

public struct KeyEventCount: Sendable, Equatable {
    public var index: UInt8
    public var count: UInt32
}
