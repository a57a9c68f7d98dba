import Testing

@testable import Kafka

/// A changelog partition read into one buffer (``PackedRecords``): every record comes
/// back as it was given, tombstones apart from empty values, and empty keys kept.
@Suite struct PackedRecordsTests {
    @Test func recordsComeBackAsGiven() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var given: [(key: [UInt8], value: [UInt8]?)] = []
            for _ in 0..<Int.random(in: 0..<40, using: &rng) {
                let key = (0..<Int.random(in: 0..<20, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                let value: [UInt8]? =
                    switch Int.random(in: 0..<4, using: &rng) {
                    case 0: nil  // a tombstone
                    case 1: []  // an empty value: not a tombstone
                    default: (0..<Int.random(in: 1..<300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                    }
                given.append((key, value))
            }
            let packed = PackedRecords(given)
            #expect(packed.count == given.count)
            #expect(packed.isEmpty == given.isEmpty)
            let back = packed.records
            #expect(back.count == given.count)
            for (a, b) in zip(back, given) {
                #expect(a.key == b.key)
                #expect(a.value == b.value)
            }
            for i in 0..<given.count {
                #expect(Array(packed.bytes[packed.keyRange(i)]) == given[i].key)
                #expect(packed.valueRange(i).map { Array(packed.bytes[$0]) } == given[i].value)
            }
        }
    }
}
