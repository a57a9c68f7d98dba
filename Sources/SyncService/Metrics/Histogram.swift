/// A Prometheus histogram with fixed buckets (seconds).
public struct Histogram: Sendable {
    public static let bounds: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
    public let bounds: [Double]
    /// Cumulative counts per bound, then +Inf.
    public private(set) var counts: [Int]
    public private(set) var sum = 0.0
    public private(set) var count = 0

    public init(bounds: [Double] = Histogram.bounds) {
        self.bounds = bounds
        counts = [Int](repeating: 0, count: bounds.count + 1)
    }

    public mutating func observe(_ v: Double) {
        for (i, b) in bounds.enumerated() where v <= b { counts[i] += 1 }
        counts[bounds.count] += 1
        sum += v
        count += 1
    }

    /// The smallest bound holding at least the fraction `q` of the observations (nil if
    /// none, +infinity if only the overflow bucket does).
    public func quantileBound(_ q: Double) -> Double? {
        guard count > 0 else { return nil }
        let need = Int((Double(count) * q).rounded(.up))
        for (i, b) in bounds.enumerated() where counts[i] >= need { return b }
        return .infinity
    }

    /// The fraction of observations at or below `bound` (which must be one of the bounds).
    public func fraction(atMost bound: Double) -> Double {
        guard count > 0, let i = bounds.firstIndex(of: bound) else { return 0 }
        return Double(counts[i]) / Double(count)
    }
}
