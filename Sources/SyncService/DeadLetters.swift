import Foundation
import Kafka
import Logging

/// Dead letters to a Kafka topic: the original bytes, keyed as they came (or by
/// identifyId for rejected updates), with the reason and source in headers.
public final class KafkaDeadLetters: DeadLetterSink {
    private let producer: KafkaProducer
    private let topic: String
    private let logger: Logger
    /// One line per kind and error per interval, with the count, not one per message.
    private let failureLog: LogSummariser

    public init(producer: KafkaProducer, topic: String, logger: Logger, failureLog: LogSummariser = LogSummariser()) {
        self.producer = producer
        self.topic = topic
        self.logger = logger
        self.failureLog = failureLog
    }

    public func deadLetter(kind: String, key: [UInt8]?, value: [UInt8], headers: [(String, String)]) {
        do {
            try producer.send(topic: topic, key: key, value: value, headers: [("kind", kind)] + headers)
        } catch {
            let why = "\(error)"
            // The count covers the failures since this kind's last line (a later failure
            // after the interval reports them; the next success does not).
            if let n = failureLog.note(kind + "\u{1}" + why) {
                logger.error("cannot write dead letter", metadata: ["kind": "\(kind)", "error": "\(why)", "count": .stringConvertible(n)])
            }
        }
    }
}

/// With no dead-letter topic: dead letters are counted (by the engine) and logged at
/// debug level, with the reason and source but never the payload, which may hold PII.
public struct LoggingDeadLetters: DeadLetterSink {
    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    public func deadLetter(kind: String, key: [UInt8]?, value: [UInt8], headers: [(String, String)]) {
        var md: Logger.Metadata = ["kind": "\(kind)", "bytes": "\(value.count)"]
        for (k, v) in headers where k != "response" { md[k] = "\(v)" }
        logger.debug("dead letter (no dead-letter topic configured)", metadata: md)
    }
}
