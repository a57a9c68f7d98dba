import Testing

@testable import Events

private let now: Int64 = 1_764_000_000_000  // 2025-11-24

private func decode(_ json: String, options: DecoderOptions = DecoderOptions()) -> [Decoded] {
    SegmentDecoder(options: options).decode(Array(json.utf8), nowMs: now)
}

private func event(_ json: String) throws -> SegmentEvent {
    let d = decode(json)
    try #require(d.count == 1)
    guard case .event(let e) = d[0] else {
        Issue.record("expected an event, got \(d[0])")
        throw DecodeFailure(.notJSON)
    }
    return e
}

private func failure(_ json: String) -> DecodeFailure? {
    let d = decode(json)
    guard d.count == 1, case .invalid(let f) = d[0] else { return nil }
    return f
}

@Suite struct SegmentDecoderTests {
    @Test func identifyWithTraits() throws {
        let e = try event(
            #"""
            {"type":"identify","userId":"u1","timestamp":"2025-11-24T10:00:00Z",
             "traits":{"email":"a@x.io","name":"José Núñez","title":"CTO","createdAt":"2025-01-01T00:00:00Z",
                       "address":{"city":"Paris","country":"France","state":"IDF","postalCode":75001}}}
            """#)
        #expect(e.type == .identify)
        #expect(e.identity == "u1")
        #expect(e.hasUserId)
        #expect(e.timeMs == 1_763_978_400_000)
        #expect(e.traits?.email == "a@x.io")
        #expect(e.traits?.name == "José Núñez")
        #expect(e.traits?.title == "CTO")
        #expect(e.traits?.createdAt == 1_735_689_600_000)
        #expect(e.traits?.address == Location(country: "France", region: "IDF", city: "Paris", postalCode: "75001"))
    }

    @Test func identityRules() throws {
        #expect(try event(#"{"type":"track","userId":"u","anonymousId":"a"}"#).identity == "u")
        let anon = try event(#"{"type":"track","anonymousId":"a"}"#)
        #expect(anon.identity == "a")
        #expect(!anon.hasUserId)
        #expect(try event(#"{"type":"track","userId":12345}"#).identity == "12345")
        #expect(try event(#"{"type":"track","userId":"","anonymousId":"a"}"#).identity == "a")
        #expect(try event(#"{"type":"track","userId":null,"anonymousId":"a"}"#).identity == "a")
        #expect(failure(#"{"type":"track"}"#)?.reason == .missingIdentity)
        #expect(failure(#"{"type":"track","userId":{}}"#)?.reason == .wrongType)
        #expect(failure(#"{"type":"track","userId":1.5}"#)?.reason == .wrongType)
        #expect(failure(#"{"type":"track","userId":"\#(String(repeating: "x", count: 256))"}"#)?.reason == .identityTooLong)
        #expect(try event(#"{"type":"track","userId":"\#(String(repeating: "x", count: 255))"}"#).identity.count == 255)
    }

    @Test func timeSourcesInOrder() throws {
        #expect(
            try event(#"{"type":"page","userId":"u","originalTimestamp":"2025-11-24T10:00:00Z","sentAt":"2025-11-24T11:00:00Z"}"#).timeMs
                == 1_763_978_400_000)
        #expect(
            try event(#"{"type":"page","userId":"u","sentAt":"2025-11-24T11:00:00Z","receivedAt":"2025-11-24T12:00:00Z"}"#).timeMs
                == 1_763_982_000_000)
        #expect(try event(#"{"type":"page","userId":"u","receivedAt":"2025-11-24T12:00:00Z"}"#).timeMs == 1_763_985_600_000)
        #expect(try event(#"{"type":"page","userId":"u","timestamp":1763978400123}"#).timeMs == 1_763_978_400_123)
        #expect(try event(#"{"type":"page","userId":"u"}"#).timeMs == nil)
    }

    @Test func implausibleTimesFallBack() throws {
        let future = try event(#"{"type":"page","userId":"u","timestamp":"2099-01-01T00:00:00Z"}"#)
        #expect(future.timeMs == nil)
        #expect(future.timeImplausible)
        let ancient = try event(#"{"type":"page","userId":"u","timestamp":"1999-12-31T23:59:59Z"}"#)
        #expect(ancient.timeMs == nil)
        #expect(ancient.timeImplausible)
        #expect(try event(#"{"type":"page","userId":"u","timestamp":"2025-11-25T09:00:00Z"}"#).timeMs != nil)
        #expect(failure(#"{"type":"page","userId":"u","timestamp":"soon"}"#)?.reason == .badTimestamp)
        #expect(failure(#"{"type":"page","userId":"u","timestamp":true}"#)?.reason == .wrongType)
    }

    @Test func contextTraitsAndLocation() throws {
        let e = try event(
            #"""
            {"type":"track","userId":"u","event":"Signed Up","context":{"traits":{"email":"c@x.io"},"timezone":"Europe/Paris",
             "location":{"city":"Lyon","country":"France","region":"ARA","countryCode":"FR"},"groupId":"g1"},
             "properties":{"product":{"product":"P1","environment":2}}}
            """#)
        #expect(e.traits?.email == "c@x.io")
        #expect(e.timezone == "Europe/Paris")
        #expect(e.location?.city == "Lyon")
        #expect(e.location?.countryCode == "FR")
        #expect(e.contextGroupId == "g1")
        #expect(e.eventName == "Signed Up")
        #expect(e.product == ProductRef(product: "P1", environment: 2))
    }

    /// Every field of a location lands in its own place; one with none of them is no
    /// location at all; an address in the traits reads `state` where the context reads
    /// `region`.
    @Test func locationFieldsAndEmptyLocations() throws {
        let full = try event(
            #"""
            {"type":"page","userId":"u","context":{"location":{"country":"France","region":"IDF","city":"Paris",
             "postalCode":75001,"countryCode":"FR","latitude":48.8}}}
            """#)
        #expect(full.location == Location(country: "France", region: "IDF", city: "Paris", postalCode: "75001", countryCode: "FR"))
        #expect(try event(#"{"type":"page","userId":"u","context":{"location":{}}}"#).location == nil)
        #expect(try event(#"{"type":"page","userId":"u","context":{"location":{"latitude":1,"city":""}}}"#).location == nil)
        #expect(
            try event(#"{"type":"page","userId":"u","context":{"location":{"countryCode":"DE"}}}"#).location
                == Location(countryCode: "DE"))
        let address = try event(#"{"type":"identify","userId":"u","traits":{"address":{"state":"CA","region":"x","city":"SF"}}}"#)
        #expect(address.traits?.address == Location(region: "CA", city: "SF"))
    }

    @Test func identifyTraitsWinOverContextTraits() throws {
        let e = try event(#"{"type":"identify","userId":"u","traits":{"email":"a@x"},"context":{"traits":{"email":"b@x","phone":"123"}}}"#)
        #expect(e.traits?.email == "a@x")
        #expect(e.traits?.phone == "123")
    }

    @Test func groupTraitsAreNotUserTraits() throws {
        let e = try event(#"{"type":"group","userId":"u","groupId":"acct-1","traits":{"name":"Acme","email":"billing@acme.io"}}"#)
        #expect(e.groupId == "acct-1")
        #expect(e.traits == nil)
    }

    @Test func unknownTypeIsIgnored() {
        #expect(decode(#"{"type":"flush","userId":"u"}"#) == [.ignored("flush")])
        #expect(failure(#"{"userId":"u"}"#)?.reason == .missingType)
    }

    /// Known types are recognized in the message's bytes; everything else goes the way of
    /// any text field. Each type, and near misses of each (same length and first byte,
    /// other case, escaped, duplicated, null, empty, a number).
    @Test func typesAreMatchedExactly() {
        for t in EventType.allCases {
            let name = "\(t)"
            guard case .event(let e) = decode(#"{"userId":"u","type":"\#(name)"}"#).first else {
                Issue.record("\(name)")
                continue
            }
            #expect(e.type == t)
            let near = name.dropLast() + (name.last == "x" ? "y" : "x")
            #expect(decode(#"{"userId":"u","type":"\#(near)"}"#) == [.ignored(String(near))])
            let upper = name.prefix(1).uppercased() + name.dropFirst()
            #expect(decode(#"{"userId":"u","type":"\#(upper)"}"#) == [.ignored(upper)])
            let escaped = "\\u00" + String(name.utf8.first!, radix: 16) + name.dropFirst()
            guard case .event(let e2) = decode(#"{"userId":"u","type":"\#(escaped)"}"#).first else {
                Issue.record("\(escaped)")
                continue
            }
            #expect(e2.type == t)
        }
        #expect(failure(#"{"type":"track","userId":"u","type":"page"}"#) == DecodeFailure(.duplicateKey, field: "type"))
        #expect(failure(#"{"type":"flush","userId":"u","type":"page"}"#) == DecodeFailure(.duplicateKey, field: "type"))
        #expect(failure(#"{"type":null,"userId":"u"}"#)?.reason == .missingType)
        #expect(failure(#"{"type":"","userId":"u"}"#)?.reason == .missingType)
        #expect(failure(#"{"type":3,"userId":"u"}"#) == DecodeFailure(.wrongType, field: "type"))
    }

    @Test func batchEnvelope() {
        let d = decode(
            #"{"batch":[{"type":"track","userId":"a"},{"type":"page","anonymousId":"b"},{"type":"track"},5],"sentAt":"2025-11-24T10:00:00Z"}"#
        )
        #expect(d.count == 4)
        if case .event(let e) = d[0] { #expect(e.identity == "a") } else { Issue.record("first element") }
        if case .event(let e) = d[1] { #expect(e.identity == "b") } else { Issue.record("second element") }
        #expect(d[2] == .invalid(DecodeFailure(.missingIdentity, field: "userId")))
        #expect(d[3] == .invalid(DecodeFailure(.notObject)))
    }

    @Test func batchTooLarge() {
        var o = DecoderOptions()
        o.maxBatchEvents = 3
        let d = decode(#"{"batch":[{"type":"track","userId":"a"},{},{},{}]}"#, options: o)
        #expect(d == [.invalid(DecodeFailure(.batchTooLarge))])
    }

    @Test func eventsWrittenInPlaceMatchTheArrayOfCalls() {
        // The engine decodes into DecodedCalls (events apart from outcomes); a message that
        // fails or turns out not to be a batch rolls back what it appended. Both sinks must
        // hold the same calls, and no event may outlive its outcome.
        var o = DecoderOptions()
        o.maxBatchEvents = 3
        let decoder = SegmentDecoder(options: o)
        let messages = [
            #"{"type":"identify","userId":"a","traits":{"email":"a@x.io"},"context":{"traits":{"name":"A"},"location":{"city":"Oslo"}}}"#,
            #"{"batch":[{"type":"track","userId":"b"},{"type":"page"},7]}"#,
            #"{"batch":[{"type":"track","userId":"c"},{},{},{}]}"#,  // too large: one failure, no events
            #"{"batch":[{"type":"track","userId":"d"}],"type":"page","userId":"e"}"#,  // a call, not a batch
            #"{"batch":[{"type":"track","userId":"f"}],"x":}"#,  // broken after an element was appended
            #"{"type":"alias","userId":"g"}"#,
            #"{"type":"flush","userId":"z"}"#,  // not a Segment call: ignored
            #"{"type":"group","userId":"h","groupId":"acct","traits":{"name":"Acme"}}"#,
            "not json",
        ]
        var calls = DecodedCalls()
        var array: [Decoded] = []
        for m in messages {
            Array(m.utf8).withUnsafeBufferPointer { b in
                decoder.decode(b, nowMs: 1_764_000_000_000, into: &calls)
                decoder.decode(b, nowMs: 1_764_000_000_000, into: &array)
            }
        }
        #expect(calls.count == array.count)
        #expect((0..<calls.count).map { calls[$0] } == array)
        #expect((0..<calls.count).compactMap { calls.identity($0) } == ["a", "b", "e", "g", "h"])
        #expect(calls.events.map(\.identity) == ["a", "b", "e", "g", "h"])
        #expect(array.contains(.ignored("flush")))
        #expect(array.filter { if case .invalid(let f) = $0 { f.reason == .batchTooLarge } else { false } }.count == 1)
        calls.removeAll()
        #expect(calls.count == 0 && calls.events.isEmpty)
    }

    @Test func invalidClasses() {
        #expect(failure("not json")?.reason == .notJSON)
        #expect(failure("")?.reason == .notJSON)
        #expect(failure(#"{"type":"track","userId":"u""#)?.reason == .notJSON)
        #expect(failure(#"{"type":"track","userId":"u"} trailing"#)?.reason == .notJSON)
        #expect(failure("[1,2]")?.reason == .notObject)
        #expect(failure("\"str\"")?.reason == .notObject)
        #expect(failure(#"{"a":1,}"#)?.reason == .notJSON)
        #expect(failure(#"{"type":"track","userId":"a\u0000b"}"#) == nil)  // an escaped NUL is valid JSON
        #expect(failure("{\"type\":\"track\",\"userId\":\"a\u{0}b\"}")?.reason == .notJSON)  // a raw NUL is not
        #expect(failure(#"{"type":"track","userId":"\ud800"}"#)?.reason == .notJSON)
        #expect(failure(#"{"type":"track","userId":"u","x":1e999}"#) == nil)  // unread numbers are only checked for grammar
        #expect(failure(#"{"type":"track","userId":"u","timestamp":1e999}"#)?.reason == .numberOutOfRange)
    }

    @Test func invalidUTF8() {
        let bytes: [UInt8] = Array(#"{"type":"track","userId":""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8)
        #expect(SegmentDecoder().decode(bytes, nowMs: now) == [.invalid(DecodeFailure(.invalidUTF8))])
        let overlong: [UInt8] = Array(#"{"a":""#.utf8) + [0xC0, 0xAF] + Array(#""}"#.utf8)
        #expect(SegmentDecoder().decode(overlong, nowMs: now) == [.invalid(DecodeFailure(.invalidUTF8))])
        let valid = Array(#"{"type":"track","userId":"Zoë 😀"}"#.utf8)
        guard case .event(let e) = SegmentDecoder().decode(valid, nowMs: now).first else {
            Issue.record("valid UTF-8")
            return
        }
        #expect(e.identity == "Zoë 😀")
    }

    /// UTF-8 is checked inside strings as they are scanned, and a message that fails for
    /// any other reason is checked whole: invalid UTF-8 is the reason wherever it is.
    @Test func invalidUTF8IsFoundWhereverItIs() {
        func reason(_ parts: [[UInt8]]) -> InvalidReason? {
            guard case .invalid(let f) = SegmentDecoder().decode(Array(parts.joined()), nowMs: now).first else { return nil }
            return f.reason
        }
        let bad: [UInt8] = [0xE2, 0x82]  // a truncated three-byte sequence
        #expect(reason([Array(#"{"type":"track","userId":"u","integrations":{"x":""#.utf8), bad, Array(#""}}"#.utf8)]) == .invalidUTF8)
        #expect(reason([Array(#"{"type":"track","userId":"u",""#.utf8), bad, Array(#"":1}"#.utf8)]) == .invalidUTF8)  // a key
        #expect(reason([Array(#"{"type":"track","userId":"u"}"#.utf8), [0xFF]]) == .invalidUTF8)  // after the object
        // a surrogate, unquoted
        #expect(reason([Array(#"{"type":"track","userId":"u","a":"#.utf8), [0xED, 0xA0, 0x80], Array("}".utf8)]) == .invalidUTF8)
        #expect(reason([Array(#"{"a":,"b":""#.utf8), [0xF5, 0x80, 0x80, 0x80], Array(#""}"#.utf8)]) == .invalidUTF8)  // past a syntax error
        #expect(reason([Array(#"{"type":"track","userId":"u"} é"#.utf8)]) == .notJSON)  // valid, but outside a string
        #expect(reason([Array(#"{"type":"track","userId":"u","x":"é 😀 \#u{10FFFF}"}"#.utf8)]) == nil)

        // Any byte flipped in a real message: invalid UTF-8 exactly when Swift's own
        // validation says so.
        var rng = SystemRandomNumberGenerator()
        let base = Array(
            #"{"type":"identify","userId":"Zoë","traits":{"email":"z@example.com","name":"Zoë Ünal","x":"日本"},"context":{"location":{"city":"Łódź"}}}"#
                .utf8)
        for _ in 0..<3_000 {
            var m = base
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                m[Int.random(in: 0..<m.count, using: &rng)] = UInt8.random(in: 0x80...0xFF, using: &rng)
            }
            let valid = String(validating: m, as: UTF8.self) != nil
            let r = reason([m])
            #expect((r == .invalidUTF8) == !valid, "\(m)")
        }
    }

    @Test func nestingLimit() {
        let ok = #"{"type":"track","userId":"u","extra":"# + String(repeating: "[", count: 62) + String(repeating: "]", count: 62) + "}"
        #expect(failure(ok) == nil)
        let deep = #"{"type":"track","userId":"u","extra":"# + String(repeating: "[", count: 64) + String(repeating: "]", count: 64) + "}"
        #expect(failure(deep)?.reason == .tooDeep)
        let hostile = String(repeating: "[", count: 100_000)
        #expect(failure(hostile)?.reason == .tooDeep || failure(hostile)?.reason == .notObject)
    }

    @Test func sizeLimit() {
        var o = DecoderOptions()
        o.maxMessageBytes = 100
        let big = #"{"type":"track","userId":"u","pad":""# + String(repeating: "x", count: 200) + #""}"#
        #expect(decode(big, options: o) == [.invalid(DecodeFailure(.tooLarge))])
    }

    @Test func duplicateKeysOfReadFields() {
        #expect(failure(#"{"type":"track","userId":"a","userId":"b"}"#)?.reason == .duplicateKey)
        #expect(failure(#"{"type":"identify","userId":"a","traits":{"email":"x","email":"y"}}"#)?.reason == .duplicateKey)
        #expect(failure(#"{"type":"track","userId":"a","other":1,"other":2}"#) == nil)
    }

    @Test func wrongTypesForEveryReadField() {
        let cases = [
            #"{"type":5,"userId":"u"}"#,
            #"{"type":"track","userId":[]}"#,
            #"{"type":"track","anonymousId":true}"#,
            #"{"type":"track","userId":"u","timestamp":{}}"#,
            #"{"type":"track","userId":"u","event":1}"#,
            #"{"type":"identify","userId":"u","traits":"x"}"#,
            #"{"type":"track","userId":"u","context":[]}"#,
            #"{"type":"track","userId":"u","properties":1}"#,
            #"{"type":"identify","userId":"u","traits":{"email":1}}"#,
            #"{"type":"identify","userId":"u","traits":{"name":{}}}"#,
            #"{"type":"identify","userId":"u","traits":{"leadDate":[]}}"#,
            #"{"type":"identify","userId":"u","traits":{"address":"Paris"}}"#,
            #"{"type":"identify","userId":"u","traits":{"pqlScore":"high"}}"#,
            #"{"type":"track","userId":"u","context":{"location":{"city":3}}}"#,
            #"{"type":"track","userId":"u","context":{"timezone":1}}"#,
            #"{"type":"track","userId":"u","context":{"product":3}}"#,
            #"{"type":"group","userId":"u","groupId":{}}"#,
        ]
        for json in cases {
            let r = failure(json)?.reason
            #expect(r == .wrongType, "\(json) gave \(String(describing: r))")
        }
    }

    @Test func escapedKeysAndValues() throws {
        let e = try event(#"{"t\u0079pe":"identify","userId":"a\/b\n","traits":{"em\u0061il":"x\u00e9@y"}}"#)
        #expect(e.identity == "a/b\n")
        #expect(e.traits?.email == "xé@y")
    }

    @Test func loneSurrogatesAreInvalidWhereverTheyAre() {
        // Found by the fuzzer: a custom attribute's raw text carried "\ude00" into a body.
        #expect(failure(#"{"type":"track","userId":"u","extra":"x\ude00"}"#)?.reason == .notJSON)
        #expect(failure(#"{"type":"track","userId":"u","extra":"\ud83d"}"#)?.reason == .notJSON)
        #expect(failure(#"{"type":"track","userId":"u","extra":"\ud83dx"}"#)?.reason == .notJSON)
        var o = DecoderOptions()
        o.customAttributes = ["plan"]
        let d = SegmentDecoder(options: o).decode(Array(#"{"type":"identify","userId":"u","traits":{"plan":"p\ude00"}}"#.utf8), nowMs: now)
        #expect(d == [.invalid(DecodeFailure(.notJSON))])
        guard case .event(let e) = decode(#"{"type":"track","userId":"\ud83d\ude00"}"#).first else {
            Issue.record("a valid pair")
            return
        }
        #expect(e.identity == "😀")
    }

    @Test func customAttributesCaptured() throws {
        var o = DecoderOptions()
        o.customAttributes = ["plan", "seats"]
        let d = SegmentDecoder(options: o).decode(
            Array(#"{"type":"identify","userId":"u","traits":{"plan":"pro","seats": 5,"other":1}}"#.utf8), nowMs: now)
        guard case .event(let e) = d.first else {
            Issue.record("event")
            return
        }
        #expect(e.traits?.custom == [CustomTrait(name: "plan", json: #""pro""#), CustomTrait(name: "seats", json: "5")])
    }

    @Test func eightByteScanFindsTheFirstSpecialByte() {
        // The string scanner's fast path jumps to the first quote, backslash, control or
        // non-ASCII byte of a word: every byte value in every lane (over plain text and
        // over a word with another special byte above it), plus random words.
        func naive(_ x: UInt64) -> Int? {
            (0..<8).first { k in
                let b = UInt8(truncatingIfNeeded: x >> (8 * k))
                return b == 0x22 || b == 0x5C || b < 0x20 || b >= 0x80
            }
        }
        func fast(_ x: UInt64) -> Int? {
            let m = JSONScanner.specialBytes(x)
            return m == 0 ? nil : m.trailingZeroBitCount / 8
        }
        for base: UInt64 in [0x6161_6161_6161_6161, 0x2261_6161_6161_6161, 0x6100_6161_6161_6161] {
            for lane in 0..<8 {
                for b in 0...255 {
                    let x = base & ~(UInt64(0xFF) << (8 * lane)) | UInt64(b) << (8 * lane)
                    #expect(fast(x) == naive(x), "byte \(b) in lane \(lane) of \(String(base, radix: 16))")
                }
            }
        }
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<100_000 {
            let x = rng.next() as UInt64
            if fast(x) != naive(x) {
                Issue.record("word \(String(x, radix: 16))")
                break
            }
        }
        // Strings whose special byte sits at every offset from a fast-path boundary.
        for k in 0..<20 {
            let text = String(repeating: "x", count: k)
            guard case .event(let e)? = decode(#"{"type":"track","userId":"\#(text)\"q"}"#).first else {
                Issue.record("escape at \(k)")
                continue
            }
            #expect(e.identity == text + "\"q")
            #expect(failure("{\"type\":\"track\",\"userId\":\"\(text)\u{1}\"}")?.reason == .notJSON)
        }
    }

    /// The string scanner's inlined fast path hands over to the rest of the scan at the
    /// first special byte, or when fewer than eight bytes are left: strings of every
    /// length up to three words, with each kind of special byte at each place, and 0 to 9
    /// bytes after the closing quote, scan as a byte-by-byte reference says.
    @Test func stringsScanAlikeWhereverTheFastPathStops() {
        enum Outcome: Equatable { case string(end: Int, escaped: Bool, next: Int), error }
        let specials: [[UInt8]] = [
            [], Array(#"\n"#.utf8), Array(#"\""#.utf8), Array(#"\u00e9"#.utf8),
            Array("é".utf8), [0x01], [0xFF], [0xE2, 0x82],
        ]
        func reference(_ b: [UInt8]) -> Outcome {
            var i = 1
            var escaped = false
            while i < b.count {
                switch b[i] {
                case 0x22: return .string(end: i, escaped: escaped, next: i + 1)
                case 0x5C:
                    escaped = true
                    guard i + 1 < b.count else { return .error }
                    i += b[i + 1] == UInt8(ascii: "u") ? 6 : 2
                case 0..<0x20: return .error
                case 0x80...:
                    guard let n = b.withUnsafeBufferPointer({ UTF8Check.sequenceLength($0, at: i) }) else { return .error }
                    i += n
                default: i += 1
                }
            }
            return .error
        }
        var checked = 0
        for length in 0...24 {
            for special in specials {
                for at in 0...length {
                    for after in 0...9 {
                        var text = [UInt8](repeating: UInt8(ascii: "a"), count: length)
                        text.insert(contentsOf: special, at: at)
                        let b = [0x22] + text + [0x22] + [UInt8](repeating: UInt8(ascii: " "), count: after)
                        let got: Outcome = b.withUnsafeBufferPointer { p in
                            var s = JSONScanner(p, maxDepth: 8)
                            guard let k = try? s.scanStringRaw() else { return .error }
                            #expect(k.start == 1)
                            return .string(end: k.end, escaped: k.escaped, next: s.pos)
                        }
                        #expect(got == reference(b), "\(length) bytes, \(special) at \(at), \(after) after")
                        checked += 1
                    }
                }
            }
        }
        #expect(checked == 8 * 10 * (1...25).reduce(0, +))
        // Unterminated strings, ending in plain text or inside an escape.
        for b in ["\"abc", "\"abcdefghijklmnop", "\"abcdefghijklmnop\\", "\""] {
            let bytes = Array(b.utf8)
            let failed = bytes.withUnsafeBufferPointer { p in
                var s = JSONScanner(p, maxDepth: 8)
                return (try? s.scanStringRaw()) == nil
            }
            #expect(failed, "\(b)")
        }
    }

    /// Keys are read by a compact-JSON fast path and a general one: whitespace anywhere
    /// between tokens reads the same, and a missing or extra separator is rejected either
    /// way.
    @Test func whitespaceBetweenTokensChangesNothing() throws {
        let compact =
            #"{"type":"identify","userId":"u1","traits":{"email":"a@x.io","address":{"city":"Oslo"}},"context":{"location":{"country":"Norway"},"library":{"name":"x"}},"properties":{}}"#
        let expected = try event(compact)
        #expect(expected.traits?.address?.city == "Oslo" && expected.location?.country == "Norway")
        var inString = false
        var escaped = false
        var places = 0
        for (i, ch) in compact.utf8.enumerated() {
            defer {
                if inString {
                    if escaped { escaped = false } else if ch == 0x5C { escaped = true } else if ch == 0x22 { inString = false }
                } else if ch == 0x22 {
                    inString = true
                }
            }
            guard !inString, i > 0 else { continue }
            var b = Array(compact.utf8)
            b.insert(contentsOf: Array(" \n\t ".utf8), at: i)
            let spaced = String(decoding: b, as: UTF8.self)
            #expect(try event(spaced) == expected, "whitespace at \(i): \(spaced)")
            places += 1
        }
        #expect(places == 49)  // before every token but the first
        for bad in [
            #"{"type":"page" "userId":"u"}"#, #"{"type":"page",,"userId":"u"}"#, #"{,"type":"page","userId":"u"}"#,
            #"{"type":"page","userId":"u",}"#, #"{"type" "page","userId":"u"}"#, #"{"type":"page","userId":"u", }"#,
            #"{"type":"page", ,"userId":"u"}"#, #"{"type":"page","userId""u"}"#, #"{"type":"page","userId":"u""#,
        ] {
            #expect(failure(bad)?.reason == .notJSON, "\(bad)")
        }
    }

    /// Keys are compared with literals, and the fold's values with stored ones, a word at
    /// a time (first and last word, possibly overlapping): runs of every length up to
    /// five words, equal, and different in each single byte, each compared within
    /// buffers of exactly that length.
    @Test func keysCompareEqualOnlyWhenEveryByteIs() throws {
        var rng = SystemRandomNumberGenerator()
        for n in 0...40 {
            let a = UnsafeMutablePointer<UInt8>.allocate(capacity: max(n, 1))
            let b = UnsafeMutablePointer<UInt8>.allocate(capacity: max(n, 1))
            defer {
                a.deallocate()
                b.deallocate()
            }
            for i in 0..<n {
                a[i] = UInt8.random(in: 0x20...0x7E, using: &rng)
                b[i] = a[i]
            }
            #expect(ByteRuns.equal(a, b, count: n), "equal, \(n) bytes")
            for i in 0..<n {
                b[i] ^= 0x01
                #expect(!ByteRuns.equal(a, b, count: n), "byte \(i) of \(n) differs")
                b[i] ^= 0x81  // a high bit only
                #expect(!ByteRuns.equal(a, b, count: n), "byte \(i) of \(n) differs in its high bit")
                b[i] = a[i]
            }
        }
        // Through the decoder: a key one byte off in its last place is not the key.
        #expect(try event(#"{"type":"page","userId":"u","timestamP":"2025-11-24T10:00:00Z"}"#).timeMs == nil)
        #expect(try event(#"{"type":"page","userId":"u","anonymousIe":"x"}"#).identity == "u")
    }

    @Test func traitsWithAnySingleFieldAreNotEmpty() {
        var cases: [Traits] = []
        func with(_ f: (inout Traits) -> Void) {
            var t = Traits()
            f(&t)
            cases.append(t)
        }
        with { $0.userType = "LEAD" }
        with { $0.email = "e" }
        with { $0.name = "n" }
        with { $0.firstName = "f" }
        with { $0.lastName = "l" }
        with { $0.role = "r" }
        with { $0.title = "t" }
        with { $0.phone = "p" }
        with { $0.timezone = "z" }
        with { $0.leadDate = 1 }
        with { $0.signUpDate = 1 }
        with { $0.createdAt = 1 }
        with { $0.subscriptionId = "s" }
        with { $0.address = Location(city: "c") }
        with { $0.avatar = "a" }
        with { $0.image = "i" }
        with { $0.pqlScore = 1 }
        with { $0.custom = [CustomTrait(name: "k", json: "1")] }
        // Every stored field is covered: a field added to Traits must be added to isEmpty and here.
        #expect(cases.count == Mirror(reflecting: Traits()).children.count)
        for t in cases { #expect(!t.isEmpty, "\(t)") }
        #expect(Traits().isEmpty)
    }
}
