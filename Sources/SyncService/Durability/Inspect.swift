import Delivery
import Folding
import Foundation
import Kafka
import Logging

/// `foldspace-sync inspect ID…`: what the changelog holds for some users, for support
/// questions ("why does Foldspace show X?"). Read-only: it joins no group and writes
/// nothing.
public enum Inspect {
    /// Reads every partition of the group's changelog and describes each of `ids` as a
    /// JSON object: whether a record is there (or a tombstone), the folded state, the
    /// body the daemon would send now, whether that differs from the last body Foldspace
    /// acknowledged, and the source positions applied. Returns a JSON array, in the
    /// order of `ids`. The output holds users' data (emails, names): it is for the
    /// operator's terminal, never for logs.
    public static func run(
        config: SyncConfiguration, ids: [String], logger: Logger,
        nowMs: Int64 = Int64(Date().timeIntervalSince1970 * 1000)
    ) throws -> String {
        let admin = KafkaClientConfig(try config.resolvedKafkaProperties()).withoutConsumerProperties
        let topic = config.effectiveStateTopic
        let partitions = try KafkaAdmin.partitionCount(config: admin, topic: topic)
        // Every partition at once, on one client (as restores read); with identity
        // resolution, each task's partition as its restore reads it: only what its
        // committed transactions wrote (a crash's leftovers, which some brokers show, are
        // not shown).
        let merging = config.engine.identity.merge
        let all = try PartitionReader(config: admin).read(topic: topic, partitions: Array(0..<Int32(partitions)))
        var changelog: [Int32: SyncEngine.ChangelogView] = [:]
        for (p, packed) in all {
            changelog[p] = SyncEngine.ChangelogView(
                packed, transactionsOf: merging ? config.topics.first.map { TopicPartition($0, p) } : nil)
        }
        // Identity resolution (docs/identity.md): an id linked to a user is shown with that
        // user's state, where its history now is.
        var graph: [String: IdentityEntry] = [:]
        let identitiesTopic = IdentityTopics.identities(group: config.group)
        if merging, let n = try? KafkaAdmin.partitionCount(config: admin, topic: identitiesTopic) {
            let records = try PartitionReader(config: admin).read(topic: identitiesTopic, partitions: Array(0..<Int32(n)))
            graph = IdentityView.graph(
                records.map { p, packed in
                    guard let view = changelog[p], let source = config.topics.first else { return packed.records }
                    return view.committedIdentities(packed.records, of: TopicPartition(source, p))
                })
        }
        let views = ids.map { IdentityView(id: $0, graph: graph) }
        let wanted = Set(ids + views.map(\.canonical))
        var latest: [String: (partition: Int32, value: [UInt8]?)] = [:]
        for (p, view) in changelog {
            for (key, i) in view.latest where wanted.contains(key) {
                latest[key] = (p, view.records.valueRange(i).map { r in view.records.bytes.withUnsafeBufferPointer { Array($0[r]) } })
            }
        }
        // Source ids back to names: the source topics' partitions.
        var sources: [UInt32: String] = [:]
        for t in config.topics {
            guard let n = try? KafkaAdmin.partitionCount(config: admin, topic: t) else { continue }
            for p in 0..<Int32(n) { sources[stableSourceId(TopicPartition(t, p))] = "\(t)[\(p)]" }
        }
        let projector = Projector(config: config.engine.fold)
        var out: [[String: Any]] = []
        for (asked, view) in zip(ids, views) {
            var o: [String: Any] = ["identifyId": asked, "stateTopic": topic]
            if config.engine.identity.merge { o["identity"] = view.json }
            // The state is the canonical identity's: a linked id's was merged into it.
            let id = view.canonical
            if id != asked {
                o["stateOf"] = id
                // Its own state stayed (its hand-over was refused, or it was written before
                // identity.merge): it is still a user of its own.
                if let own = latest[asked], own.value != nil { o["ownStateFound"] = true }
            }
            guard let found = latest[id] else {
                o["found"] = false
                out.append(o)
                continue
            }
            o["partition"] = Int(found.partition)
            guard let value = found.value else {
                o["found"] = false
                o["tombstone"] = true  // dropped by inactive_user_ttl
                out.append(o)
                continue
            }
            o["found"] = true
            let stored: StoredUser
            do {
                stored = try StateCodec.decode(value)
            } catch {
                o["error"] = "the record cannot be decoded: \(error)"
                out.append(o)
                continue
            }
            let s = stored.state
            var adjustments = Adjustments()
            if let body = projector.body(identifyId: id, state: s, nowMs: nowMs, adjustments: &adjustments) {
                o["body"] = (try? JSONSerialization.jsonObject(with: Data(body))) ?? String(decoding: body, as: UTF8.self)
                o["differsFromAcknowledged"] = bodyHash(body) != stored.settledHash
            }
            o["dirty"] = stored.dirty
            var state: [String: Any] = [
                "visits": Int(s.visits),
                "userType": projector.userType(s).rawValue,
                "activeDaysLast64": s.activeDays.nonzeroBitCount,
            ]
            if s.firstVisitMs != .max { state["firstVisitDate"] = s.firstVisitMs }
            if s.lastSeenMs != .min { state["lastSeenDate"] = s.lastSeenMs }
            var keyEvents: [String: Int] = [:]
            for k in s.keyEventCounts where Int(k.index) < config.engine.fold.keyEvents.count {
                keyEvents[config.engine.fold.keyEvents[Int(k.index)].name] = Int(k.count)
            }
            if !keyEvents.isEmpty { state["keyEventCounts"] = keyEvents }
            o["state"] = state
            o["appliedPositions"] = s.appliedPositions.map { p -> [String: Any] in
                var a: [String: Any] = ["offset": p.offset, "call": Int(p.call)]
                a["source"] = sources[p.source] ?? String(p.source)
                if p.kafkaSeconds > 0 { a["kafkaTime"] = Int64(p.kafkaSeconds) * 1000 }
                return a
            }
            if !adjustments.counts.isEmpty { o["adjustments"] = adjustments.counts }
            out.append(o)
        }
        let data = try JSONSerialization.data(withJSONObject: out, options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }
}

/// What `inspect` says of an identity under identity resolution: the identity it ends at
/// (following its links, as calls do), the link that took it there, and the identities
/// linked into that one.
struct IdentityView {
    var id: String
    var canonical: String
    /// The first hop: where `id` was linked, and when.
    var linkedTo: IdentityLink?
    var linkedIds: [String]
    /// The links went round (two racing aliases): the last identity before the repeat.
    var cycle = false

    init(id: String, graph: [String: IdentityEntry]) {
        self.id = id
        linkedTo = graph[id]?.linkedTo
        var c = id
        var seen: Set<String> = [id]
        for _ in 0..<Int(IdentityRouter.maxHops) {
            guard let next = graph[c]?.linkedTo?.identity else { break }
            if !seen.insert(next).inserted {
                cycle = true
                break
            }
            c = next
        }
        canonical = c
        linkedIds = graph[c]?.linked ?? []
    }

    var json: [String: Any] {
        var o: [String: Any] = ["canonicalId": canonical, "linkedIds": linkedIds]
        if let l = linkedTo { o["linkedTo"] = ["identifyId": l.identity, "time": l.timeMs] as [String: Any] }
        if cycle { o["cycle"] = true }
        return o
    }

    /// The latest entry of each identity in `<group>-identities`' records (a tombstone
    /// removes it; a record that does not decode is skipped).
    static func graph(_ partitions: [[(key: [UInt8], value: [UInt8]?)]]) -> [String: IdentityEntry] {
        var out: [String: IdentityEntry] = [:]
        for records in partitions {
            for r in records {
                guard let id = try? IdentityCodec.identity(key: r.key) else { continue }
                if let v = r.value {
                    if let e = try? IdentityCodec.decode(v) { out[id] = e }
                } else {
                    out[id] = nil
                }
            }
        }
        return out
    }
}
