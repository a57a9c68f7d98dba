/// Foldspace's documented limits for the update body, in one place.
public enum FoldspaceLimits {
    public static let identifyId = 255
    public static let email = 255
    public static let name = 255
    public static let role = 255
    public static let phone = 20
    public static let timezone = 50
    public static let subscriptionIdentifier = 255
    public static let subscriptionCount = 100
    public static let locationField = 128
    public static let countryCode = 8
    public static let productCode = 16
    public static let productCount = 20
    public static let environments: ClosedRange<Int64> = 1...4
    public static let image = 255
    public static let pqlScore: ClosedRange<Double> = 0...100
}

/// What the projector did to make a value fit, by field and action. The counts become
/// `foldspace_sync_adjustments_total{field,action}`.
public struct Adjustments: Sendable, Equatable {
    public enum Action: String, Sendable, CaseIterable {
        case truncated, omitted, transliterated
        /// Cut when folded, to a bound the API can still use (the state stays small).
        case capped
    }

    public private(set) var counts: [String: Int] = [:]

    public init() {}

    public mutating func record(_ field: String, _ action: Action) {
        counts["\(field)|\(action.rawValue)", default: 0] += 1
    }

    public func count(_ field: String, _ action: Action) -> Int {
        counts["\(field)|\(action.rawValue)"] ?? 0
    }
}

/// Builds the JSON body Foldspace gets for a user "now", with every documented
/// constraint enforced. Identical state (and the same day, for the PQL score's decay)
/// gives identical bytes, so bodies can be compared by hash for no-op suppression.
public struct Projector: Sendable {
    public let config: FoldConfig

    public init(config: FoldConfig = FoldConfig()) {
        self.config = config
    }

    /// The body for `identifyId`, or `nil` when the id itself cannot be sent (empty or
    /// over 255 characters: the decoder already rejects those). `nowMs` is the wall
    /// clock, for the PQL score's recency.
    public func body(identifyId: String, state s: UserState, nowMs: Int64 = 0, adjustments: inout Adjustments) -> [UInt8]? {
        guard !identifyId.isEmpty, identifyId.unicodeScalars.count <= FoldspaceLimits.identifyId else { return nil }
        var w = JSONWriter()
        w.beginObject()
        w.field("userType", userType(s).rawValue)
        w.field("identifyId", identifyId)
        if let v = s.email?.value { fitOrOmit(&w, "email", v, FoldspaceLimits.email, &adjustments) }
        if let raw = s.name?.value {
            // Folded names are fitted already (a state restored from an older record may
            // hold a raw one).
            let fitted = Folder.fitName(raw, &adjustments)
            if fitted.isEmpty { adjustments.record("name", .omitted) } else { w.field("name", fitted) }
        }
        if let v = s.role?.value { truncate(&w, "role", v, FoldspaceLimits.role, &adjustments) }
        if let v = s.phone?.value { fitOrOmit(&w, "phone", v, FoldspaceLimits.phone, &adjustments) }
        if let v = s.timezone?.value { fitOrOmit(&w, "timezone", v, FoldspaceLimits.timezone, &adjustments) }
        if let v = s.leadDate { w.field("leadDate", v) }
        if let v = s.signUpDate { w.field("signUpDate", v) }
        if s.firstVisitMs != .max { w.field("firstVisitDate", s.firstVisitMs) }
        if s.lastSeenMs != .min { w.field("lastSeenDate", s.lastSeenMs) }
        if let v = s.lastSubscription?.value {
            fitOrOmit(&w, "lastSubscriptionIdentifier", v, FoldspaceLimits.subscriptionIdentifier, &adjustments)
        }
        if !s.subscriptions.items.isEmpty {
            var ids: [String] = []
            for item in s.subscriptions.items.prefix(FoldspaceLimits.subscriptionCount) {
                if item.value.unicodeScalars.count <= FoldspaceLimits.subscriptionIdentifier {
                    ids.append(item.value)
                } else {
                    adjustments.record("allSubscriptionIdentifiers", .omitted)
                }
            }
            if !ids.isEmpty {
                w.key("allSubscriptionIdentifiers")
                w.beginArray()
                for id in ids { w.value(id) }
                w.endArray()
            }
        }
        location(&w, s, &adjustments)
        customAttributes(&w, s)
        products(&w, s, &adjustments)
        if config.sendNumberOfVisits, s.visits > 0 {
            w.field("numberOfVisits", Int64(min(s.visits, UInt32(Int32.max))))
        }
        if let v = s.image?.value { fitOrOmit(&w, "image", v, FoldspaceLimits.image, &adjustments) }
        if let score = pqlScore(s, nowMs: nowMs) { w.field("pqlScore", score) }
        w.endObject()
        return w.bytes
    }

    /// The user type rule: the latest explicit `traits.userType` wins, except that a
    /// derived value never downgrades USER; else USER once a `userId` was seen, LEAD
    /// with a lead date, else ANONYMOUS.
    public func userType(_ s: UserState) -> UserType {
        let derived: UserType = s.sawUserId ? .user : (s.leadDate != nil ? .lead : .anonymous)
        return s.explicitUserType?.value ?? derived
    }

    /// The score per the configured source, or nil when there is none to send.
    public func pqlScore(_ s: UserState, nowMs: Int64) -> Double? {
        switch config.pql.source {
        case .none: return nil
        case .trait: return s.pqlTrait.map { ($0.value * 10).rounded() / 10 }
        case .model:
            guard s.lastSeenMs != .min else { return nil }
            let today = Int64(floorDiv(nowMs, 86_400_000))
            var days28 = 0
            if s.activeDayAnchor != .min {
                for k in 0..<64 where s.activeDays & (1 << UInt64(k)) != 0 {
                    let day = Int64(s.activeDayAnchor) - Int64(k)
                    if today - day >= 0 && today - day < 28 { days28 += 1 }
                }
            }
            var events: [(count: Int, weight: Double, cap: Int)] = []
            for c in s.keyEventCounts where Int(c.index) < config.keyEvents.count {
                let e = config.keyEvents[Int(c.index)]
                events.append((Int(c.count), e.weight, e.cap))
            }
            // Whole days since last seen, so the score (and the body) moves once a day.
            let daysSince = Double(max(0, today - Int64(floorDiv(s.lastSeenMs, 86_400_000))))
            return config.pql.score(visits: Int(s.visits), activeDays28: days28, keyEvents: events, daysSinceLastSeen: daysSince)
        }
    }

    private func location(_ w: inout JSONWriter, _ s: UserState, _ adjustments: inout Adjustments) {
        // countryCode: the explicit one unless a newer country name says otherwise.
        var code = s.countryCode?.value
        if let country = s.country, s.countryCode == nil || s.countryCode!.stamp < country.stamp,
            let derived = CountryCodes.code(for: country.value)
        {
            code = derived
        }
        guard s.country != nil || s.region != nil || s.city != nil || s.postalCode != nil || code != nil else { return }
        w.key("location")
        w.beginObject()
        if let v = s.country?.value { truncate(&w, "country", v, FoldspaceLimits.locationField, &adjustments, label: "location.country") }
        if let v = s.region?.value { truncate(&w, "region", v, FoldspaceLimits.locationField, &adjustments, label: "location.region") }
        if let v = s.city?.value { truncate(&w, "city", v, FoldspaceLimits.locationField, &adjustments, label: "location.city") }
        if let v = s.postalCode?.value {
            truncate(&w, "postalCode", v, FoldspaceLimits.locationField, &adjustments, label: "location.postalCode")
        }
        if let v = code { fitOrOmit(&w, "countryCode", v, FoldspaceLimits.countryCode, &adjustments, label: "location.countryCode") }
        w.endObject()
    }

    /// Configured traits, in configuration order. Foldspace documents each value as an
    /// object, so objects go as they are and any other value as `{"value": …}`.
    private func customAttributes(_ w: inout JSONWriter, _ s: UserState) {
        let present = config.customAttributes.compactMap { name in s.custom.first { $0.value.name == name }?.value }
        guard !present.isEmpty else { return }
        w.key("customAttributes")
        w.beginObject()
        for c in present {
            w.key(c.name)
            if c.json.hasPrefix("{") {
                w.raw(c.json)
            } else {
                w.beginObject()
                w.key("value")
                w.raw(c.json)
                w.endObject()
            }
        }
        w.endObject()
    }

    /// Lengths are counted in Unicode code points, as JSON Schema's `maxLength` does.
    /// Values that lose their meaning when cut (emails, phone numbers, URLs, zone
    /// names, codes) are omitted when too long.
    private func fitOrOmit(
        _ w: inout JSONWriter, _ key: String, _ v: String, _ limit: Int,
        _ adj: inout Adjustments, label: String? = nil
    ) {
        if v.unicodeScalars.count <= limit { w.field(key, v) } else { adj.record(label ?? key, .omitted) }
    }

    /// Free text is cut to the limit.
    private func truncate(
        _ w: inout JSONWriter, _ key: String, _ v: String, _ limit: Int,
        _ adj: inout Adjustments, label: String? = nil
    ) {
        if v.unicodeScalars.count <= limit {
            w.field(key, v)
        } else {
            w.field(key, String(String.UnicodeScalarView(v.unicodeScalars.prefix(limit))))
            adj.record(label ?? key, .truncated)
        }
    }

    private func products(_ w: inout JSONWriter, _ s: UserState, _ adjustments: inout Adjustments) {
        var kept: [ProductKey] = []
        for item in s.products.items {
            let p = item.value
            if p.product.unicodeScalars.count > FoldspaceLimits.productCode {
                adjustments.record("products", .omitted)
                continue
            }
            if let env = p.environment, !FoldspaceLimits.environments.contains(env) {
                adjustments.record("products", .omitted)
                continue
            }
            kept.append(p)
            if kept.count == FoldspaceLimits.productCount { break }
        }
        guard !kept.isEmpty else { return }
        w.key("products")
        w.beginArray()
        for p in kept {
            w.beginObject()
            w.field("product", p.product)
            if let env = p.environment { w.field("environment", env) }
            w.endObject()
        }
        w.endArray()
    }
}

/// A minimal JSON writer for the update body: keys in call order, strings escaped per
/// RFC 8259, never `null`.
public struct JSONWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    private var needsComma = false

    public init() { bytes.reserveCapacity(256) }

    public mutating func beginObject() {
        comma()
        bytes.append(UInt8(ascii: "{"))
        needsComma = false
    }

    public mutating func endObject() {
        bytes.append(UInt8(ascii: "}"))
        needsComma = true
    }

    public mutating func beginArray() {
        comma()
        bytes.append(UInt8(ascii: "["))
        needsComma = false
    }

    public mutating func endArray() {
        bytes.append(UInt8(ascii: "]"))
        needsComma = true
    }

    public mutating func key(_ k: String) {
        comma()
        appendString(k)
        bytes.append(UInt8(ascii: ":"))
        needsComma = false
    }

    public mutating func field(_ k: String, _ v: String) {
        key(k)
        value(v)
    }
    public mutating func field(_ k: String, _ v: Int64) {
        key(k)
        value(v)
    }
    public mutating func field(_ k: String, _ v: Double) {
        key(k)
        value(v)
    }

    public mutating func value(_ v: String) {
        comma()
        appendString(v)
        needsComma = true
    }

    public mutating func value(_ v: Int64) {
        comma()
        bytes.append(contentsOf: String(v).utf8)
        needsComma = true
    }

    /// Doubles are written with at most one decimal (the PQL score's precision).
    public mutating func value(_ v: Double) {
        comma()
        let tenths = Int64((v * 10).rounded())
        let whole = tenths / 10
        let frac = abs(tenths % 10)
        bytes.append(contentsOf: "\(tenths < 0 && whole == 0 ? "-" : "")\(whole).\(frac)".utf8)
        needsComma = true
    }

    /// Appends pre-encoded JSON text (custom attribute values).
    public mutating func raw(_ json: String) {
        comma()
        bytes.append(contentsOf: json.utf8)
        needsComma = true
    }

    @inline(__always)
    private mutating func comma() {
        if needsComma { bytes.append(UInt8(ascii: ",")) }
    }

    private mutating func appendString(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        for c in s.utf8 {
            switch c {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [0x5C, 0x22])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [0x5C, 0x5C])
            case 0x0A: bytes.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: bytes.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: bytes.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0..<0x20, 0x7F:
                let hex: [UInt8] = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: [0x5C, UInt8(ascii: "u"), 0x30, 0x30, hex[Int(c >> 4)], hex[Int(c & 0xF)]])
            default: bytes.append(c)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}

@inline(__always)
func floorDiv(_ a: Int64, _ b: Int64) -> Int64 {
    let q = a / b
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q
}

/// FNV-1a, 64 bits: a cheap, stable hash of a body for no-op suppression.
public func bodyHash(_ bytes: [UInt8]) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes {
        h ^= UInt64(b)
        h = h &* 0x0000_0100_0000_01B3
    }
    return h
}
