/// Fields whose repetition inside one object is detected.
enum Field: UInt8 {
    case type, userId, anonymousId, timestamp, originalTimestamp, sentAt, receivedAt, event, groupId
    case traits, context, properties
    case contextTraits, contextTimezone, contextGroupId, contextLocation, contextProduct
    case email, name, firstName, lastName, userType, role, title, phone, traitTimezone
    case leadDate, signUpDate, createdAt, subscriptionId, avatar, image, address, pqlScore
    case country, region, city, postalCode, countryCode, product, environment
}

/// The fields already read in one JSON object: the one duplicate-key guard of the decoder.
struct FieldSet {
    private var bits: UInt64 = 0

    func contains(_ f: Field) -> Bool { bits & (1 << UInt64(f.rawValue)) != 0 }

    /// Marks `f` as read in this object and returns `true`, or, when it was read already,
    /// fails the call (`duplicate-key` at `path`; a call keeps its first failure), skips
    /// the repeated value and returns `false`: the caller then reads nothing more of it.
    @inline(__always)
    mutating func mark(_ f: Field, _ path: StaticString, _ c: inout CallFields, _ s: inout JSONScanner) throws(JSONError) -> Bool {
        let m: UInt64 = 1 << UInt64(f.rawValue)
        if bits & m == 0 {
            bits |= m
            return true
        }
        c.fail(.duplicateKey, path)
        try s.skipValue()
        return false
    }
}
