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

    func engine(_ clock: ManualClock, partitions: Int32 = 1, _ configure: (inout EngineOptions) -> Void = { _ in }) -> SyncEngine {
        var o = EngineOptions()
        o.debounceMs = 1_000
        o.maxWaitMs = 5_000
        o.requestsPerSecond = 1_000
        o.burst = 1_000
        o.fold.sendNumberOfVisits = true
        o.fold.keyEvents = [.init(name: "Report Built", weight: 10, cap: 1_000)]
        o.drainTimeoutMs = 100  // a revocation does not wait for users nobody sends here
        o.identity.merge = true
        o.identity.partitions = partitions
        o.identity.repartitionTopic = "g-repartition"
        configure(&o)
        let e = SyncEngine(
            options: o, deadLetters: RecordingDeadLetters(), logger: quietLogger, clock: clock.engineClock,
            links: EngineLinks(stateStore: nil))
        e.partitionsAssigned(
            (0..<partitions).flatMap { [TopicPartition("events", $0), TopicPartition("g-repartition", $0)] })
        return e
    }

    func body(_ e: SyncEngine, _ user: String) -> [String: Any]? {
        guard let b = e.projection(of: user) else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(b)) as? [String: Any]) ?? [:]
    }

    static let anonymous: [String] = [
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

    /// Keys by messageId over two tasks in one engine, `<group>-repartition` played by
    /// handing each task's buffered records back as that topic's messages: every visitor
    /// ends as one user with its whole history, and no anonymous identity is held.
    @Test func visitorsSpreadOverTwoTasksEndAsOneUserEach() throws {
        let clock = ManualClock()
        let e = engine(clock, partitions: 2)
        let router = IdentityRouter(task: 0, partitions: 2)
        var calls: [String] = []
        let visitors = 8
        for v in 0..<visitors {
            for c in Self.anonymous + [Self.signUp] + Self.after {
                calls.append(
                    c.replacingOccurrences(of: "a-77", with: "a-\(v)").replacingOccurrences(of: "person-0005", with: "person-\(v)"))
            }
        }
        // Spread as messageIds spread them: each call on either partition.
        var next: [Int32: Int64] = [:]
        var messages: [(TopicPartition, Int64, [UInt8], [UInt8])] = []
        for (i, c) in calls.enumerated() {
            let p = Int32(i % 2)
            messages.append((TopicPartition("events", p), next[p, default: 0], [], Array(c.utf8)))
            next[p, default: 0] += 1
        }
        feedBytes(e, messages)
        var repartitionNext: [Int32: Int64] = [:]
        var rounds = 0
        while true {
            let out = e.takeOutbound()
            if out.isEmpty { break }
            rounds += 1
            #expect(rounds < 20, "records kept bouncing")
            if rounds >= 20 { break }
            var routed: [(TopicPartition, Int64, [UInt8], [UInt8])] = []
            for (_, records) in out.sorted(by: { $0.key < $1.key }) {
                for (q, r) in records {
                    let (k, v) = r.encode()
                    routed.append((TopicPartition("g-repartition", q), repartitionNext[q, default: 0], k, v))
                    repartitionNext[q, default: 0] += 1
                }
            }
            feedBytes(e, routed)
        }
        #expect(e.snapshot().forwarded > 0, "keys by messageId routed nothing")
        for v in 0..<visitors {
            let user = try #require(body(e, "person-\(v)"), "person-\(v) (task \(router.owner("person-\(v)")))")
            #expect(user["numberOfVisits"] as? Int == 4, "person-\(v): \(user)")
            #expect(user["firstVisitDate"] as? Int64 == 1_763_373_600_000, "person-\(v): \(user)")
            #expect(body(e, "a-\(v)") == nil, "a-\(v) is still held")
        }
        #expect(e.snapshot().users == visitors)
        // In /metrics: a link per visitor, one linked id each; kept when the tasks go.
        let s = e.snapshot()
        #expect(s.identity.links == UInt64(visitors))
        #expect(s.usersWithLinks == visitors && s.linkedIdentities == visitors && s.mostLinked == 1)
        let text = MetricsText.render(s, lag: [])
        #expect(text.contains("foldspace_sync_identity_links_total \(visitors)\n"))
        #expect(text.contains("foldspace_sync_identity_linked_identities \(visitors)\n"))
        #expect(text.contains("foldspace_sync_identity_merged_total \(visitors)\n"))
        e.partitionsRevoked((0..<2).flatMap { [TopicPartition("events", $0), TopicPartition("g-repartition", $0)] })
        #expect(e.snapshot().identity.links == UInt64(visitors), "the counter went back when the tasks were revoked")
    }
}

extension IdentityEngineTests {
    /// Durable: each task's checkpoint writes its routed records, its graph entries and
    /// both its offsets together; the records read back from the store's repartition
    /// topic (only what a checkpoint wrote) carry every visitor to one user.
    @Test func checkpointsWriteRoutedRecordsGraphAndOffsetsTogether() throws {
        let w = IdentityCheckpointTests.World()
        w.produce(IdentityCheckpointTests.calls(0..<6))
        w.feedSource()
        w.settle()
        for v in 0..<6 {
            let user = try #require(body(w.engine, "person-\(v)"))
            #expect(user["numberOfVisits"] as? Int == 4, "person-\(v): \(user)")
            #expect(body(w.engine, "a-\(v)") == nil)
            // The graph is in the identities topic: the anonymous id linked to its user.
            let owner = IdentityRouter(task: 0, partitions: 2).owner("a-\(v)")
            let records = w.store.topics["g-identities"]?[owner] ?? []
            let last = records.last { $0.key == IdentityCodec.key("a-\(v)") }
            let entry = try last?.value.map { try IdentityCodec.decode($0) }
            #expect(entry?.linkedTo?.identity == "person-\(v)", "a-\(v)'s entry: \(String(describing: entry))")
        }
        // Both inputs of each task were committed.
        for q in Int32(0)..<2 {
            #expect(w.store.lastCommit[TopicPartition("events", q)] != nil)
            #expect(w.store.lastCommit[TopicPartition("g-repartition", q)] != nil)
        }

        // A restart: a new engine restores users and graph from the store. A later anonymous
        // call of a-0, on either partition, reaches person-0 (its graph entry was restored),
        // and no anonymous identity comes back.
        w.crashAndRestart()
        #expect(try #require(body(w.engine, "person-0"))["numberOfVisits"] as? Int == 4)
        let late = #"{"type":"page","anonymousId":"a-0","timestamp":"2025-11-25T09:00:00Z"}"#
        w.produce([late, late])  // one on each partition
        w.feedSource()
        w.settle()
        let user = try #require(body(w.engine, "person-0"))
        #expect(user["numberOfVisits"] as? Int == 5, "\(user)")  // two calls the same morning: one visit more
        #expect(user["lastSeenDate"] as? Int64 == 1_764_061_200_000, "\(user)")  // 2025-11-25T09:00:00Z
        #expect(body(w.engine, "a-0") == nil)
    }
}

extension IdentityEngineTests {
    /// `identity.send_anonymous: false`: an anonymous identity is folded but not sent; once
    /// linked, its history goes out with its user.
    @Test func anonymousIdentitiesAreHeldBackWhenAsked() {
        let clock = ManualClock()
        let e = engine(clock) { $0.identity.sendAnonymous = false }
        func sent() -> [String] {
            clock.advance(10_000)
            if case .send(let jobs) = e.takeDue(limit: 100) { return jobs.map(\.identifyId) }
            return []
        }
        feed(e, Self.anonymous.enumerated().map { (p0, Int64($0.offset), $0.element) })
        #expect(sent().isEmpty)
        #expect(e.snapshot().anonymousHeldBack == 1)
        feed(e, [(p0, 10, Self.signUp)])
        #expect(sent() == ["person-0005"])
    }
}

extension IdentityEngineTests {
    /// A task revoked with records it could not write leaves them behind: kept, they would
    /// be written by a later checkpoint when the task (and the replay of its input) may be
    /// another instance's, and counted twice.
    @Test func aRevokedTaskLeavesItsUnwrittenRecordsBehind() {
        let clock = ManualClock()
        let store = MemoryStateStore(partitions: 2)
        var o = EngineOptions()
        o.durable = true
        o.drainTimeoutMs = 1_000
        o.identity.merge = true
        o.identity.partitions = 2
        o.identity.repartitionTopic = "g-repartition"
        o.identity.identitiesTopic = "g-identities"
        let e = SyncEngine(
            options: o, deadLetters: RecordingDeadLetters(), logger: quietLogger, clock: clock.engineClock,
            links: EngineLinks(stateStore: store))
        let all = (0..<2).flatMap { [TopicPartition("events", $0), TopicPartition("g-repartition", $0)] }
        e.partitionsAssigned(all)
        // Calls on both partitions, some of which belong to the other task.
        var messages: [(TopicPartition, Int64, [UInt8], [UInt8])] = []
        for v in 0..<8 {
            let call = #"{"type":"page","anonymousId":"a-\#(v)","timestamp":"2025-11-17T10:00:00Z"}"#
            messages.append((TopicPartition("events", Int32(v % 2)), Int64(v / 2), [], Array(call.utf8)))
        }
        feedBytes(e, messages)
        store.failWrites = true
        e.partitionsRevoked(all)
        store.failWrites = false
        e.partitionsAssigned(all)
        #expect(e.takeOutbound().isEmpty)
    }

    /// Four identifies that link four ids in a circle (each link checked only against its
    /// own pair): a call of one of them travels the circle until the hop limit and is
    /// folded where it is, counted. It is not taken for canonical: every later call is
    /// routed, and counted, again.
    @Test func aCallFoldedAtTheHopLimitIsNotTakenForCanonical() throws {
        let e = engine(ManualClock())
        let circle = [("B", "A"), ("C", "B"), ("D", "C"), ("A", "D")].enumerated().map { i, ids in
            (p0, Int64(i), #"{"type":"identify","userId":"u-\#(ids.0)","anonymousId":"u-\#(ids.1)","timestamp":"2025-11-17T10:00:00Z"}"#)
        }
        feed(e, circle)
        let before = try #require(e.routers[0]).hopLimitReached
        let pages = (0..<5).map { i in
            (p0, Int64(4 + i), #"{"type":"page","userId":"u-A","timestamp":"2025-11-17T11:0\#(i):00Z"}"#)
        }
        feed(e, pages)
        #expect(try #require(e.routers[0]).hopLimitReached - before == 5)
    }

    /// A call read at its identity's owner marks the identity found canonical at the
    /// current routing generation; once the generation wraps, no mark can look current.
    @Test func aWrappedRoutingGenerationForgetsWhatEveryEntryFound() throws {
        let e = engine(ManualClock())
        feed(e, [(p0, 0, #"{"type":"page","userId":"u-1","timestamp":"2025-11-17T10:00:00Z"}"#)])
        let slot = try #require(e.users.existingSlot("u-1", hash: e.users.hash("u-1")))
        #expect(e.users.routedAt(slot) == e.routingGeneration)
        // As if found 65,535 routers ago: the first generation, the one after the wrap.
        e.users.modify(slot) { $0.routedAt = 1 }
        e.routingGeneration = .max
        e.retireRouter(0)
        #expect(e.routingGeneration == 1)
        #expect(e.users.routedAt(slot) == 0)
    }
}

/// Feeds messages with their keys and raw values, as the poll thread would.
func feedBytes(_ engine: SyncEngine, _ messages: [(TopicPartition, Int64, [UInt8], [UInt8])]) {
    let buffers = messages.map { m -> (UnsafeMutableBufferPointer<UInt8>, UnsafeMutableBufferPointer<UInt8>) in
        let k = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(1, m.2.count))
        _ = k.initialize(from: m.2)
        let v = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(1, m.3.count))
        _ = v.initialize(from: m.3)
        return (k, v)
    }
    defer {
        for (k, v) in buffers {
            k.deallocate()
            v.deallocate()
        }
    }
    let batch = zip(messages, buffers).map { m, b in
        ConsumedMessage(
            topicPartition: m.0, offset: m.1, timestampMs: 1_764_000_000_000,
            key: UnsafeBufferPointer(start: b.0.baseAddress, count: m.2.count),
            value: UnsafeBufferPointer(start: b.1.baseAddress, count: m.3.count))
    }
    engine.consume(batch)
}
