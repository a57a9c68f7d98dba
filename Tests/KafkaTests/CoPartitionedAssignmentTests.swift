import CRdKafka
import Foundation
import TestSupport
import Testing

@testable import Kafka

/// A consumer-group member made on librdkafka's C API, so that the assignment strategy is
/// the test's (``KafkaConsumer`` forces cooperative-sticky). No rebalance callback:
/// librdkafka then assigns and revokes by itself (eager or incremental, as the strategy's
/// protocol says) while a dedicated thread polls.
final class RawGroupMember: @unchecked Sendable {
    private let rk: OpaquePointer
    private let lock = NSLock()
    private var stopping = false
    private var destroyed = false
    private let closed = DispatchSemaphore(value: 0)

    init(_ cluster: MockCluster, group: String, strategy: String, topics: [String]) throws {
        let config = KafkaClientConfig([
            "bootstrap.servers": cluster.bootstrapServers,
            "group.id": group,
            "partition.assignment.strategy": strategy,
            // A member that dies is noticed within seconds; one that closes leaves at once.
            "session.timeout.ms": "6000",
            "heartbeat.interval.ms": "500",
            "enable.auto.commit": "false",
            "auto.offset.reset": "earliest",
            "log_level": "3",
        ])
        rk = try RDKafkaClient.create(RD_KAFKA_CONSUMER, config: config, what: "raw group member")
        rd_kafka_poll_set_consumer(rk)
        // No topics: a client of the group's id that never joins it.
        let err: rd_kafka_resp_err_t =
            topics.isEmpty
            ? RD_KAFKA_RESP_ERR_NO_ERROR
            : withPartitionList(topics.map { (TopicPartition($0, RD_KAFKA_PARTITION_UA), nil) }) { rd_kafka_subscribe(rk, $0) }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            rd_kafka_destroy(rk)
            throw KafkaError(err, context: "subscribe")
        }
        let t = Thread { [self] in
            while !lock.withLock({ stopping }) {
                if let m = rd_kafka_consumer_poll(rk, 100) { rd_kafka_message_destroy(m) }
            }
            // Leaves the group (LeaveGroup): the others rebalance at once instead of
            // waiting out the session timeout.
            _ = rd_kafka_consumer_close(rk)
            closed.signal()
        }
        t.name = "raw-member-poll"
        t.start()
    }

    deinit {
        if !destroyed { rd_kafka_destroy(rk) }
    }

    /// Stops polling, leaves the group and destroys the client; blocks until it has left.
    /// Destroyed here, not at deinit: a test ends its members before its mock cluster.
    func close() {
        lock.withLock { stopping = true }
        closed.wait()
        lock.withLock {
            rd_kafka_destroy(rk)
            destroyed = true
        }
    }

    /// Runs `body` on the client, or returns `closed` once it is destroyed.
    private func withClient<R>(orIfClosed closed: R, _ body: (OpaquePointer) -> R) -> R {
        lock.withLock { destroyed ? closed : body(rk) }
    }

    /// The partitions librdkafka has assigned this member right now (none once closed).
    func assignment() -> [TopicPartition] {
        withClient(orIfClosed: []) { rk in
            var list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>? = nil
            guard rd_kafka_assignment(rk, &list) == RD_KAFKA_RESP_ERR_NO_ERROR, let list else { return [] }
            defer { rd_kafka_topic_partition_list_destroy(list) }
            return partitions(of: list)
        }
    }

    /// Commits `offsets` (the next offset to read) and waits for the coordinator: the
    /// first error, the request's or a partition's.
    func commit(_ offsets: [TopicPartition: Int64]) -> rd_kafka_resp_err_t {
        withClient(orIfClosed: RD_KAFKA_RESP_ERR__DESTROY) { rk in commit(rk, offsets) }
    }

    private func commit(_ rk: OpaquePointer, _ offsets: [TopicPartition: Int64]) -> rd_kafka_resp_err_t {
        withPartitionList(offsets.map { ($0.key, $0.value) }) { list in
            let e = rd_kafka_commit(rk, list, 0)
            guard e == RD_KAFKA_RESP_ERR_NO_ERROR else { return e }
            return (0..<Int(list.pointee.cnt)).map { list.pointee.elems[$0].err }.first { $0 != RD_KAFKA_RESP_ERR_NO_ERROR } ?? e
        }
    }

    /// The group's committed offsets of `partitions`, asked of the coordinator
    /// (`RD_KAFKA_OFFSET_INVALID`: none).
    func committed(_ partitions: [TopicPartition]) -> Result<[TopicPartition: Int64], KafkaError> {
        withClient(orIfClosed: .failure(KafkaError(RD_KAFKA_RESP_ERR__DESTROY, context: "committed"))) { rk in
            committed(rk, partitions)
        }
    }

    private func committed(_ rk: OpaquePointer, _ partitions: [TopicPartition]) -> Result<[TopicPartition: Int64], KafkaError> {
        withPartitionList(partitions.map { ($0, nil) }) { list in
            let e = rd_kafka_committed(rk, list, 5_000)
            guard e == RD_KAFKA_RESP_ERR_NO_ERROR else { return .failure(KafkaError(e, context: "committed")) }
            var out: [TopicPartition: Int64] = [:]
            for i in 0..<Int(list.pointee.cnt) {
                let el = list.pointee.elems[i]
                if el.err != RD_KAFKA_RESP_ERR_NO_ERROR { return .failure(KafkaError(el.err, context: "committed")) }
                out[TopicPartition(String(cString: el.topic), el.partition)] = el.offset
            }
            return .success(out)
        }
    }

    /// This member's id in the group ("" before it has joined).
    func memberId() -> String {
        withClient(orIfClosed: "") { rk in
            guard let id = rd_kafka_memberid(rk) else { return "" }
            defer { rd_kafka_mem_free(rk, id) }
            return String(cString: id)
        }
    }
}

/// Task p is partition p of the source topic and of `<group>-repartition` (same partition
/// count): the instance that owns one must own the other. These tests check, on
/// librdkafka's mock cluster, which assignment strategy gives that by itself when one group
/// subscribes to both topics.
///
/// Not testable here: a group whose members name different strategies (a rolling change
/// from cooperative-sticky to range). This librdkafka refuses to list an eager and a
/// cooperative strategy together in one client, and its mock cluster aborts the process
/// (an assertion in `rd_kafka_mock_cgrp_elect_leader`) when members' protocols differ.
@Suite struct CoPartitionedAssignmentTests {
    static let source = "src"
    static let repartition = "g-repartition"

    /// Each member's partitions of `topic`, by index.
    static func indices(_ assignment: [TopicPartition], of topic: String) -> Set<Int32> {
        Set(assignment.filter { $0.topic == topic }.map(\.partition))
    }

    /// Whether the group has settled on an assignment of `partitions` partitions of each
    /// of `topics`: every member holds some, and together they hold each exactly once.
    static func settled(_ assignments: [[TopicPartition]], topics: [String], partitions: Int32) -> Bool {
        guard assignments.allSatisfy({ !$0.isEmpty }) else { return false }
        let all = assignments.flatMap { $0 }
        let expected = topics.flatMap { t in (0..<partitions).map { TopicPartition(t, $0) } }
        return all.count == expected.count && Set(all) == Set(expected)
    }

    /// Waits, polling the members' assignments off the cooperative pool, until the group
    /// has settled; returns every sample taken and the settled one.
    static func waitSettled(
        _ members: [RawGroupMember], topics: [String], partitions: Int32, timeout: Duration = .seconds(60)
    ) async -> (samples: [[[TopicPartition]]], settled: [[TopicPartition]]?) {
        let deadline = ContinuousClock.now + timeout
        var samples: [[[TopicPartition]]] = []
        while ContinuousClock.now < deadline {
            let sample = await offThePool { members.map { $0.assignment() } }
            samples.append(sample)
            if settled(sample, topics: topics, partitions: partitions) { return (samples, sample) }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return (samples, nil)
    }

    /// The range assignor's answer for one topic: members sorted by member id, each given
    /// a contiguous run, the first `partitions % members` one partition more.
    static func rangeAssignment(memberIds: [String], partitions: Int32) -> [String: Set<Int32>] {
        let sorted = memberIds.sorted()
        guard !sorted.isEmpty else { return [:] }
        let n = Int32(sorted.count)
        let each = partitions / n
        let extra = partitions % n
        var out: [String: Set<Int32>] = [:]
        for (i, id) in sorted.enumerated() {
            let i = Int32(i)
            let start = each * i + min(i, extra)
            out[id] = Set(start..<(start + each + (i < extra ? 1 : 0)))
        }
        return out
    }

    /// Checks one settled state of a range group: each member holds the same indices of
    /// both topics, the indices the range assignor gives it, and no sample taken on the
    /// way (eager rebalancing: everything revoked, then everything assigned) split a task.
    static func expectCoPartitioned(
        _ members: [RawGroupMember], partitions: Int32, step: String, sourceLocation: SourceLocation = #_sourceLocation
    ) async {
        let topics = [source, repartition]
        let (samples, settled) = await waitSettled(members, topics: topics, partitions: partitions)
        guard let settled else {
            Issue.record("\(step): never settled; last \(samples.last ?? [])", sourceLocation: sourceLocation)
            return
        }
        for (m, assignment) in settled.enumerated() {
            let a = indices(assignment, of: source)
            let b = indices(assignment, of: repartition)
            #expect(
                a == b, "\(step): member \(m) holds \(source) \(a.sorted()) but \(repartition) \(b.sorted())",
                sourceLocation: sourceLocation)
        }
        let ids = await offThePool { members.map { $0.memberId() } }
        let expected = rangeAssignment(memberIds: ids, partitions: partitions)
        for (m, assignment) in settled.enumerated() {
            #expect(indices(assignment, of: source) == expected[ids[m]], "\(step): member \(m)", sourceLocation: sourceLocation)
        }
        let split = samples.filter { s in s.contains { indices($0, of: source) != indices($0, of: repartition) } }
        #expect(
            split.isEmpty, "\(step): a member held one topic's partition without the other's: \(split.first ?? [])",
            sourceLocation: sourceLocation)
    }

    /// Two members, a third joining, one leaving, another joining: after every rebalance
    /// each member owns partition p of the source exactly when it owns partition p of the
    /// repartition topic.
    @Test(arguments: [Int32(4), 6])
    func rangeKeepsTheSourceAndRepartitionTopicsCoPartitioned(partitions: Int32) async throws {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic(Self.source, partitions: Int(partitions))
        try cluster.createTopic(Self.repartition, partitions: Int(partitions))
        func member() throws -> RawGroupMember {
            try RawGroupMember(cluster, group: "g", strategy: "range", topics: [Self.source, Self.repartition])
        }
        let a = try member()
        let b = try member()
        await Self.expectCoPartitioned([a, b], partitions: partitions, step: "two members")
        let c = try member()
        await Self.expectCoPartitioned([a, b, c], partitions: partitions, step: "a third joined")
        await offThePool { b.close() }
        await Self.expectCoPartitioned([a, c], partitions: partitions, step: "the second left")
        let d = try member()
        await Self.expectCoPartitioned([a, c, d], partitions: partitions, step: "a fourth joined")
        await offThePool {
            for m in [a, c, d] { m.close() }
        }
        withExtendedLifetime(cluster) {}
    }

    /// Range pairs partition p of both topics only when their partition counts are equal:
    /// with 4 and 6, two members hold source 0–1 and 2–3 but repartition 0–2 and 3–5.
    @Test func rangeSplitsTasksWhenThePartitionCountsDiffer() async throws {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic(Self.source, partitions: 4)
        try cluster.createTopic(Self.repartition, partitions: 6)
        let topics = [Self.source, Self.repartition]
        let a = try RawGroupMember(cluster, group: "g", strategy: "range", topics: topics)
        let b = try RawGroupMember(cluster, group: "g", strategy: "range", topics: topics)
        var held: [[TopicPartition]] = []
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            held = await offThePool { [a, b].map { $0.assignment() } }
            if held.allSatisfy({ !$0.isEmpty }) && Set(held.flatMap { $0 }).count == 10 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        let ids = await offThePool { [a, b].map { $0.memberId() } }
        await offThePool {
            for m in [a, b] { m.close() }
        }
        withExtendedLifetime(cluster) {}
        #expect(held.flatMap { $0 }.count == 10, "\(held)")
        let source = Self.rangeAssignment(memberIds: ids, partitions: 4)
        let repartition = Self.rangeAssignment(memberIds: ids, partitions: 6)
        for (m, assignment) in held.enumerated() {
            #expect(Self.indices(assignment, of: Self.source) == source[ids[m]])
            #expect(Self.indices(assignment, of: Self.repartition) == repartition[ids[m]])
        }
        #expect(held.contains { Self.indices($0, of: Self.source) != Self.indices($0, of: Self.repartition) })
    }

    /// The other way to co-locate: the owner of source partition p reads repartition p
    /// through a second, manually assigned client and commits its offsets itself. A group
    /// member may commit offsets of any partition, assigned or not, of a topic it does not
    /// subscribe to, and every member reads them back; a client of the same `group.id`
    /// that has not joined is refused (the coordinator knows no such member), so those
    /// commits must go through the member's own handle (or its group metadata in a
    /// transaction).
    @Test func aMemberCommitsOffsetsOfAPartitionItIsNotAssigned() async throws {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic(Self.source, partitions: 2)
        try cluster.createTopic(Self.repartition, partitions: 2)
        let a = try RawGroupMember(cluster, group: "g", strategy: "range", topics: [Self.source])
        let b = try RawGroupMember(cluster, group: "g", strategy: "range", topics: [Self.source])
        let outsider = try RawGroupMember(cluster, group: "g", strategy: "range", topics: [])
        let settled = await Self.waitSettled([a, b], topics: [Self.source], partitions: 2).settled
        #expect(settled != nil)
        let r0 = TopicPartition(Self.repartition, 0)
        let r1 = TopicPartition(Self.repartition, 1)
        let (byMember, readByOther, byOutsider, afterOutsider) = await offThePool {
            let byMember = a.commit([r1: 42])
            let readByOther = b.committed([r0, r1])
            let byOutsider = outsider.commit([r0: 7])
            let afterOutsider = b.committed([r0])
            return (byMember, readByOther, byOutsider, afterOutsider)
        }
        await offThePool {
            for m in [a, b, outsider] { m.close() }
        }
        withExtendedLifetime(cluster) {}
        #expect(byMember == RD_KAFKA_RESP_ERR_NO_ERROR, "\(String(cString: rd_kafka_err2name(byMember)))")
        #expect((try? readByOther.get()) == [r0: Int64(RD_KAFKA_OFFSET_INVALID), r1: 42], "\(readByOther)")
        #expect(byOutsider == RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID, "\(String(cString: rd_kafka_err2name(byOutsider)))")
        #expect((try? afterOutsider.get()) == [r0: Int64(RD_KAFKA_OFFSET_INVALID)], "\(afterOutsider)")
    }

    /// The project's own consumer takes `range` from its configuration (it overrides the
    /// cooperative-sticky default) and settles eager rebalances through `rd_kafka_assign`:
    /// the same co-location, and each rebalance revokes every partition a member held
    /// before handing out the new assignment (eager: no member keeps fetching through it).
    @Test func kafkaConsumerWithRangeCoLocatesAndRevokesEverything() async throws {
        let cluster = try MockCluster(brokers: 1)
        try cluster.createTopic(Self.source, partitions: 4)
        try cluster.createTopic(Self.repartition, partitions: 4)
        var config = consumerConfig(cluster, group: "g")
        config["partition.assignment.strategy"] = "range"
        func member() throws -> (KafkaConsumer, RecordingHandler) {
            let handler = RecordingHandler()
            let consumer = try KafkaConsumer(
                config: config, topics: [Self.source, Self.repartition], handler: handler, logger: quiet)
            handler.consumer = consumer
            consumer.start()
            return (consumer, handler)
        }
        let topics = [Self.source, Self.repartition]
        func settled(_ consumers: [KafkaConsumer]) -> [[TopicPartition]]? {
            let held = consumers.map { Array($0.assignment) }
            return Self.settled(held, topics: topics, partitions: 4) ? held : nil
        }
        let (ca, a) = try member()
        let (cb, _) = try member()
        var two: [[TopicPartition]]? = nil
        #expect(
            await eventually(.seconds(30)) {
                two = settled([ca, cb])
                return two != nil
            })
        let before = a.log.count
        let (cc, _) = try member()
        var three: [[TopicPartition]]? = nil
        #expect(
            await eventually(.seconds(30)) {
                three = settled([ca, cb, cc])
                return three != nil
            })
        await offThePool {
            for c in [ca, cb, cc] { c.stop() }
        }
        withExtendedLifetime(cluster) {}
        for state in [two, three] {
            for held in state ?? [] {
                #expect(Self.indices(held, of: Self.source) == Self.indices(held, of: Self.repartition), "\(held)")
            }
        }
        // The first member held 4 of the 8 partitions with two members, and gave up all 4
        // when the third joined, before it was given its new share.
        let log = Array(a.log.dropFirst(before))
        #expect(log.count >= 2 && log[0] == "revoked 4" && log[1].hasPrefix("assigned"), "\(log)")
    }
}
