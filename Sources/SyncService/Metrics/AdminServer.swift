import Delivery
import FoldspaceAPI
import Foundation
import HTTPServing
import Kafka

/// The admin endpoints: `/metrics` (Prometheus text format 0.0.4), `/healthz` (the
/// process loops are alive) and `/readyz` (joined, assigned partitions restored).
/// `GET` and `HEAD` only (405 with `Allow` otherwise); idle connections close after
/// `idleTimeout`, at most `maxConnections` are open, and stopping closes them all.
public final class AdminServer: Sendable {
    private let server: HTTPServer

    public var port: Int { server.port }

    public static func start(
        host: String, port: Int, metrics: @escaping @Sendable () -> String,
        healthy: @escaping @Sendable () -> Bool,
        ready: @escaping @Sendable () -> Bool,
        idleTimeout: Duration = .seconds(60), maxConnections: Int = 64
    ) async throws -> AdminServer {
        let server = try await HTTPServer.start(
            host: host, port: port, maxBodyBytes: 1024,
            idleTimeout: .nanoseconds(
                Int64(idleTimeout.components.seconds) * 1_000_000_000
                    + idleTimeout.components.attoseconds / 1_000_000_000),
            maxConnections: maxConnections,
            blockingHandler: { req in
                guard req.method == "GET" || req.method == "HEAD" else {
                    return HTTPResponse(
                        status: 405, contentType: "text/plain", text: "method not allowed\n",
                        headers: [("Allow", "GET, HEAD")])
                }
                switch req.path {
                case "/metrics":
                    return HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", text: metrics())
                case "/healthz":
                    return healthy()
                        ? HTTPResponse(status: 200, contentType: "text/plain", text: "ok\n")
                        : HTTPResponse(status: 503, contentType: "text/plain", text: "unhealthy\n")
                case "/readyz":
                    return ready()
                        ? HTTPResponse(status: 200, contentType: "text/plain", text: "ready\n")
                        : HTTPResponse(status: 503, contentType: "text/plain", text: "not ready\n")
                default:
                    return HTTPResponse(status: 404, contentType: "text/plain", text: "not found\n")
                }
            })
        return AdminServer(server: server)
    }

    private init(server: HTTPServer) { self.server = server }

    public func stop() async { await server.stop() }
}
