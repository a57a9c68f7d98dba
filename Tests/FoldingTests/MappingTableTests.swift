import Events
import Foundation
import Simulation
import Testing

@testable import Folding

private let now: Int64 = 1_764_000_000_000

private func event(_ json: String, custom: [String] = []) -> SegmentEvent {
    var o = DecoderOptions()
    o.customAttributes = custom
    guard case .event(let e)? = SegmentDecoder(options: o).decode(Array(json.utf8), nowMs: now).first else {
        fatalError("fixture does not decode: \(json)")
    }
    return e
}

/// Folds the calls in order (offsets follow) and returns the projected body.
private func project(
    _ calls: [(String, Int64)], config: FoldConfig = FoldConfig(), nowMs: Int64 = now,
    adjustments: UnsafeMutablePointer<Adjustments>? = nil
) -> [String: Any] {
    let folder = Folder(config: config)
    var s = UserState()
    var adj = Adjustments()
    for (i, (json, t)) in calls.enumerated() {
        folder.fold(event(json, custom: config.customAttributes), timeMs: t, offset: Int64(i), into: &s, adjustments: &adj)
    }
    let b = Projector(config: config).body(identifyId: "u", state: s, nowMs: nowMs, adjustments: &adj)!
    adjustments?.pointee = adj
    #expect(FoldspaceSchema.violations(body: b, pathId: "u") == [], "\(String(decoding: b, as: UTF8.self))")
    return try! JSONSerialization.jsonObject(with: Data(b)) as! [String: Any]
}

@Suite struct MappingTableTests {
    @Test func everyTraitRow() {
        let b = project([
            (
                #"""
                {"type":"identify","userId":"u","traits":{"email":"a@x.io","name":"Ann Lee","role":"Admin","title":"CTO",
                 "phone":"+1-202-555-0147","timezone":"America/New_York","leadDate":1734539909141,"signUpDate":"2024-12-18T16:38:29.141Z",
                 "avatar":"https://img/a.png","image":"https://img/b.png","address":{"city":"SF","state":"CA","country":"United States","postalCode":"94107"}}}
                """#, now - 1000
            )
        ])
        #expect(b["email"] as? String == "a@x.io")
        #expect(b["name"] as? String == "Ann Lee")
        #expect(b["role"] as? String == "Admin")  // role before title
        #expect(b["phone"] as? String == "+1-202-555-0147")
        #expect(b["timezone"] as? String == "America/New_York")
        #expect(b["leadDate"] as? Int64 == 1_734_539_909_141)
        #expect(b["signUpDate"] as? Int64 == 1_734_539_909_141)
        #expect(b["image"] as? String == "https://img/a.png")  // avatar before image
        let loc = b["location"] as? [String: Any]
        #expect(loc?["city"] as? String == "SF")
        #expect(loc?["region"] as? String == "CA")
        #expect(loc?["countryCode"] as? String == "US")
        #expect(b["userType"] as? String == "USER")
    }

    @Test func contextTimezoneBeatsTraitTimezone() {
        let b = project([(#"{"type":"identify","userId":"u","traits":{"timezone":"Europe/Paris"},"context":{"timezone":"Asia/Tokyo"}}"#, 1)]
        )
        #expect(b["timezone"] as? String == "Asia/Tokyo")
    }

    @Test func earliestDatesWin() {
        let b = project([
            (#"{"type":"identify","userId":"u","traits":{"leadDate":1735000002000,"createdAt":"2025-01-02T00:00:00Z"}}"#, 10),
            (#"{"type":"identify","userId":"u","traits":{"leadDate":1735000001000,"createdAt":"2025-01-01T00:00:00Z"}}"#, 20),
            (#"{"type":"identify","userId":"u","traits":{"leadDate":1735000003000}}"#, 30),
        ])
        #expect(b["leadDate"] as? Int64 == 1_735_000_001_000)
        #expect(b["signUpDate"] as? Int64 == 1_735_689_600_000)
    }

    @Test func leadDateMakesALeadAndUserIdAUser() {
        let lead = project([(#"{"type":"identify","anonymousId":"u","traits":{"leadDate":"2025-01-01"}}"#, 1)])
        #expect(lead["userType"] as? String == "LEAD")
        let anon = project([(#"{"type":"page","anonymousId":"u"}"#, 1)])
        #expect(anon["userType"] as? String == "ANONYMOUS")
        let explicitAnon = project([(#"{"type":"identify","userId":"u","traits":{"userType":"ANONYMOUS"}}"#, 1)])
        #expect(explicitAnon["userType"] as? String == "ANONYMOUS")
    }

    @Test func subscriptionsFromEverySourceNewestFirstAtMostOneHundred() {
        var calls: [(String, Int64)] = [
            (#"{"type":"group","userId":"u","groupId":"g-call"}"#, 10),
            (#"{"type":"track","userId":"u","event":"x","context":{"groupId":"g-context"}}"#, 20),
            (#"{"type":"identify","userId":"u","traits":{"subscriptionId":"g-trait"}}"#, 30),
            (#"{"type":"group","userId":"u","groupId":"g-call"}"#, 5),  // older repeat: order unchanged
        ]
        var b = project(calls)
        #expect(b["lastSubscriptionIdentifier"] as? String == "g-trait")
        #expect(b["allSubscriptionIdentifiers"] as? [String] == ["g-trait", "g-context", "g-call"])
        calls = (0..<150).map { (#"{"type":"group","userId":"u","groupId":"acct-\#($0)"}"#, Int64(1000 + $0)) }
        b = project(calls)
        let all = b["allSubscriptionIdentifiers"] as? [String] ?? []
        #expect(all.count == 100)
        #expect(all.first == "acct-149")
        #expect(all.last == "acct-50")
    }

    @Test func productsUniqueMostRecentTwentyWithValidEnvironments() {
        var calls: [(String, Int64)] = (0..<25).map {
            (
                #"{"type":"track","userId":"u","event":"e","properties":{"product":{"product":"P\#($0)","environment":\#($0 % 4 + 1)}}}"#,
                Int64(100 + $0)
            )
        }
        calls.append((#"{"type":"track","userId":"u","event":"e","context":{"product":{"product":"P24","environment":1}}}"#, 200))
        calls.append((#"{"type":"track","userId":"u","event":"e","context":{"product":{"product":"BAD","environment":7}}}"#, 300))
        calls.append(
            (
                #"{"type":"track","userId":"u","event":"e","context":{"product":{"product":"WAY-TOO-LONG-PRODUCT-CODE","environment":1}}}"#,
                301
            ))
        var adj = Adjustments()
        let b = project(calls, adjustments: &adj)
        let products = b["products"] as? [[String: Any]] ?? []
        #expect(products.count == 20)
        #expect(products.first?["product"] as? String == "P24")
        #expect(products.first?["environment"] as? Int == 1)
        #expect(!products.contains { $0["product"] as? String == "BAD" })
        #expect(adj.count("products", .omitted) == 2)
    }

    @Test(arguments: [
        ("France", "FR"), ("Deutschland", "DE"), ("United Kingdom", "GB"), ("UK", "GB"), ("United States of America", "US"),
        ("Côte d'Ivoire", "CI"), ("Korea, Republic of", "KR"), ("Viet Nam", "VN"), ("the Netherlands", "NL"), ("de", "DE"),
        ("USA", "US"), ("BRA", "BR"), ("Bosnia & Herzegovina", "BA"), ("São Tomé and Príncipe", "ST"),
    ])
    func countryCodeFromName(name: String, code: String) {
        #expect(CountryCodes.code(for: name) == code)
    }

    @Test func countryCodeExplicitUnlessANewerCountrySaysOtherwise() {
        var b = project([(#"{"type":"page","userId":"u","context":{"location":{"country":"France","countryCode":"FR"}}}"#, 1)])
        #expect((b["location"] as? [String: Any])?["countryCode"] as? String == "FR")
        b = project([
            (#"{"type":"page","userId":"u","context":{"location":{"countryCode":"FR"}}}"#, 1),
            (#"{"type":"page","userId":"u","context":{"location":{"country":"Germany"}}}"#, 2),
        ])
        #expect((b["location"] as? [String: Any])?["countryCode"] as? String == "DE")
        b = project([(#"{"type":"page","userId":"u","context":{"location":{"country":"Atlantis"}}}"#, 1)])
        #expect((b["location"] as? [String: Any])?["countryCode"] == nil)
    }

    @Test func locationFieldByFieldLatest() {
        let b = project([
            (#"{"type":"page","userId":"u","context":{"location":{"city":"Paris","country":"France"}}}"#, 10),
            (#"{"type":"page","userId":"u","context":{"location":{"city":"Lyon"}}}"#, 20),
            (#"{"type":"identify","userId":"u","traits":{"address":{"city":"Nice","postalCode":"06000"}}}"#, 15),
        ])
        let loc = b["location"] as? [String: Any]
        #expect(loc?["city"] as? String == "Lyon")
        #expect(loc?["country"] as? String == "France")
        #expect(loc?["postalCode"] as? String == "06000")
    }

    @Test func customAttributesOnlyConfiguredOnesAsObjects() {
        var config = FoldConfig()
        config.customAttributes = ["plan", "company"]
        let b = project(
            [(#"{"type":"identify","userId":"u","traits":{"plan":"pro","company":{"name":"Acme","size":5},"secret":"x"}}"#, 1)],
            config: config)
        let ca = b["customAttributes"] as? [String: Any]
        #expect((ca?["plan"] as? [String: Any])?["value"] as? String == "pro")
        #expect((ca?["company"] as? [String: Any])?["name"] as? String == "Acme")
        #expect(ca?["secret"] == nil)
        #expect(project([(#"{"type":"identify","userId":"u","traits":{"plan":"pro"}}"#, 1)])["customAttributes"] == nil)
    }

    @Test func emptyStringsAreAbsent() {
        let b = project([
            (#"{"type":"identify","userId":"u","traits":{"email":"a@x.io","name":"Ann"}}"#, 1),
            (#"{"type":"identify","userId":"u","traits":{"email":"","name":""}}"#, 2),
        ])
        #expect(b["email"] as? String == "a@x.io")
        #expect(b["name"] as? String == "Ann")
    }

    @Test func numberOfVisitsOnlyWhenConfigured() {
        let calls = [(#"{"type":"page","userId":"u"}"#, Int64(1))]
        #expect(project(calls)["numberOfVisits"] == nil)
        var config = FoldConfig()
        config.sendNumberOfVisits = true
        #expect(project(calls, config: config)["numberOfVisits"] as? Int == 1)
    }
}

@Suite struct VisitAndScoreTests {
    let gap: Int64 = 30 * 60 * 1000

    func visits(_ times: [Int64]) -> UInt32 {
        let folder = Folder()
        var s = UserState()
        for (i, t) in times.enumerated() {
            folder.fold(SegmentEvent(type: .page, identity: "u", hasUserId: true), timeMs: t, offset: Int64(i), into: &s)
        }
        return s.visits
    }

    @Test func sessionization() {
        #expect(visits([0]) == 1)
        #expect(visits([0, gap]) == 1)  // exactly the gap: same visit
        #expect(visits([0, gap + 1]) == 2)
        #expect(visits([0, 10, 20, gap * 3, gap * 3 + 5]) == 2)
        // A late event that bridges two visits merges them.
        #expect(visits([0, gap * 2, gap]) == 1)
        // A late event in a gap of its own is a visit of its own.
        #expect(visits([0, gap * 10, gap * 5]) == 3)
        // Order does not matter.
        let times: [Int64] = [0, 5, gap * 2, gap * 2 + 100, gap * 7, gap * 4, gap * 4 + gap / 2]
        var rng = SystemRandomNumberGenerator()
        let expected = visits(times.sorted())
        for _ in 0..<50 { #expect(visits(times.shuffled(using: &rng)) == expected) }
        #expect(expected == 4)
    }

    /// The spans kept are the newest `maxSpans`, oldest first, however many visits came
    /// before (the list grows in steps and then shifts in place); a late event is judged
    /// against them.
    @Test func theNewestSpansAreKeptInOrder() {
        let folder = Folder()
        var s = UserState()
        var copies: [UserState] = []
        for v in 0..<20 {
            let t = Int64(v) * gap * 3
            folder.fold(SegmentEvent(type: .page, identity: "u", hasUserId: true), timeMs: t, offset: Int64(2 * v), into: &s)
            folder.fold(SegmentEvent(type: .page, identity: "u", hasUserId: true), timeMs: t + 60_000, offset: Int64(2 * v + 1), into: &s)
            copies.append(s)  // a copy kept (as a checkpoint does) must not see later spans
            let kept = max(0, v + 1 - UserState.maxSpans)...v
            #expect(s.spans.map(\.start) == kept.map { Int64($0) * gap * 3 }, "after visit \(v)")
            #expect(s.spans.allSatisfy { $0.end == $0.start + 60_000 })
        }
        #expect(s.visits == 20)
        for (v, c) in copies.enumerated() { #expect(c.spans.last?.start == Int64(v) * gap * 3 && c.visits == UInt32(v + 1)) }
        // Inside the oldest span kept: the same visit. Between two kept spans: a new one.
        folder.fold(SegmentEvent(type: .page, identity: "u", hasUserId: true), timeMs: 12 * gap * 3 + 1_000, offset: 100, into: &s)
        #expect(s.visits == 20)
        folder.fold(SegmentEvent(type: .page, identity: "u", hasUserId: true), timeMs: 13 * gap * 3 + gap + gap / 2, offset: 101, into: &s)
        #expect(s.visits == 21)
    }

    @Test func activeDaysBitsetAndScoreFormula() {
        var config = FoldConfig()
        config.keyEvents = [.init(name: "Report Created", weight: 4, cap: 3)]
        let folder = Folder(config: config)
        var s = UserState()
        let day: Int64 = 86_400_000
        let today: Int64 = 20_000 * day
        // Active on 5 distinct days in the last 28, one day 40 days ago, 6 visits.
        let times = [today - 40 * day, today - 20 * day, today - 10 * day, today - 3 * day, today - day, today - day + 60_000]
        for (i, t) in times.enumerated() {
            folder.fold(SegmentEvent(type: .page, identity: "u", hasUserId: true), timeMs: t, offset: Int64(i), into: &s)
        }
        var track = SegmentEvent(type: .track, identity: "u", hasUserId: true)
        track.eventName = "Report Created"
        for i in 0..<5 { folder.fold(track, timeMs: today - day + 120_000, offset: Int64(10 + i), into: &s) }
        #expect(s.visits == 5)
        let score = Projector(config: config).pqlScore(s, nowMs: today + 1000)!
        // x = 1·5 + 2·4 (active days within 28: −20, −10, −3, −1) + 4·min(5, 3) = 25
        let x = 1.0 * 5 + 2.0 * 4 + 4.0 * 3
        let expected = ((100 * (1 - exp(-x / 50)) * pow(0.5, 1.0 / 14)) * 10).rounded() / 10
        #expect(score == expected)
        // 14 days later: 15 days since last seen, and only 3 active days left in the window.
        let later = Projector(config: config).pqlScore(s, nowMs: today + 14 * day + 1000)!
        let x2 = 1.0 * 5 + 2.0 * 3 + 4.0 * 3
        #expect(later == ((100 * (1 - exp(-x2 / 50)) * pow(0.5, 15.0 / 14)) * 10).rounded() / 10)
        #expect(later < score)
        #expect((0...100).contains(later))
    }

    @Test func traitSourceTakesAValidTraitScore() {
        var config = FoldConfig()
        config.pql.source = .trait
        let folder = Folder(config: config)
        var s = UserState()
        folder.fold(event(#"{"type":"identify","userId":"u","traits":{"pqlScore":75.55}}"#), timeMs: 1, offset: 0, into: &s)
        folder.fold(event(#"{"type":"identify","userId":"u","traits":{"pqlScore":150}}"#), timeMs: 2, offset: 1, into: &s)
        #expect(Projector(config: config).pqlScore(s, nowMs: 10) == 75.6)
        config.pql.source = .none
        #expect(Projector(config: config).pqlScore(s, nowMs: 10) == nil)
    }

    @Test func scoreIsAlwaysWithinRange() {
        var m = FoldConfig.PQLModel()
        m.visitWeight = 1000
        #expect(m.score(visits: 1_000_000, activeDays28: 28, keyEvents: [(1000, 1000, 1000)], daysSinceLastSeen: 0) == 100)
        #expect(m.score(visits: 0, activeDays28: 0, keyEvents: [], daysSinceLastSeen: 1e9) == 0)
    }

    @Test func stateStaysBoundedUnderOneMillionEvents() async {
        var config = FoldConfig()
        config.keyEvents = (0..<32).map { .init(name: "e\($0)") }
        config.customAttributes = ["plan"]
        let folder = Folder(config: config)
        var s = UserState()
        var rng = SplitMix64(seed: 7)
        var sizes: [Int] = []
        var e = SegmentEvent(type: .track, identity: "u", hasUserId: true)
        var t: Int64 = 1_700_000_000_000
        for i in 0..<1_000_000 {
            if i % 20_000 == 0 { await Task.yield() }  // CPU-bound: let the pool run other tests
            let r = rng.next()
            t += Int64(r % 4_000_000)  // gaps up to ~67 min: many visits
            e.eventName = "e\(r % 40)"
            e.groupId = nil
            e.contextGroupId = r % 7 == 0 ? "account-\(r % 500)-aaaaaaaaaaaaaaaaaaaa" : nil
            e.product = r % 11 == 0 ? ProductRef(product: "P\(r % 90)", environment: Int64(r % 4 + 1)) : nil
            e.location = r % 13 == 0 ? Location(country: "Country \(r % 50)", city: "City \(r % 300)") : nil
            var traits = Traits()
            if r % 17 == 0 {
                traits.email = "user\(r % 1000)@example-domain.com"
                traits.custom = [CustomTrait(name: "plan", json: "\"plan-\(r % 9)\"")]
                e.traits = traits
            } else {
                e.traits = nil
            }
            folder.fold(e, timeMs: t, offset: Int64(i), into: &s)
            if i == 9_999 || i == 99_999 || i == 999_999 { sizes.append(s.approximateBytes) }
        }
        // Fixed bounds: 100 subscriptions, 20 products, 8 spans, 32 counters.
        #expect(sizes[2] <= 16_384, "\(sizes)")
        #expect(sizes[2] <= sizes[1] + 512, "state grew from 100k to 1M events: \(sizes)")
        #expect(s.subscriptions.items.count == 100)
        #expect(s.products.items.count <= 20)
        #expect(s.spans.count <= UserState.maxSpans)
        #expect(s.keyEventCounts.count <= 32)
    }
}
