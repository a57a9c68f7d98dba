/// The decoder's reading of a location (`context.location`, `traits.address`).
extension SegmentDecoder {
    func readLocation(
        _ s: inout JSONScanner, _ c: inout CallFields, path: StaticString,
        stateKey: StaticString
    ) throws(JSONError) -> Location? {
        guard try objectOrAbsent(&s, &c, path) else { return nil }
        // Read into locals and moved into the result once: a `Location` variable written
        // field by field was copied and destroyed twice per call (a visible share of the
        // engine's instructions, by callgrind).
        var country: String?
        var region: String?
        var city: String?
        var postalCode: String?
        var countryCode: String?
        var seen = FieldSet()
        try s.beginObject()
        var first = true
        while let k = try s.nextKey(first: first) {
            first = false
            if k.is("country") {
                country = try readText(&s, &c, .country, path, seen: &seen)
            } else if k.is(stateKey) {
                region = try readText(&s, &c, .region, path, seen: &seen)
            } else if k.is("city") {
                city = try readText(&s, &c, .city, path, seen: &seen)
            } else if k.is("postalCode") {
                postalCode = try readText(&s, &c, .postalCode, path, numbers: true, seen: &seen)
            } else if k.is("countryCode") {
                countryCode = try readText(&s, &c, .countryCode, path, seen: &seen)
            } else {
                try s.skipValue()
            }
        }
        guard country != nil || region != nil || city != nil || postalCode != nil || countryCode != nil else { return nil }
        return Location(country: country, region: region, city: city, postalCode: postalCode, countryCode: countryCode)
    }
}
