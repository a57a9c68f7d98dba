import Simulation
import Testing

@testable import Folding

/// The rules of one task's identity graph (docs/identity.md, "Routing one call", steps 3
/// to 5), one decision at a time.
@Suite struct IdentityGraphTests {
    @Test func anIdentityWithoutAnEntryOrALinkIsCanonical() {
        var g = IdentityGraph()
        #expect(g.resolve("u1") == .canonical)
        #expect(g.noteSecondId("a1", at: "u1", timeMs: 5) == .requestLink)
        #expect(g.resolve("u1") == .canonical, "an entry with linked ids and no link is canonical")
        #expect(g.entry(of: "u1") == IdentityEntry(linked: ["a1"]))
        #expect(g.applyLinkRequest("a2", into: "u2", timeMs: 7) == .linked(carried: []))
        #expect(g.resolve("a2") == .forward(to: "u2"))
        #expect(g.entry(of: "a2") == IdentityEntry(linkedTo: IdentityLink(identity: "u2", timeMs: 7)))
    }

    /// An anonymous visitor identified as U1, then U1 aliased to U2: the anonymous id
    /// stays linked to U1 and reaches U2 through it; U1's linked ids are handed back.
    @Test func identifyThenAliasMakesAChain() {
        var atU1 = IdentityGraph()  // owner of u1
        var atA = IdentityGraph()  // owner of a
        var atU2 = IdentityGraph()  // owner of u2
        #expect(atU1.noteSecondId("a", at: "u1", timeMs: 10) == .requestLink)
        #expect(atU1.noteSecondId("a", at: "u1", timeMs: 11) == .known, "the next call with both ids needs no request")
        #expect(atU1.noteSecondId("u1", at: "u1", timeMs: 11) == .known)
        #expect(atA.applyLinkRequest("a", into: "u1", timeMs: 10) == .linked(carried: []))
        #expect(atA.resolve("a") == .forward(to: "u1"))

        #expect(atU2.noteSecondId("u1", at: "u2", timeMs: 20) == .requestLink)
        #expect(atU1.applyLinkRequest("u1", into: "u2", timeMs: 20) == .linked(carried: ["a"]))
        #expect(atU1.resolve("u1") == .forward(to: "u2"))
        #expect(atA.resolve("a") == .forward(to: "u1"), "not re-pointed: two hops")
        #expect(atU1.entry(of: "u1") == IdentityEntry(linkedTo: IdentityLink(identity: "u2", timeMs: 20), linked: ["a"]))
        #expect(atU2.resolve("u2") == .canonical)
        #expect(atA.counts.links == 1)
        #expect(atU1.counts.links == 1)
        #expect(atU1.linkedCounts.map { $0 }.isEmpty, "u1 is linked on: its ids count at the user they reach")
        #expect(Array(atU2.linkedCounts) == [1])
    }

    @Test func aConflictKeepsTheFirstUserAndIsCounted() {
        var g = IdentityGraph()
        #expect(g.applyLinkRequest("device", into: "ann", timeMs: 1) == .linked(carried: []))
        #expect(g.applyLinkRequest("device", into: "bob", timeMs: 2) == .conflict(existing: "ann"))
        #expect(g.applyLinkRequest("device", into: "cid", timeMs: 3) == .conflict(existing: "ann"))
        #expect(g.resolve("device") == .forward(to: "ann"))
        #expect(g.entry(of: "device")?.linkedTo == IdentityLink(identity: "ann", timeMs: 1), "set once: time too")
        #expect(g.counts.conflicts == 2)
        #expect(g.counts.links == 1)
    }

    @Test func theCapStopsLinkingAndCounts() {
        var g = IdentityGraph(maxLinked: 3)
        for i in 0..<3 { #expect(g.noteSecondId("a\(i)", at: "u", timeMs: 1) == .requestLink) }
        #expect(g.noteSecondId("a3", at: "u", timeMs: 1) == .capReached)
        #expect(g.noteSecondId("a4", at: "u", timeMs: 1) == .capReached)
        #expect(g.noteSecondId("a1", at: "u", timeMs: 1) == .known, "a linked id is still known at the cap")
        #expect(g.entry(of: "u")?.linked == ["a0", "a1", "a2"])
        #expect(g.counts.capReached == 2)
        #expect(Array(g.linkedCounts) == [3])
    }

    @Test func aCapOfZeroLinksNothingAndOneLinksOne() {
        var none = IdentityGraph(maxLinked: 0)
        #expect(none.noteSecondId("a", at: "u", timeMs: 1) == .capReached)
        #expect(none.noteSecondId("u", at: "u", timeMs: 1) == .known)
        #expect(none.count == 0, "no entry made for a refused id")
        #expect(none.counts.capReached == 1)
        var one = IdentityGraph(maxLinked: 1)
        #expect(one.noteSecondId("a", at: "u", timeMs: 1) == .requestLink)
        #expect(one.noteSecondId("b", at: "u", timeMs: 1) == .capReached)
        #expect(one.noteSecondId("a", at: "u", timeMs: 1) == .known)
        #expect(one.entry(of: "u")?.linked == ["a"])
        #expect(IdentityGraph(maxLinked: -5).maxLinked == 0)
        #expect(IdentityGraph(maxLinked: .max).maxLinked == IdentityCodec.maxLinked)
        #expect(IdentityGraph().maxLinked == 100)
    }

    /// A replayed request links nothing again and counts no second link.
    @Test func aRepeatedLinkRequestIsIdempotent() {
        var g = IdentityGraph()
        g.load("a", IdentityEntry(linked: ["z"]))
        #expect(g.applyLinkRequest("a", into: "u", timeMs: 5) == .linked(carried: ["z"]))
        let after = g
        #expect(g.applyLinkRequest("a", into: "u", timeMs: 5) == .duplicate)
        #expect(g.applyLinkRequest("a", into: "u", timeMs: 9) == .duplicate, "a later call with the same link")
        #expect(g.sameEntries(as: after))
        #expect(g.counts == after.counts)
        #expect(g.counts.links == 1)
        #expect(g.entry(of: "a")?.linkedTo?.timeMs == 5)
    }

    @Test func cyclesAreRefusedAndCounted() {
        var g = IdentityGraph()
        #expect(g.applyLinkRequest("u", into: "u", timeMs: 1) == .cycle)
        #expect(g.count == 0)
        // Two aliases racing: u1 noted v1 first (v1 → u1 asked), then "u1 → v1" arrives.
        #expect(g.noteSecondId("v1", at: "u1", timeMs: 1) == .requestLink)
        #expect(g.applyLinkRequest("u1", into: "v1", timeMs: 2) == .cycle)
        #expect(g.resolve("u1") == .canonical)
        #expect(g.counts.cycles == 2)
        #expect(g.counts.links == 0)
        // Only the direct cycle: with x → y already, y → z and z → x are each accepted at
        // their owners; routing's hop count bounds that loop.
        #expect(g.applyLinkRequest("x", into: "y", timeMs: 1) == .linked(carried: []))
        #expect(g.applyLinkRequest("y", into: "z", timeMs: 1) == .linked(carried: []))
        #expect(g.applyLinkRequest("z", into: "x", timeMs: 1) == .linked(carried: []))
    }

    /// "é" as one scalar and as "e" with a combining accent are equal Swift strings and
    /// two identities (two users in the user table and the changelog).
    @Test func identitiesAreToldApartByTheirBytes() {
        let composed = "caf\u{E9}"
        let decomposed = "cafe\u{301}"
        #expect(composed == decomposed)
        var g = IdentityGraph()
        #expect(g.applyLinkRequest(composed, into: "ann", timeMs: 1) == .linked(carried: []))
        #expect(g.resolve(decomposed) == .canonical)
        #expect(g.applyLinkRequest(decomposed, into: "bob", timeMs: 1) == .linked(carried: []))
        #expect(g.count == 2)
        #expect(g.noteSecondId(decomposed, at: composed, timeMs: 1) == .requestLink, "not the same id")
        #expect(g.noteSecondId(composed, at: "ann", timeMs: 1) == .requestLink)
        #expect(g.noteSecondId(decomposed, at: "ann", timeMs: 1) == .requestLink)
        #expect(g.entry(of: "ann")?.linked.count == 2)
        #expect(IdentityEntry(linked: [composed]) != IdentityEntry(linked: [decomposed]))
    }

    @Test func loadRestoresAndRemoveForgets() {
        var g = IdentityGraph(maxLinked: 2)
        g.load("a", IdentityEntry(linkedTo: IdentityLink(identity: "u", timeMs: 3)))
        #expect(g.resolve("a") == .forward(to: "u"))
        g.load("u", IdentityEntry(linked: ["u", "a", "b", "a", "c"]))
        #expect(g.entry(of: "u")?.linked == ["a", "b"], "itself and repeats dropped, cut at the cap, oldest kept")
        g.load("s", IdentityEntry(linkedTo: IdentityLink(identity: "s", timeMs: 1)))
        #expect(g.entry(of: "s") == nil, "a link to itself is dropped, and the empty entry with it")
        g.load("a", IdentityEntry())
        #expect(g.entry(of: "a") == nil)
        #expect(g.resolve("a") == .canonical)
        g.remove("u")
        #expect(g.entry(of: "u") == nil)
        #expect(g.count == 0)
        #expect(g.counts == IdentityGraph.Counts(), "restoring counts no decision")
        var seen: [String] = []
        g.load("v", IdentityEntry(linked: ["x"]))
        g.forEachEntry { id, _ in seen.append(id) }
        #expect(seen == ["v"])
    }

    /// The summary kept as entries change (for `/metrics`) equals a walk over the entries,
    /// through random notes, link requests (some linking an identity with ids of its own
    /// on), restores, removals and cap hits.
    @Test func theLinkedSummaryMatchesAWalk() {
        var rng = SplitMix64(seed: 24)
        for round in 0..<200 {
            var g = IdentityGraph(maxLinked: 1 + Int(rng.next() % 5))
            let ids = (0..<12).map { "id\(round)-\($0)" }
            func pick() -> String { ids[Int(rng.next() % UInt64(ids.count))] }
            for _ in 0..<60 {
                switch rng.next() % 5 {
                case 0, 1: _ = g.noteSecondId(pick(), at: pick(), timeMs: 1)
                case 2: _ = g.applyLinkRequest(pick(), into: pick(), timeMs: 2)
                case 3:
                    let linked = (0..<Int(rng.next() % 8)).map { _ in pick() }
                    g.load(
                        pick(),
                        IdentityEntry(linkedTo: rng.next() % 3 == 0 ? IdentityLink(identity: pick(), timeMs: 3) : nil, linked: linked))
                default: g.remove(pick())
                }
                let walk = Array(g.linkedCounts)
                let summary = g.linkedSummary
                #expect(summary.users == walk.count)
                #expect(summary.linked == walk.reduce(0, +))
                #expect(summary.most == (walk.max() ?? 0))
                if summary.users != walk.count || summary.linked != walk.reduce(0, +) { return }
            }
        }
    }
}
