/// The Segment-spec call types. Anything else in `type` is counted and skipped.
public enum EventType: UInt8, Sendable, CaseIterable {
    case identify, track, page, screen, group, alias
}

/// One decoded Segment call: only the fields the Foldspace mapping reads, already
/// type-checked, with the identity and event time resolved per the input contract.
public struct SegmentEvent: Sendable, Equatable {
    public var type: EventType
    /// `userId`, else `anonymousId`, as a string.
    public var identity: String
    /// Whether `userId` (not only `anonymousId`) was present.
    public var hasUserId: Bool
    /// The other identity the call links to ``identity`` (docs/identity.md): an alias's
    /// `previousId`, else the `anonymousId` beside a `userId`. nil when the call names no
    /// other identity (or one equal to ``identity``, or over 255 characters).
    public var linkedId: String?
    /// Event time in epoch milliseconds from the payload, or `nil` when the payload
    /// carries none (or only an implausible one): the caller then uses the Kafka time.
    public var timeMs: Int64?
    /// A payload time was present but implausible (far future, or before 2000).
    public var timeImplausible: Bool
    /// Trait dates (`leadDate`, `signUpDate`, `createdAt`) dropped as implausible by the
    /// same rule: one bad value would otherwise stay in the user's earliest-date register.
    public var implausibleTraitDates: UInt8
    /// `event` of a track call.
    public var eventName: String?
    /// `groupId` of a group call.
    public var groupId: String?
    /// `context.groupId`.
    public var contextGroupId: String?
    /// `context.timezone`.
    public var timezone: String?
    /// `context.location`.
    public var location: Location?
    /// `context.product`, else `properties.product`.
    public var product: ProductRef?
    /// The user's traits: identify `traits` merged over `context.traits`.
    public var traits: Traits?

    public init(type: EventType, identity: String, hasUserId: Bool) {
        self.type = type
        self.identity = identity
        self.hasUserId = hasUserId
        // `linkedId` is not assigned here: it starts nil as an optional `var` does. Assigned
        // explicitly, the optimized init built the event through five outlined copies of the
        // whole struct (a retain and release of every field each time): +630 instructions per
        // event in scripts/callgrind.sh's decode.
        self.timeMs = nil
        self.timeImplausible = false
        self.implausibleTraitDates = 0
    }
}

/// A place, from `context.location` or `traits.address`.
public struct Location: Sendable, Equatable {
    public var country: String?
    public var region: String?
    public var city: String?
    public var postalCode: String?
    public var countryCode: String?

    public init(
        country: String? = nil, region: String? = nil, city: String? = nil,
        postalCode: String? = nil, countryCode: String? = nil
    ) {
        self.country = country
        self.region = region
        self.city = city
        self.postalCode = postalCode
        self.countryCode = countryCode
    }

    public var isEmpty: Bool {
        country == nil && region == nil && city == nil && postalCode == nil && countryCode == nil
    }
}

/// A product association: a product code and its environment (1 prod, 2 stage, 3 test,
/// 4 dev). The environment is range-checked by the projector, not here.
public struct ProductRef: Sendable, Equatable {
    public var product: String
    public var environment: Int64?

    public init(product: String, environment: Int64?) {
        self.product = product
        self.environment = environment
    }
}

/// The user traits the mapping reads. Dates are epoch milliseconds.
public struct Traits: Sendable, Equatable {
    public var userType: String?
    public var email: String?
    public var name: String?
    public var firstName: String?
    public var lastName: String?
    public var role: String?
    public var title: String?
    public var phone: String?
    public var timezone: String?
    public var leadDate: Int64?
    public var signUpDate: Int64?
    public var createdAt: Int64?
    public var subscriptionId: String?
    public var address: Location?
    public var avatar: String?
    public var image: String?
    public var pqlScore: Double?
    /// Traits named in the `custom_attributes` configuration, as compact JSON text.
    public var custom: [CustomTrait]

    public init() { custom = [] }

    public var isEmpty: Bool {
        userType == nil && email == nil && name == nil && firstName == nil && lastName == nil && role == nil
            && title == nil && phone == nil && timezone == nil && leadDate == nil && signUpDate == nil
            && createdAt == nil && subscriptionId == nil && address == nil && avatar == nil && image == nil
            && pqlScore == nil && custom.isEmpty
    }

    /// Fills every field this value lacks from `other` (used to put identify `traits`
    /// over `context.traits`).
    /// Drops trait dates that are not plausible event times when the wall clock reads
    /// `nowMs` (``Timestamp/isPlausible(_:nowMs:)``); returns how many.
    public mutating func dropImplausibleDates(nowMs: Int64) -> UInt8 {
        var n: UInt8 = 0
        if let v = leadDate, !Timestamp.isPlausible(v, nowMs: nowMs) {
            leadDate = nil
            n += 1
        }
        if let v = signUpDate, !Timestamp.isPlausible(v, nowMs: nowMs) {
            signUpDate = nil
            n += 1
        }
        if let v = createdAt, !Timestamp.isPlausible(v, nowMs: nowMs) {
            createdAt = nil
            n += 1
        }
        return n
    }

    public mutating func fillMissing(from other: Traits) {
        userType = userType ?? other.userType
        email = email ?? other.email
        name = name ?? other.name
        firstName = firstName ?? other.firstName
        lastName = lastName ?? other.lastName
        role = role ?? other.role
        title = title ?? other.title
        phone = phone ?? other.phone
        timezone = timezone ?? other.timezone
        leadDate = leadDate ?? other.leadDate
        signUpDate = signUpDate ?? other.signUpDate
        createdAt = createdAt ?? other.createdAt
        subscriptionId = subscriptionId ?? other.subscriptionId
        address = address ?? other.address
        avatar = avatar ?? other.avatar
        image = image ?? other.image
        pqlScore = pqlScore ?? other.pqlScore
        for c in other.custom where !custom.contains(where: { $0.name == c.name }) {
            custom.append(c)
        }
    }
}

/// One configured custom trait and its value as compact JSON text.
public struct CustomTrait: Sendable, Equatable {
    public var name: String
    public var json: String

    public init(name: String, json: String) {
        self.name = name
        self.json = json
    }
}
