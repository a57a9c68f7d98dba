import Delivery
import FoldspaceAPI
import Foundation

extension SyncConfiguration {
    /// One configuration key, declared once in ``SyncConfiguration/keys``: its name in the
    /// file and in flags, its environment variable, its row in docs/configuration.md, how
    /// a value is parsed into the configuration, and how the effective value is printed
    /// (`check-config`). The typed constructors below (`.string`, `.int`, `.duration`, …)
    /// hold the parsing, the error messages and the printing of each kind of value.
    public struct Key: Sendable {
        /// The key in the file (dots for nesting: `pql.half_life`) and in flags.
        public var name: String
        /// The variable that sets it: `FOLDSPACE_SYNC_` + the name in upper case, dots as
        /// underscores, unless the entry names another (`FOLDSPACE_API_KEY`).
        public var environment: String
        /// docs/configuration.md's cells: type, default, meaning.
        public var type: String
        public var defaultText: String
        public var help: String
        /// Never printed: `check-config` says only whether it is set.
        public var secret: Bool
        /// Whether the file may set it, and so whether docs/configuration.md's table lists
        /// it (the API key comes from the environment or a file named by `api_key_file`).
        public var inFile: Bool
        /// How the file and the environment spell a value (see ``Shape``).
        var shape: Shape
        /// Sets the key from a value; every error names the key.
        var parse: @Sendable (inout SyncConfiguration, ConfigValue) throws -> Void
        /// The effective value as `check-config` prints it: one `(key, value)` line, or one
        /// per property for a map.
        var render: @Sendable (SyncConfiguration) -> [(key: String, value: String)]

        enum Shape {
            /// A scalar: the variable's value as it is.
            case value
            /// A list: an array in the file; the variable's value is split at commas.
            case list
            /// A map of librdkafka properties: an object in the file; the variable's
            /// entries (``SyncConfiguration/parsePairs(_:key:variable:)``) merge per property
            /// over the file's.
            case map
        }

        /// The environment variables of ordinary keys start with this.
        static let environmentPrefix = "FOLDSPACE_SYNC_"

        init(
            _ name: String, environment: String? = nil, type: String, default defaultText: String, _ help: String,
            secret: Bool = false, inFile: Bool = true, shape: Shape = .value,
            parse: @escaping @Sendable (inout SyncConfiguration, ConfigValue) throws -> Void,
            renderLines: @escaping @Sendable (SyncConfiguration) -> [(key: String, value: String)]
        ) {
            self.name = name
            self.environment = environment ?? Self.environmentPrefix + name.uppercased().replacingOccurrences(of: ".", with: "_")
            self.type = type
            self.defaultText = defaultText
            self.help = help
            self.secret = secret
            self.inFile = inFile
            self.shape = shape
            self.parse = parse
            self.render = renderLines
        }

        /// A key printed on one line.
        init(
            _ name: String, type: String, default defaultText: String, _ help: String, shape: Shape = .value,
            parse: @escaping @Sendable (inout SyncConfiguration, ConfigValue) throws -> Void,
            render: @escaping @Sendable (SyncConfiguration) -> String
        ) {
            self.init(
                name, type: type, default: defaultText, help, shape: shape, parse: parse,
                renderLines: { [(name, render($0))] })
        }
    }
}

// MARK: - Typed constructors, one per kind of value

extension SyncConfiguration.Key {
    typealias Value = SyncConfiguration.ConfigValue
    /// Where a key's value goes: a property of the configuration (or of its ``EngineOptions``).
    typealias Path<T> = WritableKeyPath<SyncConfiguration, T> & Sendable

    /// Text taken as it is (an empty value included).
    static func string(
        _ name: String, _ path: Path<String>, type: String = "string",
        default defaultText: String, _ help: String
    ) -> Self {
        Self(
            name, type: type, default: defaultText, help,
            parse: { c, v in c[keyPath: path] = try text(v, name) }, render: { $0[keyPath: path] })
    }

    /// Text that may be unset; `unset` is what `check-config` prints then. With
    /// `emptyIsUnset`, an empty value unsets it.
    static func optional(
        _ name: String, _ path: Path<String?>, type: String = "string",
        default defaultText: String, unset: String, emptyIsUnset: Bool = false, _ help: String
    ) -> Self {
        Self(
            name, type: type, default: defaultText, help,
            parse: { c, v in
                let t = try text(v, name)
                c[keyPath: path] = emptyIsUnset && t.isEmpty ? nil : t
            },
            render: { $0[keyPath: path] ?? unset })
    }

    /// A secret from the environment only: never printed, not in the file, not in the
    /// documentation's table (the prose names it).
    static func secret(_ name: String, _ path: Path<String?>, environment: String) -> Self {
        Self(
            name, environment: environment, type: "string", default: "none", "", secret: true, inFile: false,
            parse: { c, v in c[keyPath: path] = try text(v, name) },
            renderLines: { [(name, $0[keyPath: path] == nil ? "(not set)" : "<redacted>")] })
    }

    /// `true`, `yes`, `1`, `on` or `false`, `no`, `0`, `off`, in any case.
    static func bool(_ name: String, _ path: Path<Bool>, default defaultText: String, _ help: String) -> Self {
        Self(
            name, type: "boolean", default: defaultText, help,
            parse: { c, v in
                let t = try text(v, name)
                switch t.lowercased() {
                case "true", "yes", "1", "on": c[keyPath: path] = true
                case "false", "no", "0", "off": c[keyPath: path] = false
                default: throw ConfigurationError("\(name): expected true or false, got \"\(t)\"")
                }
            }, render: { String($0[keyPath: path]) })
    }

    /// An integer at least `min`.
    static func int(_ name: String, _ path: Path<Int>, min lo: Int, default defaultText: String, _ help: String) -> Self {
        Self(
            name, type: "integer", default: defaultText, help,
            parse: { c, v in
                let t = try text(v, name)
                guard let i = Int(t), i >= lo else { throw ConfigurationError("\(name): expected an integer ≥ \(lo), got \"\(t)\"") }
                c[keyPath: path] = i
            }, render: { String($0[keyPath: path]) })
    }

    enum NumberRange { case positive, nonNegative }

    /// A finite number, positive or non-negative.
    static func number(
        _ name: String, _ path: Path<Double>, _ range: NumberRange,
        default defaultText: String, _ help: String
    ) -> Self {
        Self(
            name, type: "number", default: defaultText, help,
            parse: { c, v in
                let t = try text(v, name)
                let zeroOK = range == .nonNegative
                guard let d = Double(t), d.isFinite, zeroOK ? d >= 0 : d > 0 else {
                    throw ConfigurationError("\(name): expected a \(zeroOK ? "non-negative" : "positive") number, got \"\(t)\"")
                }
                c[keyPath: path] = d
            }, render: { String($0[keyPath: path]) })
    }

    /// A duration (``parseDuration(_:)``) in milliseconds; a shorter one than `atLeast`
    /// counts as `atLeast`.
    static func duration(
        _ name: String, _ path: Path<Int64>, atLeast floor: Int64 = 0,
        default defaultText: String, _ help: String
    ) -> Self {
        Self(
            name, type: "duration", default: defaultText, help,
            parse: { c, v in c[keyPath: path] = max(try milliseconds(v, name), floor) },
            render: { formatDuration($0[keyPath: path]) })
    }

    /// One of an enumeration's raw values; the documented type lists them (`a|b|c`).
    static func choice<E: RawRepresentable & CaseIterable & Sendable>(
        _ name: String, _ path: Path<E>, default defaultText: String, _ help: String
    ) -> Self where E.RawValue == String {
        let names = E.allCases.map(\.rawValue)
        let expected = names.count > 1 ? names.dropLast().joined(separator: ", ") + " or " + names.last! : names.joined()
        return Self(
            name, type: names.joined(separator: "|"), default: defaultText, help,
            parse: { c, v in
                let t = try text(v, name)
                guard let e = E(rawValue: t) else { throw ConfigurationError("\(name): expected \(expected), got \"\(t)\"") }
                c[keyPath: path] = e
            }, render: { $0[keyPath: path].rawValue })
    }

    /// A list of strings: an array, or text split at commas; empty entries are dropped.
    static func list(_ name: String, _ path: Path<[String]>, default defaultText: String, _ help: String) -> Self {
        Self(
            name, type: "list of strings", default: defaultText, help, shape: .list,
            parse: { c, v in c[keyPath: path] = try list(v, name) },
            render: { $0[keyPath: path].joined(separator: ",") })
    }

    /// librdkafka properties: printed one line per property, a value only where `shown`
    /// says it holds no secret.
    static func map(
        _ name: String, _ path: Path<[String: String]>, type: String,
        shown: @escaping @Sendable (_ property: String) -> Bool, _ help: String
    ) -> Self {
        Self(
            name, type: type, default: "{}", help, shape: .map,
            parse: { c, v in
                // Only an object sets it (the file and the environment give nothing else).
                if case .map(let m) = v { c[keyPath: path] = m }
            },
            renderLines: { c in
                c[keyPath: path].sorted { $0.key < $1.key }.map { ("\(name).\($0.key)", shown($0.key) ? $0.value : "<redacted>") }
            })
    }

    // MARK: Reading a value

    /// One value: text, or a list of exactly one.
    static func text(_ v: Value, _ name: String) throws -> String {
        switch v {
        case .text(let s): return s
        case .list(let l):
            if l.count == 1 { return l[0] }
            throw ConfigurationError("\(name): expected one value, got a list")
        case .map: throw ConfigurationError("\(name): expected a value, got an object")
        }
    }

    static func list(_ v: Value, _ name: String) throws -> [String] {
        switch v {
        case .list(let l): return l.filter { !$0.isEmpty }
        case .text(let t): return t.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        case .map: throw ConfigurationError("\(name): expected a list")
        }
    }

    static func milliseconds(_ v: Value, _ name: String) throws -> Int64 {
        let t = try text(v, name)
        guard let ms = parseDuration(t) else { throw ConfigurationError("\(name): bad duration \"\(t)\" (use 250ms, 5s, 1m, 1h, 14d)") }
        return ms
    }
}
