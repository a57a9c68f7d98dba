/// Arithmetic on times and durations that clamps to the type's range instead of trapping:
/// for values that come from input, a changelog record or the network, where an extreme
/// value must not stop the process.
extension Int64 {
    /// `self + other`, clamped to the type's range instead of trapping.
    @inline(__always)
    public func adding(saturating other: Int64) -> Int64 {
        let (r, overflow) = addingReportingOverflow(other)
        return overflow ? (other > 0 ? .max : .min) : r
    }

    /// `self - other`, clamped to the type's range instead of trapping.
    @inline(__always)
    public func subtracting(saturating other: Int64) -> Int64 {
        let (r, overflow) = subtractingReportingOverflow(other)
        return overflow ? (other < 0 ? .max : .min) : r
    }
}
