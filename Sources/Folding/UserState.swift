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

    public init() {}
}
