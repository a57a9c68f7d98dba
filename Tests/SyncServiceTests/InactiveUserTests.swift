import Delivery
import Folding
import Foundation
import Kafka
import Testing

@testable import SyncService

/// `inactive_user_ttl` (issue "Hostile input", item 5): anonymous ids from a public write
/// key must not grow memory and the changelog for ever.
@Suite struct InactiveUserTests {
    let tp = TopicPartition("events", 0)

    func engine(_ clock: ManualClock, ttlMs: Int64, store: StateStore?) -> SyncEngine {
        var o = EngineOptions()
        o.debounceMs = 1_000
        o.maxWaitMs = 5_000
        o.requestsPerSecond = 1_000
        o.burst = 1_000
        o.inactiveUserTTLMs = ttlMs
        o.durable = store != nil
        let e = SyncEngine(
            options: o, deadLetters: RecordingDeadLetters(), logger: quietLogger, clock: clock.engineClock,
            links: EngineLinks(stateStore: store))
        e.partitionsAssigned([tp])
        return e
    }

    func settleAll(_ e: SyncEngine, _ clock: ManualClock) {
        clock.advance(10_000)
        while case .send(let jobs) = e.takeDue(limit: 100) { for j in jobs { e.complete(j, outcome: .acknowledged) } }
    }

    /// The clock reads epochBase + 1000 + advances; event times are set relative to it.
    func iso(_ clock: ManualClock, daysAgo: Int) -> String {
        let ms = clock.epochBase + clock.now - Int64(daysAgo) * 86_400_000
        return ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
    }

    @Test func usersNotSeenForTheTTLAreDroppedAndTombstoned() throws {
        let clock = ManualClock()
        let store = MemoryStateStore()
        let e = engine(clock, ttlMs: 30 * 86_400_000, store: store)
        feed(
            e,
            [
                (tp, 0, #"{"type":"page","anonymousId":"old","timestamp":"\#(iso(clock, daysAgo: 40))"}"#),
                (tp, 1, #"{"type":"identify","userId":"recent","timestamp":"\#(iso(clock, daysAgo: 2))"}"#),
                (tp, 2, #"{"type":"page","anonymousId":"old-dirty","timestamp":"\#(iso(clock, daysAgo: 50))"}"#),
            ])
        settleAll(e, clock)
        feed(e, [(tp, 3, #"{"type":"page","anonymousId":"old-dirty","timestamp":"\#(iso(clock, daysAgo: 45))"}"#)])
        #expect(e.checkpoint())
        let before = store.recordCount
        // A dirty user is not dropped: its change must reach Foldspace first.
        e.sweep()
        #expect(e.snapshot().expiredUsers == 1)
        #expect(e.projection(of: "old") == nil)
        #expect(e.projection(of: "recent") != nil)
        #expect(e.projection(of: "old-dirty") != nil)
        #expect(e.checkpoint())
        let written = store.userRecords(0).suffix(store.recordCount - before)
        #expect(written.map { String(decoding: $0.key, as: UTF8.self) } == ["old"])
        #expect(written.allSatisfy { $0.value == nil }, "a tombstone")
        // Once settled, the other old user goes too.
        settleAll(e, clock)
        e.sweep()
        #expect(e.snapshot().expiredUsers == 2)
        #expect(e.snapshot().users == 1)
        #expect(e.checkpoint())
        #expect(store.userRecords(0).last.map { String(decoding: $0.key, as: UTF8.self) } == "old-dirty")
        #expect(store.userRecords(0).last?.value == nil)
    }

    @Test func withoutATTLNobodyIsDroppedAndUsersAreCountedByType() {
        let clock = ManualClock()
        let e = engine(clock, ttlMs: 0, store: nil)
        feed(
            e,
            [
                (tp, 0, #"{"type":"page","anonymousId":"a1","timestamp":"\#(iso(clock, daysAgo: 400))"}"#),
                (tp, 1, #"{"type":"page","anonymousId":"a2","timestamp":"\#(iso(clock, daysAgo: 1))"}"#),
                (tp, 2, #"{"type":"identify","userId":"u1","timestamp":"\#(iso(clock, daysAgo: 1))"}"#),
                (
                    tp, 3,
                    #"{"type":"identify","anonymousId":"l1","timestamp":"\#(iso(clock, daysAgo: 1))","traits":{"leadDate":"\#(iso(clock, daysAgo: 3))"}}"#
                ),
            ])
        settleAll(e, clock)
        // Slices of two: the counts are published once the table has been walked.
        e.sweep(limit: 2)
        #expect(e.snapshot().usersByType.values.reduce(0, +) == 0)
        e.sweep(limit: 2)
        #expect(e.snapshot().usersByType == [.anonymous: 2, .lead: 1, .user: 1])
        #expect(e.snapshot().expiredUsers == 0)
        #expect(e.snapshot().users == 4)
    }

    @Test func inMemoryModeDropsWithoutATombstone() {
        let clock = ManualClock()
        let e = engine(clock, ttlMs: 86_400_000, store: nil)
        feed(
            e,
            [
                (tp, 0, #"{"type":"page","anonymousId":"old","timestamp":"\#(iso(clock, daysAgo: 3))"}"#),
                (tp, 1, #"{"type":"page","anonymousId":"new","timestamp":"\#(iso(clock, daysAgo: 0))"}"#),
            ])
        settleAll(e, clock)
        e.sweep()
        #expect(e.snapshot().users == 1)
        #expect(e.snapshot().expiredUsers == 1)
        // Seen again, the user starts over.
        feed(e, [(tp, 2, #"{"type":"page","anonymousId":"old","timestamp":"\#(iso(clock, daysAgo: 0))"}"#)])
        #expect(e.snapshot().users == 2)
    }

    /// The TTL counts from the partition's latest event time, not the wall clock: a
    /// backlog of old events being read does not expire its users as it goes.
    @Test func anOldBacklogIsNotExpiredWhileItIsRead() {
        let clock = ManualClock()
        let e = engine(clock, ttlMs: 86_400_000, store: nil)
        feed(
            e,
            (0..<20).map {
                (tp, Int64($0), #"{"type":"page","anonymousId":"b\#($0)","timestamp":"\#(iso(clock, daysAgo: 60 - $0 / 10))"}"#)
            })
        settleAll(e, clock)
        e.sweep()
        // b0-b9 are a day older than b10-b19 (the partition's latest): only the TTL
        // between them counts, and they are exactly one day apart, not over it.
        #expect(e.snapshot().expiredUsers == 0)
        #expect(e.snapshot().users == 20)
    }
}
