import Events
import Foundation
import Logging

public func parseLogLevel(_ s: String) -> Logger.Level? {
    Logger.Level(rawValue: s.lowercased())
}

/// Bootstraps swift-log once per process: JSON lines (for journald, Kubernetes and log
/// shippers) or readable text, on standard error. Under systemd with standard error on
/// the journal (`JOURNAL_STREAM`), each line starts with its syslog priority, so that
/// `journalctl -p warning` sees levels.
public enum LogSetup {
    public static func bootstrap(format: String?, level: Logger.Level) {
        let json = format.map { $0 == "json" } ?? (isatty(STDERR_FILENO) == 0)
        let journal = isJournal(journalStream: ProcessInfo.processInfo.environment["JOURNAL_STREAM"], fd: STDERR_FILENO)
        LoggingSystem.bootstrap { label in
            var h = StderrLogHandler(label: label, format: json ? .json : .text, syslogPrefix: journal)
            h.logLevel = level
            return h
        }
    }

    /// True when `JOURNAL_STREAM` (`device:inode`, set by systemd for a service whose
    /// output goes to the journal) names the file `fd` is open on: not inherited by a
    /// child whose standard error was redirected elsewhere.
    public static func isJournal(journalStream: String?, fd: Int32) -> Bool {
        guard let js = journalStream else { return false }
        let parts = js.split(separator: ":")
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }
}

private let stderrLock = NSLock()

private func writeLine(_ line: String, fd: Int32) {
    stderrLock.withLock {
        var l = line
        l.append("\n")
        // write(2) on the descriptor: unbuffered, one call per line, no shared FILE*.
        var bytes = Array(l.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes = bytes.dropFirst(n)
        }
    }
}

/// Log lines on standard error, in one of two formats:
/// - `json`: one object per line: `ts`, `level`, `logger`, `msg`, then metadata. Numbers
///   and booleans logged as such (`.stringConvertible`) are JSON numbers and booleans,
///   nested metadata JSON objects and arrays. A metadata key equal to one of the four
///   reserved names is written as `md_<key>`;
/// - `text`: `time LEVEL [logger] message key=value…`, for terminals; a value with spaces,
///   quotes, `=` or control characters is quoted and escaped, and control characters in the
///   message are escaped, so that no input can start a line of its own.
public struct StderrLogHandler: LogHandler {
    public enum Format: Sendable { case json, text }

    /// The JSON fields the handler writes itself.
    public static let reservedKeys: Set<String> = ["ts", "level", "logger", "msg"]

    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String
    let format: Format
    let fd: Int32
    let syslogPrefix: Bool

    /// `fd`: where lines go (standard error). `syslogPrefix`: start each line with its
    /// syslog priority (`<3>` error …), for when standard error is the journal.
    public init(label: String, format: Format, fd: Int32 = STDERR_FILENO, syslogPrefix: Bool = false) {
        self.label = label
        self.format = format
        self.fd = fd
        self.syslogPrefix = syslogPrefix
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// sd-daemon(3) priorities: what journald stores as PRIORITY.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .critical: return 2
        case .error: return 3
        case .warning: return 4
        case .notice: return 5
        case .info: return 6
        case .debug, .trace: return 7
        }
    }

    public func log(event: LogEvent) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let time = logTimestamp(epochMs: Int64(ts.tv_sec) &* 1000 &+ Int64(ts.tv_nsec / 1_000_000))
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }.sorted(by: { $0.key < $1.key })
        let prefix = syslogPrefix ? "<\(Self.priority(event.level))>" : ""
        switch format {
        case .json:
            var out =
                prefix + "{\"ts\":" + jsonQuote(time) + ",\"level\":" + jsonQuote(event.level.rawValue)
                + ",\"logger\":" + jsonQuote(label) + ",\"msg\":" + jsonQuote("\(event.message)")
            var written = Self.reservedKeys
            for (k, v) in merged {
                var key = Self.reservedKeys.contains(k) ? "md_" + k : k
                while written.contains(key) { key = "md_" + key }
                written.insert(key)
                out += "," + jsonQuote(key) + ":" + jsonValue(v)
            }
            writeLine(out + "}", fd: fd)
        case .text:
            let md = merged.map { "\(textKey($0.key))=\(textValue(textRender($0.value)))" }.joined(separator: " ")
            writeLine(
                prefix + "\(time) \(event.level.rawValue.uppercased()) [\(escapeControls(label))] \(escapeControls("\(event.message)"))"
                    + (md.isEmpty ? "" : " " + md), fd: fd)
        }
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-12-03T18:05:00.123Z`: the decoder's own
/// calendar arithmetic (no shared formatter, so safe from any thread).
public func logTimestamp(epochMs: Int64) -> String { Timestamp.formatISO8601(epochMs) }

/// A metadata value as JSON: numbers and booleans given as such stay numbers and
/// booleans, dictionaries and arrays nest; strings (including interpolated numbers) stay
/// strings.
func jsonValue(_ v: Logger.Metadata.Value) -> String {
    switch v {
    case .string(let s): return jsonQuote(s)
    case .stringConvertible(let c):
        switch c {
        case let b as Bool: return b ? "true" : "false"
        case let i as any BinaryInteger: return "\(i)"
        case let d as Double: return d.isFinite ? "\(d)" : jsonQuote("\(d)")
        case let f as Float: return f.isFinite ? "\(f)" : jsonQuote("\(f)")
        default: return jsonQuote(c.description)
        }
    case .dictionary(let d):
        return "{" + d.sorted(by: { $0.key < $1.key }).map { jsonQuote($0.key) + ":" + jsonValue($0.value) }.joined(separator: ",") + "}"
    case .array(let a):
        return "[" + a.map(jsonValue).joined(separator: ",") + "]"
    }
}

private func textRender(_ v: Logger.Metadata.Value) -> String {
    switch v {
    case .string(let s): return s
    case .stringConvertible(let c): return c.description
    case .dictionary, .array: return jsonValue(v)
    }
}

/// A text-format key: anything but plain name characters becomes `_`.
private func textKey(_ k: String) -> String {
    let ok = k.unicodeScalars.allSatisfy { $0.properties.isAlphabetic || ("0"..."9").contains($0) || "_.-".unicodeScalars.contains($0) }
    return ok && !k.isEmpty
        ? k
        : String(
            k.unicodeScalars.map { u -> Character in
                u.properties.isAlphabetic || ("0"..."9").contains(u) || "_.-".unicodeScalars.contains(u) ? Character(u) : "_"
            })
}

/// A text-format value: bare when plain, else quoted with JSON escapes.
private func textValue(_ s: String) -> String {
    let plain = !s.isEmpty && s.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value != 0x7F && $0 != "\"" && $0 != "=" && $0 != "\\" }
    return plain ? s : jsonQuote(s)
}

/// Control characters (newlines first of all) as escapes, the rest untouched.
private func escapeControls(_ s: String) -> String {
    guard s.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F || $0 == "\u{2028}" || $0 == "\u{2029}" }) else {
        return s
    }
    var out = ""
    for u in s.unicodeScalars {
        switch u {
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where u.value < 0x20 || u.value == 0x7F || u == "\u{2028}" || u == "\u{2029}":
            let hex = String(u.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
        default: out.unicodeScalars.append(u)
        }
    }
    return out
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
        case _ where u.value < 0x20 || u.value == 0x7F:
            let hex = String(u.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        // U+2028/2029 end lines for some JSON consumers (JavaScript).
        case "\u{2028}": out += "\\u2028"
        case "\u{2029}": out += "\\u2029"
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}
