import Delivery
import FoldspaceAPI
import Foundation

extension SyncConfiguration {
    /// Checks what `run` needs; every message names its key.
    public func validate(requireKey: Bool = true) throws {
        if brokers.isEmpty && kafkaProperties["bootstrap.servers"] == nil {
            throw ConfigurationError("brokers: missing (flag --brokers, env FOLDSPACE_SYNC_BROKERS, or the file)")
        }
        if topics.isEmpty { throw ConfigurationError("topics: missing (flag --topic, env FOLDSPACE_SYNC_TOPICS, or the file)") }
        if group.isEmpty { throw ConfigurationError("group: missing (flag --group, env FOLDSPACE_SYNC_GROUP, or the file)") }
        guard let url = URL(string: foldspaceURL), let scheme = url.scheme?.lowercased(),
            scheme == "https" || scheme == "http", url.host != nil
        else {
            throw ConfigurationError("foldspace_url: \"\(foldspaceURL)\" is not an http(s) URL")
        }
        if scheme == "http", !allowInsecureHTTP, let host = url.host, !isLoopbackHost(host) {
            throw ConfigurationError(
                "foldspace_url: http:// to \(host) would send the API key and users' data in clear text; use https://, a loopback address (a local stand-in or sidecar), or set allow_insecure_http: true"
            )
        }
        if let f = logFormat, f != "json", f != "text" { throw ConfigurationError("log_format: expected json or text, got \"\(f)\"") }
        if parseLogLevel(logLevel) == nil { throw ConfigurationError("log_level: unknown level \"\(logLevel)\"") }
        if parseHostPort(adminListen) == nil { throw ConfigurationError("admin_listen: expected host:port, got \"\(adminListen)\"") }
        if stateMode == .durable && topics.count > 1 {
            throw ConfigurationError(
                "topics: state: durable supports one source topic (the changelog is co-partitioned with it); use one instance group per topic, or state: memory"
            )
        }
        if !engine.identity.sendAnonymous && !engine.identity.merge {
            throw ConfigurationError(
                "identity.send_anonymous: false needs identity.merge: true (an anonymous identity held back is sent only with the user it is merged into; without merging it would never be sent)"
            )
        }
        if engine.identity.merge {
            guard stateMode == .durable, stateTransactions else {
                throw ConfigurationError(
                    "identity.merge: needs state: durable with state.transactions: true (the graph, the routed calls and the state are written in one transaction)"
                )
            }
        }
        if requireKey && apiKey == nil && apiKeyFile == nil {
            throw ConfigurationError("api_key_file: missing (flag --api-key-file, or set FOLDSPACE_API_KEY)")
        }
        if engine.maxWaitMs < engine.debounceMs { throw ConfigurationError("max_wait: must not be shorter than debounce") }
        for (property, path) in kafkaSecretFiles where !FileManager.default.isReadableFile(atPath: path) {
            throw ConfigurationError("kafka.secret_files: cannot read the file for \(property)")
        }
        if let f = apiKeyFile, !FileManager.default.isReadableFile(atPath: f) {
            throw ConfigurationError("api_key_file: cannot read \(f)")
        }
    }
}

public func parseHostPort(_ s: String) -> (host: String, port: Int)? {
    guard let colon = s.lastIndex(of: ":") else { return nil }
    var host = String(s[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    guard let port = Int(s[s.index(after: colon)...]), (0...65535).contains(port), !host.isEmpty else { return nil }
    return (host, port)
}

/// Whether `host` (as a URL gives it) is a loopback address: `localhost`, `::1`, or
/// any address in 127.0.0.0/8.
func isLoopbackHost(_ host: String) -> Bool {
    var h = host.lowercased()
    if h.hasPrefix("[") && h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
    if h == "localhost" || h == "::1" || h == "0:0:0:0:0:0:0:1" { return true }
    let octets = h.split(separator: ".", omittingEmptySubsequences: false)
    guard octets.count == 4, octets.allSatisfy({ !$0.isEmpty && $0.count <= 3 && $0.allSatisfy(\.isNumber) }),
        let values = Optional(octets.compactMap { Int($0) }), values.count == 4, values.allSatisfy({ $0 <= 255 })
    else { return false }
    return values[0] == 127
}
