import Testing

@testable import Events

/// The other identity a call names, which identity resolution links to the call's own:
/// the `anonymousId` beside a `userId`, or an alias's `previousId`.
@Suite struct LinkedIdTests {
    private static let now: Int64 = 1_764_000_000_000  // 2025-11-24

    private static func event(_ json: String) throws -> SegmentEvent {
        let d = SegmentDecoder().decode(Array(json.utf8), nowMs: now)
        try #require(d.count == 1)
        guard case .event(let e) = d[0] else {
            Issue.record("expected an event, got \(d[0])")
            throw DecodeFailure(.notJSON)
        }
        return e
    }

    @Test func anIdentifyWithBothIdsLinksTheAnonymousIdToTheUser() throws {
        let e = try Self.event(#"{"type":"identify","userId":"person-5","anonymousId":"anon-9"}"#)
        #expect(e.identity == "person-5" && e.hasUserId)
        #expect(e.linkedId == "anon-9")
    }

    @Test func everyCallTypeCarriesTheAnonymousIdBesideAUserId() throws {
        for type in ["track", "page", "screen", "group"] {
            let e = try Self.event(#"{"type":"\#(type)","anonymousId":"anon-9","userId":"person-5"}"#)
            #expect(e.identity == "person-5" && e.linkedId == "anon-9", "\(type)")
        }
    }

    @Test func anAliasLinksItsPreviousId() throws {
        let e = try Self.event(#"{"type":"alias","previousId":"old-1","userId":"person-5","anonymousId":"anon-9"}"#)
        #expect(e.identity == "person-5" && e.linkedId == "old-1")
        // Without a previousId, an alias links its anonymousId as any call does.
        let f = try Self.event(#"{"type":"alias","userId":"person-5","anonymousId":"anon-9"}"#)
        #expect(f.linkedId == "anon-9")
    }

    @Test func aPreviousIdOutsideAnAliasIsNotALink() throws {
        let e = try Self.event(#"{"type":"track","previousId":"old-1","userId":"person-5"}"#)
        #expect(e.linkedId == nil)
    }

    @Test func numbersAreIdsAndAnIdEqualToTheIdentityLinksNothing() throws {
        #expect(try Self.event(#"{"type":"alias","previousId":42,"userId":"person-5"}"#).linkedId == "42")
        #expect(try Self.event(#"{"type":"identify","userId":"7","anonymousId":7}"#).linkedId == nil)
        #expect(try Self.event(#"{"type":"identify","userId":"u","anonymousId":""}"#).linkedId == nil)
        #expect(try Self.event(#"{"type":"identify","userId":"u","anonymousId":null}"#).linkedId == nil)
    }

    /// Identities are told apart by their bytes everywhere (the user table, the graph):
    /// "é" as one scalar and "e" with a combining accent are two identities, so one links
    /// to the other although Swift finds the strings equal.
    @Test func idsEqualOnlyAsTextAreTwoIdentitiesAndLink() throws {
        let e = try Self.event(#"{"type":"identify","userId":"\u00e9","anonymousId":"e\u0301"}"#)
        #expect(Array(e.linkedId?.utf8 ?? "".utf8) == [0x65, 0xCC, 0x81])
    }

    /// Traits that were only implausible dates are none, as absent ones are (a call
    /// written back as JSON then reads the same).
    @Test func traitsOfOnlyImplausibleDatesAreNone() throws {
        let e = try Self.event(#"{"type":"identify","userId":"u","traits":{"leadDate":1}}"#)
        #expect(e.traits == nil && e.implausibleTraitDates == 1)
        let f = try Self.event(#"{"type":"track","userId":"u","context":{"traits":{"signUpDate":"1990-01-01T00:00:00Z"}}}"#)
        #expect(f.traits == nil && f.implausibleTraitDates == 1)
    }

    @Test func anAnonymousCallLinksNothing() throws {
        let e = try Self.event(#"{"type":"page","anonymousId":"anon-9"}"#)
        #expect(e.identity == "anon-9" && !e.hasUserId && e.linkedId == nil)
    }

    @Test func anIdFoldspaceCouldNeverTakeLinksNothing() throws {
        let long = String(repeating: "a", count: 256)
        let e = try Self.event(#"{"type":"identify","userId":"u","anonymousId":"\#(long)"}"#)
        #expect(e.linkedId == nil)
        let fits = String(repeating: "é", count: 255)  // 510 bytes, 255 characters
        #expect(try Self.event(#"{"type":"identify","userId":"u","anonymousId":"\#(fits)"}"#).linkedId == fits)
    }

    @Test func callsOfABatchEachKeepTheirOwnLink() throws {
        let json =
            #"{"batch":[{"type":"identify","userId":"u1","anonymousId":"a1"},{"type":"page","anonymousId":"a2"},"#
            + #"{"type":"alias","userId":"u2","previousId":"a3"}]}"#
        let d = SegmentDecoder().decode(Array(json.utf8), nowMs: Self.now)
        let links = d.map { if case .event(let e) = $0 { e.linkedId } else { "?" } }
        #expect(links == ["a1", nil, "a3"])
    }
}
