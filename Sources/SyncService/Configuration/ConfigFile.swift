import Delivery
import FoldspaceAPI
import Foundation
import Yams

extension SyncConfiguration {
    /// The configuration file's keys, flattened to dotted names (`pql.half_life`): JSON,
    /// or YAML when the name ends in `.yaml` or `.yml`, under the same rules.
    static func readFile(_ file: String) throws -> [String: ConfigValue] {
        var raw: [String: ConfigValue] = [:]
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: file)) } catch {
            throw ConfigurationError("config: cannot read \(file)")
        }
        let lower = file.lowercased()
        if lower.hasSuffix(".yaml") || lower.hasSuffix(".yml") {
            guard let text = String(data: data, encoding: .utf8) else { throw ConfigurationError("config: \(file) is not UTF-8") }
            let node: Node?
            do { node = try Yams.compose(yaml: text) } catch {
                throw ConfigurationError("config: \(file) is not valid YAML: \(error)")
            }
            guard let node, let obj = try yamlValue(node) as? [String: Any] else {
                throw ConfigurationError("config: \(file) is not a YAML mapping")
            }
            try flatten(obj, prefix: "", into: &raw)
        } else {
            guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw ConfigurationError("config: \(file) is not a JSON object")
            }
            try flatten(obj, prefix: "", into: &raw)
        }
        return raw
    }

    /// A YAML node as the JSON reader's values: scalars as their text (the keys parse
    /// text anyway), null as empty, mappings and sequences as dictionaries and arrays.
    static func yamlValue(_ node: Node) throws -> Any {
        switch node {
        case .scalar(let scalar):
            return node.null != nil ? "" : scalar.string
        case .mapping(let mapping):
            var o: [String: Any] = [:]
            for (k, v) in mapping {
                guard let key = k.string else { throw ConfigurationError("config: a YAML key that is not a string") }
                o[key] = try yamlValue(v)
            }
            return o
        case .sequence(let sequence):
            return try sequence.map { try yamlValue($0) }
        case .alias:
            throw ConfigurationError("config: YAML aliases are not supported")
        }
    }

    private static func flatten(_ obj: [String: Any], prefix: String, into raw: inout [String: ConfigValue]) throws {
        let inFile = Dictionary(uniqueKeysWithValues: keys.filter(\.inFile).map { ($0.name, $0) })
        for (k, v) in obj {
            let name = prefix + k
            if inFile[name]?.shape == .map {
                guard let m = v as? [String: Any] else { throw ConfigurationError("\(name): expected an object") }
                var props: [String: String] = [:]
                for (pk, pv) in m { props[pk] = scalarText(pv) }
                raw[name] = .map(props)
            } else if let sub = v as? [String: Any], inFile[name] == nil {
                try flatten(sub, prefix: name + ".", into: &raw)
            } else if let a = v as? [Any] {
                raw[name] = .list(
                    a.map { item in
                        if let o = item as? [String: Any] {
                            // {"name": n, "weight": w, "cap": c} → "n:w:c"
                            let n = o["name"].map(scalarText) ?? ""
                            let w = o["weight"].map(scalarText) ?? "3"
                            let c = o["cap"].map(scalarText) ?? "20"
                            return "\(n):\(w):\(c)"
                        }
                        return scalarText(item)
                    })
            } else {
                guard inFile[name] != nil else { throw ConfigurationError("\(name): unknown key") }
                raw[name] = .text(scalarText(v))
            }
        }
    }

    static func scalarText(_ v: Any) -> String {
        if let s = v as? String { return s }
        if let n = v as? NSNumber {
            if n.objCType.pointee == CChar(UInt8(ascii: "c")) { return n.boolValue ? "true" : "false" }
            return n.stringValue
        }
        return "\(v)"
    }
}
