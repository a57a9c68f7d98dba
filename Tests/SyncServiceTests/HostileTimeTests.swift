import Events
import Folding
import Foundation
import Kafka
import Testing

@testable import SyncService

/// Times that are valid JSON but hostile to the state (issue "Hostile input", items 1, 2
/// and 4): they must neither trap the fold nor stay in the user's registers.
@Suite struct HostileTimeTests {
    let tp = TopicPartition("events", 0)

    func engine(_ clock: ManualClock, _ dl: RecordingDeadLetters) -> SyncEngine {
        var o = EngineOptions()
        o.debounceMs = 1_000
        o.maxWaitMs = 5_000
        o.requestsPerSecond = 1_000
        o.burst = 1_000
        o.fold.sendNumberOfVisits = true
        let e = SyncEngine(options: o, deadLetters: dl, logger: quietLogger, clock: clock.engineClock)
        e.partitionsAssigned([tp])
        return e
    }

    func body(_ e: SyncEngine, _ user: String) -> [String: Any] {
        guard let b = e.projection(of: user) else { return [:] }
        return (try? JSONSerialization.jsonObject(with: Data(b)) as? [String: Any]) ?? [:]
    }

    /// A message whose Kafka CreateTime is near `Int64.max` and whose payload has no time,
    /// then one more for the same user, trapped the release binary (arithmetic overflow),
    /// on every restart. The Kafka time now passes the plausibility rule: such calls are
    /// invalid and dead-lettered, and the user's ordinary events fold as before.
    @Test func anAbsurdKafkaTimeIsInvalidNotFolded() {
        let clock = ManualClock()
        let dl = RecordingDeadLetters()
        let e = engine(clock, dl)
        let good = clock.epochBase - 3_600_000
        feedTimed(
            e,
            [
                (tp, 0, Int64.max - 1, #"{"type":"track","event":"A","userId":"u1"}"#),
                (tp, 1, Int64.max - 1, #"{"type":"track","event":"B","userId":"u1"}"#),
                (tp, 2, 1, #"{"type":"page","userId":"u1"}"#),
                (tp, 3, good, #"{"type":"page","userId":"u1"}"#),
            ])
        let s = e.snapshot()
        #expect(s.invalid[.badTimestamp] == 3)
        #expect(s.folded == 1)
        let reasons = dl.all.map { d in d.headers.first { $0.0 == "reason" }?.1 }
        #expect(reasons == ["bad-timestamp", "bad-timestamp", "bad-timestamp"])
        #expect(dl.all.allSatisfy { d in d.headers.contains { $0 == ("field", "kafka.timestamp") } })
        let b = body(e, "u1")
        #expect(b["lastSeenDate"] as? Int64 == good)
        #expect(b["firstVisitDate"] as? Int64 == good)
        #expect(b["numberOfVisits"] as? Int64 == 1)
    }

    /// A plausible payload time wins over any Kafka time, and a plausible Kafka time
    /// stands in for a missing payload time.
    @Test func aPlausibleTimeFromEitherSourceIsUsed() {
        let clock = ManualClock()
        let dl = RecordingDeadLetters()
        let e = engine(clock, dl)
        let kafka = clock.epochBase - 7_200_000
        feedTimed(
            e,
            [
                (tp, 0, Int64.max - 1, #"{"type":"page","userId":"p","timestamp":"2025-11-24T10:00:00Z"}"#),
                (tp, 1, kafka, #"{"type":"page","userId":"k"}"#),
            ])
        #expect(e.snapshot().folded == 2)
        #expect(dl.all.isEmpty)
        #expect(body(e, "p")["lastSeenDate"] as? Int64 == Timestamp.parseISO8601("2025-11-24T10:00:00Z"))
        #expect(body(e, "k")["lastSeenDate"] as? Int64 == kafka)
    }

    /// Trait dates pass the same rule: a 1970 or 9999 value is ignored and counted, not
    /// kept for ever in an earliest-date register.
    @Test func implausibleTraitDatesAreIgnoredAndCounted() {
        let clock = ManualClock()
        let e = engine(clock, RecordingDeadLetters())
        feed(
            e,
            [
                (
                    tp, 0,
                    #"{"type":"identify","userId":"t","timestamp":"2025-11-24T10:00:00Z","traits":{"leadDate":"1970-01-02T00:00:00Z","createdAt":"9999-01-01T00:00:00Z"}}"#
                ),
                (
                    tp, 1,
                    #"{"type":"identify","userId":"t","timestamp":"2025-11-24T10:00:01Z","traits":{"leadDate":"2025-11-01T00:00:00Z","signUpDate":"2025-11-02T00:00:00Z"}}"#
                ),
            ])
        #expect(e.snapshot().implausibleTraitDates == 2)
        let b = body(e, "t")
        #expect(b["leadDate"] as? Int64 == Timestamp.parseISO8601("2025-11-01T00:00:00Z"))
        #expect(b["signUpDate"] as? Int64 == Timestamp.parseISO8601("2025-11-02T00:00:00Z"))
    }
}
