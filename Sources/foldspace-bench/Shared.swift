import ArgumentParser
import Delivery
import Events
import Folding
import FoldspaceAPI
import Foundation
import Kafka
import Logging
import Simulation
import SyncService

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

let quiet: Logger = {
    var l = Logger(label: "bench")
    l.logLevel = .error
    return l
}()

/// librdkafka properties from an environment variable, `k=v,k=v`, for experiments.
func environmentProperties(_ name: String) -> [String: String] {
    var props: [String: String] = [:]
    for kv in (ProcessInfo.processInfo.environment[name] ?? "").split(separator: ",") {
        let p = kv.split(separator: "=", maxSplits: 1)
        if p.count == 2 { props[String(p[0])] = String(p[1]) }
    }
    return props
}

func uptimeSeconds() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

func rssKiB(_ field: String = "VmRSS:") -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix(field) {
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
    return 0
}

/// Segment-shaped events padded to 400–600 bytes, as the benchmark asks.
struct PaddedTraffic {
    var gen: TrafficGenerator
    var rng = SplitMix64(seed: 99)

    init(users: Int) { gen = TrafficGenerator(users: users, seed: 7) }

    mutating func next(_ n: Int) -> TrafficGenerator.Message {
        var m = gen.next(sequence: n)
        let target = 400 + Int(rng.next() % 201)
        if m.value.count < target, m.value.last == UInt8(ascii: "}") {
            let pad = #","integrations":{"All":true,"pad":""# + String(repeating: "x", count: max(0, target - m.value.count - 35)) + #""}}"#
            m.value.removeLast()
            m.value.append(contentsOf: pad.utf8)
        }
        return m
    }
}
