import Foundation

extension SyncConfiguration {
    /// The effective configuration as `key: value` lines (`check-config`), in the key
    /// table's order, secrets redacted.
    public func describe() -> String {
        Self.keys.flatMap { $0.render(self) }.map { "\($0.key): \($0.value)" }.joined(separator: "\n")
    }

    /// The key table of docs/configuration.md, generated from ``keys`` (the keys the
    /// file may set); ConfigurationTests checks the document holds exactly this.
    public static func keyTableMarkdown() -> String {
        // A | inside a cell would end it: escaped as \|.
        func cell(_ t: String) -> String { t.replacingOccurrences(of: "|", with: "\\|") }
        var rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
        for k in keys where k.inFile {
            rows.append("| `\(k.name)` | \(cell(k.type)) | \(cell(k.defaultText)) | \(cell(k.help)) |")
        }
        return rows.joined(separator: "\n") + "\n"
    }
}

/// Parses `250ms`, `5s`, `1m`, `2h`, `14d` (or a bare number of seconds) into milliseconds.
public func parseDuration(_ text: String) -> Int64? {
    let t = text.trimmingCharacters(in: .whitespaces).lowercased()
    let units: [(String, Double)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
    for (suffix, factor) in units where t.hasSuffix(suffix) {
        let num = t.dropLast(suffix.count)
        guard let v = Double(num), v >= 0, v.isFinite, v * factor < 1e15 else { return nil }
        return Int64(v * factor)
    }
    if let v = Double(t), v >= 0, v < 1e12 { return Int64(v * 1000) }
    return nil
}

public func formatDuration(_ ms: Int64) -> String {
    if ms % 86_400_000 == 0 && ms > 0 { return "\(ms / 86_400_000)d" }
    if ms % 3_600_000 == 0 && ms > 0 { return "\(ms / 3_600_000)h" }
    if ms % 60_000 == 0 && ms > 0 { return "\(ms / 60_000)m" }
    if ms % 1000 == 0 { return "\(ms / 1000)s" }
    return "\(ms)ms"
}
