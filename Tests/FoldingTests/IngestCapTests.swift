import Events
import Foundation
import Testing

@testable import Folding

/// Values are cut when folded to what the API could ever use (issue "Hostile input",
/// item 3): the state, and so every later fold of that user and its changelog record,
/// stay small whatever an event carries, and the body is the one the projection would
/// have built from the whole value.
@Suite struct IngestCapTests {
    let nowMs: Int64 = 1_764_000_000_000

    func decode(_ json: String) -> SegmentEvent {
        var o = DecoderOptions()
        o.customAttributes = ["plan"]
        guard case .event(let e)? = SegmentDecoder(options: o).decode(Array(json.utf8), nowMs: nowMs).first else {
            fatalError("fixture does not decode")
        }
        return e
    }

    func project(_ s: UserState, _ adj: inout Adjustments) -> [String: Any] {
        var c = FoldConfig()
        c.customAttributes = ["plan"]
        let b = Projector(config: c).body(identifyId: "u", state: s, nowMs: nowMs, adjustments: &adj)!
        return try! JSONSerialization.jsonObject(with: Data(b)) as! [String: Any]
    }

    @Test func hugeValuesAreCutWhenFoldedAndTheBodyIsUnchanged() throws {
        let big = String(repeating: "é", count: 75 * 1024)  // 150 KiB of UTF-8 each, six of them in one message
        let json =
            #"{"type":"identify","userId":"u","timestamp":"2025-11-24T10:00:00Z","traits":{"email":"\#(big)","name":"\#(big)","role":"\#(big)","plan":"\#(big)","address":{"city":"\#(big)"}},"context":{"groupId":"\#(big)"}}"#
        var c = FoldConfig()
        c.customAttributes = ["plan"]
        let folder = Folder(config: c)
        var s = UserState()
        var adj = Adjustments()
        folder.fold(decode(json), timeMs: nowMs - 1_000, offset: 0, into: &s, adjustments: &adj)
        // Bounded: five cut text fields and one subscription id, ~1 KiB each.
        #expect(s.approximateBytes < 12 * 1024, "\(s.approximateBytes)")
        #expect(adj.counts["email|capped"] == 1)
        // The name is fitted when folded (transliterated, then cut to 255), not capped.
        #expect(adj.counts["name|transliterated"] == 1)
        #expect(adj.counts["name|truncated"] == 1)
        #expect(adj.counts["location.city|capped"] == 1)
        #expect(adj.counts["lastSubscriptionIdentifier|capped"] == 1)
        #expect(adj.counts["customAttributes|capped"] == 1)
        // The body is what Foldspace could take of the whole values: an email over its
        // limit is omitted, free text cut to it.
        var padj = Adjustments()
        let b = project(s, &padj)
        #expect(b["email"] == nil)
        #expect((b["role"] as? String)?.count == FoldspaceLimits.role)
        #expect((b["location"] as? [String: Any])?["city"] as? String == String(repeating: "é", count: FoldspaceLimits.locationField))
        #expect(b["lastSubscriptionIdentifier"] == nil)
        #expect(b["customAttributes"] == nil)
        // A later event of the user is cheap again: the state did not hold the megabyte.
        folder.fold(decode(#"{"type":"page","userId":"u","timestamp":"2025-11-24T10:00:01Z"}"#), timeMs: nowMs, offset: 1, into: &s)
        #expect(s.approximateBytes < 12 * 1024)
    }

    /// The name is fitted before anything is cut: 300 emoji then a name is that name.
    @Test func aNameIsFittedNotCutRaw() {
        let json =
            #"{"type":"identify","userId":"u","timestamp":"2025-11-24T10:00:00Z","traits":{"name":"\#(String(repeating: "😀", count: 300)) John Smith"}}"#
        var s = UserState()
        var adj = Adjustments()
        Folder(config: FoldConfig()).fold(decode(json), timeMs: nowMs - 1_000, offset: 0, into: &s, adjustments: &adj)
        var padj = Adjustments()
        #expect(project(s, &padj)["name"] as? String == "John Smith")
    }

    @Test func aCutNeverSplitsACharacter() {
        for bytes in 0..<12 {
            let s = TextFields.prefix("aé€😀aé€😀", bytes: bytes)
            #expect(s.utf8.count <= bytes)
            #expect("aé€😀aé€😀".hasPrefix(s))
            #expect(String(validating: Array(s.utf8), as: UTF8.self) != nil)
        }
        for f in TextFields.Field.allCases {
            // What is kept of an over-long value is still over the limit: omitted stays omitted.
            let kept = TextFields.prefix(String(repeating: "😀", count: 10_000), bytes: f.storedLimitBytes)
            #expect(kept.unicodeScalars.count > f.apiLimit)
        }
    }
}
