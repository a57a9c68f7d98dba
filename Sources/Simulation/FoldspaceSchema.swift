import Foundation

/// Foldspace's documented schema for `PUT /v1/user/{identifyId}`, checked field by
/// field on the parsed JSON. This is an independent reading of the vendor's page, not
/// the projector's code, so that tests can catch the projector breaking a rule.
public enum FoldspaceSchema {
    /// The fields the update body may carry. `id` and `lastModifiedDate` are
    /// system-managed and never sent by the daemon, so they count as violations here.
    static let allowed: Set<String> = [
        "userType", "identifyId", "email", "name", "role", "phone", "timezone", "leadDate", "signUpDate",
        "firstVisitDate", "lastSeenDate", "lastSubscriptionIdentifier", "allSubscriptionIdentifiers",
        "location", "customAttributes", "products", "numberOfVisits", "image", "pqlScore",
    ]

    /// Every rule the body breaks; empty when it conforms. `pathId` is the identifyId
    /// decoded from the URL, which the body must repeat.
    public static func violations(body: [UInt8], pathId: String?) -> [String] {
        guard let any = try? JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed]) else {
            return ["body is not JSON"]
        }
        guard let o = any as? [String: Any] else { return ["body is not an object"] }
        var v: [String] = []
        for k in o.keys where !allowed.contains(k) { v.append("unknown field \(k)") }
        for (k, value) in o where value is NSNull { v.append("\(k) is null") }

        guard let ut = o["userType"] as? String else {
            v.append("userType missing or not a string")
            return v
        }
        if !["ANONYMOUS", "LEAD", "USER"].contains(ut) { v.append("userType \(ut) not allowed") }
        if let id = o["identifyId"] as? String {
            checkLength(id, 255, "identifyId", &v)
            if id.isEmpty { v.append("identifyId empty") }
            if let pathId, pathId != id { v.append("identifyId differs from the path") }
        } else {
            v.append("identifyId missing or not a string")
        }
        string(o, "email", 255, &v)
        if let n = string(o, "name", 255, &v) {
            let ok = n.unicodeScalars.allSatisfy {
                switch $0 {
                case "a"..."z", "A"..."Z", "0"..."9", "_", " ", "-", "(", ")": return true
                default: return false
                }
            }
            if !ok { v.append("name does not match ^[a-zA-Z0-9_ \\-()]*$") }
        }
        string(o, "role", 255, &v)
        string(o, "phone", 20, &v)
        string(o, "timezone", 50, &v)
        for k in ["leadDate", "signUpDate", "firstVisitDate", "lastSeenDate"] { int64(o, k, &v) }
        string(o, "lastSubscriptionIdentifier", 255, &v)
        if let subs = o["allSubscriptionIdentifiers"] {
            if let a = subs as? [Any] {
                if a.count > 100 { v.append("allSubscriptionIdentifiers has \(a.count) items, over 100") }
                let strings = a.compactMap { $0 as? String }
                if strings.count != a.count { v.append("allSubscriptionIdentifiers holds a non-string") }
                if Set(strings).count != strings.count { v.append("allSubscriptionIdentifiers not unique") }
                for s in strings { checkLength(s, 255, "allSubscriptionIdentifiers[]", &v) }
            } else {
                v.append("allSubscriptionIdentifiers not an array")
            }
        }
        if let loc = o["location"] {
            if let l = loc as? [String: Any] {
                let fields: Set<String> = ["country", "region", "state", "city", "postalCode", "countryCode"]
                for k in l.keys where !fields.contains(k) { v.append("unknown field location.\(k)") }
                for k in ["country", "region", "state", "city", "postalCode"] { string(l, k, 128, &v, prefix: "location.") }
                string(l, "countryCode", 8, &v, prefix: "location.")
            } else {
                v.append("location not an object")
            }
        }
        if let ca = o["customAttributes"] {
            if let m = ca as? [String: Any] {
                // Documented as a map whose values are objects.
                for (k, value) in m where !(value is [String: Any]) { v.append("customAttributes.\(k) not an object") }
            } else {
                v.append("customAttributes not an object")
            }
        }
        if let p = o["products"] {
            if let a = p as? [Any] {
                if a.count > 20 { v.append("products has \(a.count) items, over 20") }
                var seen = Set<String>()
                for item in a {
                    guard let po = item as? [String: Any] else {
                        v.append("products item not an object")
                        continue
                    }
                    for k in po.keys where k != "product" && k != "environment" { v.append("unknown field products[].\(k)") }
                    let code = string(po, "product", 16, &v, prefix: "products[].")
                    var envText = "-"
                    if let e = po["environment"] {
                        if let n = e as? NSNumber, isInteger(n), (1...4).contains(n.int64Value) {
                            envText = n.stringValue
                        } else {
                            v.append("products[].environment not an integer 1..4")
                        }
                    }
                    if !seen.insert("\(code ?? "")|\(envText)").inserted { v.append("products not unique") }
                }
            } else {
                v.append("products not an array")
            }
        }
        if let n = o["numberOfVisits"] {
            if let num = n as? NSNumber, isInteger(num), num.int64Value >= 0, num.int64Value <= Int64(Int32.max) {
            } else {
                v.append("numberOfVisits not an int32")
            }
        }
        string(o, "image", 255, &v)
        if let p = o["pqlScore"] {
            if let num = p as? NSNumber, !isBool(num) {
                let d = num.doubleValue
                if !(d.isFinite && d >= 0 && d <= 100) { v.append("pqlScore \(d) outside 0..100") }
            } else {
                v.append("pqlScore not a number")
            }
        }
        return v
    }

    @discardableResult
    private static func string(_ o: [String: Any], _ k: String, _ max: Int, _ v: inout [String], prefix: String = "") -> String? {
        guard let raw = o[k] else { return nil }
        guard let s = raw as? String else {
            v.append("\(prefix)\(k) not a string")
            return nil
        }
        checkLength(s, max, prefix + k, &v)
        return s
    }

    private static func checkLength(_ s: String, _ max: Int, _ k: String, _ v: inout [String]) {
        let n = s.unicodeScalars.count
        if n > max { v.append("\(k) has \(n) characters, over \(max)") }
    }

    private static func int64(_ o: [String: Any], _ k: String, _ v: inout [String]) {
        guard let raw = o[k] else { return }
        guard let n = raw as? NSNumber, isInteger(n) else {
            v.append("\(k) not an integer")
            return
        }
        _ = n
    }

    private static func isBool(_ n: NSNumber) -> Bool {
        // JSONSerialization gives booleans the ObjC type "c" (char).
        n.objCType.pointee == CChar(UInt8(ascii: "c"))
    }

    private static func isInteger(_ n: NSNumber) -> Bool {
        if isBool(n) { return false }
        let d = n.doubleValue
        return d.rounded() == d && abs(d) < 9.3e18
    }
}

/// Decodes a percent-encoded path segment; nil if it is malformed.
public func decodePathSegment(_ s: Substring) -> String? {
    var out: [UInt8] = []
    var it = Array(s.utf8)[...]
    while let b = it.popFirst() {
        if b == UInt8(ascii: "%") {
            guard it.count >= 2 else { return nil }
            let h = it.popFirst()!
            let l = it.popFirst()!
            guard let hv = hexNibble(h), let lv = hexNibble(l) else { return nil }
            out.append(hv << 4 | lv)
        } else {
            out.append(b)
        }
    }
    return String(validating: out, as: UTF8.self)
}

private func hexNibble(_ c: UInt8) -> UInt8? {
    switch c {
    case 0x30...0x39: return c - 0x30
    case 0x41...0x46: return c - 0x41 + 10
    case 0x61...0x66: return c - 0x61 + 10
    default: return nil
    }
}
