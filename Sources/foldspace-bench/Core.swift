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

extension FoldspaceBench {
    /// Costs of the pure core per event: decode, fold, project, validate.
    struct Core: AsyncParsableCommand {
        @Option var events = 200_000
        @Option var users = 10_000
        @Option(help: "Decode and fold the messages this many times (steadier figures, for profiling).") var rounds = 1

        func run() async throws {
            var gen = PaddedTraffic(users: users)
            let traffic = (0..<events).map { gen.next($0) }
            let messages = traffic.map(\.value)
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            var decoded: [SegmentEvent] = []
            decoded.reserveCapacity(events)
            // Each figure is the fastest of `rounds` rounds: the least disturbed by
            // whatever else the machine runs. Each stage is a function of its own, so
            // that `scripts/callgrind.sh` can count its instructions.
            var decodeNs = Double.infinity
            for _ in 0..<max(1, rounds) {
                decoded.removeAll(keepingCapacity: true)
                let t0 = uptimeSeconds()
                Self.decodeRound(messages, now: now, into: &decoded)
                decodeNs = min(decodeNs, (uptimeSeconds() - t0) * 1e9 / Double(events))
            }
            var states: [String: UserState] = [:]
            var foldNs = Double.infinity
            for _ in 0..<max(1, rounds) {
                states = [:]  // the last round's users freed outside the timing
                let t0 = uptimeSeconds()
                states = Self.foldRound(decoded, now: now)
                foldNs = min(foldNs, (uptimeSeconds() - t0) * 1e9 / Double(decoded.count))
            }
            var t0 = uptimeSeconds()
            let bodies = Self.projectRound(states, now: now)
            let projectNs = (uptimeSeconds() - t0) * 1e9 / Double(max(1, states.count))
            let validated = Array(bodies.prefix(20_000))
            t0 = uptimeSeconds()
            let violations = Self.validateRound(validated)
            let validateNs = (uptimeSeconds() - t0) * 1e9 / Double(max(1, validated.count))
            print("core_events=\(events)")
            print("core_decoded_events=\(decoded.count)")
            print("core_users=\(states.count)")
            print("core_validated_bodies=\(validated.count)")
            print("core_rounds=\(max(1, rounds))")
            print("core_decode_ns=\(Int(decodeNs))")
            print("core_fold_ns=\(Int(foldNs))")
            print("core_project_ns=\(Int(projectNs))")
            print("core_validate_ns=\(Int(validateNs))")
            print("core_schema_violations=\(violations)")
            print("core_decoded_inline_bytes=\(MemoryLayout<Decoded>.size)")
            print("core_engine_ns=\(Int(engineNs(traffic, now: now)))")
        }

        @inline(never)
        static func decodeRound(_ messages: [[UInt8]], now: Int64, into decoded: inout [SegmentEvent]) {
            let decoder = SegmentDecoder()
            for m in messages {
                for d in decoder.decode(m, nowMs: now) { if case .event(let e) = d { decoded.append(e) } }
            }
        }

        @inline(never)
        static func foldRound(_ decoded: [SegmentEvent], now: Int64) -> [String: UserState] {
            let folder = Folder()
            var states: [String: UserState] = [:]
            for (i, e) in decoded.enumerated() {
                folder.fold(e, timeMs: e.timeMs ?? now, offset: Int64(i), into: &states[e.identity, default: UserState()])
            }
            return states
        }

        @inline(never)
        static func projectRound(_ states: [String: UserState], now: Int64) -> [[UInt8]] {
            let projector = Projector()
            var adj = Adjustments()
            var bodies: [[UInt8]] = []
            for (id, s) in states {
                if let b = projector.body(identifyId: id, state: s, nowMs: now, adjustments: &adj) { bodies.append(b) }
            }
            return bodies
        }

        @inline(never)
        static func validateRound(_ bodies: [[UInt8]]) -> Int {
            var violations = 0
            for b in bodies { violations += FoldspaceSchema.violations(body: b, pathId: nil).isEmpty ? 0 : 1 }
            return violations
        }

        /// The engine's whole cost of an event on one thread (decode, look up, fold,
        /// debounce, offsets), without Kafka: what the poll thread and its decode helpers
        /// share. 16 partitions, a user's events in one of them (by key, as produced),
        /// handed over in batches of 1,000 from one partition after another.
        func engineNs(_ traffic: [TrafficGenerator.Message], now: Int64) -> Double {
            var o = EngineOptions()
            o.debounceMs = 600_000
            o.maxWaitMs = 600_000
            o.maxDirtyUsers = 10_000_000
            o.decodeThreads = ProcessInfo.processInfo.environment["CORE_DECODE_THREADS"].flatMap(Int.init) ?? 1
            let tps = (0..<16).map { TopicPartition("bench", Int32($0)) }
            var byPartition = [[[UInt8]]](repeating: [], count: 16)
            for m in traffic {
                var h: UInt32 = 2_166_136_261  // FNV-1a of the key
                for b in m.key.utf8 { h = (h ^ UInt32(b)) &* 16_777_619 }
                byPartition[Int(h % 16)].append(m.value)
            }
            let storage = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: traffic.reduce(0) { $0 + $1.value.count })
            defer { storage.deallocate() }
            var batches: [[ConsumedMessage]] = []
            var at = 0
            var next = [Int](repeating: 0, count: 16)
            var queued = 0
            while queued < traffic.count {
                for p in 0..<16 where next[p] < byPartition[p].count {
                    var batch: [ConsumedMessage] = []
                    for i in next[p]..<min(byPartition[p].count, next[p] + 1000) {
                        let m = byPartition[p][i]
                        let region = UnsafeMutableBufferPointer(rebasing: storage[at..<(at + m.count)])
                        _ = region.initialize(from: m)
                        batch.append(
                            ConsumedMessage(
                                topicPartition: tps[p], offset: Int64(i), timestampMs: now,
                                key: UnsafeBufferPointer(start: nil, count: 0),
                                value: UnsafeBufferPointer(region)))
                        at += m.count
                    }
                    next[p] += batch.count
                    queued += batch.count
                    batches.append(batch)
                }
            }
            var best = Double.infinity
            for _ in 0..<max(1, rounds) {
                let engine = SyncEngine(options: o, deadLetters: Memory.NoDeadLetters(), logger: quiet)
                engine.partitionsAssigned(tps)
                let t0 = uptimeSeconds()
                Self.engineRound(engine, batches)
                best = min(best, (uptimeSeconds() - t0) * 1e9 / Double(traffic.count))
            }
            return best
        }

        @inline(never)
        static func engineRound(_ engine: SyncEngine, _ batches: [[ConsumedMessage]]) {
            for b in batches { engine.consume(b) }
        }
    }
}
