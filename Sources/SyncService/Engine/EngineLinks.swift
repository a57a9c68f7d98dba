import Kafka

/// What the engine reaches outside itself, given once at ``SyncEngine/init``: where
/// state is kept, where offsets and restored partitions go, and what it asks the
/// consumer. Each is optional: tests and tools give only what they exercise.
public struct EngineLinks: Sendable {
    /// Durable mode: where state is checkpointed and restored from.
    public var stateStore: StateStore?
    /// Where committable offsets go (the consumer's offset store).
    public var storeOffsets: (@Sendable ([TopicPartition: Int64]) -> Void)?
    /// Where restored partitions go to be fetched (the consumer's
    /// ``KafkaConsumer/release(_:)``). Given, restores run in the background and their
    /// partitions are held paused until then; not given (tests, tools), they run inside
    /// ``SyncEngine/partitionsAssigned(_:)``, once.
    public var restored: (@Sendable ([TopicPartition]) -> Void)?
    /// Sending happens only while this says yes (checked on each take): FreezeWatch.
    public var sendGate: (@Sendable () -> Bool)?
    /// How many partitions the subscribed topics have in all, so that this instance's
    /// share of the API key's rate follows its share of the partitions.
    public var partitionTotal: (@Sendable () -> Int)?
    /// A source partition's high watermark (the consumer's cached one): the proof that a
    /// topic was recreated.
    public var highWatermark: (@Sendable (TopicPartition) -> Int64?)?

    public init(
        stateStore: StateStore? = nil,
        storeOffsets: (@Sendable ([TopicPartition: Int64]) -> Void)? = nil,
        restored: (@Sendable ([TopicPartition]) -> Void)? = nil,
        sendGate: (@Sendable () -> Bool)? = nil,
        partitionTotal: (@Sendable () -> Int)? = nil,
        highWatermark: (@Sendable (TopicPartition) -> Int64?)? = nil
    ) {
        self.stateStore = stateStore
        self.storeOffsets = storeOffsets
        self.restored = restored
        self.sendGate = sendGate
        self.partitionTotal = partitionTotal
        self.highWatermark = highWatermark
    }
}
