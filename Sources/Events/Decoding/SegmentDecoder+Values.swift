/// Typed reads of one field's value: an object or nothing, text, a time.
extension SegmentDecoder {
    func objectOrAbsent(_ s: inout JSONScanner, _ c: inout CallFields, _ path: StaticString) throws(JSONError) -> Bool {
        switch try s.peekKind() {
        case .object: return true
        case .null:
            try s.readNull()
            return false
        default:
            c.fail(.wrongType, path)
            try s.skipValue()
            return false
        }
    }

    /// Text (`null` and `""` are absent; integers too when `numbers`), field `f` of the
    /// object whose fields read so far are `seen`.
    func readText(
        _ s: inout JSONScanner, _ c: inout CallFields, _ f: Field, _ path: StaticString,
        numbers: Bool = false, seen: inout FieldSet
    ) throws(JSONError) -> String? {
        guard try seen.mark(f, path, &c, &s) else { return nil }
        switch try s.peekKind() {
        case .string:
            let v = try s.readString()
            return v.isEmpty ? nil : v
        case .null:
            try s.readNull()
            return nil
        case .number where numbers:
            switch try s.readNumber() {
            case .integer(_, let text): return s.text(text)
            case .double:
                c.fail(.wrongType, path)
                return nil
            }
        default:
            c.fail(.wrongType, path)
            try s.skipValue()
            return nil
        }
    }

    /// A time: epoch milliseconds as a number, or an ISO-8601 string.
    func readTime(
        _ s: inout JSONScanner, _ c: inout CallFields, _ f: Field, _ path: StaticString,
        seen: inout FieldSet
    ) throws(JSONError) -> Int64? {
        guard try seen.mark(f, path, &c, &s) else { return nil }
        switch try s.peekKind() {
        case .string:
            guard s.peek() == UInt8(ascii: "\"") else { throw .syntax }
            let raw = try s.scanStringRaw()
            if raw.end == raw.start { return nil }
            if !raw.escaped, let ms = Timestamp.parseISO8601(raw.bytes) {
                return ms
            }
            if raw.escaped, let text = try? raw.text(), let ms = Timestamp.parseISO8601(text) {
                return ms
            }
            c.fail(.badTimestamp, path)
            return nil
        case .number:
            switch try s.readNumber() {
            case .integer(let v, _): return v
            case .double(let d, _):
                guard d.magnitude < 9.0e15 else {
                    c.fail(.numberOutOfRange, path)
                    return nil
                }
                return Int64(d.rounded(.down))
            }
        case .null:
            try s.readNull()
            return nil
        default:
            c.fail(.wrongType, path)
            try s.skipValue()
            return nil
        }
    }
}
