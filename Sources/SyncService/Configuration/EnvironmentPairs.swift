import Delivery
import FoldspaceAPI
import Foundation

extension SyncConfiguration {
    /// `FOLDSPACE_SYNC_KAFKA_PROPERTIES` / `_SECRET_FILES`: a JSON object, or
    /// `name=value` entries separated by commas or newlines, where `\,` is a comma in a
    /// value and `\\` a backslash.
    static func parsePairs(_ value: String, key: String, variable: String) throws -> [String: String] {
        let trimmed = value.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.hasPrefix("{") {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(trimmed.utf8)) as? [String: Any] else {
                throw ConfigurationError("\(key): \(variable) starts with { but is not a JSON object")
            }
            var m: [String: String] = [:]
            for (k, v) in obj {
                guard !(v is [Any]), !(v is [String: Any]) else {
                    throw ConfigurationError("\(key): \(variable): \(k) is not a string or number")
                }
                m[k] = scalarText(v)
            }
            return m
        }
        var entries: [String] = []
        var current = ""
        var escaped = false
        for ch in value {
            if escaped {
                // Only \, and \\ are escapes; any other backslash stays as it is.
                if ch != "," && ch != "\\" && ch != "\n" { current.append("\\") }
                current.append(ch)
                escaped = false
            } else if ch == "\\" {
                escaped = true
            } else if ch == "," || ch == "\n" || ch == "\r\n" {
                entries.append(current)
                current = ""
            } else {
                current.append(ch)
            }
        }
        if escaped { current.append("\\") }
        entries.append(current)
        var m: [String: String] = [:]
        for entry in entries {
            let e = entry.trimmingCharacters(in: .whitespacesAndNewlines)
            if e.isEmpty { continue }
            let kv = e.split(separator: "=", maxSplits: 1)
            guard kv.count == 2, !kv[0].trimmingCharacters(in: .whitespaces).isEmpty else {
                throw ConfigurationError(
                    "\(key): expected name=value entries in \(variable), got an entry without = (write a comma inside a value as \\,)")
            }
            m[String(kv[0]).trimmingCharacters(in: .whitespaces)] = String(kv[1])
        }
        return m
    }
}
