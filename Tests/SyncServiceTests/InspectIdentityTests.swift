import Folding
import Foundation
import Testing

@testable import SyncService

/// `inspect` under identity resolution: an id is shown with the identity its links end at
/// (whose state holds its history) and the ids linked into that one.
@Suite struct InspectIdentityTests {
    static func record(_ id: String, _ entry: IdentityEntry?) -> (key: [UInt8], value: [UInt8]?) {
        (IdentityCodec.key(id), entry.map(IdentityCodec.encode))
    }

    @Test func anIdIsShownAtTheIdentityItsLinksEndAt() throws {
        let records: [[(key: [UInt8], value: [UInt8]?)]] = [
            [
                Self.record("a-77", IdentityEntry(linkedTo: IdentityLink(identity: "person-0005", timeMs: 1_763_734_800_000))),
                Self.record("old", IdentityEntry(linkedTo: IdentityLink(identity: "a-77", timeMs: 1))),
                Self.record("x", IdentityEntry(linkedTo: IdentityLink(identity: "y", timeMs: 2))),
                Self.record("gone", IdentityEntry(linkedTo: IdentityLink(identity: "person-0005", timeMs: 3))),
                Self.record("gone", nil),  // a tombstone: the latest record wins
            ],
            [
                Self.record("person-0005", IdentityEntry(linked: ["a-77", "gone"])),
                Self.record("y", IdentityEntry(linkedTo: IdentityLink(identity: "x", timeMs: 4))),
                ([0xFF], [1, 2, 3]),  // not an identity record: skipped
            ],
        ]
        let graph = IdentityView.graph(records)
        #expect(graph["gone"] == nil)
        let a = IdentityView(id: "a-77", graph: graph)
        #expect(a.canonical == "person-0005")
        #expect(a.linkedTo == IdentityLink(identity: "person-0005", timeMs: 1_763_734_800_000))
        #expect(a.linkedIds == ["a-77", "gone"])
        // Two hops: an id linked into one that was linked on.
        #expect(IdentityView(id: "old", graph: graph).canonical == "person-0005")
        let user = IdentityView(id: "person-0005", graph: graph)
        #expect(user.canonical == "person-0005" && user.linkedTo == nil && !user.cycle)
        // A cycle (racing aliases) ends, and says so.
        let x = IdentityView(id: "x", graph: graph)
        #expect(x.cycle)
        #expect(x.canonical == "y")
        let json = try JSONSerialization.data(withJSONObject: a.json, options: [.sortedKeys])
        #expect(
            String(decoding: json, as: UTF8.self)
                == #"{"canonicalId":"person-0005","linkedIds":["a-77","gone"],"linkedTo":{"identifyId":"person-0005","time":1763734800000}}"#
        )
        // An id the graph does not know is its own.
        #expect(IdentityView(id: "nobody", graph: graph).canonical == "nobody")
    }
}
