import Foundation
import Logging

public func parseLogLevel(_ s: String) -> Logger.Level? {
    Logger.Level(rawValue: s.lowercased())
}

/// Bootstraps swift-log once per process: JSON lines (for journald, Kubernetes and log
/// shippers) or readable text, on standard error.
public enum LogSetup {
    public static func bootstrap(format: String?, level: Logger.Level) {
        let json = format.map { $0 == "json" } ?? (isatty(STDERR_FILENO) == 0)
        LoggingSystem.bootstrap { label in
            var h: LogHandler = json ? JSONLogHandler(label: label) : TextLogHandler(label: label)
            h.logLevel = level
            return h
        }
    }
}

private let stderrLock = NSLock()

private func writeStderr(_ line: String) {
    stderrLock.withLock {
        var l = line
        l.append("\n")
        // write(2) on the descriptor: unbuffered, one call per line, no shared FILE*.
        var bytes = Array(l.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes = bytes.dropFirst(n)
        }
    }
}

/// One JSON object per line: `ts`, `level`, `logger`, `msg`, then metadata.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [(String, String)] = [
            ("ts", ISO8601DateFormatter.shared.string(from: Date())),
            ("level", event.level.rawValue),
            ("logger", label),
            ("msg", "\(event.message)"),
        ]
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        for (k, v) in merged.sorted(by: { $0.key < $1.key }) { fields.append((k, "\(v)")) }
        var out = "{"
        for (i, (k, v)) in fields.enumerated() {
            if i > 0 { out += "," }
            out += jsonQuote(k) + ":" + jsonQuote(v)
        }
        out += "}"
        writeStderr(out)
    }
}

/// `time level [logger] message key=value…` for terminals.
public struct TextLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        let md = merged.sorted(by: { $0.key < $1.key }).map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        writeStderr("\(ISO8601DateFormatter.shared.string(from: Date())) \(event.level.rawValue.uppercased()) [\(label)] \(event.message)\(md.isEmpty ? "" : " " + md)")
    }
}

extension ISO8601DateFormatter {
    nonisolated(unsafe) static let shared: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f
    }()
}

func jsonQuote(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where u.value < 0x20 || u.value == 0x7F: out += String(format: "\\u%04x", u.value)
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}
