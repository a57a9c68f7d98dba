/// The decoder's reading of `context` and of a product reference (`context.product`,
/// `properties.product`).
extension SegmentDecoder {
    func readContext(_ s: inout JSONScanner, _ c: inout CallFields) throws(JSONError) {
        guard try objectOrAbsent(&s, &c, "context") else { return }
        try s.beginObject()
        var first = true
        var seen = FieldSet()
        while let k = try s.nextKey(first: first) {
            first = false
            if k.is("traits") {
                guard try seen.mark(.contextTraits, "context.traits", &c, &s) else { continue }
                c.contextTraits = try readTraits(&s, &c, path: "context.traits")
            } else if k.is("timezone") {
                c.timezone = try readText(&s, &c, .contextTimezone, "context.timezone", seen: &seen)
            } else if k.is("groupId") {
                c.contextGroupId = try readText(&s, &c, .contextGroupId, "context.groupId", numbers: true, seen: &seen)
            } else if k.is("location") {
                guard try seen.mark(.contextLocation, "context.location", &c, &s) else { continue }
                c.location = try readLocation(&s, &c, path: "context.location", stateKey: "region")
            } else if k.is("product") {
                guard try seen.mark(.contextProduct, "context.product", &c, &s) else { continue }
                c.contextProduct = try readProduct(&s, &c, "context.product")
            } else {
                try s.skipValue()
            }
        }
    }

    /// A product is `{"product": code, "environment": 1..4}` or a bare code string.
    func readProduct(_ s: inout JSONScanner, _ c: inout CallFields, _ path: StaticString) throws(JSONError) -> ProductRef? {
        switch try s.peekKind() {
        case .null:
            try s.readNull()
            return nil
        case .string:
            let code = try s.readString()
            return code.isEmpty ? nil : ProductRef(product: code, environment: nil)
        case .object:
            var code: String?
            var env: Int64?
            var seen = FieldSet()
            try s.beginObject()
            var first = true
            while let k = try s.nextKey(first: first) {
                first = false
                if k.is("product") || k.is("code") || k.is("id") {
                    code = try readText(&s, &c, .product, path, numbers: true, seen: &seen)
                } else if k.is("environment") {
                    guard try seen.mark(.environment, path, &c, &s) else { continue }
                    switch try s.peekKind() {
                    case .number:
                        if case .integer(let v, _) = try s.readNumber() { env = v } else { c.fail(.wrongType, path) }
                    case .null: try s.readNull()
                    default:
                        c.fail(.wrongType, path)
                        try s.skipValue()
                    }
                } else {
                    try s.skipValue()
                }
            }
            guard let code else { return nil }
            return ProductRef(product: code, environment: env)
        default:
            c.fail(.wrongType, path)
            try s.skipValue()
            return nil
        }
    }
}
