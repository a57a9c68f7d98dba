import Folding
import Foundation
import Kafka
import Testing

@testable import SyncService

@Suite struct ConfigurationTests {
    func file(_ json: String) throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString).json")
        try json.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    @Test func precedenceIsFlagsThenEnvironmentThenFileThenDefaults() throws {
        let f = try file(#"{"brokers":"file:1","topics":["t"],"group":"file-group","debounce":"2s","max_wait":"30s"}"#)
        let c = try SyncConfiguration.load(
            file: f,
            environment: ["FOLDSPACE_SYNC_GROUP": "env-group", "FOLDSPACE_SYNC_DEBOUNCE": "3s"],
            flags: ["debounce": .text("4s")])
        #expect(c.brokers == "file:1")  // file
        #expect(c.group == "env-group")  // environment over file
        #expect(c.engine.debounceMs == 4_000)  // flag over environment
        #expect(c.engine.maxWaitMs == 30_000)  // file
        #expect(c.engine.maxInFlight == 16)  // default
    }

    /// `http://` sends the key in clear text: only to a loopback address (a local stand-in
    /// or sidecar), or with `allow_insecure_http: true`.
    @Test func plainHTTPIsRefusedUnlessLoopbackOrAllowed() throws {
        func config(_ url: String, allow: Bool? = nil) throws -> SyncConfiguration {
            var env = [
                "FOLDSPACE_SYNC_BROKERS": "b:1", "FOLDSPACE_SYNC_TOPICS": "t", "FOLDSPACE_SYNC_GROUP": "g",
                "FOLDSPACE_SYNC_FOLDSPACE_URL": url, "FOLDSPACE_API_KEY": "k",
            ]
            if let allow { env["FOLDSPACE_SYNC_ALLOW_INSECURE_HTTP"] = String(allow) }
            return try SyncConfiguration.load(file: nil, environment: env, flags: [:])
        }
        for url in ["http://api.foldspace.ai", "http://10.0.0.7:8080", "http://128.0.0.1", "http://127.0.0.1.example.com"] {
            do {
                try config(url).validate()
                Issue.record("\(url) was accepted")
            } catch {
                #expect("\(error)".contains("allow_insecure_http"), "\(error)")
            }
            try config(url, allow: true).validate()
        }
        for url in ["https://api.foldspace.ai", "http://127.0.0.1:9000", "http://127.8.9.10", "http://localhost:1", "http://[::1]:8080"] {
            try config(url).validate()
        }
    }

    @Test func foldKeysFromFileAndEnvironment() throws {
        let f = try file(
            #"""
            {"brokers":"b:1","topics":["t"],"group":"g","visit_gap":"10m","send_number_of_visits":true,
             "custom_attributes":["plan","company"],
             "pql":{"source":"model","day_weight":3,"half_life":"7d",
                    "key_events":[{"name":"Report Created","weight":5,"cap":10},{"name":"Invite Sent"}]}}
            """#)
        let c = try SyncConfiguration.load(file: f, environment: ["FOLDSPACE_SYNC_PQL_K": "80"], flags: [:])
        #expect(c.engine.fold.visitGapMs == 600_000)
        #expect(c.engine.fold.sendNumberOfVisits)
        #expect(c.engine.fold.customAttributes == ["plan", "company"])
        #expect(c.engine.fold.pql.dayWeight == 3)
        #expect(c.engine.fold.pql.halfLifeDays == 7)
        #expect(c.engine.fold.pql.k == 80)
        #expect(
            c.engine.fold.keyEvents == [.init(name: "Report Created", weight: 5, cap: 10), .init(name: "Invite Sent", weight: 3, cap: 20)])
        let e = try SyncConfiguration.load(
            file: nil,
            environment: [
                "FOLDSPACE_SYNC_PQL_SOURCE": "trait", "FOLDSPACE_SYNC_SEND_NUMBER_OF_VISITS": "true",
                "FOLDSPACE_SYNC_PQL_KEY_EVENTS": "Signed Up:2:5,Paid",
            ], flags: [:])
        #expect(e.engine.fold.pql.source == .trait)
        #expect(e.engine.fold.sendNumberOfVisits)
        #expect(e.engine.fold.keyEvents.map(\.name) == ["Signed Up", "Paid"])
    }

    @Test(arguments: [
        (#"{"nonsense":1}"#, "nonsense"),
        (#"{"debounce":"fast"}"#, "debounce"),
        (#"{"pql":{"source":"magic"}}"#, "pql.source"),
        (#"{"pql":{"bogus":1}}"#, "pql.bogus"),
        (#"{"send_number_of_visits":"maybe"}"#, "send_number_of_visits"),
        (#"{"on_user_not_found":"ignore"}"#, "on_user_not_found"),
        (#"{"max_in_flight":0}"#, "max_in_flight"),
    ])
    func errorsNameTheKey(json: String, key: String) throws {
        let f = try file(json)
        do {
            _ = try SyncConfiguration.load(file: f, environment: [:], flags: [:])
            Issue.record("accepted \(json)")
        } catch {
            #expect("\(error)".hasPrefix(key), "\(error)")
        }
    }

    @Test func validationNamesMissingAndBadKeys() throws {
        var c = SyncConfiguration()
        expectError("brokers") { try c.validate() }
        c.brokers = "b:1"
        expectError("topics") { try c.validate() }
        c.topics = ["t"]
        c.group = "g"
        c.foldspaceURL = "not a url"
        expectError("foldspace_url") { try c.validate(requireKey: false) }
        c.foldspaceURL = "https://api.foldspace.ai"
        expectError("api_key_file") { try c.validate() }
        c.apiKey = "k"
        try c.validate()
    }

    /// `identity.merge` needs durable state with transactions, and until the engine routes
    /// by identity it is refused, not silently ignored.
    @Test func identityMergeIsRefusedWhereItCannotHold() throws {
        var c = SyncConfiguration()
        c.brokers = "b:1"
        c.topics = ["t"]
        c.group = "g"
        c.apiKey = "k"
        try c.validate()
        c.engine.identity.merge = true
        c.stateMode = .memory
        expectError("identity.merge: needs state: durable") { try c.validate() }
        c.stateMode = .durable
        c.stateTransactions = false
        expectError("identity.merge: needs state: durable") { try c.validate() }
        c.stateTransactions = true
        try c.validate()
        c.engine.identity.sendAnonymous = false
        try c.validate()
        c.engine.identity.merge = false
        expectError("identity.send_anonymous: false needs identity.merge: true") { try c.validate() }
        #expect(throws: (any Error).self) { try SyncConfiguration.build(["identity.max_linked": .text("901")]) }
        #expect(throws: (any Error).self) { try SyncConfiguration.build(["identity.max_linked": .text("-1")]) }
        #expect(try SyncConfiguration.build(["identity.max_linked": .text("900")]).engine.identity.maxLinked == 900)
    }

    @Test func describeRedactsSecrets() throws {
        var c = SyncConfiguration()
        c.apiKey = "super-secret-key"
        c.kafkaProperties = ["sasl.password": "hunter2", "security.protocol": "SASL_SSL"]
        let d = c.describe()
        #expect(!d.contains("super-secret-key") && !d.contains("hunter2"))
        #expect(d.contains("kafka.properties.security.protocol: SASL_SSL"))
        #expect(d.contains("kafka.properties.sasl.password: <redacted>"))
    }

    @Test func secretsFromFilesAndSystemdCredentials() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("creds-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try "the-key\n".write(to: dir.appendingPathComponent("foldspace-api-key"), atomically: true, encoding: .utf8)
        try "s3cret\n".write(to: dir.appendingPathComponent("kafka-password"), atomically: true, encoding: .utf8)
        let f = try file(
            #"{"brokers":"b:1","topics":["t"],"group":"g","kafka":{"properties":{"sasl.username":"u"},"secret_files":{"sasl.password":"\#(dir.path)/kafka-password"}}}"#
        )
        let c = try SyncConfiguration.load(file: f, environment: ["CREDENTIALS_DIRECTORY": dir.path], flags: [:])
        #expect(c.apiKeyFile == dir.appendingPathComponent("foldspace-api-key").path)
        try c.validate()
        let props = try c.resolvedKafkaProperties()
        #expect(props["sasl.password"] == "s3cret")
        #expect(props["bootstrap.servers"] == "b:1")
        #expect(!c.describe().contains("s3cret"))
        // An explicit key wins over the credential.
        let e = try SyncConfiguration.load(file: f, environment: ["CREDENTIALS_DIRECTORY": dir.path, "FOLDSPACE_API_KEY": "k"], flags: [:])
        #expect(e.apiKeyFile == nil && e.apiKey == "k")
    }

    /// The variables the kubelet's service links put in a pod of this namespace for the
    /// shipped `foldspace-sync-metrics` Service (and would for a `foldspace-sync` one).
    static let serviceLinks = [
        "FOLDSPACE_SYNC_METRICS_SERVICE_HOST": "10.0.0.7", "FOLDSPACE_SYNC_METRICS_SERVICE_PORT": "9464",
        "FOLDSPACE_SYNC_METRICS_SERVICE_PORT_ADMIN": "9464", "FOLDSPACE_SYNC_METRICS_PORT": "tcp://10.0.0.7:9464",
        "FOLDSPACE_SYNC_METRICS_PORT_9464_TCP": "tcp://10.0.0.7:9464", "FOLDSPACE_SYNC_METRICS_PORT_9464_TCP_PROTO": "tcp",
        "FOLDSPACE_SYNC_METRICS_PORT_9464_TCP_PORT": "9464", "FOLDSPACE_SYNC_METRICS_PORT_9464_TCP_ADDR": "10.0.0.7",
        "FOLDSPACE_SYNC_SERVICE_HOST": "10.0.0.8", "FOLDSPACE_SYNC_PORT": "tcp://10.0.0.8:9464",
    ]

    @Test func environmentVariablesThatNameNoKeyGiveOneWarningNotAnError() throws {
        var env = Self.serviceLinks
        env["FOLDSPACE_SYNC_BROKERS"] = "b:1"
        env["FOLDSPACE_SYNC_TOPICS"] = "t"
        env["FOLDSPACE_SYNC_GROUP"] = "g"
        let c = try SyncConfiguration.load(file: nil, environment: env, flags: [:])
        #expect(c.brokers == "b:1" && c.topics == ["t"] && c.group == "g")
        #expect(c.warnings.count == 1, "\(c.warnings)")
        let warning = try #require(c.warnings.first)
        for name in Self.serviceLinks.keys { #expect(warning.contains(name), "\(warning) lacks \(name)") }
        // Names only: a value could be anything.
        #expect(!warning.contains("10.0.0.7") && !warning.contains("tcp://"))
        #expect(!warning.contains("FOLDSPACE_SYNC_BROKERS"))
        // Known keys only: no warning.
        let quiet = try SyncConfiguration.load(file: nil, environment: ["FOLDSPACE_SYNC_GROUP": "g"], flags: [:])
        #expect(quiet.warnings.isEmpty)
        // The file is ours alone: an unknown key there stays an error.
        expectError("metrics_port_9464_tcp_addr") {
            _ = try SyncConfiguration.load(file: try file(#"{"metrics_port_9464_tcp_addr":"x"}"#), environment: env, flags: [:])
        }
    }

    @Test func kafkaPropertiesFromTheEnvironmentMergePerKeyAndCarryCommas() throws {
        let f = try file(
            #"{"brokers":"b:1","topics":["t"],"group":"g","kafka":{"properties":{"security.protocol":"SASL_SSL","sasl.username":"file-user"}}}"#
        )
        let c = try SyncConfiguration.load(
            file: f,
            environment: [
                "FOLDSPACE_SYNC_KAFKA_PROPERTIES": #"sasl.username=env-user, sasl.oauthbearer.config=scope=a\,b principal=p"#
            ], flags: [:])
        #expect(
            c.kafkaProperties == [
                "security.protocol": "SASL_SSL", "sasl.username": "env-user",
                "sasl.oauthbearer.config": "scope=a,b principal=p",
            ])
        // Newlines separate entries too (a YAML block in a pod spec), and a JSON object works.
        let n = try SyncConfiguration.load(file: f, environment: ["FOLDSPACE_SYNC_KAFKA_PROPERTIES": "a.b=1\nc.d=x\\,y\n"], flags: [:])
        #expect(
            n.kafkaProperties["a.b"] == "1" && n.kafkaProperties["c.d"] == "x,y" && n.kafkaProperties["security.protocol"] == "SASL_SSL")
        let j = try SyncConfiguration.load(
            file: f, environment: ["FOLDSPACE_SYNC_KAFKA_PROPERTIES": #"{"ssl.cipher.suites":"A,B","fetch.max.bytes":1000}"#], flags: [:])
        #expect(
            j.kafkaProperties["ssl.cipher.suites"] == "A,B" && j.kafkaProperties["fetch.max.bytes"] == "1000"
                && j.kafkaProperties["sasl.username"] == "file-user")
        // A backslash before anything else stays.
        let b = try SyncConfiguration.load(
            file: nil, environment: ["FOLDSPACE_SYNC_KAFKA_PROPERTIES": #"ssl.ca.location=C:\certs"#], flags: [:])
        #expect(b.kafkaProperties["ssl.ca.location"] == #"C:\certs"#)
        expectError("kafka.properties") {
            _ = try SyncConfiguration.load(
                file: nil, environment: ["FOLDSPACE_SYNC_KAFKA_PROPERTIES": "bootstrap.servers=a:1,b:2"], flags: [:])
        }
    }

    @Test func kafkaSecretFilesFromTheEnvironmentAreHonoured() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sf-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try "from-env\n".write(to: dir.appendingPathComponent("pw"), atomically: true, encoding: .utf8)
        try "from-file\n".write(to: dir.appendingPathComponent("key-pw"), atomically: true, encoding: .utf8)
        let f = try file(
            #"{"brokers":"b:1","topics":["t"],"group":"g","kafka":{"secret_files":{"ssl.key.password":"\#(dir.path)/key-pw"}}}"#)
        let c = try SyncConfiguration.load(
            file: f, environment: ["FOLDSPACE_SYNC_KAFKA_SECRET_FILES": "sasl.password=\(dir.path)/pw"], flags: [:])
        let p = try c.resolvedKafkaProperties()
        #expect(p["sasl.password"] == "from-env")
        #expect(p["ssl.key.password"] == "from-file")
        #expect(c.warnings.isEmpty)
        // A file that cannot be read stops the start, naming the key.
        let missing = try SyncConfiguration.load(
            file: nil,
            environment: [
                "FOLDSPACE_SYNC_BROKERS": "b:1", "FOLDSPACE_SYNC_TOPICS": "t", "FOLDSPACE_SYNC_GROUP": "g",
                "FOLDSPACE_SYNC_KAFKA_SECRET_FILES": "sasl.password=\(dir.path)/nope",
            ], flags: [:])
        expectError("kafka.secret_files") { try missing.validate(requireKey: false) }
    }

    @Test func aYAMLFileIsReadLikeTheJSONOne() throws {
        let yaml = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString).yaml")
        try """
        # YAML, as in a ConfigMap
        brokers: "k1:9092,k2:9092"
        topics: [segment-events]
        group: foldspace-sync
        debounce: 2s
        requests_per_second: 12.5
        send_number_of_visits: true
        pql:
          day_weight: 3
          key_events:
            - {name: Report Created, weight: 5, cap: 10}
            - name: Invite Sent
        kafka:
          properties:
            security.protocol: SASL_SSL
            fetch.max.bytes: 1048576
        """.write(to: yaml, atomically: true, encoding: .utf8)
        let c = try SyncConfiguration.load(file: yaml.path, environment: [:], flags: [:])
        #expect(c.brokers == "k1:9092,k2:9092" && c.topics == ["segment-events"] && c.group == "foldspace-sync")
        #expect(c.engine.debounceMs == 2_000 && c.engine.requestsPerSecond == 12.5 && c.engine.fold.sendNumberOfVisits)
        #expect(c.engine.fold.pql.dayWeight == 3)
        #expect(
            c.engine.fold.keyEvents == [.init(name: "Report Created", weight: 5, cap: 10), .init(name: "Invite Sent", weight: 3, cap: 20)])
        #expect(c.kafkaProperties == ["security.protocol": "SASL_SSL", "fetch.max.bytes": "1048576"])
        // The same rules as JSON: an unknown key is an error naming it.
        let bad = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString).yml")
        try "group: g\nnonsense: 1\n".write(to: bad, atomically: true, encoding: .utf8)
        expectError("nonsense") { _ = try SyncConfiguration.load(file: bad.path, environment: [:], flags: [:]) }
        let notAMap = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString).yaml")
        try "- a\n- b\n".write(to: notAMap, atomically: true, encoding: .utf8)
        expectError("config") { _ = try SyncConfiguration.load(file: notAMap.path, environment: [:], flags: [:]) }
    }

    @Test func durations() {
        #expect(parseDuration("250ms") == 250)
        #expect(parseDuration("5s") == 5_000)
        #expect(parseDuration("1m") == 60_000)
        #expect(parseDuration("2h") == 7_200_000)
        #expect(parseDuration("14d") == 1_209_600_000)
        #expect(parseDuration("1.5s") == 1_500)
        #expect(parseDuration("soon") == nil)
        #expect(parseDuration("-1s") == nil)
    }
}

func expectError(_ key: String, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("no error; expected one naming \(key)")
    } catch {
        #expect("\(error)".hasPrefix(key), "\(error)")
    }
}
