import CRdKafka
import Foundation
import Logging

/// Partition assignment and revocation (librdkafka's rebalance callback), and the
/// partitions held paused at their assignment until the handler releases them.
extension KafkaConsumer {
    /// Lets partitions held at their assignment (``ConsumerHandler/partitionsToHold(_:)``)
    /// be fetched. Thread-safe; the poll thread resumes them on its next round.
    public func release(_ partitions: [TopicPartition]) {
        lock.withLock {
            held.subtract(partitions)
            released.append(contentsOf: partitions)
        }
    }

    /// The rebalance callback, on the poll thread: assignment first tells the handler,
    /// revocation lets it settle and then commits before giving the partitions up.
    func rebalance(
        rk: OpaquePointer, err: rd_kafka_resp_err_t,
        list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
    ) {
        let cooperative = String(cString: rd_kafka_rebalance_protocol(rk)) == "COOPERATIVE"
        let parts = partitions(of: list)
        switch err {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            handler.partitionsAssigned(parts)
            let hold = handler.partitionsToHold(parts)
            lock.withLock {
                assigned.formUnion(parts)
                // A restore may have finished (and released) already.
                let early = Set(released)
                held.formUnion(hold.filter { !early.contains($0) })
            }
            if cooperative {
                if let e = rd_kafka_incremental_assign(rk, list) {
                    logger.error("incremental assign", metadata: ["error": "\(KafkaError(consuming: e, context: "assign"))"])
                }
            } else {
                let e = rd_kafka_assign(rk, list)
                if e != RD_KAFKA_RESP_ERR_NO_ERROR { logger.error("assign", metadata: ["error": "\(KafkaError(e, context: "assign"))"]) }
            }
            // Paused before this callback returns: nothing of them is fetched until then.
            let pausing = paused ? parts : hold
            if !pausing.isEmpty {
                let unpaused: [String] = withPartitionList(pausing.map { ($0, nil) }) { list in
                    _ = rd_kafka_pause_partitions(rk, list)
                    return (0..<Int(list.pointee.cnt)).compactMap { i in
                        let e = list.pointee.elems[i]
                        return e.err == RD_KAFKA_RESP_ERR_NO_ERROR ? nil : "\(String(cString: e.topic))[\(e.partition)]"
                    }
                }
                if !unpaused.isEmpty {
                    logger.warning(
                        "partitions could not be paused at their assignment; what is delivered of them before their restore is read again after it",
                        metadata: ["partitions": "\(unpaused.joined(separator: ","))"])
                }
            }
            readCommittedOffsets(parts)
            logger.info("partitions assigned", metadata: ["partitions": "\(parts.map(\.description).joined(separator: ","))"])
        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
            handler.partitionsRevoked(parts)
            if rd_kafka_assignment_lost(rk) == 0 {
                commitStoredSync()
            }
            lock.withLock {
                assigned.subtract(parts)
                held.subtract(parts)
                released.removeAll { parts.contains($0) }
                for tp in parts { committedAtAssignment[tp] = nil }
            }
            if cooperative {
                if let e = rd_kafka_incremental_unassign(rk, list) {
                    logger.error("incremental unassign", metadata: ["error": "\(KafkaError(consuming: e, context: "unassign"))"])
                }
            } else {
                _ = rd_kafka_assign(rk, nil)
            }
            logger.info("partitions revoked", metadata: ["partitions": "\(parts.map(\.description).joined(separator: ","))"])
        default:
            logger.error("rebalance error", metadata: ["error": "\(KafkaError(err, context: "rebalance"))"])
            _ = rd_kafka_assign(rk, nil)
            lock.withLock {
                assigned.removeAll()
                held.removeAll()
                committedAtAssignment.removeAll()
            }
        }
    }
}
