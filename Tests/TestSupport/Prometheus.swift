import Foundation

/// Runs prometheus_client's parser (scripts/deps.sh installs it) over an exposition and
/// returns its families as JSON: name, type, help, samples (name, labels, value).
public func parsePrometheus(_ text: String) throws -> [[String: Any]] {
    let script = """
        import json, sys
        from prometheus_client.parser import text_string_to_metric_families
        out = []
        for f in text_string_to_metric_families(sys.stdin.read()):
            out.append({"name": f.name, "type": f.type, "help": f.documentation,
                        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
        print(json.dumps(out))
        """
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "-c", script]
    let input = Pipe()
    let output = Pipe()
    let errors = Pipe()
    p.standardInput = input
    p.standardOutput = output
    p.standardError = errors
    try p.run()
    input.fileHandleForWriting.write(Data(text.utf8))
    try input.fileHandleForWriting.close()
    let out = output.fileHandleForReading.readDataToEndOfFile()
    let err = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    guard p.terminationStatus == 0 else {
        throw PrometheusParseError(
            description: "prometheus_client could not parse the exposition (is it installed? scripts/deps.sh --with-test-tools): \(err)")
    }
    guard let families = try JSONSerialization.jsonObject(with: out) as? [[String: Any]] else {
        throw PrometheusParseError(description: "unexpected parser output")
    }
    return families
}

public struct PrometheusParseError: Error, CustomStringConvertible {
    public let description: String
}
