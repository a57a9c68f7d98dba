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
            var h = StderrLogHandler(label: label, format: json ? .json : .text)
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

/// Log lines on standard error, in one of two formats:
/// - `json`: one object per line: `ts`, `level`, `logger`, `msg`, then metadata;
/// - `text`: `time LEVEL [logger] message key=value…`, for terminals.
public struct StderrLogHandler: LogHandler {
    public enum Format: Sendable { case json, text }

    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String
    let format: Format

    public init(label: String, format: Format) {
        self.label = label
        self.format = format
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let ts = ISO8601DateFormatter.shared.string(from: Date())
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }.sorted(by: { $0.key < $1.key })
        switch format {
        case .json:
            var fields: [(String, String)] = [("ts", ts), ("level", event.level.rawValue), ("logger", label), ("msg", "\(event.message)")]
            for (k, v) in merged { fields.append((k, "\(v)")) }
            writeStderr("{" + fields.map { jsonQuote($0.0) + ":" + jsonQuote($0.1) }.joined(separator: ",") + "}")
        case .text:
            let md = merged.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            writeStderr("\(ts) \(event.level.rawValue.uppercased()) [\(label)] \(event.message)\(md.isEmpty ? "" : " " + md)")
        }
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
