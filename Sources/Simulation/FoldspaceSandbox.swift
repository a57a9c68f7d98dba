import Foundation
import HTTPServing

/// An in-process Foldspace: serves `PUT /v1/user/{identifyId}` on loopback, checks every
/// request against the documented schema and the API key, records what arrived, and
/// answers as scripted (errors, 429 with `Retry-After`, latency) for tests and the demo.
public final class FoldspaceSandbox: @unchecked Sendable {
    /// One request as it arrived.
    public struct Received: Sendable {
        public var identifyId: String
        public var rawPath: String
        public var apiKey: String?
        public var userAgent: String?
        public var contentType: String?
        public var body: [UInt8]
        public var status: Int
        public var violations: [String]
        /// Wall-clock arrival, epoch milliseconds.
        public var arrivedMs: Int64
        /// When the answer was sent (after any scripted latency), epoch milliseconds.
        public var respondedMs: Int64

        /// The body as a JSON object (nil if it is not one).
        public var json: [String: Any]? {
            (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any]
        }
    }

    /// A scripted answer.
    public struct Reply: Sendable {
        public var status: Int
        public var retryAfter: String?
        public var delayMs: Int

        public init(status: Int, retryAfter: String? = nil, delayMs: Int = 0) {
            self.status = status
            self.retryAfter = retryAfter
            self.delayMs = delayMs
        }
    }

    private let lock = NSLock()
    private var server: HTTPServer?
    private var received: [Received] = []
    private var perUser: [String: [Reply]] = [:]
    private var global: [Reply] = []
    private var validKeys: Set<String>
    private var latencyMs = 0
    private var recordBodies = true
    private var counts = (requests: 0, violations: 0)
    /// Per user, the last acknowledged body (FNV-1a): a request repeating it is a no-op.
    private var lastAcked: [String: UInt64] = [:]
    private var noOps = 0
    /// Open `Retry-After` windows: from when a 429 was answered until the time it named.
    private var windows: [(start: Int64, end: Int64)] = []
    private var insideWindows: [String] = []
    private var graceMs: Int64 = 100

    public init(apiKeys: Set<String>) {
        validKeys = apiKeys
    }

    /// Starts serving on `127.0.0.1:port` (0 picks a free port).
    public func start(port: Int = 0) async throws {
        let s = try await HTTPServer.start(host: "127.0.0.1", port: port) { [self] req in
            await handle(req)
        }
        lock.withLock { server = s }
    }

    public func stop() async {
        let s = lock.withLock { server }
        await s?.stop()
    }

    public var port: Int { lock.withLock { server?.port ?? 0 } }
    public var baseURL: String { "http://127.0.0.1:\(port)" }

    // MARK: Scripting

    /// The next answers for one user, in order; afterwards it gets 200.
    public func script(user: String, _ replies: [Reply]) {
        lock.withLock { perUser[user, default: []].append(contentsOf: replies) }
    }

    /// The next answers for any request, before per-user scripts.
    public func scriptAll(_ replies: [Reply]) {
        lock.withLock { global.append(contentsOf: replies) }
    }

    /// Drops every scripted answer not given yet.
    public func clearScripts() {
        lock.withLock {
            global.removeAll()
            perUser.removeAll()
        }
    }

    public func setLatency(ms: Int) { lock.withLock { latencyMs = ms } }
    public func setValidKeys(_ keys: Set<String>) { lock.withLock { validKeys = keys } }
    /// Large runs (benchmarks, the demo) can keep counts only.
    public func setRecordBodies(_ on: Bool) { lock.withLock { recordBodies = on } }

    // MARK: Results

    public var requests: [Received] { lock.withLock { received } }
    public var requestCount: Int { lock.withLock { counts.requests } }
    public var violationCount: Int { lock.withLock { counts.violations } }
    /// Requests whose body equals the last one acknowledged for that user.
    public var noOpCount: Int { lock.withLock { noOps } }

    /// Requests that arrived inside a `Retry-After` window this stand-in announced (every
    /// window is client-wide: a 429 names a time before which no request is welcome).
    /// A request arriving within the grace period after the 429 was sent may have been
    /// on the wire already and is not counted. At most the first 100 are described.
    public var retryAfterViolations: [String] { lock.withLock { insideWindows } }
    /// How long after a 429 was answered a request may still arrive (default 100 ms).
    public func setRetryAfterGrace(ms: Int64) { lock.withLock { graceMs = ms } }

    /// The last acknowledged body per user.
    public func latestAcknowledged() -> [String: Received] {
        var out: [String: Received] = [:]
        for r in requests where (200..<300).contains(r.status) { out[r.identifyId] = r }
        return out
    }

    // MARK: Serving

    private func handle(_ req: HTTPRequest) async -> HTTPResponse {
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let prefix = "/v1/user/"
        guard req.path.hasPrefix(prefix) else {
            return HTTPResponse(status: 404, contentType: "application/json", text: #"{"error":"no such route"}"#)
        }
        let rawSegment = req.path.dropFirst(prefix.count)
        let id = decodePathSegment(rawSegment)
        var violations: [String] = []
        if req.method != "PUT" { violations.append("method \(req.method), not PUT") }
        if rawSegment.contains("/") { violations.append("identifyId spans more than one path segment") }
        if id == nil { violations.append("path segment is not valid percent-encoded UTF-8") }
        if req.target.contains("?") || req.target.contains("#") { violations.append("query or fragment in the target") }
        let contentType = req.header("Content-Type")
        if contentType?.lowercased().hasPrefix("application/json") != true { violations.append("Content-Type is not application/json") }
        violations += FoldspaceSchema.violations(body: req.body, pathId: id)

        let key = req.header("X-FOLDSPACE-API-KEY")
        lock.withLock {
            windows.removeAll { $0.end <= now }
            for w in windows where now > w.start + graceMs && insideWindows.count < 100 {
                insideWindows.append(
                    "\(id ?? String(rawSegment)) arrived \(now - w.start) ms into a Retry-After window of \(w.end - w.start) ms")
            }
        }
        let (reply, latency, keyOK, keep) = lock.withLock { () -> (Reply?, Int, Bool, Bool) in
            var r: Reply? = nil
            if !global.isEmpty {
                r = global.removeFirst()
            } else if let id, var list = perUser[id], !list.isEmpty {
                r = list.removeFirst()
                perUser[id] = list
            }
            return (r, latencyMs, key.map { validKeys.contains($0) } ?? false, recordBodies)
        }
        let delay = latency + (reply?.delayMs ?? 0)
        if delay > 0 { try? await Task.sleep(for: .milliseconds(delay)) }

        var status: Int
        var text: String
        var headers: [(name: String, value: String)] = []
        if !keyOK {
            status = 401
            text = #"{"error":"Unauthorized"}"#
        } else if !violations.isEmpty {
            status = 400
            text = #"{"error":"Bad Request"}"#
        } else if let reply {
            status = reply.status
            text = status == 429 ? #"{"error":"Rate limit exceeded for subscription"}"# : #"{"error":"scripted"}"#
            if let ra = reply.retryAfter { headers.append(("Retry-After", ra)) }
            if (200..<300).contains(status) { text = #"{"message":"User updated successfully"}"# }
        } else {
            status = 200
            text = #"{"message":"User updated successfully"}"#
        }
        let responded = Int64(Date().timeIntervalSince1970 * 1000)
        let record = Received(
            identifyId: id ?? String(rawSegment), rawPath: req.target, apiKey: key,
            userAgent: req.header("User-Agent"), contentType: contentType,
            body: keep ? req.body : [], status: status, violations: violations, arrivedMs: now, respondedMs: responded)
        if status == 429, let ra = headers.first(where: { $0.name == "Retry-After" })?.value, let seconds = Int64(ra), seconds > 0 {
            lock.withLock { windows.append((responded, responded + seconds * 1000)) }
        }
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in req.body { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        lock.withLock {
            counts.requests += 1
            if !violations.isEmpty { counts.violations += 1 }
            if let id, lastAcked[id] == h { noOps += 1 }
            if let id, (200..<300).contains(status) { lastAcked[id] = h }
            if keep || !violations.isEmpty { received.append(record) }
        }
        return HTTPResponse(status: status, contentType: "application/json", text: text, headers: headers)
    }
}
