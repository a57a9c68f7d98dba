import CRdKafka
import Foundation

/// The librdkafka statistics operators alert on, parsed from the JSON its statistics
/// callback delivers every `statistics.interval.ms` (STATISTICS.md). Parsing happens when
/// the numbers are read (a `/metrics` scrape), not on the poll thread, and only for a new
/// JSON document: the callback just keeps the latest text.
public struct KafkaStatistics: Sendable, Equatable {
    public struct Broker: Sendable, Equatable {
        /// librdkafka's broker name (`host:port/nodeid`).
        public var name: String
        /// `UP` and friends (STATISTICS.md `state`).
        public var state: String
        /// Round-trip time over the last statistics window, seconds (nil without requests).
        public var rttAvgSeconds: Double?
        public var rttP99Seconds: Double?

        public init(name: String, state: String, rttAvgSeconds: Double?, rttP99Seconds: Double?) {
            self.name = name
            self.state = state
            self.rttAvgSeconds = rttAvgSeconds
            self.rttP99Seconds = rttP99Seconds
        }
    }

    public var brokers: [Broker] = []
    /// Consumer group rebalances (assign or revoke) since the client started.
    public var rebalances: Int64 = 0
    /// Messages and bytes fetched and waiting in librdkafka's queues for the application.
    public var fetchQueueMessages: Int64 = 0
    public var fetchQueueBytes: Int64 = 0

    public init() {}

    /// Parses one statistics document; nil if it is not the JSON librdkafka writes.
    public static func parse(_ json: String) -> KafkaStatistics? {
        guard let root = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any] else { return nil }
        var s = KafkaStatistics()
        func int(_ v: Any?) -> Int64? { (v as? NSNumber).map { $0.int64Value } }
        if let brokers = root["brokers"] as? [String: Any] {
            for (name, value) in brokers.sorted(by: { $0.key < $1.key }) {
                guard let b = value as? [String: Any] else { continue }
                // Bootstrap and coordinator entries (nodeid -1) duplicate real brokers.
                if let id = int(b["nodeid"]), id < 0 { continue }
                let rtt = b["rtt"] as? [String: Any]
                let count = int(rtt?["cnt"]) ?? 0
                func seconds(_ key: String) -> Double? {
                    guard count > 0, let us = (rtt?[key] as? NSNumber)?.doubleValue, us.isFinite, us >= 0 else { return nil }
                    return us / 1_000_000
                }
                s.brokers.append(
                    Broker(
                        name: b["name"] as? String ?? name, state: b["state"] as? String ?? "",
                        rttAvgSeconds: seconds("avg"), rttP99Seconds: seconds("p99")))
            }
        }
        if let cgrp = root["cgrp"] as? [String: Any] { s.rebalances = max(0, int(cgrp["rebalance_cnt"]) ?? 0) }
        if let topics = root["topics"] as? [String: Any] {
            for case let t as [String: Any] in topics.values {
                guard let parts = t["partitions"] as? [String: Any] else { continue }
                for (p, value) in parts where p != "-1" {
                    guard let part = value as? [String: Any] else { continue }
                    let (m, mo) = s.fetchQueueMessages.addingReportingOverflow(max(0, int(part["fetchq_cnt"]) ?? 0))
                    let (b, bo) = s.fetchQueueBytes.addingReportingOverflow(max(0, int(part["fetchq_size"]) ?? 0))
                    s.fetchQueueMessages = mo ? .max : m
                    s.fetchQueueBytes = bo ? .max : b
                }
            }
        }
        return s
    }
}

/// The librdkafka this process runs (the shared library's, not the headers').
public let librdkafkaVersion: String = String(cString: rd_kafka_version_str())
