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

/// A small HTTP/1.1 server on SwiftNIO, for the admin endpoints and the Foldspace
/// sandbox: keep-alive, whole-body requests, an async handler per request.
public final class HTTPServer: Sendable {
    public typealias Handler = @Sendable (HTTPRequest) async -> HTTPResponse

    private let channel: Channel
    /// The bound host and port (port 0 asks the OS for a free one).
    public let host: String
    public let port: Int

    /// Binds and starts serving. Request bodies over `maxBodyBytes` get 413. With
    /// `tls` (a PEM certificate chain and key), it serves HTTPS.
    public static func start(host: String, port: Int, maxBodyBytes: Int = 4 << 20,
                             tls: (certificatePEM: String, keyPEM: String)? = nil,
                             handler: @escaping Handler) async throws -> HTTPServer {
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
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext))
                    }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        RequestHandler(handler: handler, maxBodyBytes: maxBodyBytes))
                }
            }
        let channel = try await bootstrap.bind(host: host, port: port).get()
        let bound = channel.localAddress?.port ?? port
        return HTTPServer(channel: channel, host: host, port: bound)
    }

    private init(channel: Channel, host: String, port: Int) {
        self.channel = channel
        self.host = host
        self.port = port
    }

    /// Stops accepting; open connections close as they finish.
    public func stop() async {
        try? await channel.close()
    }
}

private final class RequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let handler: HTTPServer.Handler
    private let maxBodyBytes: Int
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    private var tooLarge = false

    init(handler: @escaping HTTPServer.Handler, maxBodyBytes: Int) {
        self.handler = handler
        self.maxBodyBytes = maxBodyBytes
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
            let loopContext = NIOLoopBound(context, eventLoop: context.eventLoop)
            let promise = context.eventLoop.makePromise(of: HTTPResponse.self)
            if tooLarge {
                promise.succeed(HTTPResponse(status: 413, contentType: "text/plain", text: "request body too large"))
            } else {
                let handler = self.handler
                promise.completeWithTask { await handler(request) }
            }
            promise.futureResult.whenSuccess { response in
                let context = loopContext.value
                var headers = HTTPHeaders(response.headers.map { ($0.name, $0.value) })
                headers.replaceOrAdd(name: "Content-Length", value: String(response.body.count))
                headers.replaceOrAdd(name: "Connection", value: keepAlive ? "keep-alive" : "close")
                let responseHead = HTTPResponseHead(
                    version: version, status: HTTPResponseStatus(statusCode: response.status), headers: headers)
                context.write(NIOAny(HTTPServerResponsePart.head(responseHead)), promise: nil)
                var buffer = context.channel.allocator.buffer(capacity: response.body.count)
                buffer.writeBytes(response.body)
                context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(buffer))), promise: nil)
                let done = context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)))
                if !keepAlive {
                    done.whenComplete { _ in loopContext.value.close(promise: nil) }
                }
            }
        }
    }
}
