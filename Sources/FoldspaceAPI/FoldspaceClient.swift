import AsyncHTTPClient
import Delivery
import Foundation
import NIOCore
import NIOSSL

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
