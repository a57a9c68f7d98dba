import Foundation
import Testing

@testable import SyncService

extension ConfigurationTests {
    /// ``SyncConfiguration/keys`` itself: names, variables, and that what a key parses is
    /// what it prints.
    @Suite struct KeyTable {
        typealias Value = SyncConfiguration.ConfigValue

        /// A value other than the default for every key. A new key needs one here.
        static let samples: [String: Value] = [
            "brokers": .text("k1:9092,k2:9092"), "topics": .list(["a", "b"]), "group": .text("g1"),
            "foldspace_url": .text("https://foldspace.example"), "api_key": .text("sample-secret-key"),
            "api_key_file": .text("/run/key"), "ca_file": .text("/etc/ca.pem"), "allow_insecure_http": .text("true"),
            "debounce": .text("2s"), "max_wait": .text("90s"), "admin_listen": .text("0.0.0.0:9000"),
            "dead_letter_topic": .text("dlq"), "log_format": .text("text"), "log_level": .text("debug"),
            "shutdown_timeout": .text("45s"), "connect_timeout": .text("2s"), "request_timeout": .text("10s"),
            "max_in_flight": .text("8"), "decode_threads": .text("3"), "requests_per_second": .text("12.5"),
            "burst": .text("25"), "max_dirty_users": .text("5000"), "max_message_bytes": .text("2048"),
            "max_batch_events": .text("100"), "breaker_probe_interval": .text("5s"), "on_user_not_found": .text("retry"),
            "visit_gap": .text("10m"), "send_number_of_visits": .text("true"), "custom_attributes": .list(["plan", "company"]),
            "pql.source": .text("trait"), "pql.visit_weight": .text("0.5"), "pql.visit_cap": .text("10"),
            "pql.day_weight": .text("0"), "pql.k": .text("80"), "pql.half_life": .text("7d"),
            "pql.key_events": .list(["Signed Up:2:5", "Paid"]), "state": .text("memory"), "state_topic": .text("custom-state"),
            "state.transactions": .text("false"), "identity.merge": .text("true"), "identity.max_linked": .text("7"),
            "identity.send_anonymous": .text("false"), "identity.partitioner": .text("crc32"), "commit_interval": .text("1s"),
            "inactive_user_ttl": .text("30d"),
            "group_instance_id": .text("pod-0"), "zstd_size_hint": .text("false"),
            "kafka.properties": .map(["security.protocol": "SASL_SSL", "session.timeout.ms": "6000"]),
            "kafka.secret_files": .map(["sasl.password": "/run/pw"]),
        ]

        static func lines(_ key: SyncConfiguration.Key, _ c: SyncConfiguration) -> [String] {
            key.render(c).map { "\($0.key): \($0.value)" }
        }

        @Test func namesAndVariablesAreUniqueAndFollowTheConvention() {
            let keys = SyncConfiguration.keys
            #expect(Set(keys.map(\.name)).count == keys.count)
            #expect(Set(keys.map(\.environment)).count == keys.count)
            // Variables are matched case-insensitively after the prefix: no two may meet there.
            #expect(Set(keys.map { $0.environment.lowercased() }).count == keys.count)
            for k in keys where k.name != "api_key" {
                #expect(k.environment == "FOLDSPACE_SYNC_" + k.name.uppercased().replacingOccurrences(of: ".", with: "_"), "\(k.name)")
            }
            // The one exception, and the one key the file cannot set.
            #expect(keys.filter { !$0.environment.hasPrefix("FOLDSPACE_SYNC_") }.map(\.environment) == ["FOLDSPACE_API_KEY"])
            #expect(keys.filter { !$0.inFile }.map(\.name) == ["api_key"])
        }

        @Test func everyKeyHasASample() {
            #expect(
                Set(Self.samples.keys) == Set(SyncConfiguration.keys.map(\.name)),
                "ConfigurationTests.KeyTable.samples needs a non-default value for every key")
        }

        /// What a key prints parses back to the same value, and the sample changes only
        /// its own key (no two keys share a property).
        @Test func everyKeyPrintsWhatItParses() throws {
            let defaults = SyncConfiguration()
            for key in SyncConfiguration.keys where !key.secret {
                let sample = try #require(Self.samples[key.name])
                let set = try SyncConfiguration.build([key.name: sample])
                let printed = key.render(set)
                #expect(Self.lines(key, set) != Self.lines(key, defaults), "\(key.name): the sample printed as the default")
                let value: Value
                switch key.shape {
                case .map:
                    value = .map(Dictionary(uniqueKeysWithValues: printed.map { (String($0.key.dropFirst(key.name.count + 1)), $0.value) }))
                case .value, .list:
                    #expect(printed.count == 1 && printed.first?.key == key.name, "\(printed)")
                    value = .text(printed.first?.value ?? "")
                }
                let back = try SyncConfiguration.build([key.name: value])
                #expect(back.describe() == set.describe(), "\(key.name)")
                for other in SyncConfiguration.keys where other.name != key.name {
                    // The default changelog topic is named after the group.
                    if key.name == "group" && other.name == "state_topic" { continue }
                    #expect(Self.lines(other, set) == Self.lines(other, defaults), "\(key.name) changed \(other.name)")
                }
            }
        }

        @Test func secretsAreNeverPrinted() throws {
            for key in SyncConfiguration.keys where key.secret {
                #expect(Self.lines(key, SyncConfiguration()) == ["\(key.name): (not set)"])
                let set = try SyncConfiguration.build([key.name: .text("sample-secret-key")])
                #expect(Self.lines(key, set) == ["\(key.name): <redacted>"])
                #expect(!set.describe().contains("sample-secret-key"))
            }
        }

        /// The file, the environment and a flag set the same value for every key.
        @Test func everyKeyIsReadFromTheFileTheEnvironmentAndAFlag() throws {
            for key in SyncConfiguration.keys {
                let sample = try #require(Self.samples[key.name])
                let expected = try SyncConfiguration.build([key.name: sample]).describe()
                let flag = try SyncConfiguration.load(file: nil, environment: [:], flags: [key.name: sample])
                #expect(flag.describe() == expected, "\(key.name) from a flag")
                let variable: String
                switch sample {
                case .text(let t): variable = t
                case .list(let l): variable = l.joined(separator: ",")
                case .map(let m): variable = m.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
                }
                let env = try SyncConfiguration.load(file: nil, environment: [key.environment: variable], flags: [:])
                #expect(env.describe() == expected, "\(key.name) from \(key.environment)")
                #expect(env.warnings.isEmpty)
                guard key.inFile else { continue }
                let json: Any
                switch sample {
                case .text(let t): json = t
                case .list(let l): json = l
                case .map(let m): json = m
                }
                let url = FileManager.default.temporaryDirectory.appendingPathComponent("keys-\(UUID().uuidString).json")
                try JSONSerialization.data(withJSONObject: [key.name: json]).write(to: url)
                defer { try? FileManager.default.removeItem(at: url) }
                let file = try SyncConfiguration.load(file: url.path, environment: [:], flags: [:])
                #expect(file.describe() == expected, "\(key.name) from the file")
            }
        }

        /// The documented default is the code's, wherever the documentation gives a value
        /// (not a placeholder such as "(required)" or "none").
        @Test func documentedDefaultsAreTheCodes() throws {
            let placeholders: Set = ["(required)", "none", "[]", "{}", "<group>-state", "json unless stderr is a terminal"]
            let defaults = SyncConfiguration()
            for key in SyncConfiguration.keys where key.inFile && !placeholders.contains(key.defaultText) {
                let documented = try SyncConfiguration.build([key.name: .text(key.defaultText)])
                #expect(Self.lines(key, documented) == Self.lines(key, defaults), "\(key.name): documented \(key.defaultText)")
            }
        }

        /// `state`: the same two words as ever, in lower case only; the mode is the
        /// engine's `durable` flag, not a copy of it.
        @Test func stateModeParsesTheSameInputs() throws {
            #expect(SyncConfiguration().stateMode == .durable && SyncConfiguration().engine.durable)
            let durable = try SyncConfiguration.build(["state": .text("durable")])
            #expect(durable.stateMode == .durable && durable.engine.durable)
            let memory = try SyncConfiguration.build(["state": .text("memory")])
            #expect(memory.stateMode == .memory && !memory.engine.durable)
            #expect(memory.describe().contains("\nstate: memory\n"))
            for bad in ["Durable", "MEMORY", "", "true", " memory", "persistent"] {
                do {
                    _ = try SyncConfiguration.build(["state": .text(bad)])
                    Issue.record("accepted \"\(bad)\"")
                } catch {
                    #expect("\(error)" == "state: expected durable or memory, got \"\(bad)\"")
                }
            }
            var c = SyncConfiguration()
            c.stateMode = .memory
            #expect(!c.engine.durable)
            c.engine.durable = true
            #expect(c.stateMode == .durable)
        }
    }
}
