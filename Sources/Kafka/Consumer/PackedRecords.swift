/// A partition's records, oldest first, packed in one buffer: each record's key then its
/// value, found through a small index. Reading a changelog into an array per key and per
/// value cost two allocations per record (and as many frees, on other threads, contending
/// for the allocator's lock): a restore of 1M users spent more on that than on reading.
public struct PackedRecords: Sendable {
    /// Every record's key then value, one after the other.
    public private(set) var bytes: [UInt8] = []
    /// Where each record starts in ``bytes``, with its key's length and its value's
    /// (-1: a tombstone).
    private var index: [(start: Int, keyCount: Int32, valueCount: Int32)] = []

    public init() {}

    /// The records given as arrays (test doubles, and stores that keep them so).
    public init(_ records: [(key: [UInt8], value: [UInt8]?)]) {
        for r in records {
            r.key.withUnsafeBytes { k in
                if let v = r.value {
                    v.withUnsafeBytes { append(key: k, value: $0) }
                } else {
                    append(key: k, value: nil)
                }
            }
        }
    }

    public var count: Int { index.count }
    public var isEmpty: Bool { index.isEmpty }

    /// Adds a record (copying its bytes). A key or value of more than `Int32.max` bytes
    /// cannot come from Kafka (its records are far smaller); one is cut to that length.
    public mutating func append(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer?) {
        let keyCount = min(key.count, Int(Int32.max))
        let valueCount = value.map { min($0.count, Int(Int32.max)) }
        index.append((bytes.count, Int32(keyCount), valueCount.map { Int32($0) } ?? -1))
        bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: key[..<keyCount]))
        if let value, let valueCount { bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: value[..<valueCount])) }
    }

    /// Where record `i`'s key is in ``bytes``.
    public func keyRange(_ i: Int) -> Range<Int> {
        let e = index[i]
        return e.start..<(e.start + Int(e.keyCount))
    }

    /// Where record `i`'s value is in ``bytes``; nil for a tombstone.
    public func valueRange(_ i: Int) -> Range<Int>? {
        let e = index[i]
        guard e.valueCount >= 0 else { return nil }
        let start = e.start + Int(e.keyCount)
        return start..<(start + Int(e.valueCount))
    }

    /// Record `i` as arrays.
    public subscript(i: Int) -> (key: [UInt8], value: [UInt8]?) {
        (Array(bytes[keyRange(i)]), valueRange(i).map { Array(bytes[$0]) })
    }

    /// Every record as arrays, oldest first (tools and tests).
    public var records: [(key: [UInt8], value: [UInt8]?)] { (0..<count).map { self[$0] } }
}
