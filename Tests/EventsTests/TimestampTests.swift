import Testing

@testable import Events

@Suite struct TimestampTests {
    @Test(arguments: [
        ("2025-11-24T10:00:00Z", Int64(1_763_978_400_000)),
        ("2025-11-24T10:00:00.123Z", Int64(1_763_978_400_123)),
        ("2025-11-24T10:00:00.1Z", Int64(1_763_978_400_100)),
        ("2025-11-24T10:00:00.123456789Z", Int64(1_763_978_400_123)),
        ("2025-11-24T12:00:00+02:00", Int64(1_763_978_400_000)),
        ("2025-11-24T05:30:00-0430", Int64(1_763_978_400_000)),
        ("2025-11-24T10:00:00", Int64(1_763_978_400_000)),
        ("2025-11-24 10:00:00Z", Int64(1_763_978_400_000)),
        ("2025-11-24", Int64(1_763_942_400_000)),
        ("2024-02-29T00:00:00Z", Int64(1_709_164_800_000)),
        ("1970-01-01T00:00:00Z", Int64(0)),
    ])
    func parsesISO8601(text: String, ms: Int64) {
        #expect(Timestamp.parseISO8601(text) == ms)
    }

    @Test(arguments: [
        "", "2025-13-01T00:00:00Z", "2025-02-30", "2023-02-29", "2025-11-24T25:00:00Z", "2025-11-24T10:00:00Q",
        "yesterday", "2025-11-24T10:00:00.Z", "2025-11-24T10:00:00+2", "20251124",
    ])
    func rejectsMalformed(text: String) {
        #expect(Timestamp.parseISO8601(text) == nil)
    }

    @Test func theCanonicalFastPathAgreesWithTheGeneralParser() {
        // Segment's own form takes a shortcut; on it and on every one-byte mutation of it
        // (bad digits, separators, impossible dates) the result must be the general one.
        var rng = SystemRandomNumberGenerator()  // a failure prints its input
        let bytes = Array("0123456789-:.TZ x/".utf8)
        for _ in 0..<20_000 {
            let ms = Int64.random(in: 0..<4_102_444_800_000, using: &rng)  // 1970 to 2100
            var text = Array(Timestamp.formatISO8601(ms).utf8)
            #expect(text.count == 24)
            #expect(text.withUnsafeBufferPointer { Timestamp.parseISO8601($0) } == ms)
            for _ in 0..<Int.random(in: 1...2, using: &rng) {
                text[Int.random(in: 0..<24, using: &rng)] = bytes.randomElement(using: &rng)!
            }
            text.withUnsafeBufferPointer { b in
                #expect(Timestamp.parseISO8601(b) == Timestamp.general(b), "\(String(decoding: text, as: UTF8.self))")
            }
        }
        // Dates that exist only in some years or months.
        for text in ["2024-02-29T00:00:00.000Z", "2023-02-29T00:00:00.000Z", "2025-04-31T00:00:00.000Z", "2025-12-31T23:59:60.999Z"] {
            let b = Array(text.utf8)
            b.withUnsafeBufferPointer { #expect(Timestamp.parseISO8601($0) == Timestamp.general($0), "\(text)") }
        }
    }

    @Test func formatsRoundTrip() {
        for ms: Int64 in [0, 1_763_978_400_123, 951_782_400_000, 4_102_444_800_999] {
            #expect(Timestamp.parseISO8601(Timestamp.formatISO8601(ms)) == ms)
        }
    }
}
