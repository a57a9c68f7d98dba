import CRdKafka
import Foundation
import Logging

/// State shared with librdkafka's C callbacks through the client's opaque pointer.
/// Callbacks come from librdkafka's own threads, so everything here is thread-safe.
final class CallbackContext: @unchecked Sendable {
    let logger: Logger
    /// Set for consumers: receives rebalance callbacks on the poll thread.
    weak var consumer: KafkaConsumer?
    /// Set for producers: receives delivery reports on the producer's poll thread.
    weak var producer: KafkaProducer?

    /// librdkafka's latest statistics (JSON), when `statistics.interval.ms` is set.
    private let statsLock = NSLock()
    private var stats: String?
    private var parsed: KafkaStatistics?
    private var parsedIsCurrent = true
    var statistics: String? {
        get { statsLock.withLock { stats } }
        set {
            statsLock.withLock {
                stats = newValue
                parsedIsCurrent = false
            }
        }
    }
    /// The latest statistics, parsed once per new document (at most once an interval).
    var parsedStatistics: KafkaStatistics? {
        statsLock.withLock {
            if !parsedIsCurrent, let stats {
                parsed = KafkaStatistics.parse(stats) ?? parsed
                parsedIsCurrent = true
            }
            return parsed
        }
    }

    init(logger: Logger) {
        self.logger = logger
    }
}

/// Routes librdkafka's log lines and error callbacks into swift-log.
func installLogging(_ conf: OpaquePointer, context: CallbackContext) {
    rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(context).toOpaque())
    rd_kafka_conf_set_log_cb(conf) { rk, level, fac, buf in
        guard let rk, let opaque = rd_kafka_opaque(rk) else { return }
        let ctx = Unmanaged<CallbackContext>.fromOpaque(opaque).takeUnretainedValue()
        let text = buf.map { String(cString: $0) } ?? ""
        let facility = fac.map { String(cString: $0) } ?? ""
        let swiftLevel: Logger.Level
        switch level {
        case 0...3: swiftLevel = .error
        case 4: swiftLevel = .warning
        case 5, 6: swiftLevel = .info
        default: swiftLevel = .debug
        }
        ctx.logger.log(level: swiftLevel, "\(text)", metadata: ["librdkafka": "\(facility)"])
    }
    rd_kafka_conf_set_error_cb(conf) { rk, rawErr, reason, opaque in
        let err = rd_kafka_resp_err_t(rawValue: rawErr)
        guard let opaque else { return }
        let ctx = Unmanaged<CallbackContext>.fromOpaque(opaque).takeUnretainedValue()
        let why = reason.map { String(cString: $0) } ?? ""
        var fatal = false
        if err == RD_KAFKA_RESP_ERR__FATAL, let rk {
            fatal = true
            var buf = [CChar](repeating: 0, count: 512)
            let orig = rd_kafka_fatal_error(rk, &buf, buf.count)
            ctx.logger.critical(
                "kafka fatal error",
                metadata: [
                    "code": "\(String(cString: rd_kafka_err2name(orig)))",
                    "reason": "\(errorText(buf))",
                ])
            ctx.consumer?.noteFatal()
            ctx.producer?.noteFatal()
        }
        if !fatal {
            // Transport errors (broker down, all brokers down) are retried by librdkafka.
            ctx.logger.warning(
                "kafka error",
                metadata: [
                    "code": "\(String(cString: rd_kafka_err2name(err)))", "reason": "\(why)",
                ])
        }
    }
}
