import Foundation
@_exported import TestSupport
import Testing

/// The built `foldspace-sync` binary, next to the test bundle in the build folder, or
/// the one `FOLDSPACE_SYNC_BINARY` names (to run the black-box tests on a release build).
func binaryPath() throws -> String {
    if let path = ProcessInfo.processInfo.environment["FOLDSPACE_SYNC_BINARY"], !path.isEmpty {
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw TestFailure("FOLDSPACE_SYNC_BINARY=\(path) is not an executable")
        }
        return path
    }
    let candidates = [
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("foldspace-sync").path,
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".build/debug/foldspace-sync").path,
    ]
    for c in candidates where FileManager.default.isExecutableFile(atPath: c) { return c }
    throw TestFailure("foldspace-sync binary not found; run `swift build` first (looked in \(candidates))")
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A child process whose output goes to files, so that it can be read at any time and
/// searched for secrets afterwards.
final class Child: @unchecked Sendable {
    let process = Process()
    let stdoutURL: URL
    let stderrURL: URL
    /// The child's standard input, when asked for one.
    let input: Pipe?

    init(_ args: [String], env: [String: String] = [:], withInput: Bool = false, executable: String? = nil) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fss-e2e-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        stdoutURL = dir.appendingPathComponent("stdout")
        stderrURL = dir.appendingPathComponent("stderr")
        FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        process.executableURL = URL(fileURLWithPath: try executable ?? binaryPath())
        process.arguments = args
        var environment = ProcessInfo.processInfo.environment
        environment["FOLDSPACE_API_KEY"] = nil
        for (k, v) in env { environment[k] = v }
        process.environment = environment
        process.standardOutput = try FileHandle(forWritingTo: stdoutURL)
        process.standardError = try FileHandle(forWritingTo: stderrURL)
        input = withInput ? Pipe() : nil
        if let input { process.standardInput = input }
        try process.run()
    }

    var stdout: String { (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "" }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// Waits for exit; returns the status, or nil on timeout (the process is then killed).
    func wait(timeout: Duration = .seconds(60)) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// `foldspace-sync mock-kafka` as a separate process: the black-box tests use the
/// cluster only over loopback, as any outside client would.
final class MockKafkaProcess: @unchecked Sendable {
    let child: Child
    let bootstrap: String

    init(topics: [String], brokers: Int = 1) async throws {
        child = try Child(["mock-kafka", "--brokers", String(brokers)] + topics.flatMap { ["--topic", $0] }, withInput: true)
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if let line = child.stdout.split(separator: "\n").first, line.contains(":") {
                bootstrap = String(line)
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestFailure("mock-kafka printed no bootstrap address: \(child.stderr)")
    }

    /// Sends a fault command (see `mock-kafka --help`) and waits for its `ok`.
    func control(_ command: String) async throws {
        guard let input = child.input else { throw TestFailure("mock-kafka has no control input") }
        let before = child.stdout.components(separatedBy: "\n").count
        input.fileHandleForWriting.write(Data((command + "\n").utf8))
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let lines = child.stdout.components(separatedBy: "\n")
            if lines.count > before {
                for line in lines.dropFirst(before - 1) {
                    if line == "ok \(command)" { return }
                    if line.hasPrefix("error:") { throw TestFailure("mock-kafka refused \(command): \(line)") }
                }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestFailure("mock-kafka did not answer \(command)")
    }

    func stop() async {
        child.signal(SIGTERM)
        _ = await child.wait(timeout: .seconds(10))
    }
}

/// Runs kcat with `args`, `input` on its standard input; returns its standard output.
/// Throws on a non-zero exit when `check` is set.
@discardableResult
func runKcat(_ args: [String], input: Data? = nil, check: Bool = true, env: [String: String] = [:]) throws -> Data {
    let p = Process()
    if !env.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 } }
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["kcat"] + args
    let stdin = Pipe()
    let stdout = Pipe()
    if input != nil { p.standardInput = stdin }
    p.standardOutput = stdout
    p.standardError = FileHandle.nullDevice
    try p.run()
    if let input {
        stdin.fileHandleForWriting.write(input)
        try stdin.fileHandleForWriting.close()
    }
    let out = stdout.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    if check && p.terminationStatus != 0 { throw TestFailure("kcat \(args.first ?? "") exited \(p.terminationStatus)") }
    return out
}

/// Produces `key<TAB>value` lines with kcat (zstd), as an outside producer; with
/// `partitioner` (a librdkafka partitioner, e.g. `murmur2_random` as the Java client
/// places keys) instead of librdkafka's default.
func kcatProduce(
    bootstrap: String, topic: String, _ messages: [(key: String, value: String)], partitioner: String? = nil
) throws {
    var data = Data()
    for m in messages {
        precondition(!m.key.contains("\t") && !m.key.contains("\n") && !m.value.contains("\n"))
        data.append(Data("\(m.key)\t\(m.value)\n".utf8))
    }
    var args = ["-P", "-b", bootstrap, "-t", topic, "-K", "\t", "-z", "zstd", "-X", "log_level=3"]
    if let partitioner { args += ["-X", "topic.partitioner=\(partitioner)"] }
    try runKcat(args, input: data)
}

/// Produces raw values (no key) with kcat, zstd; values must not contain a newline.
func kcatProduceValues(bootstrap: String, topic: String, _ values: [[UInt8]]) throws {
    var data = Data()
    for v in values {
        precondition(!v.contains(0x0A))
        data.append(contentsOf: v)
        data.append(0x0A)
    }
    try runKcat(["-P", "-b", bootstrap, "-t", topic, "-z", "zstd", "-X", "log_level=3", "-X", "message.max.bytes=2000000"], input: data)
}

/// Every record of a topic, read from the beginning with kcat and formatted by `format`.
func kcatConsume(bootstrap: String, topic: String, format: String) throws -> String {
    let out = try runKcat(
        ["-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-f", format, "-X", "log_level=0"],
        check: false)
    return String(decoding: out, as: UTF8.self)
}

func waitUntil(_ timeout: Duration = .seconds(60), _ cond: () -> Bool) async -> Bool {
    await eventually(timeout, cond)
}

/// A reference fold of the fields the end-to-end tests check, computed independently of
/// the daemon's code: min/max time, the latest email by time, userId seen.
struct ReferenceUser: Equatable {
    var first = Int64.max
    var last = Int64.min
    var email: (time: Int64, value: String)? = nil
    var sawUserId = false

    static func == (a: ReferenceUser, b: ReferenceUser) -> Bool {
        a.first == b.first && a.last == b.last && a.email?.value == b.email?.value && a.sawUserId == b.sawUserId
    }
}

/// Builds Segment events for a user, and the reference result, with ISO timestamps.
struct Scenario {
    var messages: [(key: String, value: String)] = []
    var reference: [String: ReferenceUser] = [:]
    let base: Int64 = Int64(Date().timeIntervalSince1970 * 1000) - 86_400_000

    mutating func identify(_ id: String, at t: Int64, email: String, name: String) {
        let iso = iso8601(base + t)
        messages.append(
            (
                id,
                #"{"type":"identify","userId":"\#(id)","messageId":"m\#(messages.count)","timestamp":"\#(iso)","traits":{"email":"\#(email)","name":"\#(name)"},"context":{"library":{"name":"analytics-python","version":"2.3.2"}}}"#
            ))
        var r = reference[id, default: ReferenceUser()]
        r.first = min(r.first, base + t)
        r.last = max(r.last, base + t)
        if r.email == nil || r.email!.time <= base + t { r.email = (base + t, email) }
        r.sawUserId = true
        reference[id] = r
    }

    mutating func track(_ id: String, at t: Int64, anonymous: Bool = false) {
        let iso = iso8601(base + t)
        let idField = anonymous ? #""anonymousId":"\#(id)""# : #""userId":"\#(id)""#
        messages.append(
            (
                id,
                #"{"type":"track",\#(idField),"event":"Clicked","messageId":"m\#(messages.count)","timestamp":"\#(iso)","properties":{"button":"buy"},"context":{"location":{"city":"Paris","country":"France"}}}"#
            ))
        var r = reference[id, default: ReferenceUser()]
        r.first = min(r.first, base + t)
        r.last = max(r.last, base + t)
        if !anonymous { r.sawUserId = true }
        reference[id] = r
    }
}

/// The admin port a daemon logged (`admin server listening … address=127.0.0.1:PORT`),
/// waiting up to `timeout` for the line; nil if it never came.
func adminPort(_ d: Child, timeout: Duration = .seconds(30)) async -> Int? {
    let port = {
        d.stderr.split(separator: "\n").first { $0.contains("admin server listening") }
            .flatMap { l in l.range(of: "127.0.0.1:").flatMap { Int(l[$0.upperBound...].prefix { $0.isNumber }) } }
    }
    _ = await waitUntil(timeout) { port() != nil }
    return port()
}
