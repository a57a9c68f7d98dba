import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOSSL

/// The product's version, sent as `User-Agent: foldspace-sync/<version>`.
public let foldspaceSyncVersion = "0.1.0"

/// The API key, replaceable at run time (SIGHUP re-reads its file).
public final class APIKeyStore: @unchecked Sendable {
    private let lock = NSLock()
    private var key: String
    public let file: String?

    /// - Throws: when the key is empty or holds characters a header cannot carry.
    public init(key: String, file: String? = nil) throws {
        self.key = try Self.validated(key)
        self.file = file
    }

    public init(file: String) throws {
        self.file = file
        self.key = try Self.validated(Self.read(file))
    }

    public var current: String { lock.withLock { key } }

    /// Re-reads the key file, if there is one. Returns whether the key changed.
    @discardableResult
    public func reload() throws -> Bool {
        guard let file else { return false }
        let k = try Self.validated(Self.read(file))
        return lock.withLock {
            defer { key = k }
            return key != k
        }
    }

    static func read(_ file: String) throws -> String {
        do {
            return try String(contentsOfFile: file, encoding: .utf8)
        } catch {
            throw ConfigurationError("cannot read API key file \(file)")
        }
    }

    /// Trims surrounding whitespace; refuses anything a header value cannot hold, so a
    /// key file can never inject a header.
    static func validated(_ raw: String) throws -> String {
        let k = raw.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !k.isEmpty else { throw ConfigurationError("the API key is empty") }
        guard k.unicodeScalars.allSatisfy({ $0.value >= 0x21 && $0.value <= 0x7E }) else {
            throw ConfigurationError("the API key holds characters a header cannot carry")
        }
        return k
    }
}

/// A configuration problem, with a message for the operator (never holding secrets).
public struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ message: String) { description = message }
}

/// Sends `PUT {base}/v1/user/{identifyId}` with AsyncHTTPClient: the only code that
/// sees it. TLS is verified against the system roots and, when configured, a CA file.
public final class FoldspaceClient: UserUpdateSender {
    public struct Options: Sendable {
        public var baseURL: String
        public var connectTimeoutMs: Int64 = 5_000
        public var requestTimeoutMs: Int64 = 30_000
        public var caFile: String?
        public var maxConnections = 16

        public init(baseURL: String) { self.baseURL = baseURL }
    }

    private let http: HTTPClient
    /// The TLS settings the client runs with (tests read them).
    let tlsConfiguration: TLSConfiguration
    private let options: Options
    private let base: String
    private let keys: APIKeyStore
    private let clock: @Sendable () -> Int64

    public init(options: Options, keys: APIKeyStore, epochMs: @escaping @Sendable () -> Int64) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .fullVerification
        // The CA file adds to the system roots (a private CA for a proxy or a stand-in),
        // it does not replace them.
        if let ca = options.caFile {
            tls.additionalTrustRoots = [.file(ca)]
        }
        var config = HTTPClient.Configuration(
            tlsConfiguration: tls,
            redirectConfiguration: .disallow,
            timeout: .init(connect: .milliseconds(options.connectTimeoutMs), read: .milliseconds(options.requestTimeoutMs)),
            connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: options.maxConnections),
            ignoreUncleanSSLShutdown: false)
        config.httpVersion = .http1Only
        tlsConfiguration = tls
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
        self.options = options
        var b = options.baseURL
        while b.hasSuffix("/") { b.removeLast() }
        base = b
        self.keys = keys
        clock = epochMs
    }

    /// How much of an answer's body is kept, and how much is read at most.
    static let keptBodyBytes = 4096
    static let maxDiscardedBodyBytes = 4 << 20

    public func shutdown() async {
        try? await http.shutdown()
    }

    /// The URL for a user: the id percent-encoded as exactly one path segment.
    public func url(for identifyId: String) -> String {
        "\(base)/v1/user/\(encodePathSegment(identifyId))"
    }

    public func send(identifyId: String, body: [UInt8]) async -> DeliveryOutcome {
        var request = HTTPClientRequest(url: url(for: identifyId))
        request.method = .PUT
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: "foldspace-sync/\(foldspaceSyncVersion)")
        request.headers.add(name: "X-FOLDSPACE-API-KEY", value: keys.current)
        request.body = .bytes(ByteBuffer(bytes: body))
        do {
            let response = try await http.execute(request, timeout: .milliseconds(options.requestTimeoutMs))
            let status = Int(response.status.code)
            // The answer's first 4 KiB are kept (for dead letters and logs); the rest is
            // read and dropped, so the connection goes back to the pool. An answer over
            // `maxDiscardedBodyBytes` is left unread (its connection closes with it): the
            // status alone classifies it. Reading with a size limit once made every error
            // page over 64 KB an endless "connection" retry.
            var kept: [UInt8] = []
            var read = 0
            for try await chunk in response.body {
                if kept.count < Self.keptBodyBytes {
                    kept += chunk.readableBytesView.prefix(Self.keptBodyBytes - kept.count)
                }
                read += chunk.readableBytes
                if read > Self.maxDiscardedBodyBytes { break }
            }
            let text = (200..<300).contains(status) ? "" : String(decoding: kept, as: UTF8.self)
            let retryAfter = response.headers.first(name: "Retry-After").flatMap { parseRetryAfter($0, nowEpochMs: clock()) }
            return DeliveryOutcome.classify(status: status, response: text, retryAfterMs: retryAfter)
        } catch let error as HTTPClientError {
            if error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout {
                return .retryable(reason: "timeout")
            }
            return .retryable(reason: "connection")
        } catch {
            if error is NIOSSLError || String(describing: type(of: error)).contains("SSL") {
                return .retryable(reason: "tls")
            }
            return .retryable(reason: "connection")
        }
    }
}

/// Percent-encodes a string as one URL path segment: only RFC 3986 unreserved
/// characters stay as they are; `.` and `..` are encoded whole so that no server reads
/// them as dot-segments.
public func encodePathSegment(_ s: String) -> String {
    if s == "." { return "%2E" }
    if s == ".." { return "%2E%2E" }
    let hex = Array("0123456789ABCDEF".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(s.utf8.count)
    for b in s.utf8 {
        switch b {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "_"), UInt8(ascii: "~"):
            out.append(b)
        default:
            out.append(UInt8(ascii: "%"))
            out.append(hex[Int(b >> 4)])
            out.append(hex[Int(b & 0xF)])
        }
    }
    return String(decoding: out, as: UTF8.self)
}
