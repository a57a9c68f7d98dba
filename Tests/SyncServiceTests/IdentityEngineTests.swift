import Delivery
import Folding
import Foundation
import Kafka
import Simulation
import TestSupport
import Testing

@testable import SyncService

/// Identity resolution in the engine, on one task (a source of one partition: every
/// identity is owned here, nothing is routed through Kafka): the anonymous history of a
/// visitor who signs up is merged into the user, whether the link comes before or after
/// it, and the anonymous identity is no longer held or sent.
@Suite struct IdentityEngineTests {
    let p0 = TopicPartition("events", 0)

    func engine(_ clock: ManualClock) -> SyncEngine {
        var o = EngineOptions()
        o.debounceMs = 1_000
        o.maxWaitMs = 5_000
        o.requestsPerSecond = 1_000
        o.burst = 1_000
        o.fold.sendNumberOfVisits = true
        o.fold.keyEvents = [.init(name: "Report Built", weight: 10, cap: 1_000)]
        o.identity.merge = true
        let e = SyncEngine(
            options: o, deadLetters: RecordingDeadLetters(), logger: quietLogger, clock: clock.engineClock,
            links: EngineLinks(stateStore: nil))
        e.partitionsAssigned([p0])
        return e
    }

    func body(_ e: SyncEngine, _ user: String) -> [String: Any]? {
        guard let b = e.projection(of: user) else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(b)) as? [String: Any]) ?? [:]
    }

    static let anonymous = [
        #"{"type":"page","anonymousId":"a-77","timestamp":"2025-11-17T10:00:00Z"}"#,
        #"{"type":"page","anonymousId":"a-77","timestamp":"2025-11-17T10:12:00Z"}"#,
        #"{"type":"page","anonymousId":"a-77","timestamp":"2025-11-19T09:40:00Z"}"#,
        #"{"type":"page","anonymousId":"a-77","timestamp":"2025-11-21T14:05:00Z"}"#,
    ]
    static let signUp = #"{"type":"identify","userId":"person-0005","anonymousId":"a-77","timestamp":"2025-11-21T14:20:00Z"}"#
    static let after = [
        #"{"type":"track","userId":"person-0005","anonymousId":"a-77","event":"Report Built","timestamp":"2025-11-21T14:31:00Z"}"#,
        #"{"type":"track","userId":"person-0005","event":"Report Built","timestamp":"2025-11-22T11:00:00Z"}"#,
    ]

    /// docs/identity.md's worked example: 4 visits, the first on Monday, 2 key events.
    @Test(arguments: [false, true])
    func theAnonymousHistoryIsTheUsersWhereverTheLinkComes(linkFirst: Bool) throws {
        let clock = ManualClock()
        let e = engine(clock)
        let calls = linkFirst ? [Self.signUp] + Self.anonymous + Self.after : Self.anonymous + [Self.signUp] + Self.after
        // One message each, in two batches: the link's hand-over happens at a chunk's end.
        let messages = calls.enumerated().map { (p0, Int64($0.offset), $0.element) }
        feed(e, Array(messages.prefix(3)))
        feed(e, Array(messages.dropFirst(3)))
        let user = try #require(body(e, "person-0005"))
        #expect(user["numberOfVisits"] as? Int == 4, "\(user)")
        #expect(user["firstVisitDate"] as? Int64 == 1_763_373_600_000, "\(user)")  // 2025-11-17T10:00:00Z
        #expect(user["userType"] as? String == "USER")
        #expect(body(e, "a-77") == nil, "the anonymous identity is still held")
        #expect(e.snapshot().users == 1)
    }
}
