import Events

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
            return false // older than everything kept: it would be dropped at once
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

/// Everything folded for one user. Every field is bounded: the state does not grow with
/// the number of events.
public struct UserState: Sendable, Equatable {
    public var explicitUserType: Latest<UserType>?
    /// A `userId` was seen for this identity.
    public var sawUserId = false
    public var email: Latest<String>?
    /// The raw display name (`name`, or `firstName lastName`); fitted at projection.
    public var name: Latest<String>?
    public var role: Latest<String>?
    public var phone: Latest<String>?
    public var timezone: Latest<String>?
    public var image: Latest<String>?
    public var leadDate: Int64?
    public var signUpDate: Int64?
    public var firstVisitMs: Int64 = .max
    public var lastSeenMs: Int64 = .min
    public var country: Latest<String>?
    public var region: Latest<String>?
    public var city: Latest<String>?
    public var postalCode: Latest<String>?
    public var countryCode: Latest<String>?
    public var lastSubscription: Latest<String>?
    public var subscriptions = RecentSet<String>()
    public var products = RecentSet<ProductKey>()
    public var custom: [Latest<CustomTrait>] = []
    public var pqlTrait: Latest<Double>?

    /// Visits counted so far, and the most recent spans (for late events).
    public var visits: UInt32 = 0
    public var spans: [VisitSpan] = []
    /// Bit k: the user was active on UTC day `activeDayAnchor - k`.
    public var activeDays: UInt64 = 0
    public var activeDayAnchor: Int32 = .min
    /// Counts of configured key events: (index into the configuration, count).
    public var keyEventCounts: [KeyEventCount] = []

    /// The last applied source position, so a replayed event is skipped.
    public var appliedSource: UInt32 = 0
    public var appliedOffset: Int64 = -1

    public static let maxSpans = 8
    public static let subscriptionLimit = 100
    public static let productLimit = 20

    public init() {}

    /// An estimate of the bytes this state occupies: the struct itself plus the heap
    /// storage of its arrays and of strings too long to be stored inline (over 15 UTF-8
    /// bytes). Used by tests and the benchmark to show the state is bounded.
    public var approximateBytes: Int {
        func str(_ s: String?) -> Int { guard let s, s.utf8.count > 15 else { return 0 }; return 32 + s.utf8.count }
        func arr<T>(_ a: [T]) -> Int { a.capacity == 0 ? 0 : 32 + a.capacity * MemoryLayout<T>.stride }
        var n = MemoryLayout<UserState>.size
        n += str(email?.value) + str(name?.value) + str(role?.value) + str(phone?.value) + str(timezone?.value)
        n += str(image?.value) + str(country?.value) + str(region?.value) + str(city?.value) + str(postalCode?.value)
        n += str(countryCode?.value) + str(lastSubscription?.value)
        n += arr(subscriptions.items) + subscriptions.items.reduce(0) { $0 + str($1.value) }
        n += arr(products.items) + products.items.reduce(0) { $0 + str($1.value.product) }
        n += arr(custom) + custom.reduce(0) { $0 + str($1.value.name) + str($1.value.json) }
        n += arr(spans) + arr(keyEventCounts)
        return n
    }

    /// Whether the event at `offset` of `source` is already folded into this state.
    @inline(__always)
    public func hasApplied(source: UInt32, offset: Int64) -> Bool {
        appliedOffset >= 0 && source == appliedSource && offset <= appliedOffset
    }
}

public struct KeyEventCount: Sendable, Equatable {
    public var index: UInt8
    public var count: UInt32
}
