import Testing

@testable import Folding

/// The packed text attributes and the shared box of rare lists behave like the plain
/// registers and arrays they replace.
@Suite struct CompactStateTests {
    let all = TextFields.Field.allCases

    @Test func textRegistersAreLastWriterWinsWithTies() {
        var t = TextFields()
        do {
            let changed = t.write(.email, "a@x.io", at: Stamp(timeMs: 10, offset: 1))
            #expect(changed)
        }
        do {
            let changed = t.write(.email, "old@x.io", at: Stamp(timeMs: 9, offset: 5))
            #expect(!changed)
        }  // older: ignored
        do {
            let changed = t.write(.email, "tie@x.io", at: Stamp(timeMs: 10, offset: 0))
            #expect(!changed)
        }  // same time, lower offset
        do {
            let changed = t.write(.email, "b@x.io", at: Stamp(timeMs: 10, offset: 2))
            #expect(changed)
        }  // same time, higher offset
        do {
            let changed = t.write(.email, "b@x.io", at: Stamp(timeMs: 20, offset: 3))
            #expect(!changed)
        }  // same value: no change...
        #expect(t.get(.email) == Latest(value: "b@x.io", stamp: Stamp(timeMs: 20, offset: 3)))  // ...but the stamp moved
        do {
            let changed = t.write(.email, "late@x.io", at: Stamp(timeMs: 15, offset: 9))
            #expect(!changed)
        }  // so a late older one loses
        #expect(t.get(.name) == nil)
    }

    @Test func matchesPlainRegistersUnderRandomWritesAndSets() {
        // Writes follow the register rule; `set` (a stored state being decoded) replaces
        // or clears a field outright, whatever the stamps.
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            var packed = TextFields()
            var plain: [TextFields.Field: Latest<String>] = [:]
            for _ in 0..<40 {
                let f = all.randomElement(using: &rng)!
                // Long values cross the one-byte length; some are not ASCII.
                let value =
                    ["", "é", "x", String(repeating: "y", count: Int.random(in: 100...300, using: &rng)), "Zoë 😀"]
                    .randomElement(using: &rng)! + String(Int.random(in: 0..<3, using: &rng))
                let stamp = Stamp(timeMs: Int64.random(in: 0..<6, using: &rng), offset: Int64.random(in: 0..<4, using: &rng))
                switch Int.random(in: 0..<8, using: &rng) {
                case 0:
                    packed.set(f, nil)
                    plain[f] = nil
                case 1:
                    // Set (a stored state decoded) cuts too: an old record's huge value
                    // is cut when restored.
                    packed.set(f, Latest(value: value, stamp: stamp))
                    plain[f] = Latest(value: TextFields.prefix(value, bytes: f.storedLimitBytes), stamp: stamp)
                default:
                    // A write keeps at most the field's stored limit (cut when folded).
                    var reg = plain[f]
                    let expected = Latest.write(&reg, TextFields.prefix(value, bytes: f.storedLimitBytes), at: stamp)
                    plain[f] = reg
                    let changed = packed.write(f, value, at: stamp)
                    #expect(changed == expected)
                }
            }
            for f in all { #expect(packed.get(f) == plain[f], "\(f)") }
            if plain.isEmpty { #expect(packed.heapBytes == 0) }
        }
    }

    @Test func registersPackedTogetherAreTheBytesOfSettingEachInTurn() {
        // A stored state's fields, decoded with a stamp each (some repeated, some shared,
        // values over the stored limit cut): packed at once as set one by one.
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            var oneByOne = TextFields()
            // The values one after the other in one buffer, as a record holds them.
            var source: [UInt8] = [0x2A]
            var sets: [(TextFields.Field, Range<Int>, Stamp)] = []
            for _ in 0..<Int.random(in: 0..<16, using: &rng) {
                let f = all.randomElement(using: &rng)!
                let value =
                    [
                        "", "é", "x", String(repeating: "y", count: Int.random(in: 100...1_200, using: &rng)),
                        String(repeating: "é", count: Int.random(in: 100...700, using: &rng)), "Zoë 😀",
                    ]
                    .randomElement(using: &rng)! + String(Int.random(in: 0..<3, using: &rng))
                let r = Latest(
                    value: value, stamp: Stamp(timeMs: Int64.random(in: 0..<4, using: &rng), offset: Int64.random(in: 0..<3, using: &rng)))
                sets.append((f, source.count..<(source.count + value.utf8.count), r.stamp))
                source += value.utf8
                oneByOne.set(f, r)
            }
            let packed = source.withUnsafeBufferPointer { b in
                var registers = TextFields.Registers()
                for (f, range, stamp) in sets { registers.set(f, bytes: range, of: b, stamp: stamp) }
                return TextFields(registers, from: b)
            }
            #expect(packed.packedBytes == oneByOne.packedBytes)
            #expect(packed == oneByOne)
            for f in all { #expect(packed.get(f) == oneByOne.get(f), "\(f)") }
        }
    }

    @Test func oneEventsWritesTogetherMatchSeparateWrites() {
        // Batches of an event's writes, including repeats of the same values (the in-place
        // stamp path) and stamps shared with fields outside the batch (the rebuild path).
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            var packed = TextFields()
            var plain: [TextFields.Field: Latest<String>] = [:]
            for event in 0..<30 {
                let stamp = Stamp(timeMs: Int64(event / 3) * (Bool.random(using: &rng) ? 1 : -1) + 100, offset: Int64(event))
                var writes = TextFields.Writes()
                var expected = false
                var seen: Set<TextFields.Field> = []
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    let f = [TextFields.Field.city, .country, .region, .email].randomElement(using: &rng)!
                    let v = ["Paris", "Berlin", "x@y.io"].randomElement(using: &rng)!
                    writes.add(f, v)
                    if seen.insert(f).inserted {
                        var reg = plain[f]
                        expected = Latest.write(&reg, v, at: stamp) || expected
                        plain[f] = reg
                    }
                }
                let changed = packed.apply(writes, at: stamp)
                #expect(changed == expected)
                for f in all { #expect(packed.get(f) == plain[f], "\(f) after event \(event)") }
            }
        }
    }

    @Test func inlineStorageHoldsEveryField() {
        // A field added without growing the inline slots would write out of bounds.
        #expect(TextFields.inlineSlots == TextFields.Field.allCases.count)
        #expect(Int(TextFields.fieldCount) == TextFields.Field.allCases.count)
        #expect(TextFields.Field.allCases.map(\.rawValue) == Array(0..<UInt8(TextFields.inlineSlots)))
    }

    @Test func equalContentsAreEqualWhateverTheWriteOrder() {
        var a = TextFields()
        var b = TextFields()
        let s1 = Stamp(timeMs: 5, offset: 1)
        let s2 = Stamp(timeMs: 6, offset: 2)
        _ = a.write(.city, "Paris", at: s1)
        _ = a.write(.email, "e@x.io", at: s2)
        _ = a.write(.country, "France", at: s1)
        _ = b.write(.country, "France", at: s1)
        _ = b.write(.email, "e@x.io", at: s2)
        _ = b.write(.city, "Paris", at: s1)
        #expect(a == b)
        b.set(.city, nil)
        #expect(a != b)
        #expect(b.get(.city) == nil && b.get(.country)?.value == "France")
    }

    @Test func aTypicalUserIsSmall() {
        var s = UserState()
        let st = Stamp(timeMs: 1_764_000_000_000, offset: 42)
        for (f, v) in [
            (TextFields.Field.email, "user-123456@example.com"), (.name, "Chloé Dubois"), (.role, "Engineer"),
            (.city, "Berlin"), (.country, "Germany"), (.timezone, "Europe/Berlin"),
        ] {
            _ = s.text.write(f, v, at: st)
        }
        // Six attributes written by one event share one stamp: the count, one stamp (16),
        // six times tag, stamp index and length, and the 70 bytes of UTF-8.
        #expect(s.text.packedBytes == 1 + 16 + 6 * 3 + 70, "\(s.text.packedBytes)")
        // What malloc grants for it depends on the heap's state (glibc hands out a free
        // chunk up to 31 bytes larger rather than split it), so the bound leaves room for
        // that: 16-byte rounding and one unsplit remainder over the header and the bytes.
        #expect(s.text.heapBytes <= 32 + s.text.packedBytes + 15 + 31 + 8, "\(s.text.heapBytes)")
        #expect(MemoryLayout<UserState>.size <= 128, "\(MemoryLayout<UserState>.size)")
    }

    @Test func rareListsAreCopiedOnWrite() {
        var a = UserState()
        _ = a.subscriptions.insert("acct-1", at: Stamp(timeMs: 1, offset: 1), limit: 100)
        a.keyEventCounts.append(KeyEventCount(index: 0, count: 1))
        var b = a
        _ = b.subscriptions.insert("acct-2", at: Stamp(timeMs: 2, offset: 2), limit: 100)
        b.keyEventCounts[0].count += 1
        #expect(a.subscriptions.items.map(\.value) == ["acct-1"])
        #expect(b.subscriptions.items.map(\.value) == ["acct-2", "acct-1"])
        #expect(a.keyEventCounts[0].count == 1 && b.keyEventCounts[0].count == 2)
        #expect(a != b)
        b = a
        #expect(a == b)
        #expect(UserState().pqlTrait == nil && UserState().custom.isEmpty)
    }
}
