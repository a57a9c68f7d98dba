import Delivery

/// Where dead letters go: a Kafka topic, or (with none configured) a count and a log
/// line without PII.
public protocol DeadLetterSink: Sendable {
    /// Queues a dead letter without blocking; `delivered` is called once it is written
    /// (at once by a sink that writes nothing). Never called with the engine's lock held.
    func deadLetter(
        kind: DeadLetterKind, key: [UInt8]?, value: [UInt8], headers: [(String, String)],
        delivered: @escaping @Sendable () -> Void)
    /// Bytes of dead letters queued and not yet written: consuming pauses above
    /// ``EngineOptions/maxDeadLetterBacklogBytes``.
    var backlogBytes: Int { get }
}

extension DeadLetterSink {
    public func deadLetter(kind: DeadLetterKind, key: [UInt8]?, value: [UInt8], headers: [(String, String)]) {
        deadLetter(kind: kind, key: key, value: value, headers: headers, delivered: {})
    }
    public var backlogBytes: Int { 0 }
}
