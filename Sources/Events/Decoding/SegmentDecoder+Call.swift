/// The decoder's reading of one call object: its own fields (`type`, the identity, the
/// times, `event`, `groupId`) and where `traits`, `context` and `properties` go.
extension SegmentDecoder {
    func readCall(_ s: inout JSONScanner, into call: inout CallFields) throws(JSONError) {
        try s.beginObject()
        var first = true
        var seen = FieldSet()
        while let k = try s.nextKey(first: first) {
            first = false
            try readCallField(&s, key: k, into: &call, seen: &seen)
        }
    }

    /// One field of a call; `seen` holds the call's fields read so far.
    func readCallField(_ s: inout JSONScanner, key k: JSONKey, into c: inout CallFields, seen: inout FieldSet) throws(JSONError) {
        if k.is("type") {
            try readType(&s, &c, seen: &seen)
        } else if k.is("userId") {
            c.userId = try readText(&s, &c, .userId, "userId", numbers: true, seen: &seen)
        } else if k.is("anonymousId") {
            c.anonymousId = try readText(&s, &c, .anonymousId, "anonymousId", numbers: true, seen: &seen)
        } else if k.is("previousId") {
            c.previousId = try readText(&s, &c, .previousId, "previousId", numbers: true, seen: &seen)
        } else if k.is("timestamp") {
            c.timestamp = try readTime(&s, &c, .timestamp, "timestamp", seen: &seen)
        } else if k.is("originalTimestamp") {
            c.originalTimestamp = try readTime(&s, &c, .originalTimestamp, "originalTimestamp", seen: &seen)
        } else if k.is("sentAt") {
            c.sentAt = try readTime(&s, &c, .sentAt, "sentAt", seen: &seen)
        } else if k.is("receivedAt") {
            c.receivedAt = try readTime(&s, &c, .receivedAt, "receivedAt", seen: &seen)
        } else if k.is("event") {
            c.eventName = try readText(&s, &c, .event, "event", seen: &seen)
        } else if k.is("groupId") {
            c.groupId = try readText(&s, &c, .groupId, "groupId", numbers: true, seen: &seen)
        } else if k.is("traits") {
            guard try seen.mark(.traits, "traits", &c, &s) else { return }
            c.traits = try readTraits(&s, &c, path: "traits")
        } else if k.is("context") {
            guard try seen.mark(.context, "context", &c, &s) else { return }
            try readContext(&s, &c)
        } else if k.is("properties") {
            guard try seen.mark(.properties, "properties", &c, &s) else { return }
            guard try objectOrAbsent(&s, &c, "properties") else { return }
            try s.beginObject()
            var first = true
            while let pk = try s.nextKey(first: first) {
                first = false
                if pk.is("product") {
                    c.propertiesProduct = try readProduct(&s, &c, "properties.product")
                } else {
                    try s.skipValue()
                }
            }
        } else {
            try s.skipValue()
        }
    }

    /// `type`, as ``readText(_:_:_:_:numbers:seen:)`` reads it, but a type the mapping knows,
    /// sent plainly, is recognized in the message's bytes: no string is made and matched
    /// for it (this is read once for every call).
    private func readType(_ s: inout JSONScanner, _ c: inout CallFields, seen: inout FieldSet) throws(JSONError) {
        c.type = nil
        let kind = try s.peekKind()
        if seen.contains(.type) || kind != .string {
            c.typeText = try readText(&s, &c, .type, "type", seen: &seen)
            return
        }
        _ = try seen.mark(.type, "type", &c, &s)  // not seen yet: only marks it
        let raw = try s.scanStringRaw()
        if !raw.escaped, let t = EventType(segmentName: raw.bytes) {
            c.type = t
            c.typeText = t.segmentName
            return
        }
        let v = try raw.text()
        c.typeText = v.isEmpty ? nil : v
    }
}
