/// The decoder's reading of a traits object (`traits`, `context.traits`) and of the
/// custom attributes kept from it.
extension SegmentDecoder {
    func readTraits(_ s: inout JSONScanner, _ c: inout CallFields, path: StaticString) throws(JSONError) -> Traits? {
        guard try objectOrAbsent(&s, &c, path) else { return nil }
        var t = Traits()
        var seen = FieldSet()
        try s.beginObject()
        var first = true
        while let k = try s.nextKey(first: first) {
            first = false
            if k.is("email") {
                t.email = try readText(&s, &c, .email, "traits.email", seen: &seen)
            } else if k.is("name") {
                t.name = try readText(&s, &c, .name, "traits.name", seen: &seen)
            } else if k.is("firstName") {
                t.firstName = try readText(&s, &c, .firstName, "traits.firstName", seen: &seen)
            } else if k.is("lastName") {
                t.lastName = try readText(&s, &c, .lastName, "traits.lastName", seen: &seen)
            } else if k.is("userType") {
                t.userType = try readText(&s, &c, .userType, "traits.userType", seen: &seen)
            } else if k.is("role") {
                t.role = try readText(&s, &c, .role, "traits.role", seen: &seen)
            } else if k.is("title") {
                t.title = try readText(&s, &c, .title, "traits.title", seen: &seen)
            } else if k.is("phone") {
                t.phone = try readText(&s, &c, .phone, "traits.phone", numbers: true, seen: &seen)
            } else if k.is("timezone") {
                t.timezone = try readText(&s, &c, .traitTimezone, "traits.timezone", seen: &seen)
            } else if k.is("leadDate") {
                t.leadDate = try readTime(&s, &c, .leadDate, "traits.leadDate", seen: &seen)
            } else if k.is("signUpDate") {
                t.signUpDate = try readTime(&s, &c, .signUpDate, "traits.signUpDate", seen: &seen)
            } else if k.is("createdAt") {
                t.createdAt = try readTime(&s, &c, .createdAt, "traits.createdAt", seen: &seen)
            } else if k.is("subscriptionId") {
                t.subscriptionId = try readText(&s, &c, .subscriptionId, "traits.subscriptionId", numbers: true, seen: &seen)
            } else if k.is("avatar") {
                t.avatar = try readText(&s, &c, .avatar, "traits.avatar", seen: &seen)
            } else if k.is("image") {
                t.image = try readText(&s, &c, .image, "traits.image", seen: &seen)
            } else if k.is("address") {
                guard try seen.mark(.address, "traits.address", &c, &s) else { continue }
                t.address = try readLocation(&s, &c, path: "traits.address", stateKey: "state")
            } else if k.is("pqlScore") {
                guard try seen.mark(.pqlScore, "traits.pqlScore", &c, &s) else { continue }
                switch try s.peekKind() {
                case .number: t.pqlScore = try s.readNumber().asDouble
                case .null: try s.readNull()
                default:
                    c.fail(.wrongType, "traits.pqlScore")
                    try s.skipValue()
                }
            } else if !customKeys.isEmpty, let name = customName(k) {
                let start = s.pos
                try s.skipValue()
                // Compact JSON text of the value; the projector decides what to send.
                let text = s.text(start..<s.pos)
                if !t.custom.contains(where: { $0.name == name }) {
                    t.custom.append(CustomTrait(name: name, json: compactJSON(text)))
                } else {
                    c.fail(.duplicateKey, "traits")
                }
            } else {
                try s.skipValue()
            }
        }
        return t.isEmpty ? nil : t
    }

    private func customName(_ k: JSONKey) -> String? {
        guard let name = try? k.text() else { return nil }
        let u = Array(name.utf8)
        return customKeys.contains(u) ? name : nil
    }
}

/// Removes insignificant whitespace from valid JSON text.
func compactJSON(_ text: String) -> String {
    var out = [UInt8]()
    var inString = false
    var escape = false
    for c in text.utf8 {
        if inString {
            out.append(c)
            if escape {
                escape = false
            } else if c == UInt8(ascii: "\\") {
                escape = true
            } else if c == UInt8(ascii: "\"") {
                inString = false
            }
        } else if c == UInt8(ascii: "\"") {
            inString = true
            out.append(c)
        } else if c != 0x20 && c != 0x0A && c != 0x0D && c != 0x09 {
            out.append(c)
        }
    }
    return String(decoding: out, as: UTF8.self)
}
