import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A request as the handler sees it: the whole body collected.
public struct HTTPRequest: Sendable {
    public var method: String
    /// The request target exactly as sent (path and query, still percent-encoded).
    public var target: String
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    /// The first value of a header, case-insensitively.
    public func header(_ name: String) -> String? {
        let n = name.lowercased()
        return headers.first { $0.name.lowercased() == n }?.value
    }

    /// The path without the query.
    public var path: String {
        if let q = target.firstIndex(of: "?") { return String(target[..<q]) }
        return target
    }
}

public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    public init(status: Int, contentType: String, text: String, headers: [(name: String, value: String)] = []) {
        self.init(status: status, headers: [("Content-Type", contentType)] + headers, body: Array(text.utf8))
    }
}

/// The open connections of a server: at most `limit`, all closed on stop.
private final class Connections: @unchecked Sendable {
    private let lock = NSLock()
    private var open: [ObjectIdentifier: Channel] = [:]
    private var stopped = false
    let limit: Int?

    init(limit: Int?) { self.limit = limit }

    /// False (and the caller closes it) when stopped or at the limit.
    func admit(_ c: Channel) -> Bool {
        lock.withLock {
            if stopped { return false }
            if let limit, open.count >= limit { return false }
            open[ObjectIdentifier(c)] = c
            return true
        }
    }

    func remove(_ c: Channel) { _ = lock.withLock { open.removeValue(forKey: ObjectIdentifier(c)) } }

    func stop() -> [Channel] {
        lock.withLock {
            stopped = true
            return Array(open.values)
        }
    }
}

/// A small HTTP/1.1 server on SwiftNIO, for the admin endpoints and the Foldspace
/// sandbox: keep-alive, whole-body requests, an async handler per request. `HEAD` gets
/// the headers of the answer without its body.
public final class HTTPServer: Sendable {
    public typealias Handler = @Sendable (HTTPRequest) async -> HTTPResponse
    /// A handler that answers without awaiting anything. It runs on NIO's blocking thread
    /// pool, not on Swift's cooperative pool: the admin endpoints answer even when every
    /// thread of that pool is busy (a liveness probe must not wait for the work it watches).
    public typealias BlockingHandler = @Sendable (HTTPRequest) -> HTTPResponse

    /// How a request is answered: a task on the cooperative pool, or NIO's thread pool.
    fileprivate enum Serve: Sendable {
        case async(Handler)
        case blocking(BlockingHandler)
    }

    private let channel: Channel
    private let connections: Connections
    /// The bound host and port (port 0 asks the OS for a free one).
    public let host: String
    public let port: Int

    /// Binds and starts serving. Request bodies over `maxBodyBytes` get 413. With
    /// `tls` (a PEM certificate chain and key), it serves HTTPS. `idleTimeout`: a
    /// connection with no request in progress and nothing read for that long is closed.
    /// `maxConnections`: connections beyond it are closed as they are accepted.
    public static func start(
        host: String, port: Int, maxBodyBytes: Int = 4 << 20,
        tls: (certificatePEM: String, keyPEM: String)? = nil,
        idleTimeout: TimeAmount? = nil, maxConnections: Int? = nil,
        handler: @escaping Handler
    ) async throws -> HTTPServer {
        try await start(
            host: host, port: port, maxBodyBytes: maxBodyBytes, tls: tls, idleTimeout: idleTimeout,
            maxConnections: maxConnections, serve: .async(handler))
    }

    /// As ``start(host:port:maxBodyBytes:tls:idleTimeout:maxConnections:handler:)``, with a
    /// handler that never awaits, run off Swift's cooperative pool (``BlockingHandler``).
    public static func start(
        host: String, port: Int, maxBodyBytes: Int = 4 << 20,
        tls: (certificatePEM: String, keyPEM: String)? = nil,
        idleTimeout: TimeAmount? = nil, maxConnections: Int? = nil,
        blockingHandler: @escaping BlockingHandler
    ) async throws -> HTTPServer {
        try await start(
            host: host, port: port, maxBodyBytes: maxBodyBytes, tls: tls, idleTimeout: idleTimeout,
            maxConnections: maxConnections, serve: .blocking(blockingHandler))
    }

    private static func start(
        host: String, port: Int, maxBodyBytes: Int, tls: (certificatePEM: String, keyPEM: String)?,
        idleTimeout: TimeAmount?, maxConnections: Int?, serve: Serve
    ) async throws -> HTTPServer {
        let connections = Connections(limit: maxConnections.map { max(1, $0) })
        var sslContext: NIOSSLContext? = nil
        if let tls {
            let chain = try NIOSSLCertificate.fromPEMFile(tls.certificatePEM).map { NIOSSLCertificateSource.certificate($0) }
            let key = try NIOSSLPrivateKey(file: tls.keyPEM, format: .pem)
            sslContext = try NIOSSLContext(configuration: .makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key)))
        }
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                guard connections.admit(channel) else { return channel.close() }
                channel.closeFuture.whenComplete { _ in connections.remove(channel) }
                return channel.eventLoop.makeCompletedFuture {
                    if let idleTimeout {
                        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: idleTimeout))
                    }
                    if let sslContext {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext))
                    }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        RequestHandler(serve: serve, maxBodyBytes: maxBodyBytes))
                }
            }
        let channel = try await bootstrap.bind(host: host, port: port).get()
        let bound = channel.localAddress?.port ?? port
        return HTTPServer(channel: channel, connections: connections, host: host, port: bound)
    }

    private init(channel: Channel, connections: Connections, host: String, port: Int) {
        self.channel = channel
        self.connections = connections
        self.host = host
        self.port = port
    }

    /// Stops accepting and closes every open connection.
    public func stop() async {
        try? await channel.close()
        for c in connections.stop() { try? await c.close() }
    }
}

private final class RequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let serve: HTTPServer.Serve
    private let maxBodyBytes: Int
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false
    /// Requests read and not yet answered: an idle timeout closes only between them.
    private var inFlight = 0

    init(serve: HTTPServer.Serve, maxBodyBytes: Int) {
        self.serve = serve
        self.maxBodyBytes = maxBodyBytes
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            if head == nil && inFlight == 0 { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
            tooLarge = false
        case .body(var buf):
            if body.count + buf.readableBytes > maxBodyBytes {
                tooLarge = true
            } else if let bytes = buf.readBytes(length: buf.readableBytes) {
                body.append(contentsOf: bytes)
            }
        case .end:
            guard let head else { return }
            self.head = nil
            let keepAlive = head.isKeepAlive
            let request = HTTPRequest(
                method: head.method.rawValue, target: head.uri,
                headers: head.headers.map { ($0.name, $0.value) }, body: body)
            body = []
            let version = head.version
            let isHead = head.method == .HEAD
            inFlight += 1
            let loopSelf = NIOLoopBound(self, eventLoop: context.eventLoop)
            let loopContext = NIOLoopBound(context, eventLoop: context.eventLoop)
            let promise = context.eventLoop.makePromise(of: HTTPResponse.self)
            if tooLarge {
                promise.succeed(HTTPResponse(status: 413, contentType: "text/plain", text: "request body too large"))
            } else {
                switch serve {
                case .async(let handler):
                    promise.completeWithTask { await handler(request) }
                case .blocking(let handler):
                    promise.completeWith(NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) { handler(request) })
                }
            }
            // Only a thread pool that is shutting down fails the promise: nothing to answer.
            promise.futureResult.whenFailure { _ in loopContext.value.close(promise: nil) }
            promise.futureResult.whenSuccess { response in
                let context = loopContext.value
                loopSelf.value.inFlight -= 1
                var headers = HTTPHeaders(response.headers.map { ($0.name, $0.value) })
                headers.replaceOrAdd(name: "Content-Length", value: String(response.body.count))
                headers.replaceOrAdd(name: "Connection", value: keepAlive ? "keep-alive" : "close")
                let responseHead = HTTPResponseHead(
                    version: version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
                context.write(NIOAny(HTTPServerResponsePart.head(responseHead)), promise: nil)
                // HEAD: the GET answer's headers (its Content-Length too), no body.
                if !isHead {
                    var buffer = context.channel.allocator.buffer(capacity: response.body.count)
                    buffer.writeBytes(response.body)
                    context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(buffer))), promise: nil)
                }
                let done = context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)))
                if !keepAlive {
                    done.whenComplete { _ in loopContext.value.close(promise: nil) }
                }
            }
        }
    }
}
