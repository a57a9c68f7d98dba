import Foundation
import HTTPServing
import NIOSSL
import Testing

@testable import Delivery
@testable import FoldspaceAPI

/// The real client against real sockets: TLS verification, headers, status policy.
@Suite(.serialized) struct FoldspaceClientTests {
    /// A self-signed certificate for 127.0.0.1, made with openssl at test time.
    func selfSigned() throws -> (cert: String, key: String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tls-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let cert = dir.appendingPathComponent("cert.pem").path
        let key = dir.appendingPathComponent("key.pem").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert,
        ]
        p.standardError = FileHandle.nullDevice
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        // env's 127: no openssl on PATH.
        guard p.terminationStatus != 127 else {
            throw TLSSetupError(reason: "openssl is not installed: `bash scripts/deps.sh --with-test-tools` installs it")
        }
        guard p.terminationStatus == 0 else { throw TLSSetupError(reason: "openssl req exited \(p.terminationStatus)") }
        return (cert, key)
    }

    struct TLSSetupError: Error, CustomStringConvertible {
        var reason: String
        var description: String { reason }
    }

    func client(_ url: String, ca: String? = nil, key: String = "k1") throws -> FoldspaceClient {
        var o = FoldspaceClient.Options(baseURL: url)
        o.caFile = ca
        o.connectTimeoutMs = 2_000
        o.requestTimeoutMs = 2_000
        return try FoldspaceClient(options: o, keys: APIKeyStore(key: key), epochMs: { 0 })
    }

    // openssl makes the certificate: scripts/deps.sh --with-test-tools installs it; without
    // it the test fails naming it (never a skip).
    @Test func tlsIsVerifiedUnlessTheCAIsConfigured() async throws {
        let (cert, key) = try selfSigned()
        let server = try await HTTPServer.start(host: "127.0.0.1", port: 0, tls: (cert, key)) { _ in
            HTTPResponse(status: 200, contentType: "application/json", text: #"{"message":"ok"}"#)
        }
        let url = "https://127.0.0.1:\(server.port)"
        let untrusting = try client(url)
        let refused = await untrusting.send(identifyId: "u", body: Array(#"{"userType":"USER","identifyId":"u"}"#.utf8))
        #expect(refused != .acknowledged)
        if case .retryable = refused {} else { Issue.record("a TLS failure must be retried, not final: \(refused)") }
        let trusting = try client(url, ca: cert)
        let ok = await trusting.send(identifyId: "u", body: Array(#"{"userType":"USER","identifyId":"u"}"#.utf8))
        #expect(ok == .acknowledged)
        await untrusting.shutdown()
        await trusting.shutdown()
        await server.stop()
    }

    @Test func sendsThePutWithTheDocumentedHeadersAndClassifiesAnswers() async throws {
        let seen = Recorder()
        let server = try await HTTPServer.start(host: "127.0.0.1", port: 0) { req in
            seen.add(req)
            switch req.path {
            case "/v1/user/limited": return HTTPResponse(status: 429, headers: [("Retry-After", "3")])
            case "/v1/user/bad": return HTTPResponse(status: 400, contentType: "text/plain", text: "invalid name")
            case "/v1/user/down": return HTTPResponse(status: 503)
            default: return HTTPResponse(status: 200, contentType: "application/json", text: #"{"message":"ok"}"#)
            }
        }
        let c = try client("http://127.0.0.1:\(server.port)/", key: "secret-key")
        #expect(await c.send(identifyId: "a b/c", body: Array("{}".utf8)) == .acknowledged)
        #expect(await c.send(identifyId: "limited", body: Array("{}".utf8)) == .rateLimited(retryAfterMs: 3000))
        #expect(await c.send(identifyId: "bad", body: Array("{}".utf8)) == .rejected(status: 400, response: "invalid name"))
        #expect(await c.send(identifyId: "down", body: Array("{}".utf8)) == .retryable(reason: "503"))
        let first = try #require(seen.all.first)
        #expect(first.method == "PUT")
        #expect(first.target == "/v1/user/a%20b%2Fc")
        #expect(first.header("X-FOLDSPACE-API-KEY") == "secret-key")
        #expect(first.header("Content-Type") == "application/json")
        #expect(first.header("User-Agent") == "foldspace-sync/\(foldspaceSyncVersion)")
        await c.shutdown()
        await server.stop()
        // Nothing listens any more: a connection error is retried.
        let gone = try client("http://127.0.0.1:\(server.port)")
        if case .retryable = await gone.send(identifyId: "x", body: Array("{}".utf8)) {
        } else {
            Issue.record("connection errors are retried")
        }
        await gone.shutdown()
    }

    /// An error page over 64 KB (a proxy's, a gateway's) is classified by its status:
    /// reading it with a size limit made it an endless "connection" retry.
    @Test func aLargeErrorBodyIsClassifiedByItsStatus() async throws {
        let page = String(repeating: "<p>not here</p>\n", count: 20_000)  // 320 KB
        let server = try await HTTPServer.start(host: "127.0.0.1", port: 0) { req in
            switch req.path {
            case "/v1/user/gone": return HTTPResponse(status: 404, contentType: "text/html", text: page)
            case "/v1/user/bad": return HTTPResponse(status: 400, contentType: "text/html", text: page)
            default: return HTTPResponse(status: 200, contentType: "text/html", text: page)
            }
        }
        let c = try client("http://127.0.0.1:\(server.port)", key: "k")
        #expect(await c.send(identifyId: "gone", body: Array("{}".utf8)) == .notFound(response: String(page.prefix(4096))))
        #expect(await c.send(identifyId: "bad", body: Array("{}".utf8)) == .rejected(status: 400, response: String(page.prefix(4096))))
        #expect(await c.send(identifyId: "ok", body: Array("{}".utf8)) == .acknowledged)
        await c.shutdown()
        await server.stop()
    }

    /// `ca_file` adds to the system roots; it does not replace them (README and code once
    /// disagreed: a private CA for a proxy then broke the public API's certificate).
    @Test func theCAFileAddsToTheSystemRoots() async throws {
        let (cert, _) = try selfSigned()
        let c = try client("https://127.0.0.1:1", ca: cert)
        #expect(c.tlsConfiguration.trustRoots == nil || c.tlsConfiguration.trustRoots == .default)
        #expect(c.tlsConfiguration.additionalTrustRoots == [.file(cert)])
        #expect(c.tlsConfiguration.certificateVerification == .fullVerification)
        await c.shutdown()
    }

    @Test func aKeyThatCouldInjectAHeaderIsRefused() {
        #expect(throws: (any Error).self) { try APIKeyStore(key: "abc\r\nX-Evil: 1") }
        #expect(throws: (any Error).self) { try APIKeyStore(key: "   ") }
        #expect(try! APIKeyStore(key: "  abc123\n").current == "abc123")
    }
}

final class Recorder: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [HTTPRequest] = []
    func add(_ r: HTTPRequest) { lock.withLock { items.append(r) } }
    var all: [HTTPRequest] { lock.withLock { items } }
}
