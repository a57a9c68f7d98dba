import Foundation
import Simulation
import Testing

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

// The deployment as it runs: every kustomization and the Helm chart rendered, validated
// and checked for selectors, placeholder Secrets and probes; the binary started with the
// arguments, files and environment a pod of each gets. The tools are installed by
// scripts/deps.sh --with-test-tools (scripts/test.sh runs it): a missing one fails the
// test, naming it, never skips it.

private let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// The path of a tool the tests need, or a failure that names it.
func requireTool(_ tool: String) throws -> String {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let p = "\(dir)/\(tool)"
        if FileManager.default.isExecutableFile(atPath: p) { return p }
    }
    throw TestFailure("\(tool) is not installed: `bash scripts/deps.sh --with-test-tools` installs it (scripts/test.sh runs that)")
}

/// Runs a tool and returns its exit status and combined output.
func runTool(_ args: [String], cwd: URL? = nil) throws -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: try requireTool(args[0]))
    p.arguments = Array(args.dropFirst())
    p.currentDirectoryURL = cwd ?? repoRoot
    let out = FileManager.default.temporaryDirectory.appendingPathComponent("tool-\(UUID().uuidString.prefix(8))")
    FileManager.default.createFile(atPath: out.path, contents: nil)
    let handle = try FileHandle(forWritingTo: out)
    p.standardOutput = handle
    p.standardError = handle
    try p.run()
    p.waitUntilExit()
    try handle.close()
    return (p.terminationStatus, (try? String(contentsOf: out, encoding: .utf8)) ?? "")
}

private func tempFile(_ text: String, ext: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("deploy-\(UUID().uuidString.prefix(8)).\(ext)")
    try text.write(to: url, atomically: true, encoding: .utf8)
    return url
}

typealias Object = [String: Any]

private func dig(_ value: Any?, _ path: String...) -> Any? {
    var v = value
    for key in path { v = (v as? Object)?[key] }
    return v
}

private func labels(_ value: Any?) -> [String: String] { (value as? [String: Any])?.compactMapValues { $0 as? String } ?? [:] }

/// Rendered manifests: the YAML text and its documents (PyYAML, which
/// kubernetes-validate depends on, parses it).
struct Rendered {
    var name: String
    var yaml: String
    var docs: [Object]

    init(name: String, yaml: String) throws {
        self.name = name
        self.yaml = yaml
        let file = try tempFile(yaml, ext: "yaml")
        let script = "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)"
        let (status, out) = try runTool(["python3", "-c", script, file.path])
        guard status == 0, let docs = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [Object] else {
            throw TestFailure("\(name): rendered YAML does not parse (python3 with PyYAML): \(out.prefix(500))")
        }
        self.docs = docs
    }

    func all(_ kind: String) -> [Object] { docs.filter { $0["kind"] as? String == kind } }
    var workload: Object? { docs.first { ["Deployment", "StatefulSet"].contains($0["kind"] as? String ?? "") } }
    var podTemplate: Object? { dig(workload, "spec", "template") as? Object }
    var container: Object? { (dig(podTemplate, "spec", "containers") as? [Object])?.first }
}

func renderKustomization(_ dir: String) throws -> Rendered {
    let (status, out) = try runTool(["kubectl", "kustomize", "deploy/kubernetes/\(dir)"])
    guard status == 0 else { throw TestFailure("kubectl kustomize \(dir) failed: \(out)") }
    return try Rendered(name: dir, yaml: out)
}

/// The kustomizations users apply (every kustomization.yaml under deploy/kubernetes is
/// one of them: a test checks the list is complete).
let kustomizations = ["base", "overlays/statefulset", "overlays/keda", "examples/keda-sasl"]

/// Everything a pod must have for the daemon to start, be probed and be selected.
func checkRendered(_ r: Rendered) throws {
    let n = r.name
    let (vs, vout) = try runTool(["kubernetes-validate", "--strict", try tempFile(r.yaml, ext: "yaml").path])
    #expect(vs == 0 && !vout.contains("ERROR"), "\(n): \(vout)")
    // kubernetes-validate has no schema for KEDA's kinds: every other kind must pass.
    for doc in r.docs where !(doc["apiVersion"] as? String ?? "").hasPrefix("keda.sh/") {
        let name = dig(doc, "metadata", "name") as? String ?? "?"
        #expect(
            vout.contains("passed for resource \((doc["kind"] as? String ?? "").lowercased())/\(name)"),
            "\(n): \(doc["kind"] ?? "") \(name) not validated: \(vout)")
    }
    // No placeholder Secret: `apply -k` would overwrite the real key.
    #expect(r.all("Secret").isEmpty, "\(n) renders a Secret")
    #expect(!r.yaml.contains("replace-me"), "\(n) renders a placeholder")

    let workload = try #require(r.workload, "\(n): no workload")
    let pod = try #require(r.podTemplate)
    let podSpec = try #require(pod["spec"] as? Object)
    let podLabels = labels(dig(pod, "metadata", "labels"))
    for key in [
        "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/component",
        "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by",
    ] {
        #expect(podLabels[key] != nil, "\(n): pods lack \(key)")
    }
    for doc in r.docs {
        let l = labels(dig(doc, "metadata", "labels"))
        #expect(
            l["app.kubernetes.io/name"] != nil && l["app.kubernetes.io/instance"] != nil,
            "\(n): \(doc["kind"] ?? "") lacks the recommended labels: \(l)")
    }
    // Every selector selects these pods.
    func selects(_ selector: [String: String], _ what: String) {
        #expect(!selector.isEmpty, "\(n): \(what) has an empty selector")
        for (k, v) in selector { #expect(podLabels[k] == v, "\(n): \(what) selects \(k)=\(v); pods have \(podLabels)") }
    }
    selects(labels(dig(workload, "spec", "selector", "matchLabels")), "\(workload["kind"] ?? "") selector")
    let services = r.all("Service")
    #expect(!services.isEmpty)
    for s in services { selects(labels(dig(s, "spec", "selector")), "Service \(dig(s, "metadata", "name") ?? "")") }
    let pdbs = r.all("PodDisruptionBudget")
    #expect(pdbs.count == 1, "\(n): \(pdbs.count) PodDisruptionBudgets")
    for p in pdbs {
        selects(labels(dig(p, "spec", "selector", "matchLabels")), "PodDisruptionBudget")
        #expect(dig(p, "spec", "unhealthyPodEvictionPolicy") as? String == "AlwaysAllow", "\(n)")
    }
    let policies = r.all("NetworkPolicy")
    #expect(policies.count == 1, "\(n): \(policies.count) NetworkPolicies")
    for p in policies {
        selects(labels(dig(p, "spec", "podSelector", "matchLabels")), "NetworkPolicy")
        let ports = ((dig(p, "spec", "ingress") as? [Object]) ?? []).flatMap { ($0["ports"] as? [Object]) ?? [] }
        #expect(
            ports.contains { $0["port"] as? String == "admin" || $0["port"] as? Int == 9464 },
            "\(n): NetworkPolicy does not name the admin port")
    }
    let spread = (podSpec["topologySpreadConstraints"] as? [Object]) ?? []
    #expect(spread.count >= 1, "\(n): no topology spread")
    for c in spread { selects(labels(dig(c, "labelSelector", "matchLabels")), "topology spread") }

    // Pods start as shipped and are probed for what the probes mean.
    #expect(podSpec["enableServiceLinks"] as? Bool == false, "\(n): service links are on")
    #expect((podSpec["terminationGracePeriodSeconds"] as? Int ?? 0) > 30, "\(n): grace period not above shutdown_timeout")
    #expect(dig(podSpec, "securityContext", "runAsNonRoot") as? Bool == true)
    let c = try #require(r.container)
    #expect(dig(c, "securityContext", "readOnlyRootFilesystem") as? Bool == true)
    #expect(dig(c, "startupProbe", "httpGet", "path") as? String == "/readyz", "\(n): startupProbe")
    #expect(dig(c, "readinessProbe", "httpGet", "path") as? String == "/readyz", "\(n): readinessProbe")
    #expect(dig(c, "livenessProbe", "httpGet", "path") as? String == "/healthz", "\(n): livenessProbe")
    // The startup probe allows a long restore: at least 10 minutes.
    let startup = (dig(c, "startupProbe", "periodSeconds") as? Int ?? 10) * (dig(c, "startupProbe", "failureThreshold") as? Int ?? 3)
    #expect(startup >= 600, "\(n): startupProbe allows \(startup)s")

    // The configuration is a generated ConfigMap (its name changes with its content,
    // rolling the pods), and it is the one mounted.
    let volumes = (podSpec["volumes"] as? [Object]) ?? []
    let mounted = volumes.compactMap { dig($0, "configMap", "name") as? String }
    let maps = r.all("ConfigMap").compactMap { dig($0, "metadata", "name") as? String }
    #expect(mounted.count == 1 && maps.contains(mounted[0]), "\(n): mounts \(mounted), renders \(maps)")
    #expect(mounted.allSatisfy { $0 != "foldspace-sync" }, "\(n): the ConfigMap name carries no content hash")

    // Where KEDA scales the workload, the workload states no replica count.
    for so in r.all("ScaledObject") {
        #expect(
            dig(so, "spec", "scaleTargetRef", "name") as? String == dig(workload, "metadata", "name") as? String,
            "\(n): ScaledObject targets another workload")
        #expect(dig(workload, "spec", "replicas") == nil, "\(n): replicas set where KEDA owns them")
        for t in (dig(so, "spec", "triggers") as? [Object]) ?? [] {
            if let ref = dig(t, "authenticationRef", "name") as? String {
                #expect(
                    r.all("TriggerAuthentication").contains { dig($0, "metadata", "name") as? String == ref },
                    "\(n): no TriggerAuthentication \(ref)")
            }
        }
    }
}

/// The variables the kubelet's service links would put in a pod for each rendered
/// Service (`{NAME}_SERVICE_HOST`, `{NAME}_PORT_9464_TCP_ADDR`, …) and the API server's.
/// The pods turn service links off; the daemon must start even where they are on.
func serviceLinks(_ r: Rendered) -> [String: String] {
    var env: [String: String] = [:]
    let services =
        r.all("Service").compactMap { s -> (String, [Object])? in
            guard let name = dig(s, "metadata", "name") as? String else { return nil }
            return (name, (dig(s, "spec", "ports") as? [Object]) ?? [])
        } + [("kubernetes", [["name": "https", "port": 443, "protocol": "TCP"]])]
    for (i, (name, ports)) in services.enumerated() {
        let n = name.uppercased().replacingOccurrences(of: "-", with: "_")
        let ip = "10.96.0.\(i + 10)"
        guard let first = ports.first, let firstPort = first["port"] as? Int else { continue }
        env["\(n)_SERVICE_HOST"] = ip
        env["\(n)_SERVICE_PORT"] = String(firstPort)
        env["\(n)_PORT"] = "\(((first["protocol"] as? String) ?? "TCP").lowercased())://\(ip):\(firstPort)"
        for p in ports {
            guard let port = p["port"] as? Int else { continue }
            let proto = (p["protocol"] as? String) ?? "TCP"
            if let pn = p["name"] as? String {
                env["\(n)_SERVICE_PORT_\(pn.uppercased().replacingOccurrences(of: "-", with: "_"))"] = String(port)
            }
            let prefix = "\(n)_PORT_\(port)_\(proto)"
            env[prefix] = "\(proto.lowercased())://\(ip):\(port)"
            env["\(prefix)_PROTO"] = proto.lowercased()
            env["\(prefix)_PORT"] = String(port)
            env["\(prefix)_ADDR"] = ip
        }
    }
    return env
}

/// Starts the built binary as the rendered pod would run it: its arguments, its mounted
/// ConfigMap and Secret (here in temporary folders), its environment with service links,
/// against mock-kafka and the sandbox; checks it gets ready, delivers, and stops with 0.
func startAsThePodWould(_ r: Rendered) async throws {
    let n = r.name
    let c = try #require(r.container, "\(n): no container")
    let workloadName = dig(r.workload, "metadata", "name") as? String ?? "foldspace-sync"
    let config = try #require(r.all("ConfigMap").first.flatMap { dig($0, "data", "config.json") as? String }, "\(n): no config.json")
    var fileConfig = try #require(try JSONSerialization.jsonObject(with: Data(config.utf8)) as? Object)
    let topic = try #require((fileConfig["topics"] as? [String])?.first)
    let kafka = try await MockKafkaProcess(topics: ["\(topic):2"])
    defer { Task { await kafka.stop() } }
    let sandbox = FoldspaceSandbox(apiKeys: ["pod-key"])
    try await sandbox.start()
    // The cluster's addresses, in the pod's own file; every other key as rendered.
    fileConfig["brokers"] = kafka.bootstrap
    fileConfig["foldspace_url"] = sandbox.baseURL

    // The pod's volumes, each in a folder of its own.
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("pod-\(UUID().uuidString.prefix(8))")
    var mountPaths: [String: URL] = [:]
    let volumes = (dig(r.podTemplate, "spec", "volumes") as? [Object]) ?? []
    for m in (c["volumeMounts"] as? [Object]) ?? [] {
        guard let name = m["name"] as? String, let path = m["mountPath"] as? String else { continue }
        let dir = root.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let volume = volumes.first { $0["name"] as? String == name }
        if dig(volume, "configMap") != nil {
            try JSONSerialization.data(withJSONObject: fileConfig).write(to: dir.appendingPathComponent("config.json"))
        } else if dig(volume, "secret") != nil {
            try "pod-key\n".write(to: dir.appendingPathComponent("api-key"), atomically: true, encoding: .utf8)
        }
        mountPaths[path] = dir
    }
    var args: [String] = []
    for a in (c["args"] as? [String]) ?? [] {
        if a.hasPrefix("--admin-listen=") {
            args.append("--admin-listen=127.0.0.1:0")
            continue
        }
        var arg = a
        for (path, dir) in mountPaths where arg.contains(path) { arg = arg.replacingOccurrences(of: path, with: dir.path) }
        args.append(arg)
    }
    #expect(args.first == "run", "\(n): \(args)")
    var env = serviceLinks(r)
    for e in (c["env"] as? [Object]) ?? [] {
        guard let name = e["name"] as? String else { continue }
        if let v = e["value"] as? String { env[name] = v }
        if let field = dig(e, "valueFrom", "fieldRef", "fieldPath") as? String {
            env[name] = field == "metadata.name" ? "\(workloadName)-0" : "10.244.0.5"
        }
    }
    #expect(env["FOLDSPACE_SYNC_METRICS_PORT_9464_TCP_ADDR"] != nil)

    var s = Scenario()
    for i in 0..<20 {
        s.track("p\(i)", at: Int64(i))
        s.track("p\(i)", at: Int64(i) + 5)
    }
    try kcatProduce(bootstrap: kafka.bootstrap, topic: topic, s.messages)
    let daemon = try Child(args, env: env)
    #expect(
        await waitUntil(.seconds(30)) { daemon.stderr.contains("admin server listening") || !daemon.process.isRunning },
        "\(n): \(daemon.stderr.suffix(1500))")
    #expect(daemon.process.isRunning, "\(n): exited \(daemon.process.terminationStatus): \(daemon.stderr.suffix(1500))")
    let port = try #require(await adminPort(daemon), "\(daemon.stderr.suffix(1000))")
    let ready = await waitUntilAsync(.seconds(30)) { await httpStatus("http://127.0.0.1:\(port)/readyz") == 200 }
    #expect(ready, "\(n): never ready: \(daemon.stderr.suffix(1500))")
    #expect(
        await waitUntil(.seconds(30)) { sandbox.latestAcknowledged().count == 20 },
        "\(n): \(sandbox.latestAcknowledged().count) users delivered")
    let metrics = String(
        decoding: try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)/metrics")!).0, as: UTF8.self)
    #expect(metrics.contains(#"foldspace_sync_events_total{result="folded"} 40"#), "\(n): \(metrics.prefix(800))")
    daemon.signal(SIGTERM)
    #expect(await daemon.wait(timeout: .seconds(30)) == 0, "\(n): \(daemon.stderr.suffix(1500))")
    // One warning names the variables that are not the daemon's; nothing worse is logged.
    let lines = daemon.stderr.split(separator: "\n")
    let warnings = lines.filter { $0.contains("ignoring environment variables") }
    #expect(warnings.count == 1, "\(n): \(warnings)")
    #expect(warnings.first?.contains("FOLDSPACE_SYNC_METRICS_PORT_9464_TCP_ADDR") == true, "\(n): \(warnings)")
    #expect(!(warnings.first ?? "").contains("FOLDSPACE_SYNC_GROUP_INSTANCE_ID"), "\(n): a key named as unknown")
    for l in lines {
        let o = try? JSONSerialization.jsonObject(with: Data(l.utf8)) as? Object
        #expect(!["error", "critical"].contains(o?["level"] as? String ?? ""), "\(n): \(l)")
    }
    await sandbox.stop()
}

private func httpStatus(_ url: String) async -> Int? {
    guard let u = URL(string: url), let (_, resp) = try? await URLSession.shared.data(from: u) else { return nil }
    return (resp as? HTTPURLResponse)?.statusCode
}

private func waitUntilAsync(_ timeout: Duration, _ cond: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await cond() { return true }
        try? await Task.sleep(for: .milliseconds(100))
    }
    return await cond()
}

@Suite(.serialized) struct DeploymentTests {
    @Test func everyKustomizationRendersValidatesAndSelectsItsPods() throws {
        var rendered: [String: Rendered] = [:]
        for k in kustomizations {
            let r = try renderKustomization(k)
            try checkRendered(r)
            rendered[k] = r
        }
        // The Deployment's and the StatefulSet's pods are the same but for the env.
        func podSpec(_ r: Rendered?) throws -> String {
            var spec = try #require(dig(r?.podTemplate, "spec") as? Object)
            var containers = (spec["containers"] as? [Object]) ?? []
            for i in containers.indices { containers[i]["env"] = nil }
            spec["containers"] = containers
            return String(decoding: try JSONSerialization.data(withJSONObject: spec, options: [.sortedKeys]), as: UTF8.self)
        }
        #expect(try podSpec(rendered["base"]) == podSpec(rendered["overlays/statefulset"]))
        #expect(dig(rendered["overlays/statefulset"]?.workload, "kind") as? String == "StatefulSet")
        // Every kustomization in the tree is one of those checked.
        let found =
            FileManager.default.enumerator(atPath: repoRoot.appendingPathComponent("deploy/kubernetes").path)?
            .compactMap { $0 as? String }.filter { $0.hasSuffix("kustomization.yaml") }
            .map { String($0.dropLast("/kustomization.yaml".count)) } ?? []
        #expect(Set(found) == Set(kustomizations), "\(found)")
    }

    @Test func theBinaryStartsWithThePodEnvironmentOfEveryOverlay() async throws {
        for k in ["base", "overlays/statefulset", "overlays/keda"] {
            try await startAsThePodWould(try renderKustomization(k))
        }
    }
}

/// `Key=value` lines of a unit file (repeated keys in order).
private func unitValues(_ text: String, _ key: String) -> [String] {
    text.split(separator: "\n").compactMap { line in
        let l = line.trimmingCharacters(in: .whitespaces)
        guard l.hasPrefix(key + "=") else { return nil }
        return String(l.dropFirst(key.count + 1))
    }
}

/// The credentials a configuration names (paths under the service's credentials
/// folder) that the unit (and its drop-ins) do not load.
private func credentialsMissing(config: Object, unitTexts: [String]) -> [String] {
    let loaded = Set(unitTexts.flatMap { unitValues($0, "LoadCredential") }.map { String($0.prefix { $0 != ":" }) })
    var named: [String] = []
    func walk(_ v: Any) {
        if let s = v as? String, s.hasPrefix("/run/credentials/foldspace-sync.service/") {
            named.append(String(s.dropFirst("/run/credentials/foldspace-sync.service/".count)))
        } else if let o = v as? Object {
            o.values.forEach(walk)
        } else if let a = v as? [Any] {
            a.forEach(walk)
        }
    }
    walk(config)
    return named.filter { !loaded.contains($0) }
}

extension DeploymentTests {
    @Test func systemdUnitVerifiesAndHardens() throws {
        _ = try requireTool("systemd-analyze")
        let unit = try String(contentsOf: repoRoot.appendingPathComponent("deploy/systemd/foldspace-sync.service"), encoding: .utf8)
        #expect(unit.contains("Type=notify") && unit.contains("WatchdogSec=") && unit.contains("LoadCredential=foldspace-api-key"))
        for setting in [
            "DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "Restart=on-failure",
            "RestartPreventExitStatus=2", "LimitCORE=0", "PrivateUsers=yes", "PrivateMounts=yes",
        ] {
            #expect(
                unitValues(unit, String(setting.split(separator: "=")[0])).contains(String(setting.split(separator: "=", maxSplits: 1)[1])),
                "\(setting)")
        }
        // verify checks that ExecStart's binary exists: point it at the built one. The
        // unit alone, then with the drop-in's settings appended (verify reads drop-ins
        // only from the unit search path).
        let dropIn = try String(contentsOf: repoRoot.appendingPathComponent("deploy/systemd/kafka-sasl.conf"), encoding: .utf8)
        let built = unit.replacingOccurrences(of: "/usr/local/bin/foldspace-sync", with: try binaryPath())
        for text in [built, built + "\n" + dropIn] {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("unit-\(UUID().uuidString.prefix(8))")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let copy = dir.appendingPathComponent("foldspace-sync.service")
            try text.write(to: copy, atomically: true, encoding: .utf8)
            let (status, output) = try runTool(["systemd-analyze", "verify", copy.path])
            #expect(status == 0, "\(output)")
            #expect(!output.contains("foldspace-sync.service:"), "\(output)")
        }
    }

    /// Each example configuration starts under the unit as shipped (with the drop-in it
    /// names): every credential it reads is one the unit loads, and check-config passes
    /// with the credentials folder systemd would make.
    @Test func systemdExampleConfigurationsStartWithTheUnitAsShipped() async throws {
        let sd = repoRoot.appendingPathComponent("deploy/systemd")
        let unit = try String(contentsOf: sd.appendingPathComponent("foldspace-sync.service"), encoding: .utf8)
        let dropIn = try String(contentsOf: sd.appendingPathComponent("kafka-sasl.conf"), encoding: .utf8)
        let exec = try #require(unitValues(unit, "ExecStart").first).split(separator: " ").map(String.init)
        #expect(exec.first == "/usr/local/bin/foldspace-sync" && exec.dropFirst().first == "run", "\(exec)")
        for (file, units) in [("config.example.json", [unit]), ("config.sasl.example.json", [unit, dropIn])] {
            let text = try String(contentsOf: sd.appendingPathComponent(file), encoding: .utf8)
            let config = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? Object)
            #expect(
                credentialsMissing(config: config, unitTexts: units).isEmpty,
                "\(file) names credentials the unit does not load: \(credentialsMissing(config: config, unitTexts: units))")
            // The credentials folder as systemd fills it from LoadCredential=.
            let creds = FileManager.default.temporaryDirectory.appendingPathComponent("creds-\(UUID().uuidString.prefix(8))")
            try FileManager.default.createDirectory(at: creds, withIntermediateDirectories: true)
            for spec in units.flatMap({ unitValues($0, "LoadCredential") }) {
                let id = String(spec.split(separator: ":")[0])
                try "secret-\(id)\n".write(to: creds.appendingPathComponent(id), atomically: true, encoding: .utf8)
            }
            let local = try tempFile(
                text.replacingOccurrences(of: "/run/credentials/foldspace-sync.service", with: creds.path), ext: "json")
            var args = Array(exec.dropFirst())
            args[0] = "check-config"
            if let i = args.firstIndex(of: "--config") { args[i + 1] = local.path }
            let check = try Child(args, env: ["CREDENTIALS_DIRECTORY": creds.path])
            #expect(await check.wait(timeout: .seconds(20)) == 0, "\(file): \(check.stderr)")
            #expect(check.stdout.contains("api_key_file: \(creds.path)/foldspace-api-key"), "\(file): \(check.stdout)")
            #expect(!check.stdout.contains("secret-"), "\(file): a secret printed")
        }
        // The check can fail: the SASL example under the bare unit lacks its credential.
        let sasl = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: sd.appendingPathComponent("config.sasl.example.json"))) as? Object)
        #expect(credentialsMissing(config: sasl, unitTexts: [unit]) == ["kafka-password"])
    }

    /// 0 a clean stop, 1 a failure while running, 2 a usage or configuration error (the
    /// unit's RestartPreventExitStatus=2).
    @Test func exitStatusesAreTheDocumentedOnes() async throws {
        let usage = try Child(["run", "--no-such-flag"])
        #expect(await usage.wait(timeout: .seconds(20)) == 2, "\(usage.stderr)")
        let config = try Child(
            ["run", "--brokers", "b:1", "--topic", "t", "--group", "g", "--debounce", "fast"], env: ["FOLDSPACE_API_KEY": "k"])
        #expect(await config.wait(timeout: .seconds(20)) == 2, "\(config.stderr)")
        #expect(config.stderr.contains("debounce"))
        let check = try Child(["check-config", "--topic", "t", "--group", "g"], env: ["FOLDSPACE_API_KEY": "k"])
        #expect(await check.wait(timeout: .seconds(20)) == 2, "\(check.stderr)")
        let kafka = try await MockKafkaProcess(topics: ["events:1"])
        defer { Task { await kafka.stop() } }
        let sandbox = FoldspaceSandbox(apiKeys: ["k"])
        try await sandbox.start()
        let base = [
            "run", "--brokers", kafka.bootstrap, "--topic", "events", "--group", "exit-\(UUID().uuidString.prefix(6))",
            "--foldspace-url", sandbox.baseURL,
        ]
        // librdkafka refuses a property: configuration.
        let property = try Child(
            base + ["--admin-listen", "127.0.0.1:0"],
            env: ["FOLDSPACE_API_KEY": "k", "FOLDSPACE_SYNC_STATE": "memory", "FOLDSPACE_SYNC_KAFKA_PROPERTIES": "no.such.property=1"])
        #expect(await property.wait(timeout: .seconds(30)) == 2, "\(property.stderr.suffix(1000))")
        #expect(property.stderr.contains("no.such.property"))
        // The admin port is taken: a failure while running.
        let first = try Child(base + ["--admin-listen", "127.0.0.1:0"], env: ["FOLDSPACE_API_KEY": "k", "FOLDSPACE_SYNC_STATE": "memory"])
        #expect(await waitUntil(.seconds(30)) { first.stderr.contains("admin server listening") }, "\(first.stderr.suffix(1000))")
        let port = try #require(await adminPort(first), "\(first.stderr.suffix(1000))")
        let second = try Child(
            base + ["--admin-listen", "127.0.0.1:\(port)"], env: ["FOLDSPACE_API_KEY": "k", "FOLDSPACE_SYNC_STATE": "memory"])
        #expect(await second.wait(timeout: .seconds(30)) == 1, "\(second.stderr.suffix(1000))")
        first.signal(SIGTERM)
        #expect(await first.wait(timeout: .seconds(30)) == 0)
        await sandbox.stop()
    }
}

/// The chart rendered like `helm template`, by Helm's own engine (scripts/helm-template.py).
func renderHelm(_ values: String) throws -> Rendered {
    let (status, out) = try runTool(["python3", "scripts/helm-template.py", "deploy/helm/foldspace-sync", "foldspace-sync", values])
    guard status == 0 else {
        throw TestFailure("helm template failed (python3 module helm_python: scripts/deps.sh --with-test-tools): \(out)")
    }
    return try Rendered(name: "helm \(values)", yaml: out)
}

extension DeploymentTests {
    @Test func theHelmChartRendersValidatesAndTakesItsValues() throws {
        let cases = [
            "{}", #"{"statefulset":{"enabled":true}}"#, #"{"keda":{"enabled":true}}"#,
            #"{"keda":{"enabled":true,"saslSecretName":"kafka-sasl"},"statefulset":{"enabled":true}}"#,
        ]
        for values in cases {
            try checkRendered(try renderHelm(values))
        }
        let custom = try renderHelm(
            #"{"brokers":"k1:9092,k2:9092","topics":["clicks"],"group":"g2","apiKeySecret":{"name":"my-key","key":"token"},"resources":{"requests":{"cpu":"1","memory":"1Gi"}},"keda":{"enabled":true}}"#
        )
        let config = try #require(custom.all("ConfigMap").first.flatMap { dig($0, "data", "config.json") as? String })
        let o = try #require(try JSONSerialization.jsonObject(with: Data(config.utf8)) as? Object)
        #expect(o["brokers"] as? String == "k1:9092,k2:9092" && o["topics"] as? [String] == ["clicks"] && o["group"] as? String == "g2")
        let secret = ((dig(custom.podTemplate, "spec", "volumes") as? [Object]) ?? []).compactMap { dig($0, "secret") as? Object }.first
        #expect(secret?["secretName"] as? String == "my-key")
        #expect((secret?["items"] as? [Object])?.first?["key"] as? String == "token")
        #expect(dig(custom.container, "resources", "requests", "memory") as? String == "1Gi")
        #expect(dig(custom.workload, "spec", "replicas") == nil)
        let trigger = (dig(custom.all("ScaledObject").first, "spec", "triggers") as? [Object])?.first
        #expect(dig(trigger, "metadata", "topic") as? String == "clicks" && dig(trigger, "metadata", "consumerGroup") as? String == "g2")
        #expect(dig(try renderHelm(#"{"statefulset":{"enabled":true}}"#).workload, "kind") as? String == "StatefulSet")
        // helm lint --strict and values.schema.json refuse values that would not run.
        for bad in [#"{"replicas":"two"}"#, #"{"topics":[]}"#, #"{"apiKeySecret":{"name":""}}"#] {
            let (status, out) = try runTool(["python3", "scripts/helm-template.py", "deploy/helm/foldspace-sync", "foldspace-sync", bad])
            #expect(status != 0 && out.contains("helm lint"), "\(bad) accepted: \(out.prefix(300))")
        }
    }

    @Test func theBinaryStartsWithThePodEnvironmentOfTheHelmChart() async throws {
        for values in ["{}", #"{"statefulset":{"enabled":true}}"#] {
            try await startAsThePodWould(try renderHelm(values))
        }
    }
}

/// `6.2` or `6.3.1` as comparable numbers.
private func versionNumbers(_ s: Substring) -> [Int] { s.split(separator: ".").map { Int($0) ?? 0 } }
private func atLeast(_ a: [Int], _ b: [Int]) -> Bool {
    for i in 0..<max(a.count, b.count) {
        let x = i < a.count ? a[i] : 0
        let y = i < b.count ? b[i] : 0
        if x != y { return x > y }
    }
    return true
}
private func toolsVersion(_ manifest: String) -> [Int]? {
    guard let first = manifest.split(separator: "\n").first, let r = first.range(of: "swift-tools-version:") else { return nil }
    return versionNumbers(first[r.upperBound...].drop { $0 == " " }.prefix { $0.isNumber || $0 == "." })
}

extension DeploymentTests {
    /// No Docker engine here: the Dockerfile is read. Its Swift image can build a
    /// manifest of this tools version, which is the floor the pinned dependencies need;
    /// every path it copies exists; the backtracer it ships is the one it points at.
    @Test func dockerfileBuildsWithTheToolsVersionItNeeds() throws {
        let docker = try String(contentsOf: repoRoot.appendingPathComponent("deploy/Dockerfile"), encoding: .utf8)
        let manifest = try String(contentsOf: repoRoot.appendingPathComponent("Package.swift"), encoding: .utf8)
        let tools = try #require(toolsVersion(manifest))
        let lines = docker.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        let froms = lines.filter { $0.hasPrefix("FROM ") }
        let swiftImage = try #require(froms.first { $0.hasPrefix("FROM swift:") })
        let tag = swiftImage.dropFirst("FROM swift:".count).prefix { $0 != " " }
        let imageVersion = versionNumbers(tag.prefix { $0.isNumber || $0 == "." })
        #expect(imageVersion.count >= 2 && atLeast(imageVersion, tools), "image swift:\(tag) is older than swift-tools-version \(tools)")
        // The floor is real: it is the highest a resolved dependency declares.
        let checkouts = repoRoot.appendingPathComponent(".build/checkouts")
        let deps = (try? FileManager.default.contentsOfDirectory(atPath: checkouts.path)) ?? []
        #expect(!deps.isEmpty, "no .build/checkouts: build first")
        var floor: [Int] = [5, 0]
        for d in deps {
            guard let m = try? String(contentsOf: checkouts.appendingPathComponent("\(d)/Package.swift"), encoding: .utf8),
                let v = toolsVersion(m)
            else { continue }
            if !atLeast(floor, v) { floor = v }
        }
        #expect(tools == floor, "swift-tools-version \(tools), the dependencies need \(floor)")
        // Dependencies are pinned.
        let packages = manifest.split(separator: "\n").filter { $0.contains(".package(url:") }
        #expect(packages.count >= 6)
        for p in packages { #expect(p.contains("exact:"), "not pinned: \(p)") }
        // Every COPY from the context exists; the runtime image gets the backtracer the
        // environment names, and it is where the toolchain keeps it.
        for l in lines where l.hasPrefix("COPY ") && !l.contains("--from=") {
            let parts = l.split(separator: " ").dropFirst().filter { !$0.hasPrefix("--") }
            for src in parts.dropLast() {
                #expect(
                    FileManager.default.fileExists(atPath: repoRoot.appendingPathComponent(String(src)).path), "COPY \(src): no such path")
            }
        }
        let backtracer = try #require(lines.first { $0.hasPrefix("COPY --from=build") && $0.contains("swift-backtrace") })
        let dest = try #require(backtracer.split(separator: " ").last)
        #expect(
            lines.contains { $0.hasPrefix("ENV SWIFT_BACKTRACE=") && $0.contains("swift-backtrace=\(dest)") && $0.contains("enable=yes") })
        let toolchain = URL(fileURLWithPath: try requireTool("swift")).resolvingSymlinksInPath().deletingLastPathComponent()
            .deletingLastPathComponent()
        let src = String(backtracer.split(separator: " ")[2])  // /usr/libexec/... in the image (toolchain under /usr)
        #expect(
            FileManager.default.isExecutableFile(atPath: toolchain.path + src.dropFirst("/usr".count)),
            "\(src) not in the toolchain at \(toolchain.path)")
        // The runtime image says which librdkafka it runs and why.
        #expect(docker.contains("librdkafka1") && docker.contains("2.0.2") && docker.contains("4312") && docker.contains("4527"))
    }
}
