import Testing

@testable import Events

/// A key repeated in one object fails the call with `duplicate-key` and the field's
/// path: one case per field the decoder guards (the first failure of a call wins).
@Suite struct DuplicateKeyTests {
    private static let now: Int64 = 1_764_000_000_000  // 2025-11-24

    private static func decode(_ json: String) -> [Decoded] {
        var o = DecoderOptions()
        o.customAttributes = ["plan"]
        return SegmentDecoder(options: o).decode(Array(json.utf8), nowMs: now)
    }

    @Test(arguments: [
        (#"{"type":"track","type":"track","userId":"a"}"#, "type"),
        (#"{"type":"track","type":5,"userId":"a"}"#, "type"),
        (#"{"type":null,"type":"track","userId":"a"}"#, "type"),
        (#"{"type":"tr\u0061ck","type":"track","userId":"a"}"#, "type"),
        (#"{"type":"track","userId":"a","userId":"b"}"#, "userId"),
        (#"{"type":"track","userId":"a","user\u0049d":"b"}"#, "userId"),
        (#"{"type":"track","anonymousId":"a","anonymousId":"b"}"#, "anonymousId"),
        (#"{"type":"alias","userId":"a","previousId":"x","previousId":"y"}"#, "previousId"),
        (#"{"type":"track","userId":"a","timestamp":1,"timestamp":2}"#, "timestamp"),
        (#"{"type":"track","userId":"a","originalTimestamp":1,"originalTimestamp":2}"#, "originalTimestamp"),
        (#"{"type":"track","userId":"a","sentAt":1,"sentAt":2}"#, "sentAt"),
        (#"{"type":"track","userId":"a","receivedAt":1,"receivedAt":2}"#, "receivedAt"),
        (#"{"type":"track","userId":"a","event":"x","event":"y"}"#, "event"),
        (#"{"type":"group","userId":"a","groupId":"x","groupId":"y"}"#, "groupId"),
        (#"{"type":"identify","userId":"a","traits":{},"traits":{}}"#, "traits"),
        (#"{"type":"identify","userId":"a","context":{},"context":{}}"#, "context"),
        (#"{"type":"identify","userId":"a","properties":{},"properties":{}}"#, "properties"),
        (#"{"type":"identify","userId":"a","context":{"traits":{},"traits":{}}}"#, "context.traits"),
        (#"{"type":"identify","userId":"a","context":{"timezone":"x","timezone":"y"}}"#, "context.timezone"),
        (#"{"type":"identify","userId":"a","context":{"groupId":"x","groupId":1}}"#, "context.groupId"),
        (#"{"type":"identify","userId":"a","context":{"location":{},"location":{}}}"#, "context.location"),
        (#"{"type":"identify","userId":"a","context":{"product":"p","product":"q"}}"#, "context.product"),
        (#"{"type":"identify","userId":"a","context":{"location":{"country":"x","country":"y"}}}"#, "context.location"),
        (#"{"type":"identify","userId":"a","context":{"location":{"region":"x","region":"y"}}}"#, "context.location"),
        (#"{"type":"identify","userId":"a","context":{"location":{"city":"x","city":"y"}}}"#, "context.location"),
        (#"{"type":"identify","userId":"a","context":{"location":{"postalCode":"x","postalCode":1}}}"#, "context.location"),
        (#"{"type":"identify","userId":"a","context":{"location":{"countryCode":"x","countryCode":"y"}}}"#, "context.location"),
        (#"{"type":"identify","userId":"a","context":{"product":{"product":"x","code":"y"}}}"#, "context.product"),
        (#"{"type":"identify","userId":"a","context":{"product":{"id":"x","environment":1,"environment":2}}}"#, "context.product"),
        (#"{"type":"identify","userId":"a","properties":{"product":{"id":"x","environment":1,"environment":"z"}}}"#, "properties.product"),
        (#"{"type":"identify","userId":"a","traits":{"email":"x","email":"y"}}"#, "traits.email"),
        (#"{"type":"identify","userId":"a","traits":{"name":"x","name":"y"}}"#, "traits.name"),
        (#"{"type":"identify","userId":"a","traits":{"firstName":"x","firstName":"y"}}"#, "traits.firstName"),
        (#"{"type":"identify","userId":"a","traits":{"lastName":"x","lastName":"y"}}"#, "traits.lastName"),
        (#"{"type":"identify","userId":"a","traits":{"userType":"x","userType":"y"}}"#, "traits.userType"),
        (#"{"type":"identify","userId":"a","traits":{"role":"x","role":"y"}}"#, "traits.role"),
        (#"{"type":"identify","userId":"a","traits":{"title":"x","title":"y"}}"#, "traits.title"),
        (#"{"type":"identify","userId":"a","traits":{"phone":"x","phone":2}}"#, "traits.phone"),
        (#"{"type":"identify","userId":"a","traits":{"timezone":"x","timezone":"y"}}"#, "traits.timezone"),
        (#"{"type":"identify","userId":"a","traits":{"leadDate":1,"leadDate":2}}"#, "traits.leadDate"),
        (#"{"type":"identify","userId":"a","traits":{"signUpDate":1,"signUpDate":2}}"#, "traits.signUpDate"),
        (#"{"type":"identify","userId":"a","traits":{"createdAt":1,"createdAt":2}}"#, "traits.createdAt"),
        (#"{"type":"identify","userId":"a","traits":{"subscriptionId":"x","subscriptionId":"y"}}"#, "traits.subscriptionId"),
        (#"{"type":"identify","userId":"a","traits":{"avatar":"x","avatar":"y"}}"#, "traits.avatar"),
        (#"{"type":"identify","userId":"a","traits":{"image":"x","image":"y"}}"#, "traits.image"),
        (#"{"type":"identify","userId":"a","traits":{"address":{},"address":{}}}"#, "traits.address"),
        (#"{"type":"identify","userId":"a","traits":{"address":{"state":"x","state":"y"}}}"#, "traits.address"),
        (#"{"type":"identify","userId":"a","traits":{"pqlScore":1,"pqlScore":2}}"#, "traits.pqlScore"),
        (#"{"type":"identify","userId":"a","traits":{"plan":1,"plan":2}}"#, "traits"),
        (#"{"type":"identify","userId":"a","context":{"traits":{"email":"x","email":"y"}}}"#, "traits.email"),
        // The repeated value is skipped whole, and reading goes on after it.
        (
            #"{"type":"identify","userId":"a","traits":{"email":"x","email":[1,{"a":2}],"name":"n"},"context":{"timezone":"t"}}"#,
            "traits.email"
        ),
        (#"{"type":"track","userId":"a","userId":{"x":[1,2,3]},"event":"e","context":{"location":{"city":"c","city":"d"}}}"#, "userId"),
    ])
    func aRepeatedKeyNamesItsField(json: String, field: String) {
        #expect(Self.decode(json) == [.invalid(DecodeFailure(.duplicateKey, field: field))])
    }

    @Test func theFirstFailureOfACallWins() {
        #expect(Self.decode(#"{"type":5,"type":"track","userId":"a"}"#) == [.invalid(DecodeFailure(.wrongType, field: "type"))])
        #expect(
            Self.decode(#"{"type":"identify","userId":"a","traits":{"email":5,"email":"y"}}"#)
                == [.invalid(DecodeFailure(.wrongType, field: "traits.email"))])
    }

    @Test func aBatchElementFailsAloneAndTheSetIsPerObject() {
        let d = Self.decode(#"{"batch":[{"type":"track","type":"page","userId":"a"},{"type":"page","userId":"c"}]}"#)
        #expect(d.count == 2)
        #expect(d.first == .invalid(DecodeFailure(.duplicateKey, field: "type")))
        if d.count == 2, case .event(let e) = d[1] { #expect(e.type == .page && e.identity == "c") } else { Issue.record("\(d)") }
        // The same key in two sibling objects is no repeat.
        let both = Self.decode(#"{"type":"identify","userId":"a","traits":{"email":"x@y"},"context":{"traits":{"email":"z@y"}}}"#)
        if case .event(let e) = both.first { #expect(e.traits?.email == "x@y") } else { Issue.record("\(both)") }
    }
}
