/// The fields of one call as read, before the identity and time rules are applied
/// (opaque outside the decoder).
public struct CallFields {
    var typeText: String?
    /// The type, when `typeText` was recognized as it was read.
    var type: EventType?
    var userId: String?
    var anonymousId: String?
    /// An alias call's `previousId`.
    var previousId: String?
    // The event-time sources, in order of preference.
    var timestamp: Int64?
    var originalTimestamp: Int64?
    var sentAt: Int64?
    var receivedAt: Int64?
    var eventName: String?
    var groupId: String?
    var contextGroupId: String?
    var timezone: String?
    var location: Location?
    var contextProduct: ProductRef?
    var propertiesProduct: ProductRef?
    var traits: Traits?
    var contextTraits: Traits?
    var failure: DecodeFailure?

    mutating func fail(_ reason: InvalidReason, _ field: StaticString) {
        if failure == nil { failure = DecodeFailure(reason, field: field.description) }
    }

    /// What an event starts from: its type and identity (the fields after them are
    /// moved in by ``fill(_:type:nowMs:)``).
    struct Head {
        var type: EventType
        var identity: String
        var hasUserId: Bool
    }

    /// Small on purpose (not a ``Decoded``, which holds a whole event): it is returned
    /// for every call.
    enum Start {
        case event(Head)
        case ignored(String)
        case invalid(DecodeFailure)
    }

    /// The call's type and identity, or what the call comes to when it is not an event.
    mutating func head() -> Start {
        if let failure { return .invalid(failure) }
        guard let typeText else { return .invalid(DecodeFailure(.missingType, field: "type")) }
        guard let type = type ?? EventType(segmentName: typeText) else { return .ignored(typeText) }
        let identity: String
        let hasUserId: Bool
        if let userId = userId.take() {
            identity = userId
            hasUserId = true
        } else if let anonymousId = anonymousId.take() {
            identity = anonymousId
            hasUserId = false
        } else {
            return .invalid(DecodeFailure(.missingIdentity, field: "userId"))
        }
        // Foldspace takes at most 255 characters; a longer id can never be delivered.
        if identity.utf8.count > 255 && identity.unicodeScalars.count > 255 {
            return .invalid(DecodeFailure(.identityTooLong, field: hasUserId ? "userId" : "anonymousId"))
        }
        return .event(Head(type: type, identity: identity, hasUserId: hasUserId))
    }

    /// Moves the remaining fields into `e`, where it lies (`take()`: no string is copied
    /// or released). The fields are spent afterwards.
    mutating func fill(_ e: inout SegmentEvent, type: EventType, nowMs: Int64) {
        if let t = timestamp ?? originalTimestamp ?? sentAt ?? receivedAt {
            if Timestamp.isPlausible(t, nowMs: nowMs) {
                e.timeMs = t
            } else {
                e.timeImplausible = true
            }
        }
        // The other identity the call names (the identity took `userId`, else
        // `anonymousId`): an alias's `previousId`, else the `anonymousId` beside a
        // `userId`. One that equals the identity, or that Foldspace could never take,
        // links nothing.
        // Compared by bytes, as identities are everywhere else: "é" as one scalar and "e"
        // with a combining accent are two identities (equal as Swift strings).
        if let other = (type == .alias ? previousId.take() : nil) ?? anonymousId.take(),
            !other.utf8.elementsEqual(e.identity.utf8),
            other.utf8.count <= 255 || other.unicodeScalars.count <= 255
        {
            e.linkedId = other
        }
        if type == .track { e.eventName = eventName.take() }
        if type == .group { e.groupId = groupId.take() }
        e.contextGroupId = contextGroupId.take()
        e.timezone = timezone.take()
        e.location = location.take()
        e.product = contextProduct.take() ?? propertiesProduct.take()
        // Group calls carry the group's traits, not the user's. Both sources are nil
        // when empty (readTraits), and merging cannot empty them. The common cases move
        // them with one copy of their bytes: the pattern match over both, with take(),
        // copied all 344 bytes four to six times.
        // (Matched without binding: `== nil` took each by value, a copy.)
        if type != .identify { traits = nil }
        var hasTraits = false
        var hasContextTraits = false
        if case .some = traits { hasTraits = true }
        if case .some = contextTraits { hasContextTraits = true }
        if hasTraits {
            if hasContextTraits { traits!.fillMissing(from: contextTraits!) }
            e.implausibleTraitDates = traits!.dropImplausibleDates(nowMs: nowMs)
            // Traits that were only implausible dates are none (as absent ones are nil).
            if e.implausibleTraitDates != 0 && traits!.isEmpty { traits = nil }
            Self.move(&traits, into: &e.traits)
        } else if hasContextTraits {
            e.implausibleTraitDates = contextTraits!.dropImplausibleDates(nowMs: nowMs)
            if e.implausibleTraitDates != 0 && contextTraits!.isEmpty { contextTraits = nil }
            Self.move(&contextTraits, into: &e.traits)
        }
    }

    /// Moves `source` into `destination`, which must be nil, leaving `source` nil.
    @inline(__always)
    private static func move(_ source: inout Traits?, into destination: inout Traits?) {
        withUnsafeMutablePointer(to: &source) { s in
            withUnsafeMutablePointer(to: &destination) { d in
                // d holds nil (nothing to release); s is left uninitialized, then nil.
                d.moveUpdate(from: s, count: 1)
                s.initialize(to: nil)
            }
        }
    }

    /// The call as one value (spends the fields).
    mutating func finish(nowMs: Int64) -> Decoded {
        switch head() {
        case .ignored(let t): return .ignored(t)
        case .invalid(let f): return .invalid(f)
        case .event(let h):
            var e = SegmentEvent(type: h.type, identity: h.identity, hasUserId: h.hasUserId)
            fill(&e, type: h.type, nowMs: nowMs)
            return .event(e)
        }
    }
}
