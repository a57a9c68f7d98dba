import Foundation
import Kafka
import Logging

/// A request, carried by a control record on the source topic, to send users' current
/// state to Foldspace again (after a Foldspace restore, or a mapping change).
///
/// `foldspace-sync resync` writes one control record to every partition of every source
/// topic. Each partition's owner in the running group reads it in order with the events
/// and re-sends the users of that partition, through its own debouncer and rate limiter:
/// the work spreads over every instance as the partitions do, and a record read again
/// after a crash or a rebalance only sends the same state once more (idempotent).
///
/// The record's key is ``key``; its value is JSON:
/// `{"foldspace_sync":"resync","all":true,"request_id":"…","requested_at":"…"}` or, for
/// some users, `"ids":["u1","u2"]` instead of `"all"` (at most ``maxIds`` per record).
public struct ResyncRequest: Sendable, Equatable {
    public enum Scope: Sendable, Equatable {
        case all
        case ids([String])
    }

    public var scope: Scope
    public var requestId: String

    /// The key every control record carries. A Segment collector keys by identity or
    /// message id; this key is neither.
    public static let key = Array("foldspace-sync.control".utf8)
    /// Identities per control record; the command splits longer lists.
    public static let maxIds = 1_000

    public init(scope: Scope, requestId: String = UUID().uuidString.lowercased()) {
        self.scope = scope
        self.requestId = requestId
    }

    /// Whether a message's key marks it as a control record (checked for every message:
    /// a length comparison first).
    @inline(__always)
    public static func isControl(key: UnsafeBufferPointer<UInt8>) -> Bool {
        key.count == Self.key.count && key.elementsEqual(Self.key)
    }

    /// Parses a control record's value; nil when it is not a well-formed resync request.
    public init?(value: UnsafeBufferPointer<UInt8>) {
        guard value.count <= 1 << 20,
            let o = try? JSONSerialization.jsonObject(with: Data(value)) as? [String: Any],
            o["foldspace_sync"] as? String == "resync"
        else { return nil }
        let id = (o["request_id"] as? String).map { String($0.prefix(64)) } ?? ""
        switch (o["all"], o["ids"]) {
        case (let all as Bool, nil) where all:
            self.init(scope: .all, requestId: id)
        case (nil, let list as [Any]):
            let ids = list.compactMap { $0 as? String }
            guard ids.count == list.count, !ids.isEmpty, ids.count <= Self.maxIds, !ids.contains(where: \.isEmpty) else { return nil }
            self.init(scope: .ids(ids), requestId: id)
        default:
            return nil
        }
    }

    /// The record's value.
    public func encoded(requestedAt: Date = Date()) -> [UInt8] {
        var o: [String: Any] = [
            "foldspace_sync": "resync",
            "request_id": requestId,
            "requested_at": ISO8601DateFormatter().string(from: requestedAt),
        ]
        switch scope {
        case .all: o["all"] = true
        case .ids(let ids): o["ids"] = ids
        }
        return Array((try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data())
    }
}

/// `foldspace-sync resync`: writes the control records of one resync request.
public enum Resync {
    public struct Written: Sendable, Equatable {
        public var requestId: String
        /// Control records written, per source topic.
        public var records: [String: Int]
    }

    /// Writes the request for all users (`ids` empty) or for `ids` to every partition of
    /// every source topic, and waits until Kafka acknowledged each record.
    public static func run(config: SyncConfiguration, ids: [String], logger: Logger) throws -> Written {
        let kafka = KafkaClientConfig(try config.resolvedKafkaProperties()).withoutConsumerProperties
        let requestId = UUID().uuidString.lowercased()
        var chunks: [ResyncRequest] = []
        if ids.isEmpty {
            chunks = [ResyncRequest(scope: .all, requestId: requestId)]
        } else {
            // At most maxIds per record, and well under Kafka's default 1 MB message.
            var chunk: [String] = []
            var bytes = 0
            for id in ids {
                if chunk.count == ResyncRequest.maxIds || bytes + id.utf8.count * 6 + 3 > 256 * 1024 {
                    chunks.append(ResyncRequest(scope: .ids(chunk), requestId: requestId))
                    chunk = []
                    bytes = 0
                }
                chunk.append(id)
                bytes += id.utf8.count * 6 + 3  // escaped, at worst
            }
            if !chunk.isEmpty { chunks.append(ResyncRequest(scope: .ids(chunk), requestId: requestId)) }
        }
        let values = chunks.map { $0.encoded() }
        let producer = try KafkaProducer(config: kafka, logger: logger)
        defer { producer.close() }
        var written: [String: Int] = [:]
        for topic in config.topics {
            let partitions = try KafkaAdmin.partitionCount(config: kafka, topic: topic)
            var records: [(partition: Int32, key: [UInt8], value: [UInt8]?)] = []
            for p in 0..<Int32(partitions) {
                for v in values { records.append((p, ResyncRequest.key, v)) }
            }
            try producer.sendAndWait(topic: topic, records)
            written[topic] = records.count
        }
        return Written(requestId: requestId, records: written)
    }
}
