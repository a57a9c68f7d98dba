import Events
import Foundation

/// Realistic Segment-spec traffic, shaped like what Segment's libraries send
/// (`context.library`, `messageId`, ISO timestamps, `properties`), deterministic for a
/// seed. Used by `demo` and by the benchmarks.
public struct TrafficGenerator: Sendable {
    public struct Message: Sendable {
        public var key: String
        public var value: [UInt8]
        public var userId: String
    }

    private var rng: SplitMix64
    public let users: Int
    private let baseMs: Int64

    public init(users: Int, seed: UInt64 = 42, baseMs: Int64 = Int64(Date().timeIntervalSince1970 * 1000) - 3 * 86_400_000) {
        self.users = max(1, users)
        rng = SplitMix64(seed: seed)
        self.baseMs = baseMs
    }

    static let firstNames = [
        "Alice", "José", "Zoë", "Bjørn", "Chloé", "Łukasz", "Mary-Jane", "Seán", "Noah", "Amélie",
        "Søren", "Dmitri", "Ana", "François", "Li", "O'Neil", "Jürgen", "Renée", "Kai", "Émile",
    ]
    static let lastNames = [
        "Johnson", "García", "Müller", "O'Brien", "Nguyễn", "Smith", "Kowalski", "Dubois", "Ivanov",
        "Rossi", "Larsen", "Tanaka", "Silva", "Cohen", "Novák",
    ]
    static let cities: [(String, String, String)] = [
        ("San Francisco", "California", "United States"), ("Berlin", "Berlin", "Germany"), ("Paris", "Île-de-France", "France"),
        ("London", "England", "United Kingdom"), ("Tel Aviv", "Tel Aviv District", "Israel"), ("São Paulo", "São Paulo", "Brazil"),
        ("Tokyo", "Tokyo", "Japan"), ("Toronto", "Ontario", "Canada"), ("Warsaw", "Masovia", "Poland"),
        ("Austin", "Texas", "United States"),
    ]
    static let trackEvents = ["Signed Up", "Feature Used", "Report Created", "Invite Sent", "Dashboard Viewed", "Export Clicked"]
    static let pages = ["/", "/pricing", "/docs", "/app/dashboard", "/app/settings", "/app/reports"]

    public func userId(_ i: Int) -> String { "user-\(i)" }

    /// The next message: mostly track and page calls, identify and group calls for a
    /// share of users, with times moving forward by a few seconds per event.
    public mutating func next(sequence n: Int) -> Message {
        let u = Int(rng.next() % UInt64(users))
        let id = userId(u)
        let t = baseMs + Int64(n) * 250 + Int64(rng.next() % 1000)
        let iso = Timestamp.formatISO8601(t)
        let roll = rng.next() % 100
        let messageId = String(format: "%016llx%016llx", rng.next(), rng.next())
        let (city, region, country) = Self.cities[u % Self.cities.count]
        let library =
            #""library":{"name":"analytics.js","version":"4.1.0"},"userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36","ip":"203.0.113.\#(u % 250)","locale":"en-US""#
        let location = #""location":{"city":"\#(city)","region":"\#(region)","country":"\#(country)"}"#
        var json: String
        if roll < 15 {
            let first = Self.firstNames[u % Self.firstNames.count]
            let last = Self.lastNames[(u / 7) % Self.lastNames.count]
            let created = Timestamp.formatISO8601(baseMs - Int64(u % 400) * 86_400_000)
            json =
                #"{"type":"identify","userId":"\#(id)","anonymousId":"anon-\#(u)","messageId":"\#(messageId)","timestamp":"\#(iso)","sentAt":"\#(iso)","traits":{"email":"\#(id)@example.com","firstName":"\#(first)","lastName":"\#(last)","title":"\#(u % 3 == 0 ? "Admin" : "Engineer")","createdAt":"\#(created)","plan":"pro"},"context":{\#(library),\#(location),"timezone":"Europe/Berlin"}}"#
        } else if roll < 20 {
            json =
                #"{"type":"group","userId":"\#(id)","groupId":"acct-\#(u % 97)","messageId":"\#(messageId)","timestamp":"\#(iso)","traits":{"name":"Account \#(u % 97)","plan":"enterprise"},"context":{\#(library)}}"#
        } else if roll < 55 {
            let page = Self.pages[Int(rng.next() % UInt64(Self.pages.count))]
            json =
                #"{"type":"page","userId":"\#(id)","messageId":"\#(messageId)","timestamp":"\#(iso)","name":"\#(page)","properties":{"path":"\#(page)","url":"https://app.example.com\#(page)","referrer":"https://www.google.com/","title":"Example App"},"context":{\#(library),\#(location),"page":{"path":"\#(page)"}}}"#
        } else {
            let ev = Self.trackEvents[Int(rng.next() % UInt64(Self.trackEvents.count))]
            json =
                #"{"type":"track","userId":"\#(id)","event":"\#(ev)","messageId":"\#(messageId)","timestamp":"\#(iso)","originalTimestamp":"\#(iso)","properties":{"plan":"pro","value":\#(rng.next() % 100),"source":"web"},"context":{\#(library),\#(location)}}"#
        }
        return Message(key: id, value: Array(json.utf8), userId: id)
    }

    /// A few kinds of broken input, for showing that they are counted and skipped.
    public static let garbage: [[UInt8]] = [
        Array("not json at all".utf8),
        Array("[1,2,3]".utf8),
        Array(#"{"type":"track","event":"no identity"}"#.utf8),
        [0x7B, 0x22, 0xFF, 0xFE, 0x22, 0x7D],
        Array((String(repeating: "[", count: 100) + String(repeating: "]", count: 100)).utf8),
    ]
}
