/// A decoded call in a compact binary form, for the calls a task forwards to the owner of
/// their identity (`<group>-repartition`, kind `e` of its records, docs/identity.md).
///
/// Why not the call as Segment JSON (``SegmentEvent/segmentJSON(timeMs:)``, what earlier
/// builds forwarded): writing that JSON and decoding it again at the destination were
/// 14 % of a routing instance's CPU with keys by messageId (docs/performance.md). Here
/// every string is copied as it is, behind its length.
///
/// The contract is the JSON's: the destination decodes to exactly what
/// ``SegmentDecoder`` makes of `segmentJSON(timeMs: t)` of the same event
/// (`SegmentCompactTests` compares the two over random events, reachable or not): the
/// time `t` (marked implausible, and left for the Kafka time, when the destination's
/// clock finds it so), linked ids, event names and group ids only where a call carries
/// them, empty text as absent, custom traits only of the names the destination is
/// configured for and within its nesting limit, trait dates it finds implausible dropped
/// and counted.
///
/// Layout (integers as LEB128 varints, signed ones zigzag first; text as its length then
/// its UTF-8 bytes):
///
///     type (1 byte) · fields (varint, one bit each, below) · time · identity
///     · linkedId? · event? · groupId? · context.groupId? · timezone? · location?
///     · product? (text, then its environment when bit 8 is set) · traits?
///
/// Field bits: 0 `userId` (else `anonymousId`), 1 linked id, 2 event, 3 groupId,
/// 4 context.groupId, 5 timezone, 6 location, 7 product, 8 environment, 9 traits. A
/// location is a byte of bits (country, region, city, postal code, country code) and
/// those texts. Traits: a varint of bits in ``Traits`` field order (userType, email, name,
/// firstName, lastName, role, title, phone, timezone, leadDate, signUpDate, createdAt,
/// subscriptionId, address, avatar, image, pqlScore; dates zigzag, the score as its
/// 8-byte IEEE pattern), then the number of custom traits and each one's name and JSON
/// text. Nothing may follow.
extension SegmentEvent {
    /// Appends the event, with `timeMs` as its time, to `out`.
    public func appendCompact(timeMs: Int64, to out: inout [UInt8]) {
        var w = CompactWriter(out: out)
        out = []
        w.out.append(type.rawValue)
        var bits: UInt64 = hasUserId ? 1 : 0
        if linkedId != nil { bits |= 1 << 1 }
        if eventName != nil { bits |= 1 << 2 }
        if groupId != nil { bits |= 1 << 3 }
        if contextGroupId != nil { bits |= 1 << 4 }
        if timezone != nil { bits |= 1 << 5 }
        if location != nil { bits |= 1 << 6 }
        if let product {
            bits |= 1 << 7
            if product.environment != nil { bits |= 1 << 8 }
        }
        if traits != nil { bits |= 1 << 9 }
        w.varint(bits)
        w.zigzag(timeMs)
        w.text(identity)
        if let linkedId { w.text(linkedId) }
        if let eventName { w.text(eventName) }
        if let groupId { w.text(groupId) }
        if let contextGroupId { w.text(contextGroupId) }
        if let timezone { w.text(timezone) }
        if let location { w.location(location) }
        if let product {
            w.text(product.product)
            if let env = product.environment { w.zigzag(env) }
        }
        if let traits { w.traits(traits) }
        out = w.out
    }

    /// The event as ``appendCompact(timeMs:to:)`` writes it.
    public func compact(timeMs: Int64) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64 + identity.utf8.count)
        appendCompact(timeMs: timeMs, to: &out)
        return out
    }
}

extension SegmentDecoder {
    /// Decodes a compact call (``SegmentEvent/appendCompact(timeMs:to:)``) into `out`,
    /// as this decoder would decode the same event's Segment JSON. Returns false, with
    /// nothing appended, when the bytes are no such call or the call is one the JSON
    /// decoder would refuse (an empty identity, or one Foldspace cannot take). Never traps.
    public func decodeCompact(_ bytes: UnsafeBufferPointer<UInt8>, nowMs: Int64, into out: inout DecodedCalls) -> Bool {
        var r = CompactReader(bytes: bytes)
        guard let raw = try? r.u8(), let type = EventType(rawValue: raw), let bits = try? r.varint(), bits < 1 << 10,
            let timeMs = try? r.zigzag(), let identity = try? r.text(),
            // What the JSON decoder refuses: no identity, or one over 255 characters.
            !identity.isEmpty, identity.utf8.count <= 255 || identity.unicodeScalars.count <= 255
        else { return false }
        // The rest is read into the event where it lies in `out` (a copy of the whole event
        // and of every string in it, otherwise).
        let mark = out.mark
        do {
            try out.appendEvent(SegmentEvent(type: type, identity: identity, hasUserId: bits & 1 != 0)) {
                (e) throws(CompactReader.Failure) in
                try readCompact(&r, into: &e, bits: bits, timeMs: timeMs, nowMs: nowMs)
            }
        } catch {
            out.rollBack(to: mark)
            return false
        }
        guard r.pos == bytes.count else {
            out.rollBack(to: mark)
            return false
        }
        return true
    }

    private func readCompact(
        _ r: inout CompactReader, into e: inout SegmentEvent, bits: UInt64, timeMs: Int64, nowMs: Int64
    ) throws(CompactReader.Failure) {
        let type = e.type
        let identity = e.identity
        if Timestamp.isPlausible(timeMs, nowMs: nowMs) {
            e.timeMs = timeMs
        } else {
            e.timeImplausible = true
        }
        if bits & (1 << 1) != 0 {
            let other = try r.text()
            // Where the JSON has a place for it (an alias's previousId, the anonymousId
            // beside a userId), and as the decoder keeps one.
            if type == .alias || e.hasUserId, !other.isEmpty, !other.utf8.elementsEqual(identity.utf8),
                other.utf8.count <= 255 || other.unicodeScalars.count <= 255
            {
                e.linkedId = other
            }
        }
        if bits & (1 << 2) != 0, let t = try r.optionalText(), type == .track { e.eventName = t }
        if bits & (1 << 3) != 0, let t = try r.optionalText(), type == .group { e.groupId = t }
        if bits & (1 << 4) != 0 { e.contextGroupId = try r.optionalText() }
        if bits & (1 << 5) != 0 { e.timezone = try r.optionalText() }
        if bits & (1 << 6) != 0 { e.location = try r.location() }
        if bits & (1 << 7) != 0 {
            let product = try r.text()
            let env: Int64? = bits & (1 << 8) != 0 ? try r.zigzag() : nil
            if !product.isEmpty { e.product = ProductRef(product: product, environment: env) }
        } else if bits & (1 << 8) != 0 {
            throw .bad
        }
        if bits & (1 << 9) != 0 {
            // Where the JSON puts them: `traits` of an identify (two levels in), else
            // `context.traits` (three), which bounds a custom trait's own nesting.
            var t = try readCompactTraits(&r, valueDepth: type == .identify ? 2 : 3)
            e.implausibleTraitDates = t.dropImplausibleDates(nowMs: nowMs)
            if !t.isEmpty { e.traits = t }
        }
    }

    private func readCompactTraits(_ r: inout CompactReader, valueDepth: Int) throws(CompactReader.Failure) -> Traits {
        let bits = try r.varint()
        guard bits < 1 << 17 else { throw .bad }
        var t = Traits()
        func has(_ i: UInt64) -> Bool { bits & (1 << i) != 0 }
        if has(0) { t.userType = try r.optionalText() }
        if has(1) { t.email = try r.optionalText() }
        if has(2) { t.name = try r.optionalText() }
        if has(3) { t.firstName = try r.optionalText() }
        if has(4) { t.lastName = try r.optionalText() }
        if has(5) { t.role = try r.optionalText() }
        if has(6) { t.title = try r.optionalText() }
        if has(7) { t.phone = try r.optionalText() }
        if has(8) { t.timezone = try r.optionalText() }
        if has(9) { t.leadDate = try r.zigzag() }
        if has(10) { t.signUpDate = try r.zigzag() }
        if has(11) { t.createdAt = try r.zigzag() }
        if has(12) { t.subscriptionId = try r.optionalText() }
        if has(13) { t.address = try r.location() }
        if has(14) { t.avatar = try r.optionalText() }
        if has(15) { t.image = try r.optionalText() }
        if has(16) {
            let p = Double(bitPattern: try r.u64())
            if p.isFinite { t.pqlScore = p }
        }
        let customs = try r.varint()
        // Each takes two bytes at least: a count beyond what is left is not one.
        guard customs <= UInt64(r.left / 2) else { throw .bad }
        var names: [String] = []
        for _ in 0..<Int(customs) {
            let name = try r.text()
            let json = try r.run()
            // Kept as the JSON decoder keeps one: a configured name it does not read as a
            // standard trait, the first of its name (kept or not), one value within its
            // nesting limit.
            // Names not configured are never kept, so only configured ones are remembered:
            // `names` stays as short as the configuration (a list of every name was
            // quadratic in a hostile record's customs).
            guard customKeys.contains(where: { $0.elementsEqual(name.utf8) }) else { continue }
            let repeated = names.contains(name)
            if !repeated { names.append(name) }
            guard !repeated, !standardTraitKeys.contains(name), CallWriter.isOneValue(json, maxDepth: options.maxDepth - valueDepth)
            else { continue }
            t.custom.append(CustomTrait(name: name, json: compactJSON(String(decoding: json, as: UTF8.self))))
        }
        return t
    }
}

/// The compact form's writer.
struct CompactWriter {
    var out: [UInt8]

    mutating func varint(_ v: UInt64) {
        var x = v
        while x >= 0x80 {
            out.append(UInt8(x & 0x7F) | 0x80)
            x >>= 7
        }
        out.append(UInt8(x))
    }

    mutating func zigzag(_ v: Int64) { varint(UInt64(bitPattern: (v << 1) ^ (v >> 63))) }

    mutating func text(_ s: String) {
        varint(UInt64(s.utf8.count))
        out.append(contentsOf: s.utf8)
    }

    // Field by field, without arrays: an array of the optional texts cost an allocation
    // and a retain of each (a third of the encoding's time, by perf).
    mutating func location(_ l: Location) {
        var bits: UInt8 = 0
        if l.country != nil { bits |= 1 }
        if l.region != nil { bits |= 2 }
        if l.city != nil { bits |= 4 }
        if l.postalCode != nil { bits |= 8 }
        if l.countryCode != nil { bits |= 16 }
        out.append(bits)
        if let s = l.country { text(s) }
        if let s = l.region { text(s) }
        if let s = l.city { text(s) }
        if let s = l.postalCode { text(s) }
        if let s = l.countryCode { text(s) }
    }

    mutating func traits(_ t: Traits) {
        var bits: UInt64 = 0
        func mark(_ present: Bool, _ i: UInt64) { if present { bits |= 1 << i } }
        mark(t.userType != nil, 0)
        mark(t.email != nil, 1)
        mark(t.name != nil, 2)
        mark(t.firstName != nil, 3)
        mark(t.lastName != nil, 4)
        mark(t.role != nil, 5)
        mark(t.title != nil, 6)
        mark(t.phone != nil, 7)
        mark(t.timezone != nil, 8)
        mark(t.leadDate != nil, 9)
        mark(t.signUpDate != nil, 10)
        mark(t.createdAt != nil, 11)
        mark(t.subscriptionId != nil, 12)
        mark(t.address != nil, 13)
        mark(t.avatar != nil, 14)
        mark(t.image != nil, 15)
        mark(t.pqlScore != nil, 16)
        varint(bits)
        if let s = t.userType { text(s) }
        if let s = t.email { text(s) }
        if let s = t.name { text(s) }
        if let s = t.firstName { text(s) }
        if let s = t.lastName { text(s) }
        if let s = t.role { text(s) }
        if let s = t.title { text(s) }
        if let s = t.phone { text(s) }
        if let s = t.timezone { text(s) }
        if let d = t.leadDate { zigzag(d) }
        if let d = t.signUpDate { zigzag(d) }
        if let d = t.createdAt { zigzag(d) }
        if let s = t.subscriptionId { text(s) }
        if let a = t.address { location(a) }
        if let s = t.avatar { text(s) }
        if let s = t.image { text(s) }
        if let p = t.pqlScore {
            let b = p.bitPattern
            for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: b >> (8 * UInt64(i)))) }
        }
        varint(UInt64(t.custom.count))
        for c in t.custom {
            text(c.name)
            text(c.json)
        }
    }
}

/// The compact form's reader: every read checks what is left first. Its varints are the
/// changelog codec's (`StateCodec.Reader` in Folding), which this module, below Folding,
/// cannot use; the two stay apart, as do their errors.
struct CompactReader {
    enum Failure: Error { case bad }

    let bytes: UnsafeBufferPointer<UInt8>
    var pos = 0

    var left: Int { bytes.count - pos }

    mutating func u8() throws(Failure) -> UInt8 {
        guard pos < bytes.count else { throw .bad }
        defer { pos += 1 }
        return bytes[pos]
    }

    mutating func u64() throws(Failure) -> UInt64 {
        guard left >= 8 else { throw .bad }
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(bytes[pos + i]) << (8 * UInt64(i)) }
        pos += 8
        return v
    }

    mutating func varint() throws(Failure) -> UInt64 {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let b = try u8()
            v |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 { return v }
            shift += 7
            if shift > 63 { throw .bad }
        }
    }

    mutating func zigzag() throws(Failure) -> Int64 {
        let u = try varint()
        return Int64(bitPattern: (u >> 1) ^ (0 &- (u & 1)))
    }

    /// A length-prefixed run of bytes, in place.
    mutating func run() throws(Failure) -> UnsafeBufferPointer<UInt8> {
        let n = try varint()
        guard n <= UInt64(left) else { throw .bad }
        let run = UnsafeBufferPointer(rebasing: bytes[pos..<pos + Int(n)])
        pos += Int(n)
        return run
    }

    /// Length-prefixed UTF-8 (anything else is no compact call).
    mutating func text() throws(Failure) -> String {
        let run = try run()
        guard UTF8Check.isValid(run) else { throw .bad }
        return String(decoding: run, as: UTF8.self)
    }

    /// Text, with `""` as absent (as the JSON decoder reads it).
    mutating func optionalText() throws(Failure) -> String? {
        let s = try text()
        return s.isEmpty ? nil : s
    }

    /// A location; nil when it holds no text (as the JSON decoder reads it). Built once
    /// from locals (a `Location` assigned field by field was copied).
    mutating func location() throws(Failure) -> Location? {
        let bits = try u8()
        guard bits < 1 << 5 else { throw .bad }
        let country = bits & 1 != 0 ? try optionalText() : nil
        let region = bits & 2 != 0 ? try optionalText() : nil
        let city = bits & 4 != 0 ? try optionalText() : nil
        let postalCode = bits & 8 != 0 ? try optionalText() : nil
        let countryCode = bits & 16 != 0 ? try optionalText() : nil
        guard country != nil || region != nil || city != nil || postalCode != nil || countryCode != nil else { return nil }
        return Location(country: country, region: region, city: city, postalCode: postalCode, countryCode: countryCode)
    }
}
