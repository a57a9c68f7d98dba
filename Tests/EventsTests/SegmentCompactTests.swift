import Simulation
import Testing

@testable import Events

/// A decoded call in the compact form routed calls travel in (``SegmentEvent/compact(timeMs:)``,
/// kind `e` of `<group>-repartition`) decodes to what the JSON decoder makes of the same
/// event's Segment JSON (``SegmentEvent/segmentJSON(timeMs:)``, the form it replaces): the
/// destination folds the same call either way.
@Suite struct SegmentCompactTests {
    typealias J = SegmentJSONTests
    static let now: Int64 = 1_764_000_000_000  // SegmentJSONTests' clock

    static func decoder(custom: [String] = J.customNames, maxDepth: Int = 64) -> SegmentDecoder {
        var options = DecoderOptions()
        options.customAttributes = custom
        options.maxDepth = maxDepth
        return SegmentDecoder(options: options)
    }

    /// What the compact form decodes to: nil when refused.
    static func compactDecode(_ bytes: [UInt8], _ d: SegmentDecoder, nowMs: Int64 = now) -> Decoded? {
        var out = DecodedCalls()
        let ok = bytes.withUnsafeBufferPointer { d.decodeCompact($0, nowMs: nowMs, into: &out) }
        guard ok else {
            #expect(out.count == 0, "a refused call appends nothing")
            return nil
        }
        #expect(out.count == 1)
        return out[0]
    }

    /// What the JSON decoder makes of the event's JSON, as one event (nil: anything else).
    static func jsonDecode(_ e: SegmentEvent, timeMs: Int64, _ d: SegmentDecoder, nowMs: Int64 = now) -> Decoded? {
        let calls = d.decode(e.segmentJSON(timeMs: timeMs), nowMs: nowMs)
        guard calls.count == 1, case .event = calls[0] else { return nil }
        return calls[0]
    }

    /// Events the decoder produces, times plausible or not, destinations configured for
    /// every custom trait, some or none, and a clock that finds trait dates implausible.
    @Test func decodesWhatTheJSONOfTheSameEventDecodesTo() async {
        let seed = UInt64.random(in: 0 ... .max)
        var rng = SplitMix64(seed: seed)
        var compared = 0
        for round in 0..<3000 {
            if round % 100 == 0 { await Task.yield() }
            let e = J.event(&rng)
            let t: Int64 =
                switch Int.random(in: 0..<6, using: &rng) {
                case 0: Int64.random(in: .min ... .max, using: &rng)
                case 1: Timestamp.earliestPlausibleMs - 1
                default: Int64.random(in: Timestamp.earliestPlausibleMs...Self.now, using: &rng)
                }
            let custom = [J.customNames, [], Array(J.customNames.prefix(3))].randomElement(using: &rng)!
            let d = Self.decoder(custom: custom)
            // A clock before the trait dates (which go back to 2000): some are dropped.
            let nowMs = Bool.random(using: &rng) ? Self.now : Timestamp.earliestPlausibleMs + 400 * 86_400_000
            let bytes = e.compact(timeMs: t)
            let want = Self.jsonDecode(e, timeMs: t, d, nowMs: nowMs)
            let got = Self.compactDecode(bytes, d, nowMs: nowMs)
            #expect(got == want, "seed \(seed) round \(round): \(e)")
            if got != nil { compared += 1 }
        }
        #expect(compared > 2500, "most calls decode")
    }

    /// Events the decoder never produces (empty text, linked ids and names on any type,
    /// empty locations, non-finite scores, custom traits of any name and text): decoded as
    /// their JSON is, or refused where the JSON does not decode to an event of the same
    /// identity.
    @Test func anyEventDecodesAsItsJSONOrIsRefused() {
        let seed = UInt64.random(in: 0 ... .max)
        var rng = SplitMix64(seed: seed)
        let d = Self.decoder()
        for round in 0..<3000 {
            let e = J.anyEvent(&rng)
            let t = Int64.random(in: Timestamp.earliestPlausibleMs...Self.now, using: &rng)
            let got = Self.compactDecode(e.compact(timeMs: t), d)
            let want = Self.jsonDecode(e, timeMs: t, d)
            if e.identity.isEmpty {
                // The JSON of an empty userId beside an anonymousId reads the anonymousId
                // as the identity: no event of this one. Refused.
                #expect(got == nil, "seed \(seed) round \(round)")
            } else {
                #expect(got == want, "seed \(seed) round \(round): \(e)")
            }
        }
    }

    /// A destination with a lower nesting limit drops a custom trait deeper than it allows
    /// (the JSON decoder would refuse the whole call, which its source's decoder, with the
    /// same limit, never produced).
    @Test func customTraitsKeepWithinTheDestinationsNesting() throws {
        var e = SegmentEvent(type: .identify, identity: "u", hasUserId: true)
        var t = Traits()
        t.custom = [CustomTrait(name: "nested", json: "[[[1]]]"), CustomTrait(name: "plan", json: "1")]
        e.traits = t
        let bytes = e.compact(timeMs: Self.now)
        guard case .event(let deep) = Self.compactDecode(bytes, Self.decoder(maxDepth: 5)) else {
            Issue.record("not an event")
            return
        }
        #expect(deep.traits?.custom.map(\.name) == ["nested", "plan"])
        guard case .event(let shallow) = Self.compactDecode(bytes, Self.decoder(maxDepth: 4)) else {
            Issue.record("not an event")
            return
        }
        #expect(shallow.traits?.custom.map(\.name) == ["plan"])
    }

    /// Whatever the bytes (valid calls cut, flipped, grown; random bytes), decoding never
    /// traps, and what it accepts is an event the decoder could have produced: the same
    /// event again through the compact form, an identity Foldspace takes, custom traits of
    /// configured names only.
    @Test func hostileBytesNeverTrapAndDecodeToEventsTheDecoderCouldProduce() async {
        let seed = UInt64.random(in: 0 ... .max)
        var rng = SplitMix64(seed: seed)
        let d = Self.decoder(custom: ["plan", "seats"])
        var accepted = 0
        for round in 0..<20000 {
            if round % 1000 == 0 { await Task.yield() }
            var bytes = J.event(&rng).compact(timeMs: Self.now)
            switch Int.random(in: 0..<5, using: &rng) {
            case 0: bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &rng)))
            case 1:
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0 ... .max, using: &rng)
                }
            case 2: bytes += (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 0 ... .max, using: &rng) }
            case 3: bytes = (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0 ... .max, using: &rng) }
            default: break
            }
            guard case .event(let e) = Self.compactDecode(bytes, d) else { continue }
            accepted += 1
            #expect(!e.identity.isEmpty && e.identity.unicodeScalars.count <= 255, "seed \(seed) round \(round)")
            #expect(e.traits?.custom.allSatisfy { ["plan", "seats"].contains($0.name) } ?? true, "seed \(seed) round \(round)")
            #expect(e.traits.map { !$0.isEmpty } ?? true, "seed \(seed) round \(round)")
            if let p = e.traits?.pqlScore { #expect(p.isFinite, "seed \(seed) round \(round)") }
            var again = e
            again.timeImplausible = false
            again.implausibleTraitDates = 0
            let back = Self.compactDecode(e.compact(timeMs: e.timeMs ?? Self.now), d)
            if e.timeMs == nil { again.timeMs = Self.now }
            #expect(back == .event(again), "seed \(seed) round \(round): \(e)")
        }
        #expect(accepted > 2000, "the unchanged and grown-free calls decode")
    }

    /// Smaller than the JSON it replaces, for the bench's calls (a page view with context).
    @Test func isSmallerThanTheJSON() {
        var e = SegmentEvent(type: .page, identity: "anon-1f3a9c", hasUserId: false)
        e.timezone = "Europe/Paris"
        e.location = Location(country: "France", city: "Paris")
        e.product = ProductRef(product: "analytics", environment: 1)
        let compact = e.compact(timeMs: Self.now).count
        let json = e.segmentJSON(timeMs: Self.now).count
        #expect(compact * 2 < json, "\(compact) bytes against \(json)")
    }
}
