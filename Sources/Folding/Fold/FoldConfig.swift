#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// What the fold and the projection can be configured with: visit sessionizing, key
/// events, the PQL model, custom attributes and whether to send `numberOfVisits`.
public struct FoldConfig: Sendable, Equatable {
    /// A gap longer than this between a user's events starts a new visit (`visit_gap`).
    public var visitGapMs: Int64 = 30 * 60 * 1000
    /// Track events counted for the PQL score (`pql.key_events`, at most 32).
    public var keyEvents: [KeyEvent] = []
    public var pql = PQLModel()
    /// Trait names sent as `customAttributes` (`custom_attributes`).
    public var customAttributes: [String] = []
    /// Send `numberOfVisits` (system-managed by Foldspace; off by default).
    public var sendNumberOfVisits = false

    public static let maxKeyEvents = 32

    public init() {}

    public struct KeyEvent: Sendable, Equatable {
        public var name: String
        public var weight: Double
        public var cap: Int

        public init(name: String, weight: Double = 3, cap: Int = 20) {
            self.name = name
            self.weight = weight
            self.cap = cap
        }
    }

    /// Where the PQL score comes from.
    public enum PQLSource: String, Sendable, CaseIterable {
        /// Computed by the model from visits, active days and key events.
        case model
        /// Taken from a valid `traits.pqlScore` (latest by event time).
        case trait
        /// Not sent.
        case none
    }

    /// `x = visitWeight·min(visits, visitCap) + dayWeight·activeDays(28 d) + Σ w_e·min(count_e, cap_e)`,
    /// `score = 100·(1 − e^(−x/k))·0.5^(daysSinceLastSeen/halfLifeDays)`, clamped to 0…100,
    /// one decimal.
    public struct PQLModel: Sendable, Equatable {
        public var source = PQLSource.model
        public var visitWeight = 1.0
        public var visitCap = 50
        public var dayWeight = 2.0
        public var k = 50.0
        public var halfLifeDays = 14.0

        public init() {}

        public func score(
            visits: Int, activeDays28: Int, keyEvents: [(count: Int, weight: Double, cap: Int)],
            daysSinceLastSeen: Double
        ) -> Double {
            var x = visitWeight * Double(min(visits, visitCap)) + dayWeight * Double(activeDays28)
            for e in keyEvents { x += e.weight * Double(min(e.count, e.cap)) }
            let raw = 100 * (1 - exp(-x / max(k, 1e-9))) * pow(0.5, max(0, daysSinceLastSeen) / max(halfLifeDays, 1e-9))
            let clamped = min(100, max(0, raw.isFinite ? raw : 0))
            return (clamped * 10).rounded() / 10
        }
    }
}
