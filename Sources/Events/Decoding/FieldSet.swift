/// Fields whose repetition inside one object is detected.
enum Field: UInt8 {
    case type, userId, anonymousId, timestamp, originalTimestamp, sentAt, receivedAt, event, groupId
    case traits, context, properties
    case contextTraits, contextTimezone, contextGroupId, contextLocation, contextProduct
    case email, name, firstName, lastName, userType, role, title, phone, traitTimezone
    case leadDate, signUpDate, createdAt, subscriptionId, avatar, image, address, pqlScore
    case country, region, city, postalCode, countryCode, product, environment
    case previousId
}

/// The fields already read in one JSON object: the one duplicate-key guard of the decoder.
struct FieldSet {
    private var bits: UInt64 = 0

    /// A field's bit (a masking shift: every raw value is below 64, and a plain shift
    /// checked that on every guard).
    @inline(__always)
    private static func bit(_ f: Field) -> UInt64 { 1 &<< UInt64(f.rawValue) }

    func contains(_ f: Field) -> Bool { bits & Self.bit(f) != 0 }

    /// Marks `f` as read in this object and returns `true`, or, when it was read already,
    /// fails the call (`duplicate-key` at `path`; a call keeps its first failure), skips
    /// the repeated value and returns `false`: the caller then reads nothing more of it.
    @inline(__always)
    mutating func mark(_ f: Field, _ path: StaticString, _ c: inout CallFields, _ s: inout JSONScanner) throws(JSONError) -> Bool {
        let m = Self.bit(f)
        if bits & m == 0 {
            bits |= m
            return true
        }
        c.fail(.duplicateKey, path)
        try s.skipValue()
        return false
    }
}
