import Delivery
import FoldspaceAPI
import Foundation

extension SyncConfiguration {
    /// Builds the configuration from the three sources. Every error names its key.
    public static func load(file: String?, environment: [String: String], flags: [String: ConfigValue]) throws -> SyncConfiguration {
        var raw: [String: ConfigValue] = [:]
        if let file { raw = try readFile(file) }
        var unknownVariables: [String] = []
        let prefix = Key.environmentPrefix
        for (variable, value) in environment where variable.hasPrefix(prefix) {
            let suffix = variable.dropFirst(prefix.count).lowercased()
            guard
                let key = keys.first(where: {
                    $0.environment.hasPrefix(prefix) && $0.environment.dropFirst(prefix.count).lowercased() == suffix
                })
            else {
                // Not ours: the kubelet's service links for a Service named
                // foldspace-sync-* (FOLDSPACE_SYNC_METRICS_SERVICE_HOST, …) share the
                // prefix. Named in one warning; a misspelt key shows up there too.
                unknownVariables.append(variable)
                continue
            }
            switch key.shape {
            case .value:
                raw[key.name] = .text(value)
            case .list:
                raw[key.name] = .list(value.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) })
            case .map:
                // Merged per property over the file's map: the environment adds or replaces
                // single properties, it does not drop the file's others.
                var merged: [String: String] = [:]
                if case .map(let m) = raw[key.name] { merged = m }
                for (k, v) in try parsePairs(value, key: key.name, variable: variable) { merged[k] = v }
                raw[key.name] = .map(merged)
            }
        }
        for (k, v) in flags { raw[k] = v }
        // Variables outside the prefix (FOLDSPACE_API_KEY) win over flags; empty ones are ignored.
        for key in keys where !key.environment.hasPrefix(prefix) {
            if let value = environment[key.environment], !value.isEmpty { raw[key.name] = .text(value) }
        }
        // systemd's LoadCredential=foldspace-api-key:… puts the key here.
        if raw["api_key_file"] == nil, raw["api_key"] == nil, let dir = environment["CREDENTIALS_DIRECTORY"] {
            let path = (dir as NSString).appendingPathComponent("foldspace-api-key")
            if FileManager.default.fileExists(atPath: path) { raw["api_key_file"] = .text(path) }
        }
        var c = try build(raw)
        if !unknownVariables.isEmpty {
            c.warnings.append(
                "ignoring environment variables that name no configuration key: "
                    + unknownVariables.sorted().joined(separator: ", "))
        }
        return c
    }

    /// The defaults with every key in `raw` parsed over them, in the table's order.
    static func build(_ raw: [String: ConfigValue]) throws -> SyncConfiguration {
        let known = Set(keys.map(\.name))
        for k in raw.keys where !known.contains(k) { throw ConfigurationError("\(k): unknown key") }
        var c = SyncConfiguration()
        for key in keys {
            if let value = raw[key.name] { try key.parse(&c, value) }
        }
        c.engine.drainTimeoutMs = c.shutdownTimeoutMs
        return c
    }
}
