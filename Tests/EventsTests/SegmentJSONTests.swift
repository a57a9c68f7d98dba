import Simulation
import Testing

@testable import Events

/// A decoded call written back as Segment JSON (``SegmentEvent/segmentJSON(timeMs:)``, for
/// `<group>-repartition`) decodes to the same event, whatever its text holds.
@Suite struct SegmentJSONTests {
    private static let now: Int64 = 1_764_000_000_000  // 2025-11-24

    /// Characters that stress a JSON writer: quotes, backslashes, every control character,
    /// DEL, non-ASCII of every UTF-8 length, emoji (one with a joiner), combining marks,
    /// the line separators JavaScript once refused, a noncharacter.
    static let pool: [Unicode.Scalar] = {
        var p: [Unicode.Scalar] = ["\"", "\\", "/", "a", "Z", "0", " ", "{", "}", ":", ",", "\u{7F}"]
        for c in UInt8(0)..<0x20 { p.append(Unicode.Scalar(c)) }
        p += ["é", "ß", "ø", "李", "\u{0301}", "\u{0308}", "\u{20DD}", "😀", "\u{200D}", "👩", "\u{2028}", "\u{2029}"]
        p += ["\u{FEFF}", "\u{FFFF}", "\u{10FFFF}", "\u{E000}", "ﬁ", "Å", "\u{212B}"]
        return p
    }()

    /// Non-empty text of up to `max` scalars (the decoder reads `""` as absent).
    static func text(_ rng: inout SplitMix64, max: Int = 24) -> String {
        var s = String.UnicodeScalarView()
        for _ in 0..<Int.random(in: 1...max, using: &rng) {
            if Int.random(in: 0..<3, using: &rng) == 0 {
                s.append(pool.randomElement(using: &rng)!)
            } else {
                s.append(Unicode.Scalar(UInt8.random(in: 0x20...0x7E, using: &rng)))
            }
        }
        return String(s)
    }

    static func maybe<T>(_ rng: inout SplitMix64, _ make: (inout SplitMix64) -> T) -> T? {
        Bool.random(using: &rng) ? make(&rng) : nil
    }

    /// A JSON string's text, written here by hand (every non-ASCII scalar as an escape:
    /// not the encoder's way, so the two are not the same code).
    static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.utf16 {
            switch u {
            case 0x22: out += "\\\""
            case 0x5C: out += "\\\\"
            case 0x20..<0x7F: out.unicodeScalars.append(Unicode.Scalar(UInt8(u)))
            default:
                let hex = String(u, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            }
        }
        return out + "\""
    }

    /// Compact JSON text of a random value nested at most `depth` deep.
    static func jsonValue(_ rng: inout SplitMix64, depth: Int) -> String {
        switch Int.random(in: 0..<(depth > 0 ? 8 : 6), using: &rng) {
        case 0: return "null"
        case 1: return Bool.random(using: &rng) ? "true" : "false"
        case 2: return String(Int64.random(in: .min ... .max, using: &rng))
        case 3: return ["0.5", "-1.25e-7", "3E+20", "-0", "1e400", "12.0"].randomElement(using: &rng)!
        case 4, 5: return jsonString(Bool.random(using: &rng) ? text(&rng) : "")
        case 6:
            let items = (0..<Int.random(in: 0...3, using: &rng)).map { _ in jsonValue(&rng, depth: depth - 1) }
            return "[" + items.joined(separator: ",") + "]"
        default:
            let items = (0..<Int.random(in: 0...3, using: &rng)).map { i in
                jsonString("k\(i)" + text(&rng, max: 3)) + ":" + jsonValue(&rng, depth: depth - 1)
            }
            return "{" + items.joined(separator: ",") + "}"
        }
    }

    static func location(_ rng: inout SplitMix64) -> Location {
        var l = Location(
            country: maybe(&rng) { text(&$0) }, region: maybe(&rng) { text(&$0) }, city: maybe(&rng) { text(&$0) },
            postalCode: maybe(&rng) { text(&$0) }, countryCode: maybe(&rng) { text(&$0) })
        if l.isEmpty { l.city = text(&rng) }
        return l
    }

    static let customNames = ["plan", "seats", "tags", "é\"x\\y", "😀\n", "nested", "n\u{0301}"]

    static func date(_ rng: inout SplitMix64) -> Int64 {
        Int64.random(in: Timestamp.earliestPlausibleMs...now, using: &rng)
    }

    static func traits(_ rng: inout SplitMix64) -> Traits {
        var t = Traits()
        t.userType = maybe(&rng) { text(&$0) }
        t.email = maybe(&rng) { text(&$0) }
        t.name = maybe(&rng) { text(&$0) }
        t.firstName = maybe(&rng) { text(&$0) }
        t.lastName = maybe(&rng) { text(&$0) }
        t.role = maybe(&rng) { text(&$0) }
        t.title = maybe(&rng) { text(&$0) }
        t.phone = maybe(&rng) { text(&$0) }
        t.timezone = maybe(&rng) { text(&$0) }
        t.leadDate = maybe(&rng) { date(&$0) }
        t.signUpDate = maybe(&rng) { date(&$0) }
        t.createdAt = maybe(&rng) { date(&$0) }
        t.subscriptionId = maybe(&rng) { text(&$0) }
        t.address = maybe(&rng) { location(&$0) }
        t.avatar = maybe(&rng) { text(&$0) }
        t.image = maybe(&rng) { text(&$0) }
        t.pqlScore = maybe(&rng) {
            [0, -0.0, 42.5, 1e-5, .leastNonzeroMagnitude, -1.7976931348623157e308, 0.1 + 0.2, Double(Int64.max)].randomElement(using: &$0)!
                + (Bool.random(using: &$0) ? Double.random(in: -1e6...1e6, using: &$0) : 0)
        }
        for name in customNames.shuffled(using: &rng) where Int.random(in: 0..<3, using: &rng) == 0 {
            t.custom.append(CustomTrait(name: name, json: jsonValue(&rng, depth: 3)))
        }
        if t.isEmpty { t.email = text(&rng) }
        return t
    }

    /// An event the decoder can produce: text non-empty, a linked id only where a call
    /// can carry one and unlike the identity, event names and group ids only on their
    /// types, locations and traits never empty, custom traits named once each.
    static func event(_ rng: inout SplitMix64) -> SegmentEvent {
        let type = EventType.allCases.randomElement(using: &rng)!
        var e = SegmentEvent(type: type, identity: text(&rng, max: 40), hasUserId: Bool.random(using: &rng))
        if e.hasUserId || type == .alias {
            e.linkedId = maybe(&rng) { text(&$0, max: 40) }
            if e.linkedId == e.identity { e.linkedId = nil }
        }
        if type == .track { e.eventName = maybe(&rng) { text(&$0) } }
        if type == .group { e.groupId = maybe(&rng) { text(&$0) } }
        e.contextGroupId = maybe(&rng) { text(&$0) }
        e.timezone = maybe(&rng) { text(&$0) }
        e.location = maybe(&rng) { location(&$0) }
        e.product = maybe(&rng) {
            ProductRef(product: text(&$0), environment: maybe(&$0) { Int64.random(in: .min ... .max, using: &$0) })
        }
        e.traits = maybe(&rng) { traits(&$0) }
        // What the source's decoder flagged is not carried (see the encoder).
        e.timeImplausible = Bool.random(using: &rng)
        e.implausibleTraitDates = UInt8.random(in: 0...3, using: &rng)
        return e
    }

    /// What the destination decodes: the given time, no decode-time flags.
    static func expected(_ e: SegmentEvent, timeMs: Int64) -> SegmentEvent {
        var x = e
        x.timeMs = timeMs
        x.timeImplausible = false
        x.implausibleTraitDates = 0
        return x
    }

    static func decode(_ json: [UInt8], custom: [String] = customNames) -> [Decoded] {
        var options = DecoderOptions()
        options.customAttributes = custom
        return SegmentDecoder(options: options).decode(json, nowMs: now)
    }

    /// The documented bound: 1024, plus 6 bytes and 4 for every string written, plus the
    /// custom traits' JSON.
    static func bound(_ e: SegmentEvent) -> Int {
        var strings: [String?] = [e.identity, e.linkedId, e.eventName, e.groupId, e.contextGroupId, e.timezone, e.product?.product]
        for l in [e.location, e.traits?.address] {
            strings += [l?.country, l?.region, l?.city, l?.postalCode, l?.countryCode]
        }
        var json = 0
        if let t = e.traits {
            strings += [t.userType, t.email, t.name, t.firstName, t.lastName, t.role, t.title, t.phone, t.timezone]
            strings += [t.subscriptionId, t.avatar, t.image]
            for c in t.custom {
                strings.append(c.name)
                json += c.json.utf8.count
            }
        }
        return strings.reduce(1024 + json) { $0 + 6 * ($1?.utf8.count ?? 0) + 4 }
    }

    @Test func randomEventsRoundTripThroughTheDecoder() async throws {
        let seed = UInt64.random(in: 0 ... .max)
        var rng = SplitMix64(seed: seed)
        var largest = 0
        for round in 0..<3000 {
            if round % 100 == 0 { await Task.yield() }  // CPU-bound: let the pool run other tests
            let e = Self.event(&rng)
            let t = Int64.random(in: Timestamp.earliestPlausibleMs...Self.now, using: &rng)
            let json = e.segmentJSON(timeMs: t)
            largest = max(largest, json.count)
            #expect(json.first == UInt8(ascii: "{"))
            #expect(json.withUnsafeBufferPointer { UTF8Check.isValid($0) }, "seed \(seed) round \(round)")
            #expect(json.count <= Self.bound(e), "seed \(seed) round \(round): \(json.count) bytes")
            let d = Self.decode(json)
            guard d.count == 1, case .event(let back) = d[0] else {
                Issue.record("seed \(seed) round \(round): \(d) from \(String(decoding: json, as: UTF8.self))")
                continue
            }
            #expect(back == Self.expected(e, timeMs: t), "seed \(seed) round \(round): \(String(decoding: json, as: UTF8.self))")
        }
        #expect(largest > 500, "the generator reaches large calls")
    }

    /// The custom traits the destination is configured for are the ones read back; the
    /// call is valid JSON whatever it is configured for.
    @Test func customTraitsAreReadByTheirConfiguredNames() throws {
        var e = SegmentEvent(type: .identify, identity: "u-1", hasUserId: true)
        var t = Traits()
        t.custom = [CustomTrait(name: "plan", json: #"{"tier":"pro","seats":[1,2]}"#), CustomTrait(name: "seats", json: "12")]
        e.traits = t
        let json = e.segmentJSON(timeMs: Self.now)
        guard case .event(let only) = try #require(Self.decode(json, custom: ["seats"]).first) else {
            Issue.record("not an event")
            return
        }
        #expect(only.traits?.custom == [CustomTrait(name: "seats", json: "12")])
        guard case .event(let none) = try #require(Self.decode(json, custom: []).first) else {
            Issue.record("not an event")
            return
        }
        #expect(none.traits == nil)
    }

    /// Where each field goes, in one call: the shape another Segment consumer reads.
    @Test func writesTheSegmentShape() {
        var e = SegmentEvent(type: .identify, identity: "u\"1", hasUserId: true)
        e.linkedId = "a\\1"
        e.timezone = "Europe/Paris"
        var t = Traits()
        t.email = "x@y.z\n"
        t.address = Location(region: "IDF", postalCode: "75001")
        t.pqlScore = 2.5
        t.leadDate = 1_700_000_000_000
        t.custom = [CustomTrait(name: "plan", json: #" { "a" : [ 1 , "b c" ] } "#)]
        e.traits = t
        let text = String(decoding: e.segmentJSON(timeMs: -5), as: UTF8.self)
        #expect(
            text
                == #"{"type":"identify","userId":"u\"1","anonymousId":"a\\1","timestamp":-5,"context":{"timezone":"Europe/Paris"},"#
                + #""traits":{"email":"x@y.z\n","leadDate":1700000000000,"address":{"state":"IDF","postalCode":"75001"},"#
                + #""pqlScore":2.5,"plan":{"a":[1,"b c"]}}}"#)
    }

    @Test func escapesEveryControlCharacter() {
        for c in UInt8(0)..<0x20 {
            let e = SegmentEvent(type: .page, identity: "a" + String(Unicode.Scalar(c)), hasUserId: false)
            let json = e.segmentJSON(timeMs: Self.now)
            #expect(!json.contains(c), "byte \(c) written raw")
            guard case .event(let back) = Self.decode(json).first else {
                Issue.record("byte \(c): not an event")
                continue
            }
            #expect(back.identity.unicodeScalars.map(\.value) == [0x61, UInt32(c)])
        }
    }

    /// What the decoder could never have produced is normalized as documented, and the
    /// call stays valid.
    @Test func fieldsTheDecoderCannotProduceAreLeftOut() throws {
        var e = SegmentEvent(type: .page, identity: "anon", hasUserId: false)
        e.linkedId = "other"  // beside an anonymousId identity: no place for it
        e.eventName = "not a track"
        e.groupId = "not a group"
        e.contextGroupId = ""
        e.location = Location()
        e.product = ProductRef(product: "", environment: 3)
        var t = Traits()
        t.pqlScore = .nan
        t.email = ""
        t.custom = [
            CustomTrait(name: "plan", json: "1"), CustomTrait(name: "plan", json: "2"),  // repeated: the first stays
            CustomTrait(name: "email", json: #""std""#),  // a standard trait's name
            CustomTrait(name: "seats", json: "{not json"),
            CustomTrait(name: "tags", json: "1 2"),
            CustomTrait(name: "nested", json: String(repeating: "[", count: 62) + String(repeating: "]", count: 62)),
        ]
        e.traits = t
        let json = e.segmentJSON(timeMs: Self.now)
        let d = Self.decode(json)
        guard d.count == 1, case .event(let back) = d[0] else {
            Issue.record("\(d) from \(String(decoding: json, as: UTF8.self))")
            return
        }
        var want = SegmentEvent(type: .page, identity: "anon", hasUserId: false)
        want.timeMs = Self.now
        var wantTraits = Traits()
        wantTraits.custom = [CustomTrait(name: "plan", json: "1")]
        want.traits = wantTraits
        #expect(back == want)
        // 61 levels inside context.traits (depth 3) reach 64, the decoder's deepest: kept;
        // 62 (above) went past it.
        var deep = SegmentEvent(type: .track, identity: "u", hasUserId: true)
        var dt = Traits()
        dt.custom = [CustomTrait(name: "nested", json: String(repeating: "[", count: 61) + String(repeating: "]", count: 61))]
        deep.traits = dt
        guard case .event(let deepBack) = Self.decode(deep.segmentJSON(timeMs: Self.now)).first else {
            Issue.record("not an event")
            return
        }
        #expect(deepBack.traits?.custom == dt.custom)
    }

    @Test func extremeNumbersRoundTrip() {
        for v in [Int64.min, Int64.max, 0, -1] {
            var e = SegmentEvent(type: .screen, identity: "u", hasUserId: true)
            e.product = ProductRef(product: "p", environment: v)
            guard case .event(let back) = Self.decode(e.segmentJSON(timeMs: Self.now)).first else {
                Issue.record("\(v): not an event")
                continue
            }
            #expect(back.product == e.product)
        }
        let e = SegmentEvent(type: .screen, identity: "u", hasUserId: true)
        let text = String(decoding: e.segmentJSON(timeMs: .min), as: UTF8.self)
        #expect(text.contains(#""timestamp":-9223372036854775808"#))
    }

    /// Any event at all, reachable or not (empty text, linked ids anywhere, custom traits
    /// of any name and text, numbers of every kind): encoding never traps, and the call is
    /// well-formed JSON the decoder reads, as an event, or refused only for an empty
    /// identity.
    @Test func anyEventEncodesToACallTheDecoderReads() {
        let seed = UInt64.random(in: 0 ... .max)
        var rng = SplitMix64(seed: seed)
        for round in 0..<3000 {
            let e = Self.anyEvent(&rng)
            let json = e.segmentJSON(timeMs: Int64.random(in: .min ... .max, using: &rng))
            let d = Self.decode(json)
            guard d.count == 1 else {
                Issue.record("seed \(seed) round \(round): \(d)")
                continue
            }
            switch d[0] {
            case .event: break
            case .invalid(let f) where f.reason == .missingIdentity && e.identity.isEmpty: break
            default: Issue.record("seed \(seed) round \(round): \(d[0]) from \(String(decoding: json, as: UTF8.self))")
            }
        }
    }

    /// Any event at all, reachable or not: empty text, linked ids and names on any type,
    /// empty locations, non-finite scores, custom traits of any name and text.
    static func anyEvent(_ rng: inout SplitMix64) -> SegmentEvent {
        func any(_ rng: inout SplitMix64) -> String? {
            switch Int.random(in: 0..<4, using: &rng) {
            case 0: nil
            case 1: ""
            default: Self.text(&rng)
            }
        }
        let names = Self.customNames + ["email", "address", "pqlScore", ""]
        let texts = ["", " ", "{", "[1,", "\"open", "1 2", "nul", "[]]", "{\"a\":1,}", "\u{FFFF}", "007", "-", "1e"]
        var e = SegmentEvent(
            type: EventType.allCases.randomElement(using: &rng)!, identity: any(&rng) ?? "", hasUserId: Bool.random(using: &rng))
        e.linkedId = Bool.random(using: &rng) ? e.identity : any(&rng)
        e.eventName = any(&rng)
        e.groupId = any(&rng)
        e.contextGroupId = any(&rng)
        e.timezone = any(&rng)
        if Bool.random(using: &rng) { e.location = Location(city: any(&rng), countryCode: any(&rng)) }
        if Bool.random(using: &rng) {
            e.product = ProductRef(product: any(&rng) ?? "", environment: Int64.random(in: -9...9, using: &rng))
        }
        if Bool.random(using: &rng) {
            var t = Traits()
            t.email = any(&rng)
            t.leadDate = Bool.random(using: &rng) ? Int64.random(in: .min ... .max, using: &rng) : nil
            t.pqlScore = [nil, .nan, .infinity, -.infinity, -0.0, .greatestFiniteMagnitude].randomElement(using: &rng)!
            if Bool.random(using: &rng) { t.address = Location() }
            for _ in 0..<Int.random(in: 0...4, using: &rng) {
                let json = Bool.random(using: &rng) ? texts.randomElement(using: &rng)! : Self.jsonValue(&rng, depth: 2)
                t.custom.append(CustomTrait(name: names.randomElement(using: &rng)!, json: json))
            }
            e.traits = t
        }
        return e
    }

    /// Int64.min is an integer that fits: it was read as a Double (its magnitude was summed
    /// as a positive Int64, which overflowed), and refused where an integer is due.
    @Test func theDecoderReadsTheLeastInt64Exactly() {
        let call = #"{"type":"page","userId":"u","context":{"product":{"product":"p","environment":-9223372036854775808}}}"#
        guard case .event(let e) = Self.decode(Array(call.utf8)).first else {
            Issue.record("not an event")
            return
        }
        #expect(e.product?.environment == .min)
        let beyond = #"{"type":"page","userId":"u","context":{"product":{"product":"p","environment":-9223372036854775809}}}"#
        guard case .invalid(let f) = Self.decode(Array(beyond.utf8)).first else {
            Issue.record("one below Int64.min was read")
            return
        }
        #expect(f.reason == .wrongType)
    }
}
