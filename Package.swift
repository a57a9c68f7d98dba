// swift-tools-version:6.2
import PackageDescription

// Dependencies, each for one reason:
// - swift-nio: the admin server and the Foldspace sandbox speak HTTP/1.1 on NIO.
// - async-http-client (+ swift-nio-ssl, already its dependency): the Foldspace client in
//   FoldspaceAPI (connection pool, TLS verification with an optional CA file, timeouts).
// - swift-log: one logging API for our code and librdkafka's log callback.
// - swift-argument-parser: the command line.
// - swift-service-lifecycle: one ServiceGroup that owns signals and ordered shutdown.
// - Yams: configuration files in YAML beside JSON.
// The per-event path (decode, fold, the engine's maps) runs without the runtime's dynamic
// exclusivity checks in release builds: every shared structure is behind a lock, and the
// test suite (debug) keeps the checks on (the gain: docs/performance.md).
let hotPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "foldspace-sync",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "foldspace-sync", targets: ["foldspace-sync"])
    ],
    // Exact versions, for a reproducible image without a committed Package.resolved (one
    // made here would carry mirror commit ids). swift-tools-version 6.2 is their floor
    // (async-http-client, swift-log, swift-service-lifecycle). Their own dependencies
    // still resolve within the ranges these versions declare.
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", exact: "2.101.3"),
        .package(url: "https://github.com/swift-server/async-http-client.git", exact: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", exact: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log.git", exact: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", exact: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", exact: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", exact: "6.2.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CRdKafka",
            pkgConfig: "rdkafka",
            providers: [.apt(["librdkafka-dev"])]
        ),
        // The only module that sees librdkafka's C types.
        .target(
            name: "Kafka",
            dependencies: [
                "CRdKafka", "CZstdSizeHint",
                .product(name: "Logging", package: "swift-log"),
            ], swiftSettings: hotPath),
        // librdkafka's zstd batches sized before decompressing (see its header).
        .target(name: "CZstdSizeHint"),
        // A prefetch hint for the fold's warm-up (Swift has none).
        .target(name: "CPrefetch"),
        // Pure: Segment-spec decoding.
        .target(name: "Events", swiftSettings: hotPath),
        // Pure: user state, fold rules, projection, constraints.
        .target(name: "Folding", dependencies: ["Events", "CPrefetch"], swiftSettings: hotPath),
        // Pure: delivery rules (debouncer, rate limiter and breaker, backoff, offset
        // tracking, outcomes) and the sender protocol; no I/O. Events: saturating arithmetic.
        .target(name: "Delivery", dependencies: ["Events"], swiftSettings: hotPath),
        // The Foldspace HTTP API: the client (the only AsyncHTTPClient code), the API key,
        // Retry-After parsing, path encoding, and the operator's ConfigurationError.
        // NIOCore: the request body's ByteBuffer; NIOSSL: TLS settings and errors.
        .target(
            name: "FoldspaceAPI",
            dependencies: [
                "Delivery",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ], swiftSettings: hotPath),
        // A small HTTP/1.1 server on NIO, for the admin endpoints and the sandbox.
        .target(
            name: "HTTPServing",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]),
        // For the demo, the benchmarks and tests only (never in the daemon's library): an
        // in-process Foldspace that checks every request against the documented schema,
        // and generated Segment traffic. Events: the generator's ISO 8601 timestamps.
        .target(name: "Simulation", dependencies: ["HTTPServing", "Events"]),
        // Wiring: configuration, the engine, services.
        .target(
            name: "SyncService",
            dependencies: [
                "Kafka", "Events", "Folding", "Delivery", "FoldspaceAPI", "HTTPServing", "CPrefetch",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ], swiftSettings: hotPath),
        // The daemon's command line; `demo` runs it against the Simulation.
        .executableTarget(
            name: "foldspace-sync",
            dependencies: [
                "SyncService", "Kafka", "FoldspaceAPI", "Simulation", "Events",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
        // Benchmark driver for scripts/bench.sh (not shipped).
        .executableTarget(
            name: "foldspace-bench",
            dependencies: [
                "SyncService", "Kafka", "Events", "Folding", "Delivery", "FoldspaceAPI", "Simulation",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        // Helpers shared by the test targets (polling, the reference fold of visits).
        .target(name: "TestSupport", dependencies: ["Simulation"], path: "Tests/TestSupport"),
        .testTarget(name: "EventsTests", dependencies: ["Events", "Simulation"]),
        .testTarget(name: "FoldingTests", dependencies: ["Folding", "Events", "Simulation"]),
        .testTarget(name: "DeliveryTests", dependencies: ["Delivery"]),
        .testTarget(name: "FoldspaceAPITests", dependencies: ["FoldspaceAPI", "Delivery", "HTTPServing"]),
        .testTarget(name: "KafkaTests", dependencies: ["Kafka", "Folding", "Simulation", "TestSupport"]),
        .testTarget(
            name: "SyncServiceTests",
            dependencies: ["SyncService", "Kafka", "Delivery", "FoldspaceAPI", "Folding", "Events", "Simulation", "TestSupport"]),
        .testTarget(name: "EndToEndTests", dependencies: ["Simulation", "Kafka", "SyncService", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
