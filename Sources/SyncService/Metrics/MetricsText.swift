import Delivery
import Events
import Folding
import FoldspaceAPI
import Foundation
import HTTPServing
import Kafka

/// Renders the engine's counters as Prometheus text.
public enum MetricsText {
    public static func render(
        _ s: EngineStats, lag: [(topic: String, partition: Int32, lag: Int64)],
        fetcherWakeups: Int = 0, zstdBatchesSized: UInt64 = 0,
        kafka: KafkaStatistics? = nil, producerQueues: [(producer: String, messages: Int)] = [],
        process: ProcessMetrics? = nil
    ) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        /// A family of one sample without labels.
        func single(_ name: String, _ type: String, _ help: String, _ value: String) {
            family(name, type, help)
            sample(name, [], value)
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
        for (r, n) in s.invalid.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            sample("foldspace_sync_invalid_events_total", [("reason", r.rawValue)], String(n))
        }
        single(
            "foldspace_sync_implausible_time_total", "counter", "Event times replaced by the Kafka timestamp.", String(s.implausibleTime))
        single(
            "foldspace_sync_implausible_trait_dates_total", "counter",
            "Trait dates (leadDate, signUpDate, createdAt) ignored: before 2000 or over 24 h ahead of the clock.",
            String(s.implausibleTraitDates))
        single(
            "foldspace_sync_source_recreated_total", "counter",
            "Source partitions whose offsets restarted below users' applied positions with newer Kafka times (a recreated topic): their events are folded, not skipped.",
            String(s.recreatedSources))
        single(
            "foldspace_sync_source_recreation_suspected_total", "counter",
            "Source partitions where a message below users' applied offsets was much newer by Kafka time while the log was longer than those offsets: skipped as replays (reset the state if the topic was recreated).",
            String(s.suspectedRecreations))
        single(
            "foldspace_sync_applied_sources_forgotten_total", "counter",
            "Applied positions users forgot because their events came from more source partitions than they keep (a replay from a forgotten one is folded again).",
            String(s.appliedSourcesForgotten))
        single(
            "foldspace_sync_restore_kept_newer_total", "counter",
            "Durable state: restored records not loaded because the user in memory had applied as much or more.", String(s.restoreKeptNewer)
        )
        family("foldspace_sync_requests_total", "counter", "Answers from Foldspace, by status code (2xx for every success).")
        for (c, n) in s.requests.sorted(by: { $0.key < $1.key }) { sample("foldspace_sync_requests_total", [("code", c)], String(n)) }
        family(
            "foldspace_sync_request_errors_total", "counter",
            "Requests to Foldspace that got no answer, by kind (timeout, connection, tls).")
        for (k, n) in s.requestErrors.sorted(by: { $0.key < $1.key }) {
            sample("foldspace_sync_request_errors_total", [("kind", k)], String(n))
        }
        func histogram(_ name: String, _ help: String, _ h: Histogram) {
            family(name, "histogram", help)
            for (i, b) in h.bounds.enumerated() { sample("\(name)_bucket", [("le", String(b))], String(h.counts[i])) }
            sample("\(name)_bucket", [("le", "+Inf")], String(h.count))
            sample("\(name)_sum", [], String(format: "%.6f", h.sum))
            sample("\(name)_count", [], String(h.count))
        }
        histogram(
            "foldspace_sync_request_duration_seconds", "Time from sending a request to Foldspace to its answer.",
            s.requestDuration)
        histogram(
            "foldspace_sync_send_lateness_seconds",
            "Time from when a user was due (debounce, max wait or retry passed) to its request being sent.", s.sendLateness)
        family("foldspace_sync_retries_total", "counter", "Retried deliveries, by reason.")
        for (c, n) in s.retries.sorted(by: { $0.key < $1.key }) { sample("foldspace_sync_retries_total", [("reason", c)], String(n)) }
        single(
            "foldspace_sync_suppressed_total", "counter", "Flushes skipped because Foldspace already has the body.", String(s.suppressed))
        family("foldspace_sync_dead_letters_total", "counter", "Dead letters, by kind.")
        for (k, n) in s.deadLetters.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            sample("foldspace_sync_dead_letters_total", [("kind", k.rawValue)], String(n))
        }
        let invalid = s.invalidTotal
        if invalid > 0 { sample("foldspace_sync_dead_letters_total", [("kind", DeadLetterKind.invalidEvent.rawValue)], String(invalid)) }
        family("foldspace_sync_adjustments_total", "counter", "Values changed to fit Foldspace's limits, by field and action.")
        for (k, n) in s.adjustments.counts.sorted(by: { $0.key < $1.key }) {
            let parts = k.split(separator: "|")
            sample("foldspace_sync_adjustments_total", [("field", String(parts[0])), ("action", String(parts.last ?? ""))], String(n))
        }
        // Identity resolution (docs/identity.md).
        let id = s.identity
        for (name, help, value) in [
            ("links", "Identities linked to a user: their calls and state count at that user.", id.links),
            ("conflicts", "Links refused because the identity was linked to another user first (a shared device).", id.conflicts),
            ("cap_reached", "Second ids not linked because their user had identity.max_linked already.", id.capReached),
            ("cycles", "Links refused as a cycle (two aliases racing in opposite directions).", id.cycles),
            ("hop_limit", "Routed calls, link requests or merge records stopped after 16 forwards.", id.hopLimitReached),
            ("forwarded", "Calls sent on to the task that owns their identity, through the repartition topic.", UInt64(s.forwarded)),
            (
                "in_process", "Calls handed to another task this instance holds, without the repartition topic.",
                UInt64(s.handedInProcess)
            ),
            ("merged", "Identities whose state was merged into the user they were linked to.", UInt64(s.identitiesMerged)),
            (
                "hand_overs_refused",
                "Links whose identity's state stayed where it was: held by another task (written before identity.merge), "
                    + "or too large to move.",
                UInt64(s.handOversRefused)
            ),
            (
                "anonymous_held_back", "Bodies of anonymous identities not sent (identity.send_anonymous: false).",
                UInt64(s.anonymousHeldBack)
            ),
            (
                "dropped_records",
                "Routed records dropped because the transaction that wrote them did not commit (a crash or a failed checkpoint).",
                UInt64(s.droppedRoutedRecords)
            ),
            (
                "rereads",
                "Repartition partitions read again: their routed records were let go, over the memory held for notices.",
                UInt64(s.routedRereads)
            ),
        ] {
            single("foldspace_sync_identity_\(name)_total", "counter", help, String(value))
        }
        // Gauges of the graphs held now (a histogram's buckets must only grow; these go down
        // when a task leaves or a user's links grow).
        single(
            "foldspace_sync_identity_users_with_links", "gauge",
            "Users of the graphs this instance holds that have identities linked into them.", String(s.usersWithLinks))
        single(
            "foldspace_sync_identity_linked_identities", "gauge",
            "Identities linked into those users (divided by the users with links: linked identities per user).",
            String(s.linkedIdentities))
        single(
            "foldspace_sync_identity_held_records", "gauge",
            "Routed records read and held until a notice says whether the transaction that wrote them committed.",
            String(s.heldRoutedRecords))
        single(
            "foldspace_sync_identity_most_linked", "gauge",
            "The most identities linked into one user of those graphs (identity.max_linked caps it).",
            String(s.mostLinked))
        family(
            "foldspace_sync_checkpoints_total", "counter",
            "Durable state: checkpoints, by result (a failed one commits nothing and is retried).")
        sample("foldspace_sync_checkpoints_total", [("result", "ok")], String(s.checkpoints))
        sample("foldspace_sync_checkpoints_total", [("result", "failed")], String(s.checkpointFailures))
        single(
            "foldspace_sync_checkpoint_users_total", "counter", "Durable state: user states written to the changelog by checkpoints.",
            String(s.checkpointRecords))
        histogram(
            "foldspace_sync_checkpoint_duration_seconds",
            "Durable state: from a checkpoint's snapshot to Kafka acknowledging its writes and commit.", s.checkpointDuration)
        single(
            "foldspace_sync_restored_users_total", "counter",
            "Durable state: users loaded from the changelog when partitions were assigned.", String(s.restoredUsers))
        single(
            "foldspace_sync_restore_failures_total", "counter",
            "Durable state: restores (and claims of a partition's changelog writer) that failed; each is tried again, the partition held meanwhile.",
            String(s.restoreFailures))
        single(
            "foldspace_sync_restore_changelog_missing_total", "counter",
            "Durable state: restores refused because the changelog holds nothing for a partition whose offsets the group has committed (the changelog was deleted or recreated); the partition is held.",
            String(s.changelogMissing))
        single(
            "foldspace_sync_resync_requests_total", "counter",
            "Resync control records applied (one per source partition of a `foldspace-sync resync`).", String(s.resyncRequests))
        single("foldspace_sync_resync_users_total", "counter", "Users queued to be sent again by a resync.", String(s.resyncUsers))
        single(
            "foldspace_sync_resync_pending_partitions", "gauge",
            "Partitions whose resync of all users has not queued every user yet (it waits while many users await delivery).",
            String(s.resyncPendingPartitions))
        single("foldspace_sync_users", "gauge", "Users held in memory.", String(s.users))
        family(
            "foldspace_sync_users_by_type", "gauge",
            "Users held in memory by the type their body carries, as of the last full sweep of the user table (every few seconds).")
        for t in UserType.allCases { sample("foldspace_sync_users_by_type", [("type", t.rawValue)], String(s.usersByType[t] ?? 0)) }
        single(
            "foldspace_sync_users_expired_total", "counter",
            "Users dropped from memory (and tombstoned in the changelog) by inactive_user_ttl.", String(s.expiredUsers))
        single("foldspace_sync_dirty_users", "gauge", "Users with changes not yet acknowledged.", String(s.dirtyUsers))
        single(
            "foldspace_sync_oldest_dirty_seconds", "gauge", "Age of the oldest unacknowledged change (to 0.1 s, never under).",
            String(format: "%.3f", Double(s.oldestDirtyMs) / 1000))
        single(
            "foldspace_sync_breaker_open", "gauge",
            "1 while sending is paused for a fault that is no one user's (the key refused, or the URL or a proxy wrong).",
            s.breakerOpen ? "1" : "0")
        single(
            "foldspace_sync_breaker_status", "gauge",
            "The HTTP status that opened the breaker (401/403: the key; a redirect, 404, 405, 407, 501...: the URL or a proxy); 0 while closed.",
            String(s.breakerStatus))
        single(
            "foldspace_sync_rate_limit_requests_per_second", "gauge", "Current request rate limit of this instance.", number(s.rateLimit))
        family("foldspace_sync_consumer_lag", "gauge", "Messages behind the high watermark, per partition.")
        for l in lag { sample("foldspace_sync_consumer_lag", [("topic", l.topic), ("partition", String(l.partition))], String(l.lag)) }
        single(
            "foldspace_sync_kafka_fetcher_wakeups_total", "counter",
            "Times librdkafka's fetcher was woken because the queue ran dry with messages left to read.", String(fetcherWakeups))
        single(
            "foldspace_sync_kafka_zstd_batches_sized_total", "counter",
            "zstd batches without a stated size that librdkafka decompressed once, sized by libzstd's bound (zstd_size_hint).",
            String(zstdBatchesSized))
        if let kafka {
            family("foldspace_sync_kafka_broker_up", "gauge", "1 while librdkafka's connection to the broker is up (statistics).")
            for b in kafka.brokers { sample("foldspace_sync_kafka_broker_up", [("broker", b.name)], b.state == "UP" ? "1" : "0") }
            family(
                "foldspace_sync_kafka_broker_rtt_seconds", "gauge",
                "Average round-trip time to the broker over librdkafka's last statistics interval.")
            for b in kafka.brokers {
                if let v = b.rttAvgSeconds { sample("foldspace_sync_kafka_broker_rtt_seconds", [("broker", b.name)], number(v)) }
            }
            family(
                "foldspace_sync_kafka_broker_rtt_p99_seconds", "gauge",
                "99th percentile round-trip time to the broker over librdkafka's last statistics interval.")
            for b in kafka.brokers {
                if let v = b.rttP99Seconds { sample("foldspace_sync_kafka_broker_rtt_p99_seconds", [("broker", b.name)], number(v)) }
            }
            single(
                "foldspace_sync_kafka_rebalances_total", "counter", "Consumer group rebalances (assign or revoke) seen by this instance.",
                String(kafka.rebalances))
            single(
                "foldspace_sync_kafka_fetch_queue_messages", "gauge", "Messages fetched by librdkafka and not yet read by the daemon.",
                String(kafka.fetchQueueMessages))
            single(
                "foldspace_sync_kafka_fetch_queue_bytes", "gauge", "Bytes fetched by librdkafka and not yet read by the daemon.",
                String(kafka.fetchQueueBytes))
        }
        family(
            "foldspace_sync_kafka_producer_queue_messages", "gauge",
            "Messages queued in a producer (state changelog, dead letters) and not yet acknowledged.")
        for q in producerQueues { sample("foldspace_sync_kafka_producer_queue_messages", [("producer", q.producer)], String(q.messages)) }
        family("foldspace_sync_build_info", "gauge", "Always 1: the daemon's version and the librdkafka it runs.")
        sample("foldspace_sync_build_info", [("version", foldspaceSyncVersion), ("librdkafka_version", librdkafkaVersion)], "1")
        if let p = process {
            single("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", number(p.cpuSeconds))
            single("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", String(p.residentBytes))
            single("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", String(p.virtualBytes))
            single("process_open_fds", "gauge", "Number of open file descriptors.", String(p.openFds))
            if let m = p.maxFds {
                single("process_max_fds", "gauge", "Maximum number of open file descriptors.", String(m))
            }
            single(
                "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", number(p.startTimeSeconds))
        }
        return out
    }

    /// A sample value: Go's float format for non-finite values, else the shortest exact.
    static func number(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        return "\(v)"
    }

    private static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}

extension EngineStats {
    /// Counts one answer (or failure) from Foldspace for `/metrics`.
    /// Status codes go to `requests`; failures with no status (timeout, connection, tls)
    /// to `requestErrors`, by kind.
    public mutating func countRequest(_ outcome: DeliveryOutcome) {
        let label = outcome.codeLabel
        if label == "2xx" || label.allSatisfy(\.isNumber) {
            requests[label, default: 0] += 1
        } else {
            requestErrors[label, default: 0] += 1
        }
    }
}
