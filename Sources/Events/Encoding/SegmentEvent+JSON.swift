/// A decoded call written back as one Segment-spec call, for the calls a task forwards
/// to the owner of their identity (`<group>-repartition`, docs/identity.md). The engine
/// holds only the ``SegmentEvent`` (a batch envelope holds many calls, and the original
/// bytes carry fields the mapping never reads), so the call is rebuilt from it.
///
/// The contract: ``SegmentDecoder`` decodes `segmentJSON(timeMs: t)` of any event it
/// produced back to an equal event whose ``SegmentEvent/timeMs`` is `t`, given options
/// that name the event's custom traits and a wall clock at which `t` and the trait dates
/// are plausible (they were at the source; the destination's clock is later, and only a
/// clock more than a day behind the source's could refuse them). Where each field goes:
///
/// - `type` by its Segment name; the identity to `userId` when ``SegmentEvent/hasUserId``,
///   else to `anonymousId`. ``SegmentEvent/linkedId`` to `previousId` for an alias, else
///   to `anonymousId` beside a `userId`. (A linked id beside an `anonymousId` identity on
///   another type is never decoded, and has no place: it is left out.)
/// - The time to `timestamp` as epoch milliseconds. ``SegmentEvent/timeImplausible`` is
///   not written: the time given is the one the engine resolved. Nor is
///   ``SegmentEvent/implausibleTraitDates``: the dates it counts are gone already, and the
///   source counted them; the destination decodes 0.
/// - `event` for a track call, `groupId` for a group call (the decoder reads them only
///   there); `context.groupId`, `context.timezone`, `context.location` (`region`) and
///   `context.product` (an object: `product`, and `environment` when present).
/// - Traits to `traits` for identify, else to `context.traits` (the decoder reads a
///   non-identify call's `traits` as a group's or nobody's); the address with `state`
///   for its region; dates as epoch milliseconds. Custom traits under their names with
///   their JSON text as it is. A custom trait is left out when its name is one the
///   decoder reads as a standard trait, repeats an earlier custom trait's name (the
///   decoder refuses a repeated key, and keeps the first), or its text is not one JSON
///   value within the nesting the decoder allows there; none of these can be decoded.
/// - Empty strings, empty locations and empty traits are left out (the decoder reads
///   them as absent), as is a `pqlScore` that is not finite (JSON has no such number).
///
/// Strings are escaped as JSON requires (`"`, `\`, and control characters as `\n`, `\t`,
/// … or `\u00XX`); every other character is written as its UTF-8 bytes.
///
/// Size: at most `1024 + Σ (6 × bytes + 4)` over every string written (custom trait
/// names included) `+` the custom traits' JSON bytes: an escape takes at most 6 bytes
/// for one, and the keys, punctuation and numbers of every field together stay under
/// 1024. Calls of bounded fields give a bounded record.
extension SegmentEvent {
    public func segmentJSON(timeMs: Int64) -> [UInt8] {
        var w = CallWriter()
        w.out.reserveCapacity(256)
        w.raw("{")
        w.first = true
        w.key("type")
        w.string(type.segmentName)
        w.key(hasUserId ? "userId" : "anonymousId")
        w.string(identity)
        if let linkedId {
            if type == .alias {
                w.field("previousId", linkedId)
            } else if hasUserId {
                w.field("anonymousId", linkedId)
            }
        }
        w.key("timestamp")
        w.integer(timeMs)
        if type == .track { w.field("event", eventName) }
        if type == .group { w.field("groupId", groupId) }
        let context = w.open("context")
        w.field("groupId", contextGroupId)
        w.field("timezone", timezone)
        if let location { w.location("location", location, regionKey: "region") }
        if let product, !product.product.isEmpty {
            w.key("product")
            w.raw("{")
            w.first = true
            w.field("product", product.product)
            w.field("environment", product.environment)
            w.raw("}")
            w.first = false
        }
        if let traits, type != .identify { w.traits(traits, valueDepth: 3) }
        w.close(context)
        if let traits, type == .identify { w.traits(traits, valueDepth: 2) }
        w.raw("}")
        return w.out
    }
}

/// Writes one call's JSON: keys, escaped strings, numbers, and objects left out when
/// nothing is written in them.
struct CallWriter {
    var out: [UInt8] = []
    /// No field has been written in the innermost open object yet (no comma is due).
    var first = true

    /// Where an object began, and whether its parent had no field before it.
    struct Mark {
        var start: Int
        var parentFirst: Bool
    }

    mutating func raw(_ s: StaticString) {
        out.append(contentsOf: UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    /// `"k":`, after a comma unless it is the object's first field.
    mutating func key(_ k: StaticString) {
        if !first { out.append(UInt8(ascii: ",")) }
        first = false
        out.append(UInt8(ascii: "\""))
        raw(k)
        raw("\":")
    }

    mutating func field(_ k: StaticString, _ v: String?) {
        guard let v, !v.isEmpty else { return }
        key(k)
        string(v)
    }

    mutating func field(_ k: StaticString, _ v: Int64?) {
        guard let v else { return }
        key(k)
        integer(v)
    }

    /// Opens object `k`; ``close(_:)`` removes it again if no field was written in it.
    mutating func open(_ k: StaticString) -> Mark {
        let m = Mark(start: out.count, parentFirst: first)
        key(k)
        out.append(UInt8(ascii: "{"))
        first = true
        return m
    }

    mutating func close(_ m: Mark) {
        if first {
            out.removeSubrange(m.start...)
            first = m.parentFirst
        } else {
            out.append(UInt8(ascii: "}"))
            first = false
        }
    }

    mutating func location(_ k: StaticString, _ l: Location, regionKey: StaticString) {
        let m = open(k)
        field("country", l.country)
        field(regionKey, l.region)
        field("city", l.city)
        field("postalCode", l.postalCode)
        field("countryCode", l.countryCode)
        close(m)
    }

    /// `traits` in the current object; `valueDepth` is the nesting of the traits object
    /// itself (the call is 1), which bounds a custom trait's own nesting.
    mutating func traits(_ t: Traits, valueDepth: Int) {
        let m = open("traits")
        field("userType", t.userType)
        field("email", t.email)
        field("name", t.name)
        field("firstName", t.firstName)
        field("lastName", t.lastName)
        field("role", t.role)
        field("title", t.title)
        field("phone", t.phone)
        field("timezone", t.timezone)
        field("leadDate", t.leadDate)
        field("signUpDate", t.signUpDate)
        field("createdAt", t.createdAt)
        field("subscriptionId", t.subscriptionId)
        if let a = t.address { location("address", a, regionKey: "state") }
        field("avatar", t.avatar)
        field("image", t.image)
        if let p = t.pqlScore, p.isFinite {
            key("pqlScore")
            // Swift's shortest form that reads back as the same Double ("1e-05", "2.5"):
            // JSON grammar for every finite value.
            out.append(contentsOf: p.description.utf8)
        }
        for (i, c) in t.custom.enumerated() where Self.writable(c, at: i, of: t.custom, depth: valueDepth) {
            if !first { out.append(UInt8(ascii: ",")) }
            first = false
            string(c.name)
            out.append(UInt8(ascii: ":"))
            out.append(contentsOf: compactJSON(c.json).utf8)
        }
        close(m)
    }

    /// Whether custom trait `i` can be decoded where it is written: a name the decoder
    /// does not read as a standard trait, not an earlier custom trait's, and one JSON
    /// value whose nesting stays within the decoder's deepest (64) inside an object at
    /// `depth`.
    static func writable(_ c: CustomTrait, at i: Int, of all: [CustomTrait], depth: Int) -> Bool {
        guard !standardTraitKeys.contains(c.name) else { return false }
        for j in 0..<i where all[j].name == c.name { return false }
        var json = c.json
        return json.withUTF8 { isOneValue($0, maxDepth: 64 - depth) }
    }

    /// Whether `json` is one JSON value (whitespace around it allowed) nested at most
    /// `maxDepth` deep.
    static func isOneValue(_ json: UnsafeBufferPointer<UInt8>, maxDepth: Int) -> Bool {
        var s = JSONScanner(json, maxDepth: maxDepth)
        do {
            try s.skipValue()
            try s.expectEnd()
            return true
        } catch {
            return false
        }
    }

    mutating func integer(_ v: Int64) {
        if v < 0 { out.append(UInt8(ascii: "-")) }
        // The magnitude as unsigned (Int64.min has none as a signed value), written from
        // its last digit, then turned around.
        var m = v.magnitude
        let start = out.count
        repeat {
            out.append(UInt8(truncatingIfNeeded: m % 10) &+ 0x30)
            m /= 10
        } while m != 0
        out[start...].reverse()
    }

    /// `s` as a JSON string: runs of plain bytes copied as they are, `"`, `\\` and control
    /// characters escaped.
    mutating func string(_ s: String) {
        out.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { b in
            var runStart = 0
            for i in 0..<b.count {
                let c = b[i]
                guard c < 0x20 || c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") else { continue }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: b[runStart..<i]))
                runStart = i + 1
                out.append(UInt8(ascii: "\\"))
                switch c {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"): out.append(c)
                case 0x0A: out.append(UInt8(ascii: "n"))
                case 0x0D: out.append(UInt8(ascii: "r"))
                case 0x09: out.append(UInt8(ascii: "t"))
                case 0x08: out.append(UInt8(ascii: "b"))
                case 0x0C: out.append(UInt8(ascii: "f"))
                default:
                    raw("u00")
                    out.append(Self.hexDigit(c >> 4))
                    out.append(Self.hexDigit(c & 0x0F))
                }
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: b[runStart..<b.count]))
        }
        out.append(UInt8(ascii: "\""))
    }

    private static func hexDigit(_ v: UInt8) -> UInt8 {
        v < 10 ? 0x30 &+ v : 0x61 &+ (v &- 10)
    }
}

/// The trait keys the decoder reads itself: a custom trait of one of these names is never
/// captured (the standard field is read instead).
let standardTraitKeys: Set<String> = [
    "email", "name", "firstName", "lastName", "userType", "role", "title", "phone", "timezone", "leadDate",
    "signUpDate", "createdAt", "subscriptionId", "avatar", "image", "address", "pqlScore",
]
