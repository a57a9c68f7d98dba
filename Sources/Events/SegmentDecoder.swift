/// Why a message (or one element of a batch envelope) was not folded.
///
/// The raw values are stable: they name the `reason` header of dead-letter records and
/// the `reason` label of metrics.
public enum InvalidReason: String, Sendable, CaseIterable {
    case tooLarge = "too-large"
    case invalidUTF8 = "invalid-utf8"
    case notJSON = "not-json"
    case notObject = "not-object"
    case tooDeep = "too-deep"
    case missingIdentity = "missing-identity"
    case wrongType = "wrong-type"
    case badTimestamp = "bad-timestamp"
    case numberOutOfRange = "number-out-of-range"
    case duplicateKey = "duplicate-key"
    case batchTooLarge = "batch-too-large"
    case missingType = "missing-type"
    case identityTooLong = "identity-too-long"
    /// A control record (the key `foldspace-sync.control`) that is not a request this
    /// version understands.
    case invalidControl = "invalid-control"
}

/// A rejected message or batch element, with the field at fault where there is one.
public struct DecodeFailure: Sendable, Equatable, Error {
    public var reason: InvalidReason
    /// The offending field's path, such as `traits.email`.
    public var field: String?

    public init(_ reason: InvalidReason, field: String? = nil) {
        self.reason = reason
        self.field = field
    }
}

/// What one Segment call in a message decoded to.
public enum Decoded: Sendable, Equatable {
    case event(SegmentEvent)
    /// A well-formed call of a type the mapping does not use (the type as sent).
    case ignored(String)
    case invalid(DecodeFailure)

    /// The identity of an event, read in place (the event is not copied).
    public var identity: String? {
        switch self {
        case .event(let e): return e.identity
        default: return nil
        }
    }
}

/// Where the decoder puts what a message decoded to: an array of ``Decoded``, or
/// ``DecodedCalls``, which keeps the events apart so that they are written in place.
public protocol DecodeSink {
    /// A position to roll back to (a message that fails as a whole leaves only its failure).
    var mark: Int { get }
    mutating func rollBack(to mark: Int)
    mutating func append(_ d: Decoded)
    /// Appends what a fully read call comes to.
    mutating func appendCall(_ call: inout CallFields, nowMs: Int64)
}

extension Array: DecodeSink where Element == Decoded {
    public var mark: Int { count }
    public mutating func rollBack(to mark: Int) { removeSubrange(mark...) }
    public mutating func appendCall(_ call: inout CallFields, nowMs: Int64) { append(call.finish(nowMs: nowMs)) }
}

/// Decoded calls with the events held apart from what each call came to: an event is
/// written where it lies, never moved between arrays (an event is 560 bytes, and moving
/// them through an array of ``Decoded`` was ~9 % of the engine's cost).
public struct DecodedCalls: DecodeSink, Sendable {
    /// What a call came to; an event is an index into ``events``.
    public enum Outcome: Sendable, Equatable {
        case event(Int32)
        case ignored(String)
        case invalid(DecodeFailure)
    }

    public private(set) var events: [SegmentEvent] = []
    public private(set) var outcomes: [Outcome] = []

    public init() {}

    public var count: Int { outcomes.count }
    public var mark: Int { outcomes.count }

    /// Empties both arrays, keeping their capacity.
    public mutating func removeAll() {
        events.removeAll(keepingCapacity: true)
        outcomes.removeAll(keepingCapacity: true)
    }

    public mutating func rollBack(to mark: Int) {
        let firstEvent = outcomes[mark...].lazy.compactMap { if case .event(let i) = $0 { Int(i) } else { nil } }.first
        if let firstEvent { events.removeSubrange(firstEvent...) }
        outcomes.removeSubrange(mark...)
    }

    public mutating func append(_ d: Decoded) {
        switch d {
        case .event(let e):
            events.append(e)
            outcomes.append(.event(Int32(events.count - 1)))
        case .ignored(let t): outcomes.append(.ignored(t))
        case .invalid(let f): outcomes.append(.invalid(f))
        }
    }

    public mutating func appendCall(_ call: inout CallFields, nowMs: Int64) {
        switch call.head() {
        case .ignored(let t): outcomes.append(.ignored(t))
        case .invalid(let f): outcomes.append(.invalid(f))
        case .event(let h):
            events.append(SegmentEvent(type: h.type, identity: h.identity, hasUserId: h.hasUserId))
            call.fill(&events[events.count - 1], type: h.type, nowMs: nowMs)
            outcomes.append(.event(Int32(events.count - 1)))
        }
    }

    /// Resolves the time of every event from call `mark` on that carries no plausible
    /// payload time to the Kafka time of its message, `kafkaMs`, which must pass the same
    /// rule (``Timestamp/isPlausible(_:nowMs:)``): when it does not, the event becomes
    /// invalid (`bad-timestamp`, field `kafka.timestamp`). A Kafka time near `Int64.max`
    /// once reached the fold unchecked and trapped it on every restart. Without a Kafka
    /// time (`nil`) nothing changes: the caller then uses the wall clock.
    public mutating func resolveTimes(from mark: Int, kafkaMs: Int64?, nowMs: Int64) {
        guard let kafkaMs else { return }
        let plausible = Timestamp.isPlausible(kafkaMs, nowMs: nowMs)
        for j in mark..<outcomes.count {
            guard case .event(let k) = outcomes[j], events[Int(k)].timeMs == nil else { continue }
            if plausible {
                events[Int(k)].timeMs = kafkaMs
            } else {
                outcomes[j] = .invalid(DecodeFailure(.badTimestamp, field: "kafka.timestamp"))
            }
        }
    }

    /// The events where they lie, for a consumer that spends them (the next
    /// ``removeAll()`` drops them).
    public mutating func withEvents<R>(_ body: (UnsafeMutableBufferPointer<SegmentEvent>) throws -> R) rethrows -> R {
        try events.withUnsafeMutableBufferPointer { try body($0) }
    }

    /// The identity of call `i` if it is an event.
    public func identity(_ i: Int) -> String? {
        if case .event(let k) = outcomes[i] { return events[Int(k)].identity }
        return nil
    }

    /// Call `i` as a ``Decoded`` (a copy; for tests and tools).
    public subscript(i: Int) -> Decoded {
        switch outcomes[i] {
        case .event(let k): return .event(events[Int(k)])
        case .ignored(let t): return .ignored(t)
        case .invalid(let f): return .invalid(f)
        }
    }
}

/// Limits and options of the decoder.
public struct DecoderOptions: Sendable {
    /// Messages larger than this are invalid (`max_message_bytes`, default 1 MiB).
    public var maxMessageBytes: Int = 1 << 20
    /// Deepest JSON nesting accepted; at most 64.
    public var maxDepth: Int = 64
    /// Most calls accepted in one `{"batch": [...]}` envelope (`max_batch_events`).
    public var maxBatchEvents: Int = 2000
    /// Trait names captured for `customAttributes`.
    public var customAttributes: [String] = []

    public init() {}
}

/// Decodes Segment-spec JSON (one call, or a batch envelope) into ``SegmentEvent``s.
///
/// Pure and allocation-light: it validates the whole message (UTF-8, grammar, nesting)
/// and materialises only the fields the Foldspace mapping reads. It never traps on
/// input; every failure is a ``DecodeFailure``.
///
/// Type rules: `null` and `""` mean absent. Identity-like fields (`userId`,
/// `anonymousId`, `groupId`, `subscriptionId`, `phone`, `postalCode`) accept integers and
/// turn them into strings, as Segment's libraries do. Any other type in a field the
/// mapping reads is `wrong-type`, as is a key repeated in one object.
public struct SegmentDecoder: Sendable {
    public var options: DecoderOptions
    private let customKeys: [[UInt8]]

    public init(options: DecoderOptions = DecoderOptions()) {
        self.options = options
        self.options.maxDepth = min(max(options.maxDepth, 1), 64)
        self.customKeys = options.customAttributes.map { Array($0.utf8) }
    }

    /// Decodes one Kafka message value. `nowMs` is the wall clock, for plausibility.
    public func decode(_ bytes: UnsafeBufferPointer<UInt8>, nowMs: Int64) -> [Decoded] {
        var out: [Decoded] = []
        decode(bytes, nowMs: nowMs, into: &out)
        return out
    }

    public func decode(_ bytes: [UInt8], nowMs: Int64) -> [Decoded] {
        bytes.withUnsafeBufferPointer { decode($0, nowMs: nowMs) }
    }

    /// Decodes one message, appending one ``Decoded`` per call it holds.
    public func decode(_ bytes: UnsafeBufferPointer<UInt8>, nowMs: Int64, into out: inout [Decoded]) {
        decodeMessage(bytes, nowMs: nowMs, into: &out)
    }

    /// Decodes one message into `out`, each event written in place.
    public func decode(_ bytes: UnsafeBufferPointer<UInt8>, nowMs: Int64, into out: inout DecodedCalls) {
        decodeMessage(bytes, nowMs: nowMs, into: &out)
    }

    // Generic inside the module only, where it is specialized for each sink; the public
    // entry points above are concrete (a generic call from another module would run the
    // unspecialized code).
    private func decodeMessage<Sink: DecodeSink>(_ bytes: UnsafeBufferPointer<UInt8>, nowMs: Int64, into out: inout Sink) {
        if bytes.count > options.maxMessageBytes {
            out.append(.invalid(DecodeFailure(.tooLarge)))
            return
        }
        // UTF-8 is checked by the scanner inside strings, the one place non-ASCII bytes
        // belong (a separate pass over every message cost ~6 % of decoding); a message
        // that fails for any reason is checked whole below, so that invalid UTF-8 is
        // reported as such wherever it is.
        var s = JSONScanner(bytes, maxDepth: options.maxDepth)
        let mark = out.mark
        do {
            guard try s.peekKind() == .object else {
                try s.skipValue()
                try s.expectEnd()
                out.append(.invalid(DecodeFailure(.notObject)))
                return
            }
            var call = CallFields()
            // A batch envelope's elements go straight to `out`, after `batchMark`; they
            // are rolled back if the envelope turns out to be one call (it has a `type`).
            var batchMark: Int? = nil
            try s.beginObject()
            var first = true
            while let k = try s.nextKey(first: first) {
                first = false
                if k.is("batch") {
                    guard batchMark == nil else { call.fail(.duplicateKey, "batch"); try s.skipValue(); continue }
                    guard try s.peekKind() == .array else { call.fail(.wrongType, "batch"); try s.skipValue(); continue }
                    batchMark = out.mark
                    try s.beginArray()
                    var firstElement = true
                    var count = 0
                    while try s.nextElement(first: firstElement) {
                        firstElement = false
                        count += 1
                        if count > options.maxBatchEvents {
                            try s.skipValue()
                            continue
                        }
                        if try s.peekKind() != .object {
                            try s.skipValue()
                            out.append(.invalid(DecodeFailure(.notObject)))
                            continue
                        }
                        var element = CallFields()
                        try readCall(&s, into: &element)
                        out.appendCall(&element, nowMs: nowMs)
                    }
                    if count > options.maxBatchEvents {
                        out.rollBack(to: batchMark!)
                        out.append(.invalid(DecodeFailure(.batchTooLarge)))
                    }
                } else {
                    try readCallField(&s, key: k, into: &call)
                }
            }
            try s.expectEnd()
            if batchMark == nil || call.typeText != nil {
                // One call (an envelope with a `type` is one: its elements go).
                if let batchMark { out.rollBack(to: batchMark) }
                out.appendCall(&call, nowMs: nowMs)
            }
        } catch {
            out.rollBack(to: mark)
            // Invalid UTF-8 anywhere is the reason, whatever the scanner tripped on first.
            let reason: InvalidReason
            switch error {
            case _ where error == .invalidUTF8 || !UTF8Check.isValid(bytes): reason = .invalidUTF8
            case .tooDeep: reason = .tooDeep
            case .numberOutOfRange: reason = .numberOutOfRange
            case .syntax, .invalidUnicode, .invalidUTF8: reason = .notJSON
            }
            out.append(.invalid(DecodeFailure(reason)))
        }
    }

    // MARK: One call

    private func readCall(_ s: inout JSONScanner, into call: inout CallFields) throws(JSONError) {
        try s.beginObject()
        var first = true
        while let k = try s.nextKey(first: first) {
            first = false
            try readCallField(&s, key: k, into: &call)
        }
    }

    private func readCallField(_ s: inout JSONScanner, key k: JSONKey, into c: inout CallFields) throws(JSONError) {
        if k.is("type") {
            try readType(&s, &c)
        } else if k.is("userId") {
            c.userId = try readText(&s, &c, .userId, "userId", numbers: true)
        } else if k.is("anonymousId") {
            c.anonymousId = try readText(&s, &c, .anonymousId, "anonymousId", numbers: true)
        } else if k.is("timestamp") {
            c.timestamp = try readTime(&s, &c, .timestamp, "timestamp")
        } else if k.is("originalTimestamp") {
            c.originalTimestamp = try readTime(&s, &c, .originalTimestamp, "originalTimestamp")
        } else if k.is("sentAt") {
            c.sentAt = try readTime(&s, &c, .sentAt, "sentAt")
        } else if k.is("receivedAt") {
            c.receivedAt = try readTime(&s, &c, .receivedAt, "receivedAt")
        } else if k.is("event") {
            c.eventName = try readText(&s, &c, .event, "event")
        } else if k.is("groupId") {
            c.groupId = try readText(&s, &c, .groupId, "groupId", numbers: true)
        } else if k.is("traits") {
            guard c.seen.insert(.traits) else { c.fail(.duplicateKey, "traits"); try s.skipValue(); return }
            c.traits = try readTraits(&s, &c, path: "traits")
        } else if k.is("context") {
            guard c.seen.insert(.context) else { c.fail(.duplicateKey, "context"); try s.skipValue(); return }
            try readContext(&s, &c)
        } else if k.is("properties") {
            guard c.seen.insert(.properties) else { c.fail(.duplicateKey, "properties"); try s.skipValue(); return }
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

    private func readContext(_ s: inout JSONScanner, _ c: inout CallFields) throws(JSONError) {
        guard try objectOrAbsent(&s, &c, "context") else { return }
        try s.beginObject()
        var first = true
        var seen = FieldSet()
        while let k = try s.nextKey(first: first) {
            first = false
            if k.is("traits") {
                guard seen.insert(.contextTraits) else { c.fail(.duplicateKey, "context.traits"); try s.skipValue(); continue }
                c.contextTraits = try readTraits(&s, &c, path: "context.traits")
            } else if k.is("timezone") {
                c.timezone = try readText(&s, &c, .contextTimezone, "context.timezone", seen: &seen)
            } else if k.is("groupId") {
                c.contextGroupId = try readText(&s, &c, .contextGroupId, "context.groupId", numbers: true, seen: &seen)
            } else if k.is("location") {
                guard seen.insert(.contextLocation) else { c.fail(.duplicateKey, "context.location"); try s.skipValue(); continue }
                c.location = try readLocation(&s, &c, path: "context.location", stateKey: "region")
            } else if k.is("product") {
                guard seen.insert(.contextProduct) else { c.fail(.duplicateKey, "context.product"); try s.skipValue(); continue }
                c.contextProduct = try readProduct(&s, &c, "context.product")
            } else {
                try s.skipValue()
            }
        }
    }

    private func readTraits(_ s: inout JSONScanner, _ c: inout CallFields, path: StaticString) throws(JSONError) -> Traits? {
        guard try objectOrAbsent(&s, &c, path) else { return nil }
        var t = Traits()
        var seen = FieldSet()
        try s.beginObject()
        var first = true
        while let k = try s.nextKey(first: first) {
            first = false
            if k.is("email") {
                t.email = try readText(&s, &c, .email, "traits.email", seen: &seen)
            } else if k.is("name") {
                t.name = try readText(&s, &c, .name, "traits.name", seen: &seen)
            } else if k.is("firstName") {
                t.firstName = try readText(&s, &c, .firstName, "traits.firstName", seen: &seen)
            } else if k.is("lastName") {
                t.lastName = try readText(&s, &c, .lastName, "traits.lastName", seen: &seen)
            } else if k.is("userType") {
                t.userType = try readText(&s, &c, .userType, "traits.userType", seen: &seen)
            } else if k.is("role") {
                t.role = try readText(&s, &c, .role, "traits.role", seen: &seen)
            } else if k.is("title") {
                t.title = try readText(&s, &c, .title, "traits.title", seen: &seen)
            } else if k.is("phone") {
                t.phone = try readText(&s, &c, .phone, "traits.phone", numbers: true, seen: &seen)
            } else if k.is("timezone") {
                t.timezone = try readText(&s, &c, .traitTimezone, "traits.timezone", seen: &seen)
            } else if k.is("leadDate") {
                t.leadDate = try readTime(&s, &c, .leadDate, "traits.leadDate", seen: &seen)
            } else if k.is("signUpDate") {
                t.signUpDate = try readTime(&s, &c, .signUpDate, "traits.signUpDate", seen: &seen)
            } else if k.is("createdAt") {
                t.createdAt = try readTime(&s, &c, .createdAt, "traits.createdAt", seen: &seen)
            } else if k.is("subscriptionId") {
                t.subscriptionId = try readText(&s, &c, .subscriptionId, "traits.subscriptionId", numbers: true, seen: &seen)
            } else if k.is("avatar") {
                t.avatar = try readText(&s, &c, .avatar, "traits.avatar", seen: &seen)
            } else if k.is("image") {
                t.image = try readText(&s, &c, .image, "traits.image", seen: &seen)
            } else if k.is("address") {
                guard seen.insert(.address) else { c.fail(.duplicateKey, "traits.address"); try s.skipValue(); continue }
                t.address = try readLocation(&s, &c, path: "traits.address", stateKey: "state")
            } else if k.is("pqlScore") {
                guard seen.insert(.pqlScore) else { c.fail(.duplicateKey, "traits.pqlScore"); try s.skipValue(); continue }
                switch try s.peekKind() {
                case .number: t.pqlScore = try s.readNumber().asDouble
                case .null: try s.readNull()
                default: c.fail(.wrongType, "traits.pqlScore"); try s.skipValue()
                }
            } else if !customKeys.isEmpty, let name = customName(k) {
                let start = s.pos
                try s.skipValue()
                // Compact JSON text of the value; the projector decides what to send.
                let text = s.text(start..<s.pos)
                if !t.custom.contains(where: { $0.name == name }) {
                    t.custom.append(CustomTrait(name: name, json: compactJSON(text)))
                } else {
                    c.fail(.duplicateKey, "traits")
                }
            } else {
                try s.skipValue()
            }
        }
        return t.isEmpty ? nil : t
    }

    private func customName(_ k: JSONKey) -> String? {
        guard let name = try? k.text() else { return nil }
        let u = Array(name.utf8)
        return customKeys.contains(u) ? name : nil
    }

    private func readLocation(_ s: inout JSONScanner, _ c: inout CallFields, path: StaticString,
                              stateKey: StaticString) throws(JSONError) -> Location? {
        guard try objectOrAbsent(&s, &c, path) else { return nil }
        // Read into locals and moved into the result once: a `Location` variable written
        // field by field was copied and destroyed twice per call (~2.7 % of the engine's
        // instructions, by callgrind).
        var country: String?
        var region: String?
        var city: String?
        var postalCode: String?
        var countryCode: String?
        var seen = FieldSet()
        try s.beginObject()
        var first = true
        while let k = try s.nextKey(first: first) {
            first = false
            if k.is("country") {
                country = try readText(&s, &c, .country, path, seen: &seen)
            } else if k.is(stateKey) {
                region = try readText(&s, &c, .region, path, seen: &seen)
            } else if k.is("city") {
                city = try readText(&s, &c, .city, path, seen: &seen)
            } else if k.is("postalCode") {
                postalCode = try readText(&s, &c, .postalCode, path, numbers: true, seen: &seen)
            } else if k.is("countryCode") {
                countryCode = try readText(&s, &c, .countryCode, path, seen: &seen)
            } else {
                try s.skipValue()
            }
        }
        guard country != nil || region != nil || city != nil || postalCode != nil || countryCode != nil else { return nil }
        return Location(country: country, region: region, city: city, postalCode: postalCode, countryCode: countryCode)
    }

    /// A product is `{"product": code, "environment": 1..4}` or a bare code string.
    private func readProduct(_ s: inout JSONScanner, _ c: inout CallFields, _ path: StaticString) throws(JSONError) -> ProductRef? {
        switch try s.peekKind() {
        case .null:
            try s.readNull()
            return nil
        case .string:
            let code = try s.readString()
            return code.isEmpty ? nil : ProductRef(product: code, environment: nil)
        case .object:
            var code: String?
            var env: Int64?
            var seen = FieldSet()
            try s.beginObject()
            var first = true
            while let k = try s.nextKey(first: first) {
                first = false
                if k.is("product") || k.is("code") || k.is("id") {
                    code = try readText(&s, &c, .product, path, numbers: true, seen: &seen)
                } else if k.is("environment") {
                    guard seen.insert(.environment) else { c.fail(.duplicateKey, path); try s.skipValue(); continue }
                    switch try s.peekKind() {
                    case .number:
                        if case .integer(let v, _) = try s.readNumber() { env = v } else { c.fail(.wrongType, path) }
                    case .null: try s.readNull()
                    default: c.fail(.wrongType, path); try s.skipValue()
                    }
                } else {
                    try s.skipValue()
                }
            }
            guard let code else { return nil }
            return ProductRef(product: code, environment: env)
        default:
            c.fail(.wrongType, path)
            try s.skipValue()
            return nil
        }
    }

    // MARK: Typed reads

    /// `type`, as ``readText(_:_:_:_:numbers:)`` reads it, but a type the mapping knows,
    /// sent plainly, is recognized in the message's bytes: no string is made and matched
    /// for it (this is read once for every call).
    private func readType(_ s: inout JSONScanner, _ c: inout CallFields) throws(JSONError) {
        c.type = nil
        let kind = try s.peekKind()
        if c.seen.contains(.type) || kind != .string {
            c.typeText = try readText(&s, &c, .type, "type")
            return
        }
        _ = c.seen.insert(.type)
        let raw = try s.scanStringRaw()
        if !raw.escaped, let t = EventType(segmentName: raw.bytes) {
            c.type = t
            c.typeText = t.segmentName
            return
        }
        let v = try raw.text()
        c.typeText = v.isEmpty ? nil : v
    }

    private func objectOrAbsent(_ s: inout JSONScanner, _ c: inout CallFields, _ path: StaticString) throws(JSONError) -> Bool {
        switch try s.peekKind() {
        case .object: return true
        case .null: try s.readNull(); return false
        default: c.fail(.wrongType, path); try s.skipValue(); return false
        }
    }

    private func readText(_ s: inout JSONScanner, _ c: inout CallFields, _ f: Field, _ path: StaticString,
                          numbers: Bool = false) throws(JSONError) -> String? {
        var seen = c.seen
        defer { c.seen = seen }
        return try readText(&s, &c, f, path, numbers: numbers, seen: &seen)
    }

    private func readText(_ s: inout JSONScanner, _ c: inout CallFields, _ f: Field, _ path: StaticString,
                          numbers: Bool = false, seen: inout FieldSet) throws(JSONError) -> String? {
        guard seen.insert(f) else { c.fail(.duplicateKey, path); try s.skipValue(); return nil }
        switch try s.peekKind() {
        case .string:
            let v = try s.readString()
            return v.isEmpty ? nil : v
        case .null:
            try s.readNull()
            return nil
        case .number where numbers:
            switch try s.readNumber() {
            case .integer(_, let text): return s.text(text)
            case .double: c.fail(.wrongType, path); return nil
            }
        default:
            c.fail(.wrongType, path)
            try s.skipValue()
            return nil
        }
    }

    private func readTime(_ s: inout JSONScanner, _ c: inout CallFields, _ f: Field, _ path: StaticString) throws(JSONError) -> Int64? {
        var seen = c.seen
        defer { c.seen = seen }
        return try readTime(&s, &c, f, path, seen: &seen)
    }

    /// A time: epoch milliseconds as a number, or an ISO-8601 string.
    private func readTime(_ s: inout JSONScanner, _ c: inout CallFields, _ f: Field, _ path: StaticString,
                          seen: inout FieldSet) throws(JSONError) -> Int64? {
        guard seen.insert(f) else { c.fail(.duplicateKey, path); try s.skipValue(); return nil }
        switch try s.peekKind() {
        case .string:
            guard s.peek() == UInt8(ascii: "\"") else { throw .syntax }
            let raw = try s.scanStringRaw()
            if raw.end == raw.start { return nil }
            if !raw.escaped, let ms = Timestamp.parseISO8601(raw.bytes) {
                return ms
            }
            if raw.escaped, let text = try? raw.text(), let ms = Timestamp.parseISO8601(text) {
                return ms
            }
            c.fail(.badTimestamp, path)
            return nil
        case .number:
            switch try s.readNumber() {
            case .integer(let v, _): return v
            case .double(let d, _):
                guard d.magnitude < 9.0e15 else { c.fail(.numberOutOfRange, path); return nil }
                return Int64(d.rounded(.down))
            }
        case .null:
            try s.readNull()
            return nil
        default:
            c.fail(.wrongType, path)
            try s.skipValue()
            return nil
        }
    }
}

/// The fields of one call as read, before the identity and time rules are applied
/// (opaque outside the decoder).
public struct CallFields {
    var typeText: String?
    /// The type, when `typeText` was recognized as it was read.
    var type: EventType?
    var userId: String?
    var anonymousId: String?
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
    var seen = FieldSet()
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
        if type == .track { e.eventName = eventName.take() }
        if type == .group { e.groupId = groupId.take() }
        e.contextGroupId = contextGroupId.take()
        e.timezone = timezone.take()
        e.location = location.take()
        e.product = contextProduct.take() ?? propertiesProduct.take()
        // Group calls carry the group's traits, not the user's. Both sources are nil
        // when empty (readTraits), and merging cannot empty them. The common cases move
        // them with one copy of their bytes: the pattern match over both, with take(),
        // copied all 344 bytes four to six times (~8 % of decoding).
        // (Matched without binding: `== nil` took each by value, a copy.)
        if type != .identify { traits = nil }
        var hasTraits = false
        var hasContextTraits = false
        if case .some = traits { hasTraits = true }
        if case .some = contextTraits { hasContextTraits = true }
        if hasTraits {
            if hasContextTraits { traits!.fillMissing(from: contextTraits!) }
            e.implausibleTraitDates = traits!.dropImplausibleDates(nowMs: nowMs)
            Self.move(&traits, into: &e.traits)
        } else if hasContextTraits {
            e.implausibleTraitDates = contextTraits!.dropImplausibleDates(nowMs: nowMs)
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

extension EventType {
    /// The name Segment's calls give the type.
    var segmentName: String {
        switch self {
        case .identify: "identify"
        case .track: "track"
        case .page: "page"
        case .screen: "screen"
        case .group: "group"
        case .alias: "alias"
        }
    }

    /// The type whose name is exactly `bytes`, if any.
    init?(segmentName bytes: UnsafeBufferPointer<UInt8>) {
        // Told apart by length and first byte; the rest is checked against the name's
        // static bytes (a String's `withUTF8` and a generic `elementsEqual` cost ~240
        // instructions an event, by callgrind).
        let t: EventType
        let name: StaticString
        switch (bytes.count, bytes.first) {
        case (8, UInt8(ascii: "i")?): t = .identify; name = "identify"
        case (5, UInt8(ascii: "t")?): t = .track; name = "track"
        case (4, UInt8(ascii: "p")?): t = .page; name = "page"
        case (6, UInt8(ascii: "s")?): t = .screen; name = "screen"
        case (5, UInt8(ascii: "g")?): t = .group; name = "group"
        case (5, UInt8(ascii: "a")?): t = .alias; name = "alias"
        default: return nil
        }
        guard let b = bytes.baseAddress, ByteRuns.equal(b, name.utf8Start, count: bytes.count) else { return nil }
        self = t
    }

    /// The type named `segmentName`, if any (the same match as for raw bytes).
    init?(segmentName: String) {
        var name = segmentName
        guard let t = name.withUTF8({ EventType(segmentName: $0) }) else { return nil }
        self = t
    }
}

/// Fields whose repetition inside one object is detected.
enum Field: UInt8 {
    case type, userId, anonymousId, timestamp, originalTimestamp, sentAt, receivedAt, event, groupId
    case traits, context, properties
    case contextTraits, contextTimezone, contextGroupId, contextLocation, contextProduct
    case email, name, firstName, lastName, userType, role, title, phone, traitTimezone
    case leadDate, signUpDate, createdAt, subscriptionId, avatar, image, address, pqlScore
    case country, region, city, postalCode, countryCode, product, environment
}

struct FieldSet {
    private var bits: UInt64 = 0
    func contains(_ f: Field) -> Bool { bits & (1 << UInt64(f.rawValue)) != 0 }
    /// Inserts `f`; returns `false` when it was already there.
    mutating func insert(_ f: Field) -> Bool {
        let m: UInt64 = 1 << UInt64(f.rawValue)
        if bits & m != 0 { return false }
        bits |= m
        return true
    }
}

/// Removes insignificant whitespace from valid JSON text.
func compactJSON(_ text: String) -> String {
    var out = [UInt8]()
    var inString = false
    var escape = false
    for c in text.utf8 {
        if inString {
            out.append(c)
            if escape { escape = false } else if c == UInt8(ascii: "\\") { escape = true } else if c == UInt8(ascii: "\"") { inString = false }
        } else if c == UInt8(ascii: "\"") {
            inString = true
            out.append(c)
        } else if c != 0x20 && c != 0x0A && c != 0x0D && c != 0x09 {
            out.append(c)
        }
    }
    return String(decoding: out, as: UTF8.self)
}

