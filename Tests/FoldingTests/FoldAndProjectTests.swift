import Events
import Foundation
import Simulation
import Testing

@testable import Folding

private let now: Int64 = 1_764_000_000_000

/// Decodes one JSON call (test helper).
private func ev(_ json: String) -> SegmentEvent {
    guard case .event(let e)? = SegmentDecoder().decode(Array(json.utf8), nowMs: now).first else {
        fatalError("test fixture does not decode: \(json)")
    }
    return e
}

private func body(_ state: UserState, id: String = "u1") -> [String: Any] {
    var adj = Adjustments()
    let b = Projector().body(identifyId: id, state: state, adjustments: &adj)!
    return try! JSONSerialization.jsonObject(with: Data(b)) as! [String: Any]
}

@Suite struct FoldTests {
    let folder = Folder()

    @Test func firstAndLastSeenAreMinAndMax() {
        var s = UserState()
        folder.fold(ev(#"{"type":"page","userId":"u1"}"#), timeMs: 2000, offset: 1, into: &s)
        folder.fold(ev(#"{"type":"page","userId":"u1"}"#), timeMs: 1000, offset: 2, into: &s)
        folder.fold(ev(#"{"type":"page","userId":"u1"}"#), timeMs: 3000, offset: 3, into: &s)
        #expect(s.firstVisitMs == 1000)
        #expect(s.lastSeenMs == 3000)
        let b = body(s)
        #expect(b["firstVisitDate"] as? Int64 == 1000)
        #expect(b["lastSeenDate"] as? Int64 == 3000)
    }

    @Test func latestByEventTimeNotArrival() {
        var s = UserState()
        folder.fold(ev(#"{"type":"identify","userId":"u1","traits":{"email":"new@x.io"}}"#), timeMs: 2000, offset: 1, into: &s)
        // A late event with an older time must not overwrite (it only moves firstVisit).
        folder.fold(ev(#"{"type":"identify","userId":"u1","traits":{"email":"old@x.io"}}"#), timeMs: 1000, offset: 2, into: &s)
        #expect(s.email?.value == "new@x.io")
        #expect(s.firstVisitMs == 1000)
        // Equal times: the higher offset wins.
        folder.fold(ev(#"{"type":"identify","userId":"u1","traits":{"email":"tie@x.io"}}"#), timeMs: 2000, offset: 3, into: &s)
        #expect(s.email?.value == "tie@x.io")
    }

    @Test func replayingAnEventChangesNothing() {
        var s = UserState()
        let e = ev(#"{"type":"identify","userId":"u1","traits":{"email":"a@x.io","name":"A"},"context":{"location":{"city":"Paris"}}}"#)
        #expect(folder.fold(e, timeMs: 1000, offset: 7, into: &s))
        let before = s
        #expect(!folder.fold(e, timeMs: 1000, offset: 7, into: &s))
        #expect(s == before)
    }

    @Test func permutationsGiveTheSameProjection() {
        // Kafka hands a partition's events over in offset order, so a permutation of
        // the events is a permutation of their times: offsets follow arrival.
        let events: [(String, Int64)] = [
            (#"{"type":"identify","userId":"u1","traits":{"email":"a@x.io","name":"Ann"}}"#, 1000),
            (#"{"type":"identify","userId":"u1","traits":{"email":"b@x.io"}}"#, 3000),
            (#"{"type":"page","userId":"u1","context":{"location":{"city":"Paris","country":"France"}}}"#, 2000),
            (#"{"type":"page","userId":"u1","context":{"location":{"city":"Lyon"}}}"#, 2500),
            (#"{"type":"identify","anonymousId":"u1","traits":{"name":"Bob","leadDate":1500}}"#, 500),
            (#"{"type":"group","userId":"u1","groupId":"acct-1"}"#, 4000),
            (#"{"type":"track","userId":"u1","event":"Report Created"}"#, 9_000_000),
            (#"{"type":"track","userId":"u1","event":"Report Created","context":{"groupId":"acct-2"}}"#, 9_500_000),
        ]
        var config = FoldConfig()
        config.keyEvents = [.init(name: "Report Created", weight: 5, cap: 10)]
        config.sendNumberOfVisits = true
        let folder = Folder(config: config)
        var reference: [UInt8]? = nil
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<100 {
            var order = events
            order.shuffle(using: &rng)
            var s = UserState()
            for (offset, (json, t)) in order.enumerated() { folder.fold(ev(json), timeMs: t, offset: Int64(offset), into: &s) }
            var adj = Adjustments()
            let b = Projector(config: config).body(identifyId: "u1", state: s, nowMs: 9_600_000, adjustments: &adj)
            if reference == nil { reference = b }
            #expect(b == reference, "\(order.map(\.1))")
        }
        let final = try! JSONSerialization.jsonObject(with: Data(reference!)) as! [String: Any]
        #expect(final["email"] as? String == "b@x.io")
        #expect((final["location"] as? [String: Any])?["city"] as? String == "Lyon")
        #expect((final["location"] as? [String: Any])?["countryCode"] as? String == "FR")
        #expect(final["name"] as? String == "Ann")
        #expect(final["userType"] as? String == "USER")
        #expect(final["numberOfVisits"] as? Int == 2)  // 0.5–4 s; then 9 000 s and 9 500 s (8 min apart: one visit)
        #expect(final["lastSubscriptionIdentifier"] as? String == "acct-2")
        #expect(final["allSubscriptionIdentifiers"] as? [String] == ["acct-2", "acct-1"])
    }

    @Test func tiesAreBrokenByOffset() {
        var s = UserState()
        folder.fold(ev(#"{"type":"page","userId":"u","context":{"location":{"city":"Paris"}}}"#), timeMs: 2000, offset: 7, into: &s)
        folder.fold(ev(#"{"type":"page","userId":"u","context":{"location":{"city":"Lyon"}}}"#), timeMs: 2000, offset: 8, into: &s)
        #expect(s.city?.value == "Lyon")
        var t = UserState()
        folder.fold(
            ev(#"{"type":"page","userId":"u","context":{"location":{"city":"Lyon"}}}"#), timeMs: 2000, offset: 8, source: 1, into: &t)
        folder.fold(
            ev(#"{"type":"page","userId":"u","context":{"location":{"city":"Paris"}}}"#), timeMs: 2000, offset: 7, source: 2, into: &t)
        #expect(t.city?.value == "Lyon")  // from another source, the lower offset still loses the tie
    }

    /// A routed call's tie-break (``Stamp/position(offset:call:)``): of two calls of one
    /// record at the same event time, the later one wins, as between records. A record of
    /// routed calls holds calls of many source messages under one offset; before their
    /// index broke the tie, the first of them kept the register. A source call keeps its
    /// offset as its stamp (builds before it share the state while instances restart).
    @Test func tiesWithinOneRecordOfRoutedCallsAreBrokenByTheCallsPlace() {
        let paris = ev(#"{"type":"page","userId":"u","context":{"location":{"city":"Paris"}}}"#)
        let lyon = ev(#"{"type":"page","userId":"u","context":{"location":{"city":"Lyon"}}}"#)
        func fold(_ e: SegmentEvent, call: UInt32, into s: inout UserState) {
            var e = e
            var adj = Adjustments()
            folder.fold(
                spending: &e, timeMs: 2000, offset: 7, source: 3, call: call, tieBreak: Stamp.position(offset: 7, call: call),
                into: &s, adjustments: &adj)
        }
        var s = UserState()
        fold(paris, call: 0, into: &s)
        fold(lyon, call: 1, into: &s)
        #expect(s.city?.value == "Lyon")
        // Two states of one user merged either way: the later call's value.
        var a = UserState()
        var b = UserState()
        fold(lyon, call: 1, into: &a)
        fold(paris, call: 0, into: &b)
        var ab = a
        folder.merge(b, into: &ab)
        folder.merge(a, into: &b)
        #expect(ab.city?.value == "Lyon" && b.city?.value == "Lyon")
        // Without the tie-break (a source call), the stamp is the offset itself.
        var plain = UserState()
        folder.fold(paris, timeMs: 2000, offset: 7, source: 3, call: 0, into: &plain)
        #expect(plain.city?.stamp == Stamp(timeMs: 2000, offset: 7))
        // The next message's first call is later still; offsets past 2^43 saturate.
        #expect(Stamp.position(offset: 7, call: .max) < Stamp.position(offset: 8, call: 0))
        #expect(Stamp.position(offset: .max, call: 0) == .max && Stamp.position(offset: -1, call: 0) < 0)
    }

    @Test func aReplayedEventIsSkipped() {
        var config = FoldConfig()
        config.keyEvents = [.init(name: "Signed Up")]
        let folder = Folder(config: config)
        var s = UserState()
        let e = ev(#"{"type":"track","userId":"u","event":"Signed Up"}"#)
        #expect(folder.fold(e, timeMs: 1000, offset: 5, into: &s))
        let once = s
        #expect(!folder.fold(e, timeMs: 1000, offset: 5, into: &s))
        #expect(!folder.fold(e, timeMs: 1000, offset: 4, into: &s))
        #expect(s == once)
        #expect(s.keyEventCounts == [KeyEventCount(index: 0, count: 1)])
    }

    @Test func userTypeRules() {
        var s = UserState()
        folder.fold(ev(#"{"type":"page","anonymousId":"a"}"#), timeMs: 1, offset: 1, into: &s)
        #expect(Projector().userType(s) == .anonymous)
        folder.fold(ev(#"{"type":"identify","anonymousId":"a","traits":{"leadDate":"2025-01-01"}}"#), timeMs: 2, offset: 2, into: &s)
        #expect(Projector().userType(s) == .lead)
        folder.fold(ev(#"{"type":"page","userId":"a"}"#), timeMs: 3, offset: 3, into: &s)
        #expect(Projector().userType(s) == .user)
        folder.fold(ev(#"{"type":"identify","userId":"a","traits":{"userType":"lead"}}"#), timeMs: 4, offset: 4, into: &s)
        #expect(Projector().userType(s) == .lead)  // an explicit value is honoured
        folder.fold(ev(#"{"type":"identify","userId":"a","traits":{"userType":"superuser"}}"#), timeMs: 5, offset: 5, into: &s)
        #expect(Projector().userType(s) == .lead)  // an invalid value is not
    }

    @Test func nameFromFirstAndLast() {
        var s = UserState()
        folder.fold(
            ev(#"{"type":"identify","userId":"u","traits":{"firstName":"Zoë","lastName":"O'Brien"}}"#), timeMs: 1, offset: 1, into: &s)
        #expect(body(s)["name"] as? String == "Zoe OBrien")
    }

    @Test func signUpFromCreatedAtAndTitleAsRole() {
        var s = UserState()
        folder.fold(
            ev(#"{"type":"identify","userId":"u","traits":{"createdAt":"2025-01-01T00:00:00Z","title":"CTO"}}"#), timeMs: 1, offset: 1,
            into: &s)
        let b = body(s)
        #expect(b["signUpDate"] as? Int64 == 1_735_689_600_000)
        #expect(b["role"] as? String == "CTO")
    }
}

@Suite struct ProjectorSchemaTests {
    @Test func oversizeValuesAreFittedAndCounted() {
        var s = UserState()
        let st = Stamp(timeMs: 1, offset: 1)
        s.email = Latest(value: String(repeating: "e", count: 251) + "@x.io", stamp: st)
        s.name = Latest(value: String(repeating: "n", count: 300), stamp: st)
        s.role = Latest(value: String(repeating: "r", count: 300), stamp: st)
        s.phone = Latest(value: "+1 202 555 0147 ext 12345", stamp: st)
        s.timezone = Latest(value: String(repeating: "t", count: 51), stamp: st)
        s.city = Latest(value: String(repeating: "c", count: 200), stamp: st)
        s.countryCode = Latest(value: "TOOLONGCODE", stamp: st)
        s.image = Latest(value: "https://x/" + String(repeating: "i", count: 300), stamp: st)
        var adj = Adjustments()
        let b = Projector().body(identifyId: "u", state: s, adjustments: &adj)!
        #expect(FoldspaceSchema.violations(body: b, pathId: "u") == [])
        #expect(adj.count("email", .omitted) == 1)
        #expect(adj.count("name", .truncated) == 1)
        #expect(adj.count("role", .truncated) == 1)
        #expect(adj.count("phone", .omitted) == 1)
        #expect(adj.count("timezone", .omitted) == 1)
        #expect(adj.count("location.city", .truncated) == 1)
        #expect(adj.count("location.countryCode", .omitted) == 1)
        #expect(adj.count("image", .omitted) == 1)
    }

    @Test func randomStatesAlwaysPassTheSchema() {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("aZ09 _-()'.,éßø李😀\"\\\n\t/?#%")
        func text(_ max: Int) -> String {
            String((0..<Int.random(in: 0...max, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! })
        }
        for _ in 0..<500 {
            var s = UserState()
            let st = Stamp(timeMs: 1, offset: 1)
            if Bool.random(using: &rng) { s.email = Latest(value: text(300), stamp: st) }
            if Bool.random(using: &rng) { s.name = Latest(value: text(300), stamp: st) }
            if Bool.random(using: &rng) { s.role = Latest(value: text(300), stamp: st) }
            if Bool.random(using: &rng) { s.phone = Latest(value: text(30), stamp: st) }
            if Bool.random(using: &rng) { s.timezone = Latest(value: text(60), stamp: st) }
            if Bool.random(using: &rng) { s.city = Latest(value: text(200), stamp: st) }
            if Bool.random(using: &rng) { s.country = Latest(value: text(200), stamp: st) }
            if Bool.random(using: &rng) { s.countryCode = Latest(value: text(10), stamp: st) }
            if Bool.random(using: &rng) { s.image = Latest(value: text(300), stamp: st) }
            if Bool.random(using: &rng) { s.leadDate = Int64.random(in: 0...4_000_000_000_000, using: &rng) }
            s.sawUserId = Bool.random(using: &rng)
            s.firstVisitMs = 1
            s.lastSeenMs = 2
            let id = text(255).isEmpty ? "x" : text(255)
            var adj = Adjustments()
            guard let b = Projector().body(identifyId: id, state: s, adjustments: &adj) else { continue }
            let v = FoldspaceSchema.violations(body: b, pathId: id)
            #expect(v.isEmpty, "\(v) for \(String(decoding: b, as: UTF8.self))")
        }
    }

    @Test func identicalStateGivesIdenticalBytes() {
        var s = UserState()
        Folder().fold(ev(#"{"type":"identify","userId":"u","traits":{"email":"a@x.io"}}"#), timeMs: 1, offset: 1, into: &s)
        var adj = Adjustments()
        let a = Projector().body(identifyId: "u", state: s, adjustments: &adj)!
        let b = Projector().body(identifyId: "u", state: s, adjustments: &adj)!
        #expect(a == b)
        #expect(bodyHash(a) == bodyHash(b))
        #expect(!String(decoding: a, as: UTF8.self).contains("null"))
    }

    @Test func schemaCheckerCatchesViolations() {
        let bad = [
            #"{"identifyId":"u"}"#,
            #"{"userType":"ADMIN","identifyId":"u"}"#,
            #"{"userType":"USER","identifyId":"u","name":"O'Brien"}"#,
            #"{"userType":"USER","identifyId":"u","phone":"123456789012345678901"}"#,
            #"{"userType":"USER","identifyId":"u","email":null}"#,
            #"{"userType":"USER","identifyId":"u","pqlScore":100.5}"#,
            #"{"userType":"USER","identifyId":"u","products":[{"product":"p","environment":5}]}"#,
            #"{"userType":"USER","identifyId":"u","allSubscriptionIdentifiers":["a","a"]}"#,
            #"{"userType":"USER","identifyId":"u","lastSeenDate":1.5}"#,
            #"{"userType":"USER","identifyId":"u","id":"x"}"#,
            #"{"userType":"USER","identifyId":"other"}"#,
        ]
        for b in bad {
            #expect(!FoldspaceSchema.violations(body: Array(b.utf8), pathId: "u").isEmpty, "\(b)")
        }
        #expect(
            FoldspaceSchema.violations(
                body: Array(
                    #"{"userType":"USER","identifyId":"u","pqlScore":75.5,"products":[{"product":"X7B69NRTTBM7","environment":1}]}"#.utf8),
                pathId: "u") == [])
    }
}
