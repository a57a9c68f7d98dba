/// One consumed message, valid only during the ``ConsumerHandler/consume(_:)`` call that
/// receives it: key and value point into librdkafka's buffers, so nothing is copied on
/// the way to the decoder.
public struct ConsumedMessage {
    public var topicPartition: TopicPartition
    public var offset: Int64
    /// The Kafka message timestamp (create or log-append time), in epoch milliseconds.
    public var timestampMs: Int64?
    public var key: UnsafeBufferPointer<UInt8>
    public var value: UnsafeBufferPointer<UInt8>

    public init(
        topicPartition: TopicPartition, offset: Int64, timestampMs: Int64?,
        key: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>
    ) {
        self.topicPartition = topicPartition
        self.offset = offset
        self.timestampMs = timestampMs
        self.key = key
        self.value = value
    }
}

/// What the consumer's poll thread calls. Every method runs on that one thread, in
/// order, so an implementation sees assignments, batches and revocations serialized.
public protocol ConsumerHandler: AnyObject, Sendable {
    /// A batch of messages, in partition order. Return once they are folded: the poll
    /// thread fetches the next batch only then, which bounds what is in flight.
    func consume(_ batch: [ConsumedMessage])
    /// Partitions are about to be assigned (inside the rebalance callback).
    func partitionsAssigned(_ partitions: [TopicPartition])
    /// Partitions are about to be taken away (inside the rebalance callback, before
    /// they move): settle what they owe and store their offsets, then return. The
    /// consumer commits the stored offsets synchronously right after.
    func partitionsRevoked(_ partitions: [TopicPartition])
    /// Checked after each batch: while `true`, the consumer pauses fetching.
    var wantsPause: Bool { get }
    /// Asked right after ``partitionsAssigned(_:)``: which of the new partitions must
    /// not be fetched yet (their state is being restored). They stay paused until
    /// ``KafkaConsumer/release(_:)``.
    func partitionsToHold(_ partitions: [TopicPartition]) -> [TopicPartition]
    /// Asked on every round of the poll thread, before it consumes: partitions to read
    /// again from an offset (the handler let messages go without reading them: to bound
    /// its memory, or delivered while the partition was held).
    func takeSeeks() -> [(TopicPartition, Int64)]
}

extension ConsumerHandler {
    public func partitionsToHold(_ partitions: [TopicPartition]) -> [TopicPartition] { [] }
    public func takeSeeks() -> [(TopicPartition, Int64)] { [] }
}
