import Simulation
import Testing

@testable import Folding

/// docs/identity.md's routing (steps 1 to 6) run over several tasks' graphs in memory:
/// calls start at any task (a collector that keys by message id), are routed to their
/// target's owner, forwarded along links, folded at the canonical identity (here: only
/// recorded there), and link requests and merge records go between tasks, all delivered
/// in a seeded random order. No state is folded: a merge record carries the calls an
/// identity holds.
@Suite struct IdentityRoutingSimulationTests {
    /// A call: its target (userId, else anonymousId) and its second id (the anonymousId
    /// beside a userId, or an alias's previousId).
    struct Call {
        let target: String
        let second: String?
        let timeMs: Int64
    }

    enum Message {
        /// Call `call`, to be resolved at identity `at` after `forwards` links followed.
        case call(Int, at: String, forwards: Int)
        case link(String, into: String, timeMs: Int64)
        /// A merge record: the calls an identity held when it was linked.
        case merge([Int], at: String, forwards: Int)
    }

    /// What processing a message asks of the world. Performed the first time only: a
    /// replay's sends are the duplicates exactly-once delivery drops.
    enum Effect {
        case send(task: Int, Message)
        case land([Int], at: String, forwards: Int, limited: Bool)
        case handOver(from: String, to: String)
    }

    static let maxHops = 16

    /// A stable test-local owner: FNV-1a of the identity's bytes, mod the task count.
    static func owner(_ id: String, tasks: Int) -> Int {
        var h: UInt32 = 2_166_136_261
        for b in id.utf8 { h = (h ^ UInt32(b)) &* 16_777_619 }
        return Int(h % UInt32(tasks))
    }

    struct World {
        let tasks: Int
        var graphs: [IdentityGraph]
        let calls: [Call]
        var pending: [(task: Int, message: Message)] = []
        /// Identity → the calls folded there (ASCII ids only: `String` keys tell them apart).
        var held: [String: [Int]] = [:]
        /// The first link request each identity's owner processed: the link the design says wins.
        var firstLink: [String: String] = [:]
        var conflictingRequests: UInt64 = 0
        var mostForwards: [Int] = []
        var limitedAt: Set<String> = []
        var replays = 0

        init(tasks: Int, maxLinked: Int, calls: [Call]) {
            self.tasks = tasks
            graphs = Array(repeating: IdentityGraph(maxLinked: maxLinked), count: tasks)
            self.calls = calls
            mostForwards = Array(repeating: 0, count: calls.count)
        }

        func owner(_ id: String) -> Int { IdentityRoutingSimulationTests.owner(id, tasks: tasks) }

        /// One message at `task`, as the design's steps say.
        mutating func process(_ message: Message, at task: Int) -> [Effect] {
            switch message {
            case .call(let c, let at, let forwards):
                return route([c], at: at, forwards: forwards, from: task, second: calls[c].second, timeMs: calls[c].timeMs) {
                    .call(c, at: $0, forwards: $1)
                }
            case .merge(let held, let at, let forwards):
                return route(held, at: at, forwards: forwards, from: task, second: nil, timeMs: 0) { .merge(held, at: $0, forwards: $1) }
            case .link(let x, let c, let timeMs):
                precondition(owner(x) == task)
                if case .linked = graphs[task].applyLinkRequest(x, into: c, timeMs: timeMs) { return [.handOver(from: x, to: c)] }
                return []
            }
        }

        /// Steps 2 to 4 for calls (or a merge record's calls) whose next identity is `at`.
        mutating func route(
            _ held: [Int], at: String, forwards: Int, from task: Int, second: String?, timeMs: Int64,
            _ resend: (String, Int) -> Message
        ) -> [Effect] {
            var id = at
            var forwards = forwards
            while true {
                let o = owner(id)
                guard o == task else { return [.send(task: o, resend(id, forwards))] }  // step 2, or a hop of step 3
                switch graphs[task].resolve(id) {
                case .forward(let c) where forwards < IdentityRoutingSimulationTests.maxHops:
                    forwards += 1
                    id = c
                case .forward:
                    return [.land(held, at: id, forwards: forwards, limited: true)]
                case .canonical:
                    var effects: [Effect] = [.land(held, at: id, forwards: forwards, limited: false)]
                    if let x = second, graphs[task].noteSecondId(x, at: id, timeMs: timeMs) == .requestLink {
                        effects.append(.send(task: owner(x), .link(x, into: id, timeMs: timeMs)))
                    }
                    return effects
                }
            }
        }

        mutating func perform(_ effects: [Effect]) {
            for e in effects {
                switch e {
                case .send(let task, let m): pending.append((task, m))
                case .land(let cs, let at, let forwards, let limited):
                    held[at, default: []] += cs
                    for c in cs { mostForwards[c] = max(mostForwards[c], forwards) }
                    if limited { limitedAt.insert(at) }
                case .handOver(let x, let c):
                    // Step 5: x's state leaves as a merge record to the owner of c.
                    if let cs = held.removeValue(forKey: x) { pending.append((owner(c), .merge(cs, at: c, forwards: 0))) }
                }
            }
        }

        /// Delivers every message in a random order, each replayed at once now and then.
        mutating func run(_ rng: inout SplitMix64, replayChance: Double = 0.3) {
            for c in calls.indices { pending.append((Int.random(in: 0..<tasks, using: &rng), .call(c, at: calls[c].target, forwards: 0))) }
            while !pending.isEmpty {
                let (task, m) = pending.remove(at: Int.random(in: 0..<pending.count, using: &rng))
                if case .link(let x, let c, _) = m {
                    if let first = firstLink[x] {
                        if first != c { conflictingRequests += 1 }
                    } else {
                        firstLink[x] = c
                    }
                }
                perform(process(m, at: task))
                if Double.random(in: 0..<1, using: &rng) < replayChance {
                    replays += 1
                    let before = graphs
                    if case .link(let x, let c, _) = m, firstLink[x] != c { conflictingRequests += 1 }
                    _ = process(m, at: task)
                    for (g, b) in zip(graphs, before) {
                        #expect(g.sameEntries(as: b), "a replay changed a graph")
                        #expect(g.counts.links == b.counts.links, "a replay counted a link")
                    }
                }
            }
        }

        /// The identity `id` ends at by its first links, and how many links that takes.
        func expectedCanonical(_ id: String) -> (id: String, depth: Int) {
            var at = id
            var depth = 0
            while let next = firstLink[at], depth <= firstLink.count {
                at = next
                depth += 1
            }
            return (at, depth)
        }

        var totals: IdentityGraph.Counts {
            var t = IdentityGraph.Counts()
            for g in graphs {
                t.links += g.counts.links
                t.conflicts += g.counts.conflicts
                t.capReached += g.counts.capReached
                t.cycles += g.counts.cycles
            }
            return t
        }
    }

    /// Users alias only to later users, so the links make no cycle and each identity's
    /// canonical identity follows from its first link.
    static func acyclicCalls(_ rng: inout SplitMix64, count: Int) -> [Call] {
        let users = (0..<6).map { "user-\($0)" }
        let anons = (0..<12).map { "anon-\($0)" }
        return (0..<count).map { i in
            let t = Int64(i)
            let u = Int.random(in: 1..<users.count, using: &rng)
            let a = anons[Int.random(in: 0..<anons.count, using: &rng)]
            switch Int.random(in: 0..<100, using: &rng) {
            case ..<35: return Call(target: a, second: nil, timeMs: t)  // an anonymous page view
            case ..<55: return Call(target: users[Int.random(in: 0..<users.count, using: &rng)], second: nil, timeMs: t)
            case ..<90: return Call(target: users[u], second: a, timeMs: t)  // identify with both ids, or alias of an anonymous id
            default: return Call(target: users[u], second: users[Int.random(in: 0..<u, using: &rng)], timeMs: t)  // alias of a user
            }
        }
    }

    @Test(arguments: [1, 3, 4], [100, 1])
    func everyCallEndsAtTheCanonicalIdentityItsFirstLinksImply(tasks: Int, maxLinked: Int) async {
        var exercised = (forwards: 0, chains: 0, conflicts: UInt64(0), capped: UInt64(0), replays: 0, crossTask: 0)
        for seed in 0..<20 {
            await Task.yield()  // CPU-bound: let the pool run other tests
            var rng = SplitMix64(seed: UInt64(seed) &* 7919 &+ UInt64(tasks * 31 + maxLinked))
            var w = World(tasks: tasks, maxLinked: maxLinked, calls: Self.acyclicCalls(&rng, count: 300))
            w.run(&rng)

            var holder = [String?](repeating: nil, count: w.calls.count)
            for (id, cs) in w.held {
                for c in cs {
                    #expect(holder[c] == nil, "call \(c) is held twice")
                    holder[c] = id
                }
            }
            for (c, call) in w.calls.enumerated() {
                let expected = w.expectedCanonical(call.target)
                #expect(holder[c] == expected.id, "call \(c) to \(call.target) seed \(seed)")
                #expect(w.mostForwards[c] <= expected.depth, "more hops than links from \(call.target)")
                exercised.forwards += w.mostForwards[c]
                if expected.depth >= 2 { exercised.chains += 1 }
            }
            #expect(w.limitedAt.isEmpty, "no cycle: no call reaches the hop limit")
            // Each identity's owner agrees with the first link of that identity.
            for id in Set(w.calls.flatMap { [$0.target] + ($0.second.map { [$0] } ?? []) }) {
                let resolution = w.graphs[w.owner(id)].resolve(id)
                #expect(resolution == (w.firstLink[id].map { .forward(to: $0) } ?? .canonical), "\(id)")
                for (t, g) in w.graphs.enumerated() where t != w.owner(id) { #expect(g.entry(of: id)?.linkedTo == nil) }
            }
            let totals = w.totals
            #expect(totals.links == UInt64(w.firstLink.count), "one link counted per identity linked")
            #expect(totals.conflicts == w.conflictingRequests)
            #expect(totals.cycles == 0)
            for g in w.graphs { #expect(g.linkedCounts.allSatisfy { $0 <= maxLinked }) }
            exercised.conflicts += totals.conflicts
            exercised.capped += totals.capReached
            exercised.replays += w.replays
            exercised.crossTask += w.calls.indices.filter { w.owner(w.calls[$0].target) != w.owner(holder[$0] ?? "") }.count
        }
        // The runs went through what they are meant to test.
        #expect(exercised.forwards > 0 && exercised.chains > 0 && exercised.conflicts > 0 && exercised.replays > 0)
        #expect(exercised.capped > 0 || maxLinked == 100)
        #expect(exercised.crossTask > 0 || tasks == 1)
    }

    /// Users alias each other both ways, racing: the direct cycle is refused, a longer one
    /// is bounded by the hop count. Every call is still held once, at an identity that is
    /// canonical or where the hop limit stopped it, and replays change no graph.
    @Test func racingAliasesStayBounded() {
        var cycles: UInt64 = 0
        for seed in 0..<30 {
            var rng = SplitMix64(seed: UInt64(seed) &+ 100)
            let users = (0..<4).map { "u\($0)" }
            let calls = (0..<80).map { i in
                let a = users[Int.random(in: 0..<users.count, using: &rng)]
                let b = users[Int.random(in: 0..<users.count, using: &rng)]
                return Call(target: a, second: Bool.random(using: &rng) ? b : nil, timeMs: Int64(i))
            }
            var w = World(tasks: 3, maxLinked: 100, calls: calls)
            w.run(&rng)
            var heldCount = 0
            for (id, cs) in w.held {
                heldCount += cs.count
                let canonical = w.graphs[w.owner(id)].resolve(id) == .canonical
                #expect(canonical || w.limitedAt.contains(id), "\(id) holds calls, is linked and never stopped a call")
            }
            #expect(heldCount == calls.count)
            #expect(w.mostForwards.allSatisfy { $0 <= Self.maxHops })
            cycles += w.totals.cycles
        }
        #expect(cycles > 0, "some aliases raced into a direct cycle")
    }
}
