import Foundation
import HTTPServing

/// The admin endpoints: `/metrics` (Prometheus text format 0.0.4), `/healthz` (the
/// process loops are alive) and `/readyz` (joined, assigned partitions restored).
public final class AdminServer: Sendable {
    private let server: HTTPServer

    public var port: Int { server.port }

    public static func start(host: String, port: Int, metrics: @escaping @Sendable () -> String,
                             healthy: @escaping @Sendable () -> Bool,
                             ready: @escaping @Sendable () -> Bool) async throws -> AdminServer {
        let server = try await HTTPServer.start(host: host, port: port, maxBodyBytes: 1024) { req in
            switch req.path {
            case "/metrics":
                return HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", text: metrics())
            case "/healthz":
                return healthy()
                    ? HTTPResponse(status: 200, contentType: "text/plain", text: "ok\n")
                    : HTTPResponse(status: 503, contentType: "text/plain", text: "unhealthy\n")
            case "/readyz":
                return ready()
                    ? HTTPResponse(status: 200, contentType: "text/plain", text: "ready\n")
                    : HTTPResponse(status: 503, contentType: "text/plain", text: "not ready\n")
            default:
                return HTTPResponse(status: 404, contentType: "text/plain", text: "not found\n")
            }
        }
        return AdminServer(server: server)
    }

    private init(server: HTTPServer) { self.server = server }

    public func stop() async { await server.stop() }
}

/// Renders the engine's counters as Prometheus text.
public enum MetricsText {
    public static func render(_ s: EngineStats, lag: [(topic: String, partition: Int32, lag: Int64)],
                              fetcherWakeups: Int = 0, zstdBatchesSized: UInt64 = 0) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        func sample(_ name: String, _ labels: [(String, String)], _ value: String) {
            let l = labels.isEmpty ? "" : "{" + labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",") + "}"
            out += "\(name)\(l) \(value)\n"
        }
        family("foldspace_sync_events_total", "counter", "Segment calls read, by result.")
        sample("foldspace_sync_events_total", [("result", "folded")], String(s.folded))
        sample("foldspace_sync_events_total", [("result", "invalid")], String(s.invalidTotal))
        sample("foldspace_sync_events_total", [("result", "ignored")], String(s.ignored))
        sample("foldspace_sync_events_total", [("result", "skipped")], String(s.skippedReplays))
        family("foldspace_sync_invalid_events_total", "counter", "Invalid input, by reason.")
        for (r, n) in s.invalid.sorted(by: { $0.key < $1.key }) { sample("foldspace_sync_invalid_events_total", [("reason", r)], String(n)) }
        family("foldspace_sync_implausible_time_total", "counter", "Event times replaced by the Kafka timestamp.")
        sample("foldspace_sync_implausible_time_total", [], String(s.implausibleTime))
        family("foldspace_sync_requests_total", "counter", "Requests to Foldspace, by status code or failure.")
        for (c, n) in s.requests.sorted(by: { $0.key < $1.key }) { sample("foldspace_sync_requests_total", [("code", c)], String(n)) }
        func histogram(_ name: String, _ help: String, _ h: Histogram) {
            family(name, "histogram", help)
            for (i, b) in h.bounds.enumerated() { sample("\(name)_bucket", [("le", String(b))], String(h.counts[i])) }
            sample("\(name)_bucket", [("le", "+Inf")], String(h.count))
            sample("\(name)_sum", [], String(format: "%.6f", h.sum))
            sample("\(name)_count", [], String(h.count))
        }
        histogram("foldspace_sync_request_duration_seconds", "Time from sending a request to Foldspace to its answer.",
                  s.requestDuration)
        histogram("foldspace_sync_send_lateness_seconds",
                  "Time from when a user was due (debounce, max wait or retry passed) to its request being sent.", s.sendLateness)
        family("foldspace_sync_retries_total", "counter", "Retried deliveries, by reason.")
        for (c, n) in s.retries.sorted(by: { $0.key < $1.key }) { sample("foldspace_sync_retries_total", [("reason", c)], String(n)) }
        family("foldspace_sync_suppressed_total", "counter", "Flushes skipped because Foldspace already has the body.")
        sample("foldspace_sync_suppressed_total", [], String(s.suppressed))
        family("foldspace_sync_dead_letters_total", "counter", "Dead letters, by kind.")
        for (k, n) in s.deadLetters.sorted(by: { $0.key < $1.key }) { sample("foldspace_sync_dead_letters_total", [("kind", k)], String(n)) }
        let invalid = s.invalidTotal
        if invalid > 0 { sample("foldspace_sync_dead_letters_total", [("kind", "invalid-event")], String(invalid)) }
        family("foldspace_sync_adjustments_total", "counter", "Values changed to fit Foldspace's limits, by field and action.")
        for (k, n) in s.adjustments.counts.sorted(by: { $0.key < $1.key }) {
            let parts = k.split(separator: "|")
            sample("foldspace_sync_adjustments_total", [("field", String(parts[0])), ("action", String(parts.last ?? ""))], String(n))
        }
        family("foldspace_sync_checkpoints_total", "counter", "Durable state: checkpoints, by result (a failed one commits nothing and is retried).")
        sample("foldspace_sync_checkpoints_total", [("result", "ok")], String(s.checkpoints))
        sample("foldspace_sync_checkpoints_total", [("result", "failed")], String(s.checkpointFailures))
        family("foldspace_sync_checkpoint_users_total", "counter", "Durable state: user states written to the changelog by checkpoints.")
        sample("foldspace_sync_checkpoint_users_total", [], String(s.checkpointRecords))
        histogram("foldspace_sync_checkpoint_duration_seconds",
                  "Durable state: from a checkpoint's snapshot to Kafka acknowledging its writes and commit.", s.checkpointDuration)
        family("foldspace_sync_restored_users_total", "counter", "Durable state: users loaded from the changelog when partitions were assigned.")
        sample("foldspace_sync_restored_users_total", [], String(s.restoredUsers))
        family("foldspace_sync_restore_failures_total", "counter",
               "Durable state: changelog reads that failed and records that could not be decoded (those users start with no state).")
        sample("foldspace_sync_restore_failures_total", [], String(s.restoreFailures))
        family("foldspace_sync_users", "gauge", "Users held in memory.")
        sample("foldspace_sync_users", [], String(s.users))
        family("foldspace_sync_dirty_users", "gauge", "Users with changes not yet acknowledged.")
        sample("foldspace_sync_dirty_users", [], String(s.dirtyUsers))
        family("foldspace_sync_oldest_dirty_seconds", "gauge", "Age of the oldest unacknowledged change (to 0.1 s, never under).")
        sample("foldspace_sync_oldest_dirty_seconds", [], String(format: "%.3f", Double(s.oldestDirtyMs) / 1000))
        family("foldspace_sync_breaker_open", "gauge", "1 while Foldspace refuses the API key.")
        sample("foldspace_sync_breaker_open", [], s.breakerOpen ? "1" : "0")
        family("foldspace_sync_rate_limit_rps", "gauge", "Current request rate limit of this instance.")
        sample("foldspace_sync_rate_limit_rps", [], String(format: "%.3f", s.rateLimit))
        family("foldspace_sync_consumer_lag", "gauge", "Messages behind the high watermark, per partition.")
        for l in lag { sample("foldspace_sync_consumer_lag", [("topic", l.topic), ("partition", String(l.partition))], String(l.lag)) }
        family("foldspace_sync_kafka_fetcher_wakeups_total", "counter",
               "Times librdkafka's fetcher was woken because the queue ran dry with messages left to read.")
        sample("foldspace_sync_kafka_fetcher_wakeups_total", [], String(fetcherWakeups))
        family("foldspace_sync_kafka_zstd_batches_sized_total", "counter",
               "zstd batches without a stated size that librdkafka decompressed once, sized by libzstd's bound (zstd_size_hint).")
        sample("foldspace_sync_kafka_zstd_batches_sized_total", [], String(zstdBatchesSized))
        return out
    }

    private static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}
