import FoldspaceAPI
import Foundation
import Kafka
import Logging
import Simulation
import TestSupport
import Testing

@testable import SyncService

/// The real pipeline (consumer, engine, flusher, HTTP client) against librdkafka's
/// in-process mock cluster and a scripted Foldspace sandbox.
final class PipelineHarness: @unchecked Sendable {
    let cluster: MockCluster
    let sandbox: FoldspaceSandbox
    let apiKey = "policy-key"
    var pipeline: SyncPipeline!
    var task: Task<Void, Error>!
    let topic = "events"

    init(partitions: Int = 2) async throws {
        cluster = try MockCluster(brokers: 1)
        try cluster.createTopic(topic, partitions: partitions)
        try cluster.createTopic("dead-letters", partitions: 1)
        sandbox = FoldspaceSandbox(apiKeys: [apiKey])
        try await sandbox.start()
    }

    func produce(_ messages: [(key: String, value: String)]) throws {
        let p = try KafkaProducer(
            config: KafkaClientConfig(["bootstrap.servers": cluster.bootstrapServers, "log_level": "3"]), logger: quietLogger)
        for m in messages { try p.send(topic: topic, key: Array(m.key.utf8), value: Array(m.value.utf8)) }
        p.flush()
        p.close()
    }

    func start(keys: APIKeyStore? = nil, _ configure: (inout SyncConfiguration) -> Void = { _ in }) throws {
        var c = SyncConfiguration.local(
            brokers: cluster.bootstrapServers, topic: topic, group: "g-\(UUID().uuidString.prefix(8))",
            foldspaceURL: sandbox.baseURL)
        c.deadLetterTopic = "dead-letters"
        c.engine.debounceMs = 200
        c.engine.maxWaitMs = 1_000
        c.engine.requestsPerSecond = 200
        c.engine.burst = 50
        c.engine.drainTimeoutMs = 10_000
        c.kafkaProperties["session.timeout.ms"] = "6000"
        c.stateMode = .memory  // these tests are about delivery; durable state has its own
        configure(&c)
        pipeline = try SyncPipeline(config: c, keys: try keys ?? APIKeyStore(key: apiKey), logger: quietLogger)
        let p = pipeline!
        task = Task { try await p.run() }
    }

    func stop() async throws {
        pipeline.requestStop()
        try await task.value
        await sandbox.stop()
    }

    /// Reads the dead-letter topic with kcat: key, headers and value of each record.
    func deadLetters() throws -> [(key: String, headers: String, value: String)] {
        try readTopic(cluster.bootstrapServers, "dead-letters")
    }
}
