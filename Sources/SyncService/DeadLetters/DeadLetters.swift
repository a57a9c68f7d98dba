import Delivery
import Foundation
import Kafka
import Logging

/// Dead letters to a Kafka topic: the original bytes, keyed as they came (or by
/// identifyId for rejected updates), with the reason and source in headers.
///
/// ``deadLetter(kind:key:value:headers:delivered:)`` only queues: it never blocks the
/// caller (the poll thread, or a flusher task on Swift's cooperative pool). A writer
/// thread of its own hands the queue to the producer (waiting there when librdkafka's
/// queue is full) and calls each letter's `delivered` once Kafka acknowledged it. A
/// letter that fails (after librdkafka's own retries) is queued again after a pause:
/// none is ever dropped, and the offsets it covers stay uncommitted meanwhile. The
/// backlog is bounded by the engine, which pauses consuming while ``backlogBytes`` is
/// over its limit. A letter larger than the producer's `message.max.bytes` is truncated,
/// with headers saying so (`truncated: true`, `original.bytes`).
public final class KafkaDeadLetters: DeadLetterSink, @unchecked Sendable {
    private let producer: KafkaProducer
    private let topic: String
    private let logger: Logger
    /// One line per kind and error per interval, with the count, not one per message.
    private let failureLog: LogSummariser
    private let maxMessageBytes: Int
    private let retryDelayMs: Int64

    private struct Letter {
        var key: [UInt8]?
        var value: [UInt8]
        var headers: [(String, String)]
        var kind: String
        var delivered: @Sendable () -> Void
        var size: Int
        /// Not produced before this (monotonic ms): a retry's pause.
        var notBeforeMs: Int64 = 0
        /// The size the record must fit: the producer's limit, halved each time Kafka
        /// finds it too large all the same (a broker or topic limit below it).
        var limit: Int
        var originalBytes: Int
    }

    private let cond = NSCondition()
    private var queue: [Letter] = []
    private var head = 0
    private var bytes = 0
    private var stopping = false
    private var writerDone = false
    private var retried = 0

    /// Letters produced again after a failure, so far.
    public var retries: Int { cond.withLock { retried } }

    /// - Parameters:
    ///   - maxMessageBytes: the producer's `message.max.bytes` (librdkafka's default
    ///     1,000,000): a letter is cut to fit under it.
    ///   - retryDelayMs: the pause before a failed letter is produced again.
    public init(
        producer: KafkaProducer, topic: String, logger: Logger, maxMessageBytes: Int = 1_000_000,
        retryDelayMs: Int64 = 1_000, failureLog: LogSummariser = LogSummariser()
    ) {
        self.producer = producer
        self.topic = topic
        self.logger = logger
        self.failureLog = failureLog
        self.maxMessageBytes = maxMessageBytes
        self.retryDelayMs = retryDelayMs
        let t = Thread { [self] in writerLoop() }
        t.name = "dead-letter-writer"
        t.start()
    }

    public var backlogBytes: Int { cond.withLock { bytes } }

    public func deadLetter(
        kind: DeadLetterKind, key: [UInt8]?, value: [UInt8], headers: [(String, String)],
        delivered: @escaping @Sendable () -> Void
    ) {
        var letter = Letter(
            key: key, value: value, headers: [("kind", kind.rawValue)] + headers, kind: kind.rawValue, delivered: delivered, size: 0,
            limit: maxMessageBytes, originalBytes: value.count)
        fit(&letter)
        cond.withLock {
            bytes += letter.size
            queue.append(letter)
            cond.signal()
        }
    }

    /// Record overhead beyond key, value and headers (batch and record headers).
    static let overheadBytes = 512

    /// Cuts the value (and, past all reason, the key and header values) so that the
    /// record fits `l.limit`, saying so in headers.
    private func fit(_ l: inout Letter) {
        let oldSize = l.size
        func headerBytes() -> Int { l.headers.reduce(0) { $0 + $1.0.utf8.count + $1.1.utf8.count + 8 } }
        var fixed = (l.key?.count ?? 0) + headerBytes() + Self.overheadBytes + 64  // the two headers added below
        if fixed > l.limit / 2 {
            // A key or headers that take the room themselves: cut them too.
            if let k = l.key, k.count > l.limit / 8 { l.key = Array(k.prefix(l.limit / 8)) }
            l.headers = l.headers.map { ($0.0, String(decoding: Array($0.1.utf8.prefix(max(16, l.limit / 64))), as: UTF8.self)) }
            fixed = (l.key?.count ?? 0) + headerBytes() + Self.overheadBytes + 64
        }
        if fixed + l.value.count > l.limit {
            l.value = Array(l.value.prefix(max(0, l.limit - fixed)))
            if !l.headers.contains(where: { $0.0 == "truncated" }) {
                l.headers.append(("truncated", "true"))
                l.headers.append(("original.bytes", String(l.originalBytes)))
            }
        }
        l.size = (l.key?.count ?? 0) + l.value.count + headerBytes()
        if oldSize != 0 { cond.withLock { bytes += l.size - oldSize } }
    }

    private static func nowMs() -> Int64 { Int64(DispatchTime.now().uptimeNanoseconds / 1_000_000) }

    private func writerLoop() {
        while true {
            cond.lock()
            while head == queue.count && !stopping { cond.wait() }
            if head == queue.count {
                writerDone = true
                cond.broadcast()
                cond.unlock()
                return
            }
            let wait = queue[head].notBeforeMs - Self.nowMs()
            if wait > 0 && !stopping {
                _ = cond.wait(until: Date(timeIntervalSinceNow: Double(wait) / 1000))
                cond.unlock()
                continue
            }
            let letter = queue[head]
            head += 1
            if head > 1024 && head * 2 > queue.count {
                queue.removeFirst(head)
                head = 0
            }
            cond.unlock()
            if stopping && letter.notBeforeMs > Self.nowMs() {
                // Stopping: a letter waiting out a retry stays unwritten (its offsets stay
                // uncommitted, so it is read and dead-lettered again after the restart).
                continue
            }
            produce(letter)
        }
    }

    private func produce(_ letter: Letter) {
        do {
            try producer.send(topic: topic, key: letter.key, value: letter.value, headers: letter.headers) { [self] error in
                if let error {
                    retry(letter, why: "\(error)", tooLarge: error.isMessageTooLarge)
                } else {
                    cond.withLock { bytes -= letter.size }
                    letter.delivered()
                }
            }
        } catch {
            retry(letter, why: "\(error)", tooLarge: error.isMessageTooLarge)
        }
    }

    private func retry(_ letter: Letter, why: String, tooLarge: Bool) {
        if let n = failureLog.note(letter.kind + "\u{1}" + why) {
            logger.error(
                "cannot write dead letter; it is retried, and the offsets it covers stay uncommitted",
                metadata: [
                    "kind": "\(letter.kind)", "error": "\(why)", "count": .stringConvertible(n),
                ])
        }
        var again = letter
        again.notBeforeMs = Self.nowMs() + retryDelayMs
        if tooLarge && again.limit > 1024 {
            // A limit below the producer's (the broker's or the topic's): smaller.
            again.limit = max(1024, again.limit / 2)
            fit(&again)
        }
        cond.withLock {
            retried += 1
            queue.append(again)
            cond.signal()
        }
    }

    /// Stops the writer once every queued letter was handed to the producer, or after
    /// `timeoutMs`; the producer's own close then waits for what it holds.
    public func close(timeoutMs: Int = 5_000) {
        cond.lock()
        stopping = true
        cond.broadcast()
        let deadline = Date(timeIntervalSinceNow: Double(timeoutMs) / 1000)
        while !writerDone { if !cond.wait(until: deadline) { break } }
        cond.unlock()
    }
}

/// With no dead-letter topic: dead letters are counted (by the engine) and logged at
/// debug level, with the reason and source but never the payload, which may hold PII.
public struct LoggingDeadLetters: DeadLetterSink {
    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    public func deadLetter(
        kind: DeadLetterKind, key: [UInt8]?, value: [UInt8], headers: [(String, String)],
        delivered: @escaping @Sendable () -> Void
    ) {
        var md: Logger.Metadata = ["kind": "\(kind.rawValue)", "bytes": "\(value.count)"]
        for (k, v) in headers where k != "response" { md[k] = "\(v)" }
        logger.debug("dead letter (no dead-letter topic configured)", metadata: md)
        delivered()
    }
}
