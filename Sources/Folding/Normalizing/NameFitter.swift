/// Makes a display name fit Foldspace's pattern `^[a-zA-Z0-9_ \-()]*$`.
///
/// Letters with diacritics become their base letter (José → Jose, Zoë → Zoe), a few
/// letters without a decomposition get their usual ASCII spelling (ß → ss, Ø → O),
/// everything else the pattern forbids is dropped, runs of spaces collapse, and the
/// result is trimmed. An empty result means "omit the name".
public enum NameFitter {
    public static func fit(_ name: String) -> String {
        var out = String.UnicodeScalarView()
        var lastWasSpace = true  // trims leading spaces
        func push(_ c: Unicode.Scalar) {
            if c == " " {
                if lastWasSpace { return }
                lastWasSpace = true
            } else {
                lastWasSpace = false
            }
            out.append(c)
        }
        for scalar in name.unicodeScalars {
            if scalar.isASCII {
                if isAllowed(scalar) { push(scalar) } else if scalar == "\t" || scalar == "\n" { push(" ") }
                continue
            }
            if let mapped = special[scalar.value] {
                for c in mapped.unicodeScalars { push(c) }
                continue
            }
            if let base = baseLetter(scalar) { push(base) }
            // Anything else (other scripts, symbols, emoji, curly quotes) is dropped.
        }
        var s = String(out)
        while s.hasSuffix(" ") { s.removeLast() }
        return s
    }

    /// Whether every character of `s` matches the pattern.
    public static func matchesPattern(_ s: String) -> Bool {
        s.unicodeScalars.allSatisfy { $0.isASCII && isAllowed($0) }
    }

    @inline(__always)
    static func isAllowed(_ c: Unicode.Scalar) -> Bool {
        switch c {
        case "a"..."z", "A"..."Z", "0"..."9", "_", " ", "-", "(", ")": return true
        default: return false
        }
    }

    /// Letters whose ASCII spelling is not their canonical decomposition's base.
    static let special: [UInt32: String] = [
        0x00DF: "ss", 0x00C6: "AE", 0x00E6: "ae", 0x00D8: "O", 0x00F8: "o", 0x0152: "OE", 0x0153: "oe",
        0x0141: "L", 0x0142: "l", 0x0110: "D", 0x0111: "d", 0x00D0: "D", 0x00F0: "d", 0x00DE: "Th",
        0x00FE: "th", 0x0131: "i", 0x0126: "H", 0x0127: "h", 0x014A: "N", 0x014B: "n", 0x0138: "k",
        0x0166: "T", 0x0167: "t", 0x1E9E: "SS", 0x2010: "-", 0x2011: "-", 0x2012: "-", 0x2013: "-",
        0x2014: "-", 0x00A0: " ", 0x2009: " ", 0x202F: " ",
    ]

    /// The ASCII base letter of a Latin letter with diacritics, from the Unicode
    /// canonical decomposition tables of the Latin-1 Supplement and Latin Extended-A/B
    /// and Additional blocks, compressed into ranges.
    static func baseLetter(_ c: Unicode.Scalar) -> Unicode.Scalar? {
        let v = c.value
        if let hit = latin1[v] { return hit }
        // Latin Extended-A (U+0100–U+017F): mostly pairs of upper/lower case per base.
        if (0x0100...0x017F).contains(v), let b = extendedA[v] { return b }
        // Latin Extended Additional (U+1E00–U+1EFF): Vietnamese and others.
        if (0x1E00...0x1EFF).contains(v) { return extendedAdditional(v) }
        return nil
    }

    private static let latin1: [UInt32: Unicode.Scalar] = {
        var m: [UInt32: Unicode.Scalar] = [:]
        let table: [(ClosedRange<UInt32>, Unicode.Scalar)] = [
            (0xC0...0xC5, "A"), (0xC7...0xC7, "C"), (0xC8...0xCB, "E"), (0xCC...0xCF, "I"),
            (0xD1...0xD1, "N"), (0xD2...0xD6, "O"), (0xD9...0xDC, "U"), (0xDD...0xDD, "Y"),
            (0xE0...0xE5, "a"), (0xE7...0xE7, "c"), (0xE8...0xEB, "e"), (0xEC...0xEF, "i"),
            (0xF1...0xF1, "n"), (0xF2...0xF6, "o"), (0xF9...0xFC, "u"), (0xFD...0xFD, "y"),
            (0xFF...0xFF, "y"),
        ]
        for (r, b) in table { for v in r { m[v] = b } }
        return m
    }()

    private static let extendedA: [UInt32: Unicode.Scalar] = {
        var m: [UInt32: Unicode.Scalar] = [:]
        // Each entry: first code point, base letter, count of (upper, lower) pairs.
        let runs: [(UInt32, Character, Int)] = [
            (0x0100, "a", 3), (0x0106, "c", 4), (0x010E, "d", 1), (0x0112, "e", 5), (0x011C, "g", 4),
            (0x0124, "h", 1), (0x0128, "i", 5), (0x0134, "j", 1), (0x0136, "k", 1), (0x0139, "l", 3),
            (0x0143, "n", 3), (0x014C, "o", 3), (0x0154, "r", 3), (0x015A, "s", 4), (0x0162, "t", 2),
            (0x0168, "u", 6), (0x0174, "w", 1), (0x0176, "y", 1), (0x0179, "z", 3),
        ]
        for (start, base, pairs) in runs {
            let upper = Unicode.Scalar(String(base).uppercased())!
            let lower = Unicode.Scalar(String(base))!
            for i in 0..<pairs {
                m[start + UInt32(2 * i)] = upper
                m[start + UInt32(2 * i + 1)] = lower
            }
        }
        m[0x0178] = "Y"
        m[0x0130] = "I"
        m[0x0149] = "n"
        return m
    }()

    private static func extendedAdditional(_ v: UInt32) -> Unicode.Scalar? {
        // Ordered ranges of the block by base letter; even code points upper case.
        let ranges: [(ClosedRange<UInt32>, Character)] = [
            (0x1E00...0x1E01, "a"), (0x1E02...0x1E07, "b"), (0x1E08...0x1E09, "c"), (0x1E0A...0x1E13, "d"),
            (0x1E14...0x1E1D, "e"), (0x1E1E...0x1E1F, "f"), (0x1E20...0x1E21, "g"), (0x1E22...0x1E2B, "h"),
            (0x1E2C...0x1E2F, "i"), (0x1E30...0x1E35, "k"), (0x1E36...0x1E3D, "l"), (0x1E3E...0x1E43, "m"),
            (0x1E44...0x1E4B, "n"), (0x1E4C...0x1E53, "o"), (0x1E54...0x1E57, "p"), (0x1E58...0x1E5F, "r"),
            (0x1E60...0x1E69, "s"), (0x1E6A...0x1E71, "t"), (0x1E72...0x1E7B, "u"), (0x1E7C...0x1E7F, "v"),
            (0x1E80...0x1E89, "w"), (0x1E8A...0x1E8D, "x"), (0x1E8E...0x1E8F, "y"), (0x1E90...0x1E95, "z"),
            (0x1EA0...0x1EB7, "a"), (0x1EB8...0x1EC7, "e"), (0x1EC8...0x1ECB, "i"), (0x1ECC...0x1EE3, "o"),
            (0x1EE4...0x1EF1, "u"), (0x1EF2...0x1EF9, "y"),
        ]
        for (r, base) in ranges where r.contains(v) {
            let s = v % 2 == 0 ? String(base).uppercased() : String(base)
            return Unicode.Scalar(s)
        }
        return nil
    }
}
