import Delivery
import Folding
import Foundation
import Kafka
import Logging
import TestSupport
import Testing

@testable import SyncService

/// Reads a whole topic with kcat (as an outside client would): key, headers, value.
func readTopic(_ bootstrap: String, _ topic: String) throws -> [(key: String, headers: String, value: String)] {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["kcat", "-C", "-b", bootstrap, "-t", topic, "-e", "-q", "-f", "%k\u{1}%h\u{1}%s\u{2}", "-X", "log_level=3"]
    let out = Pipe()
    p.standardOutput = out
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(decoding: data, as: UTF8.self).split(separator: "\u{2}").map {
        let f = $0.split(separator: "\u{1}", omittingEmptySubsequences: false).map(String.init)
        return (f[0], f.count > 1 ? f[1] : "", f.count > 2 ? f[2] : "")
    }
}

/// A dead-letter writer to topic "dl" of a new mock cluster, its producer set with
/// `properties` (librdkafka's own logs off).
func sinkOnMock(
    _ properties: [String: String], maxMessageBytes: Int = 1_000_000,
    retryDelayMs: Int64 = 1_000
) throws -> (MockCluster, KafkaProducer, KafkaDeadLetters) {
    let cluster = try MockCluster(brokers: 1)
    try cluster.createTopic("dl", partitions: 1)
    var config = KafkaClientConfig(["bootstrap.servers": cluster.bootstrapServers, "log_level": "0"])
    for (k, v) in properties { config[k] = v }
    let producer = try KafkaProducer(config: config, logger: quietLogger)
    let sink = KafkaDeadLetters(
        producer: producer, topic: "dl", logger: quietLogger, maxMessageBytes: maxMessageBytes,
        retryDelayMs: retryDelayMs)
    return (cluster, producer, sink)
}

/// Dead letters (issue "Hostile input", item 11): written before the offsets they cover
/// are committed, in both state modes; truncated, never dropped, when over the
/// producer's limit; retried when they fail; a backlog that pauses consuming.
@Suite(.serialized) struct DeadLetterTests {
    let tp = TopicPartition("events", 0)

    func engine(_ clock: ManualClock, _ dl: DeadLetterSink, store: StateStore? = nil) -> (SyncEngine, OffsetLog) {
        var o = EngineOptions()
        o.debounceMs = 1_000
        o.maxWaitMs = 5_000
        o.requestsPerSecond = 1_000
        o.burst = 1_000
        o.durable = store != nil
        o.deadLetterWaitMs = 50
        o.maxDeadLetterBacklogBytes = 1_000
        let log = OffsetLog()
        let e = SyncEngine(
            options: o, deadLetters: dl, logger: quietLogger, clock: clock.engineClock,
            links: EngineLinks(stateStore: store, storeOffsets: { log.store($0) }))
        e.partitionsAssigned([tp])
        return (e, log)
    }

    @Test func memoryModeCommitsAnInvalidMessageOnlyOnceItsDeadLetterIsWritten() {
        let clock = ManualClock()
        let dl = DeferredDeadLetters()
        let (e, offsets) = engine(clock, dl)
        feed(
            e,
            [
                (tp, 0, #"{"type":"page"}"#),  // no identity: invalid
                (tp, 1, #"{"type":"page","userId":"u","timestamp":"2025-11-24T10:00:00Z"}"#),
            ])
        clock.advance(2_000)
        guard case .send(let jobs) = e.takeDue(limit: 10) else {
            Issue.record("nothing due")
            return
        }
        for j in jobs { e.complete(j, outcome: .acknowledged) }
        #expect(dl.count == 1)
        #expect((offsets[tp] ?? 0) == 0, "committed past a dead letter not yet written")
        dl.deliverAll()
        #expect(offsets[tp] == 2)
    }

    @Test func memoryModeHoldsARejectedUsersOffsetsUntilItsDeadLetterIsWritten() {
        let clock = ManualClock()
        let dl = DeferredDeadLetters()
        let (e, offsets) = engine(clock, dl)
        feed(e, [(tp, 0, #"{"type":"page","userId":"r","timestamp":"2025-11-24T10:00:00Z"}"#)])
        clock.advance(2_000)
        guard case .send(let jobs) = e.takeDue(limit: 10) else {
            Issue.record("nothing due")
            return
        }
        e.complete(jobs[0], outcome: .rejected(status: 400, response: "bad"))
        #expect((offsets[tp] ?? 0) == 0)
        dl.deliverAll()
        #expect(offsets[tp] == 1)
    }

    @Test func aDurableCheckpointCommitsOnlyOnceTheDeadLettersAreWritten() {
        let clock = ManualClock()
        let dl = DeferredDeadLetters()
        let store = MemoryStateStore()
        let (e, _) = engine(clock, dl, store: store)
        feed(
            e,
            [
                (tp, 0, #"{"type":"page","userId":"u","timestamp":"2025-11-24T10:00:00Z"}"#),
                (tp, 1, #"not json"#),
            ])
        #expect(e.checkpoint())
        #expect(store.recordCount == 1)  // the state is written either way...
        #expect(store.lastCommit[tp] == nil)  // ...the offsets wait for the dead letter
        dl.deliverAll()
        #expect(e.checkpoint())
        #expect(store.lastCommit[tp] == 2)
    }

    /// Durable mode: a rejected body's letter not yet written keeps the user stored as
    /// not settled, so that a crash before the letter lands sends it (and dead-letters
    /// it) again; once written, the user is stored settled.
    @Test func aDurableRejectedUserIsStoredUnsettledUntilItsLetterIsWritten() throws {
        let clock = ManualClock()
        let dl = DeferredDeadLetters()
        let store = MemoryStateStore()
        let (e, _) = engine(clock, dl, store: store)
        feed(e, [(tp, 0, #"{"type":"page","userId":"r","timestamp":"2025-11-24T10:00:00Z"}"#)])
        clock.advance(2_000)
        guard case .send(let jobs) = e.takeDue(limit: 10) else {
            Issue.record("nothing due")
            return
        }
        e.complete(jobs[0], outcome: .rejected(status: 400, response: "bad"))
        #expect(e.checkpoint())
        let pending = try StateCodec.decode(try #require(store.userRecords(0).last?.value))
        #expect(pending.dirty)
        #expect(pending.settledHash == 0)
        dl.deliverAll()
        #expect(e.checkpoint())
        let settled = try StateCodec.decode(try #require(store.userRecords(0).last?.value))
        #expect(!settled.dirty)
        #expect(settled.settledHash == jobs[0].hash)
    }

    /// Durable mode: a letter from before a revocation, written after the user came back
    /// and was rejected again, must not mark the new letter written.
    @Test func aLateLetterDoesNotSettleAUserRejectedAgainAfterAReassignment() throws {
        let clock = ManualClock()
        let dl = DeferredDeadLetters()
        let store = MemoryStateStore()
        let (e, _) = engine(clock, dl, store: store)
        feed(e, [(tp, 0, #"{"type":"page","userId":"r","timestamp":"2025-11-24T10:00:00Z"}"#)])
        clock.advance(2_000)
        guard case .send(let first) = e.takeDue(limit: 10) else {
            Issue.record("nothing due")
            return
        }
        e.complete(first[0], outcome: .rejected(status: 400, response: "bad"))  // letter 1, not written
        e.partitionsRevoked([tp])
        e.partitionsAssigned([tp])  // r restored unsettled, and due
        clock.advance(2_000)
        guard case .send(let second) = e.takeDue(limit: 10) else {
            Issue.record("r was not sent again")
            return
        }
        e.complete(second[0], outcome: .rejected(status: 400, response: "bad"))  // letter 2
        dl.deliverFirst()  // letter 1 lands
        #expect(e.checkpoint())
        let stored = try StateCodec.decode(try #require(store.userRecords(0).last?.value))
        #expect(stored.dirty && stored.settledHash == 0, "stored settled while letter 2 is not written")
        dl.deliverFirst()
        #expect(e.checkpoint())
        let settled = try StateCodec.decode(try #require(store.userRecords(0).last?.value))
        #expect(!settled.dirty)
    }

    /// Memory mode: a letter written after its partition was revoked and assigned back
    /// must not release a hold taken since (it would commit past an unsent update).
    @Test func aLateLetterDoesNotReleaseAHoldTakenAfterAReassignment() {
        let clock = ManualClock()
        let dl = DeferredDeadLetters()
        var o = EngineOptions()
        o.debounceMs = 1_000
        o.maxWaitMs = 5_000
        o.drainTimeoutMs = 10
        let offsets = OffsetLog()
        let e = SyncEngine(
            options: o, deadLetters: dl, logger: quietLogger, clock: clock.engineClock,
            links: EngineLinks(storeOffsets: { offsets.store($0) }))
        e.partitionsAssigned([tp])
        feed(e, [(tp, 0, #"{"type":"page"}"#)])  // invalid: its letter holds offset 0
        e.partitionsRevoked([tp])
        e.partitionsAssigned([tp])
        // Read again from 0: the invalid message (a second letter) and a user's event.
        feed(e, [(tp, 0, #"{"type":"page"}"#), (tp, 1, #"{"type":"page","userId":"u","timestamp":"2025-11-24T10:00:00Z"}"#)])
        dl.deliverFirst()  // the old letter: the new one, for the same offset, is not written
        #expect((offsets[tp] ?? 0) == 0, "committed past a letter not written")
        dl.deliverFirst()
        #expect((offsets[tp] ?? 0) <= 1, "committed past u's unsent event")
        clock.advance(2_000)
        guard case .send(let jobs) = e.takeDue(limit: 10) else {
            Issue.record("nothing due")
            return
        }
        e.complete(jobs[0], outcome: .acknowledged)
        #expect(offsets[tp] == 2)
    }

    @Test func aDeadLetterBacklogPausesConsuming() {
        let clock = ManualClock()
        let dl = DeferredDeadLetters()
        let (e, _) = engine(clock, dl)
        #expect(!e.wantsPause)
        dl.setBacklog(1_001)
        #expect(e.wantsPause)
        dl.setBacklog(900)  // above 80 %: still paused
        #expect(e.wantsPause)
        dl.setBacklog(700)
        #expect(!e.wantsPause)
    }

    @Test func aDeadLetterOverTheProducersLimitIsTruncatedNotDropped() async throws {
        let (cluster, producer, sink) = try sinkOnMock(["message.max.bytes": "20000"], maxMessageBytes: 20_000)
        let delivered = Flag()
        sink.deadLetter(
            kind: .invalidEvent, key: Array("k".utf8), value: [UInt8](repeating: 0x61, count: 100_000),
            headers: [("reason", "too-large")]
        ) { delivered.set() }
        #expect(await eventually(.seconds(20)) { delivered.isSet })
        #expect(sink.backlogBytes == 0)
        sink.close()
        producer.close()
        let got = try readTopic(cluster.bootstrapServers, "dl")
        #expect(got.count == 1)
        #expect(got.first?.headers.contains("truncated=true") == true, "\(got.first?.headers ?? "")")
        #expect(got.first?.headers.contains("original.bytes=100000") == true)
        #expect((got.first?.value.count ?? 0) > 10_000 && (got.first?.value.count ?? 0) < 20_000)
    }

    /// A limit below the producer's (here the sink is told 1 MB, the producer refuses
    /// over 20 kB, as a broker or topic limit would): the letter is cut further until it
    /// fits, instead of failing for ever.
    @Test func aLetterRefusedAsTooLargeIsCutUntilItFits() async throws {
        let (cluster, producer, sink) = try sinkOnMock(["message.max.bytes": "20000"], maxMessageBytes: 1_000_000, retryDelayMs: 10)
        let delivered = Flag()
        sink.deadLetter(kind: .invalidEvent, key: nil, value: [UInt8](repeating: 0x62, count: 300_000), headers: []) { delivered.set() }
        #expect(await eventually(.seconds(30)) { delivered.isSet })
        #expect(sink.backlogBytes == 0)
        sink.close()
        producer.close()
        let got = try readTopic(cluster.bootstrapServers, "dl")
        #expect(got.count == 1)
        #expect(got.first?.headers.contains("original.bytes=300000") == true)
    }

    @Test func aDeadLetterThatFailsIsWrittenAgain() async throws {
        let (cluster, producer, sink) = try sinkOnMock(["message.timeout.ms": "300"], retryDelayMs: 100)
        cluster.setBroker(1, up: false)
        let delivered = Flag()
        sink.deadLetter(kind: .invalidEvent, key: nil, value: Array("lost?".utf8), headers: []) { delivered.set() }
        #expect(await eventually(.seconds(20)) { sink.retries >= 1 }, "the first attempt did not fail")
        #expect(!delivered.isSet)
        cluster.setBroker(1, up: true)
        #expect(await eventually(.seconds(30)) { delivered.isSet })
        sink.close()
        producer.close()
        let got = try readTopic(cluster.bootstrapServers, "dl")
        #expect(got.map(\.value).contains("lost?"))
    }
}
