import Foundation
import Simulation

/// Polls `condition` until it holds or `timeout` passes; returns its last value.
public func eventually(_ timeout: Duration = .seconds(40), _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return condition()
}

/// Runs `body`, which blocks (a Kafka client's calls, a mock broker's round trips), on a
/// Dispatch thread and awaits it. A test that blocks on Swift's cooperative pool holds one
/// of its threads (two, on two cores) from every other test of the process: their
/// timeouts passed while they waited for a thread.
public func offThePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { c in
        DispatchQueue.global().async { c.resume(with: Result { try body() }) }
    }
}

/// As ``offThePool(_:)-(()throws->T)``, for a body that cannot fail.
public func offThePool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { c in DispatchQueue.global().async { c.resume(returning: body()) } }
}

/// ISO-8601 with milliseconds, as Segment libraries send it.
public func iso8601(_ ms: Int64) -> String {
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return f.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
}

/// A stream of events with several visits per user, and an independent reference of
/// what each user's last delivered body must say: visits (sessions split by gaps over
/// 30 minutes), first and last seen, and the count of the key event "Step" through a PQL
/// model that is an exact function of it (``pqlEnvironment``). A replayed event never
/// changes visits or first/last seen; it does change that count, so a double count shows.
/// Written without the daemon's code on purpose.
public struct VisitReference: Sendable {
    public let users: Int
    public let prefix: String
    public let base = Int64(Date().timeIntervalSince1970 * 1000) - 10 * 86_400_000
    public private(set) var times: [String: [Int64]] = [:]
    /// "Step" track events per user.
    public private(set) var steps: [String: Int] = [:]

    /// The PQL model the daemon under test must run with: no visit or day terms, "Step"
    /// weighted 10 with no practical cap, k = 1000, a half-life of ~27,000 years. Then
    /// `score = 100·(1 − e^(−count/100))` to one decimal, and each extra count moves it by
    /// more than 0.3 for any count below 100: the count can be read back from the score.
    public static let stepWeight = 10.0
    public static let pqlK = 1_000.0
    public static let pqlEnvironment: [String: String] = [
        "FOLDSPACE_SYNC_PQL_VISIT_WEIGHT": "0", "FOLDSPACE_SYNC_PQL_DAY_WEIGHT": "0",
        "FOLDSPACE_SYNC_PQL_K": "1000", "FOLDSPACE_SYNC_PQL_HALF_LIFE": "10000000d",
        "FOLDSPACE_SYNC_PQL_KEY_EVENTS": "Step:10:1000000",
    ]

    /// The score the model gives `count` "Step" events (the decay over days is below
    /// 0.001 and is left out).
    public static func expectedScore(steps count: Int) -> Double {
        (100 * (1 - exp(-stepWeight * Double(count) / pqlK)) * 10).rounded() / 10
    }

    /// The count a delivered score stands for.
    public static func steps(fromScore score: Double) -> Int {
        guard score < 100 else { return Int.max }
        return Int((-log(1 - score / 100) * pqlK / stepWeight).rounded())
    }

    public init(users: Int, prefix: String = "v") {
        self.users = users
        self.prefix = prefix
    }

    public func id(_ u: Int) -> String { "\(prefix)\(u)" }

    /// Events `range` of the stream: event i belongs to user i % users; every 3rd event
    /// of a user starts a new visit (2 h later), the others are a minute apart.
    public mutating func messages(_ range: Range<Int>) -> [(key: String, value: String)] {
        range.map { i in
            let user = id(i % users)
            let k = i / users
            let t = base + Int64(k / 3) * 7_200_000 + Int64(k % 3) * 60_000 + Int64(i % users)
            times[user, default: []].append(t)
            let type = k % 2 == 0 ? "page" : "track"
            if type == "track" { steps[user, default: 0] += 1 }
            return (
                user,
                #"{"type":"\#(type)","event":"Step","userId":"\#(user)","messageId":"m\#(i)","timestamp":"\#(iso8601(t))","context":{"library":{"name":"analytics-node","version":"6.0.0"}}}"#
            )
        }
    }

    public func expected(_ user: String) -> (visits: Int, first: Int64, last: Int64) {
        Self.visits(times[user] ?? [])
    }

    /// Visits of calls at `times` (a visit starts with the first and with every call more
    /// than 30 minutes after the one before), and the first and last time.
    public static func visits(_ times: [Int64]) -> (visits: Int, first: Int64, last: Int64) {
        let sorted = times.sorted()
        var visits = sorted.isEmpty ? 0 : 1
        for (a, b) in zip(sorted, sorted.dropFirst()) where b - a > 30 * 60_000 { visits += 1 }
        return (visits, sorted.first ?? 0, sorted.last ?? 0)
    }

    /// What differs between each user's last acknowledged body and the reference.
    public func mismatches(_ sandbox: FoldspaceSandbox) -> [String] {
        let latest = sandbox.latestAcknowledged()
        var out: [String] = []
        for u in 0..<users {
            let user = id(u)
            let want = expected(user)
            guard let body = latest[user]?.json else {
                out.append("\(user): never delivered")
                continue
            }
            out += Self.differences(user, body, visits: want.visits, first: want.first, last: want.last, steps: steps[user] ?? 0)
        }
        return out
    }

    /// What differs between a delivered body and the reference: visits, first and last
    /// seen, and the "Step" count its PQL score stands for.
    public static func differences(
        _ user: String, _ body: [String: Any], visits: Int, first: Int64, last: Int64, steps wantSteps: Int
    ) -> [String] {
        var out: [String] = []
        if body["numberOfVisits"] as? Int != visits {
            out.append("\(user): numberOfVisits \(String(describing: body["numberOfVisits"])), expected \(visits)")
        }
        if body["firstVisitDate"] as? Int64 != first {
            out.append("\(user): firstVisitDate \(String(describing: body["firstVisitDate"])), expected \(first)")
        }
        if body["lastSeenDate"] as? Int64 != last { out.append("\(user): lastSeenDate differs") }
        let score = (body["pqlScore"] as? NSNumber)?.doubleValue ?? -1
        if abs(score - expectedScore(steps: wantSteps)) > 0.05 + 1e-9 || steps(fromScore: score) != wantSteps {
            out.append(
                "\(user): pqlScore \(score) counts \(steps(fromScore: score)) Step events, expected \(wantSteps) (score \(expectedScore(steps: wantSteps)))"
            )
        }
        return out
    }

    public func allDelivered(_ sandbox: FoldspaceSandbox) -> Bool { mismatches(sandbox).isEmpty }
}
