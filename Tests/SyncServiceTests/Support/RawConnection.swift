import Delivery
import FoldspaceAPI
import Foundation
import Kafka
import Logging
import TestSupport
import Testing

@testable import SyncService

/// A blocking TCP client on 127.0.0.1, to see what the admin server really sends (bytes,
/// framing, closes) rather than what an HTTP client makes of it.
final class RawConnection: @unchecked Sendable {
    let fd: Int32

    init(port: Int, receiveTimeoutMs: Int = 3000) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var tv = timeval(tv_sec: receiveTimeoutMs / 1000, tv_usec: Int((receiveTimeoutMs % 1000) * 1000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if r != 0 {
            close(fd)
            throw POSIXError(.ECONNREFUSED)
        }
    }

    deinit { close(fd) }

    func send(_ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            bytes = bytes.dropFirst(n)
        }
    }

    enum Read: Equatable { case data([UInt8]), closed, timedOut }

    /// One recv: bytes, an orderly close (or reset) by the server, or nothing in time.
    func read() -> Read {
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n > 0 { return .data(Array(buf[..<n])) }
        if n == 0 || errno == ECONNRESET { return .closed }
        return .timedOut
    }

    /// Everything until the server closes; nil if it did not close in time.
    func readToClose() -> [UInt8]? {
        var all: [UInt8] = []
        while true {
            switch read() {
            case .data(let d): all += d
            case .closed: return all
            case .timedOut: return nil
            }
        }
    }

    // Blocking reads run on a Dispatch thread: on the cooperative pool they would starve
    // the server's own handler tasks (2 cores, 2 pool threads).
    func next() async -> Read { await offThePool { self.read() } }
    func untilClose() async -> [UInt8]? { await offThePool { self.readToClose() } }
    func response(head isHead: Bool = false) async -> (head: String, body: [UInt8])? {
        await offThePool { self.readResponse(head: isHead).map { ($0.head, $0.body) } }
    }

    /// One response with a Content-Length body (or none for HEAD): head text and body.
    func readResponse(head isHead: Bool = false) -> (head: String, body: [UInt8])? {
        var all: [UInt8] = []
        while true {
            if let end = all.firstRange(of: Array("\r\n\r\n".utf8)) {
                let head = String(decoding: all[..<end.lowerBound], as: UTF8.self)
                let length =
                    isHead
                    ? 0
                    : head.split(separator: "\r\n").compactMap { line -> Int? in
                        let p = line.split(separator: ":", maxSplits: 1)
                        return p.count == 2 && p[0].lowercased() == "content-length" ? Int(p[1].trimmingCharacters(in: .whitespaces)) : nil
                    }.first ?? 0
                let body = all[end.upperBound...]
                if body.count >= length { return (head, Array(body)) }
            }
            guard case .data(let d) = read() else { return nil }
            all += d
        }
    }
}
