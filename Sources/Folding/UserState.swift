import CPrefetch
import Events

/// When a value was written: event time first, then the source position, so that a
/// late or replayed old event never overwrites a newer value and ties are decided the
/// same way on every replay.
public struct Stamp: Comparable, Sendable, Hashable {
    public var timeMs: Int64
    public var offset: Int64

    public init(timeMs: Int64, offset: Int64) {
        self.timeMs = timeMs
        self.offset = offset
    }

    public static func < (a: Stamp, b: Stamp) -> Bool {
        a.timeMs != b.timeMs ? a.timeMs < b.timeMs : a.offset < b.offset
    }
}

/// A last-writer-wins register.
public struct Latest<Value: Equatable & Sendable>: Equatable, Sendable {
    public var value: Value
    public var stamp: Stamp

    /// Writes `value` if `stamp` is newer; returns whether the value changed.
    @inline(__always)
    public static func write(_ reg: inout Latest<Value>?, _ value: Value, at stamp: Stamp) -> Bool {
        if let r = reg {
            guard r.stamp < stamp else { return false }
            reg = Latest(value: value, stamp: stamp)
            return r.value != value
        }
        reg = Latest(value: value, stamp: stamp)
        return true
    }
}

/// The Foldspace user type.
public enum UserType: String, Sendable, Equatable, CaseIterable {
    case anonymous = "ANONYMOUS"
    case lead = "LEAD"
    case user = "USER"

    public init?(trait: String) {
        switch trait.uppercased() {
        case "ANONYMOUS": self = .anonymous
        case "LEAD": self = .lead
        case "USER": self = .user
        default: return nil
        }
    }
}

/// A set of the most recent distinct values, by stamp, holding at most `limit`.
public struct RecentSet<Value: Hashable & Sendable>: Sendable, Equatable {
    /// Newest first.
    public private(set) var items: [Latest<Value>] = []

    public init() {}

    /// Records `value` at `stamp`; returns whether the set (or its order) changed.
    public mutating func insert(_ value: Value, at stamp: Stamp, limit: Int) -> Bool {
        if let i = items.firstIndex(where: { $0.value == value }) {
            guard items[i].stamp < stamp else { return false }
            items.remove(at: i)
        } else if items.count >= limit, let oldest = items.last, stamp < oldest.stamp {
            return false // older than everything kept: it would be dropped at once
        }
        let at = items.firstIndex { $0.stamp < stamp } ?? items.count
        items.insert(Latest(value: value, stamp: stamp), at: at)
        if items.count > limit { items.removeLast(items.count - limit) }
        return true
    }
}

/// A product association as Foldspace stores it.
public struct ProductKey: Hashable, Sendable {
    public var product: String
    public var environment: Int64?
}

/// One visit: the first and last event time of a run of events with no gap longer than
/// the visit gap.
public struct VisitSpan: Sendable, Equatable {
    public var start: Int64
    public var end: Int64
}

/// Everything folded for one user. Every field is bounded: the state does not grow with
/// the number of events.
///
/// Laid out for memory (an instance holds every user of its partitions): the text
/// attributes are packed into one buffer (``TextFields``), the lists most users never
/// have (subscriptions, products, custom attributes, key event counts, a PQL trait) live
/// in one shared box allocated on first use and copied on write, and absent dates are a
/// sentinel rather than an optional. The properties keep the shape of a plain struct.
public struct UserState: Sendable, Equatable {
    // Stored fields in an order that leaves no padding: 8-byte ones, then the rest.
    /// The text attributes; the named properties below read and write them.
    public var text = TextFields()
    private var leadDateMs: Int64 = .max
    private var signUpDateMs: Int64 = .max
    public var firstVisitMs: Int64 = .max
    public var lastSeenMs: Int64 = .min
    private var rare: Rare?
    /// The most recent visit's span inline (start `.max`: none), and the ones before it
    /// (for late events) in an array most users never need.
    public private(set) var lastSpan = VisitSpan(start: .max, end: .max)
    public private(set) var olderSpans: [VisitSpan] = []
    /// Bit k: the user was active on UTC day `activeDayAnchor - k`.
    public var activeDays: UInt64 = 0
    /// The last applied source position, so a replayed event is skipped.
    public var appliedOffset: Int64 = -1
    public var appliedSource: UInt32 = 0
    /// Visits counted so far.
    public var visits: UInt32 = 0
    public var activeDayAnchor: Int32 = .min
    /// A `userId` was seen for this identity.
    public var sawUserId = false

    public static let maxSpans = 8
    public static let subscriptionLimit = 100
    public static let productLimit = 20

    public init() {}

    /// The lists few users have, shared between copies until one writes.
    private final class Rare: @unchecked Sendable {
        var explicitUserType: Latest<UserType>?
        var subscriptions = RecentSet<String>()
        var products = RecentSet<ProductKey>()
        var custom: [Latest<CustomTrait>] = []
        var pqlTrait: Latest<Double>?
        var keyEventCounts: [KeyEventCount] = []

        init() {}

        init(copying o: Rare) {
            explicitUserType = o.explicitUserType
            subscriptions = o.subscriptions
            products = o.products
            custom = o.custom
            pqlTrait = o.pqlTrait
            keyEventCounts = o.keyEventCounts
        }
    }

    private mutating func writableRare() -> Rare {
        if let r = rare, isKnownUniquelyReferenced(&rare!) { return r }
        let r = rare.map(Rare.init(copying:)) ?? Rare()
        rare = r
        return r
    }

    // MARK: Text attributes

    public var email: Latest<String>? { get { text.get(.email) } set { text.set(.email, newValue) } }
    /// The raw display name (`name`, or `firstName lastName`); fitted at projection.
    public var name: Latest<String>? { get { text.get(.name) } set { text.set(.name, newValue) } }
    public var role: Latest<String>? { get { text.get(.role) } set { text.set(.role, newValue) } }
    public var phone: Latest<String>? { get { text.get(.phone) } set { text.set(.phone, newValue) } }
    public var timezone: Latest<String>? { get { text.get(.timezone) } set { text.set(.timezone, newValue) } }
    public var image: Latest<String>? { get { text.get(.image) } set { text.set(.image, newValue) } }
    public var country: Latest<String>? { get { text.get(.country) } set { text.set(.country, newValue) } }
    public var region: Latest<String>? { get { text.get(.region) } set { text.set(.region, newValue) } }
    public var city: Latest<String>? { get { text.get(.city) } set { text.set(.city, newValue) } }
    public var postalCode: Latest<String>? { get { text.get(.postalCode) } set { text.set(.postalCode, newValue) } }
    public var countryCode: Latest<String>? { get { text.get(.countryCode) } set { text.set(.countryCode, newValue) } }
    public var lastSubscription: Latest<String>? {
        get { text.get(.lastSubscription) }
        set { text.set(.lastSubscription, newValue) }
    }

    // MARK: Dates

    public var leadDate: Int64? {
        get { leadDateMs == .max ? nil : leadDateMs }
        set { leadDateMs = newValue ?? .max }
    }
    public var signUpDate: Int64? {
        get { signUpDateMs == .max ? nil : signUpDateMs }
        set { signUpDateMs = newValue ?? .max }
    }

    // MARK: Visits

    /// The most recent spans, oldest first; setting more than ``maxSpans`` keeps the
    /// newest (the state's one bound on spans).
    public var spans: [VisitSpan] {
        get { lastSpan.start == .max ? [] : olderSpans + [lastSpan] }
        set {
            if let last = newValue.last {
                lastSpan = last
                olderSpans = Array(newValue.suffix(Self.maxSpans).dropLast())
            } else {
                lastSpan = VisitSpan(start: .max, end: .max)
                olderSpans = []
            }
        }
    }

    public var hasSpans: Bool { lastSpan.start != .max }

    /// Starts loading the heap storage an event may write (the packed text, the older
    /// spans, the rare lists' box) of the state at `s`, without waiting, so that a caller
    /// can reach many users before folding into any. It takes the state's address: a
    /// copy would retain those buffers, and a retain writes to the very cache line being
    /// fetched (so waits for it).
    public static func prefetch(_ s: UnsafePointer<UserState>) {
        // Each of these is one reference, read as bits where it lies: nothing is retained.
        // The packed text (one buffer, ~130-200 bytes with its header), the spans'
        // storage (header and the few spans kept), and the rare box.
        let text = unsafeBitCast(s.pointee.text, to: UnsafeRawPointer.self)
        fs_prefetch(text)
        fs_prefetch(text + 64)
        fs_prefetch(text + 128)
        let spans = unsafeBitCast(s.pointee.olderSpans, to: UnsafeRawPointer.self)
        fs_prefetch(spans)
        fs_prefetch(spans + 64)
        if let box = unsafeBitCast(s.pointee.rare, to: UnsafeRawPointer?.self) { fs_prefetch(box) }
    }

    /// Extends the most recent span to `t` (the caller checked it belongs there).
    public mutating func extendLastSpan(to t: Int64) {
        lastSpan.start = min(lastSpan.start, t)
        lastSpan.end = max(lastSpan.end, t)
    }

    /// Starts a new most recent span at `t`, keeping at most ``maxSpans``.
    ///
    /// The older spans grow in two steps (room for 2, then for all 7) rather than by
    /// doubling from 1, and a full list shifts in place rather than growing to 8 and
    /// dropping its first: a user with many visits costs two allocations in all, not four
    /// reallocations and copies (in a profile of the benchmark's fold, starting spans went
    /// from 5.5 % to 4 % of all samples). The price: a user with 3 or 4 older spans holds
    /// room for 7 (144 bytes instead of 96).
    public mutating func startSpan(at t: Int64) {
        if hasSpans {
            let room = Self.maxSpans - 1
            if olderSpans.count == room {
                let last = lastSpan
                olderSpans.withUnsafeMutableBufferPointer { b in
                    for i in 0..<(room - 1) { b[i] = b[i + 1] }
                    b[room - 1] = last
                }
            } else {
                if olderSpans.count == olderSpans.capacity {
                    olderSpans.reserveCapacity(olderSpans.count < 2 ? 2 : room)
                }
                olderSpans.append(lastSpan)
            }
        }
        lastSpan = VisitSpan(start: t, end: t)
    }

    // MARK: Rare lists

    /// A user type set by a `userType` trait.
    public var explicitUserType: Latest<UserType>? {
        get { rare?.explicitUserType }
        set { if newValue != nil || rare != nil { writableRare().explicitUserType = newValue } }
    }

    public var subscriptions: RecentSet<String> {
        get { rare?.subscriptions ?? RecentSet() }
        set { writableRare().subscriptions = newValue }
        _modify { let r = writableRare(); yield &r.subscriptions }
    }
    public var products: RecentSet<ProductKey> {
        get { rare?.products ?? RecentSet() }
        set { writableRare().products = newValue }
        _modify { let r = writableRare(); yield &r.products }
    }
    public var custom: [Latest<CustomTrait>] {
        get { rare?.custom ?? [] }
        set { writableRare().custom = newValue }
        _modify { let r = writableRare(); yield &r.custom }
    }
    public var pqlTrait: Latest<Double>? {
        get { rare?.pqlTrait }
        set { if newValue != nil || rare != nil { writableRare().pqlTrait = newValue } }
    }
    /// Counts of configured key events: (index into the configuration, count).
    public var keyEventCounts: [KeyEventCount] {
        get { rare?.keyEventCounts ?? [] }
        set { writableRare().keyEventCounts = newValue }
        _modify { let r = writableRare(); yield &r.keyEventCounts }
    }

    public static func == (a: UserState, b: UserState) -> Bool {
        a.text == b.text && a.explicitUserType == b.explicitUserType && a.sawUserId == b.sawUserId
            && a.leadDateMs == b.leadDateMs && a.signUpDateMs == b.signUpDateMs
            && a.firstVisitMs == b.firstVisitMs && a.lastSeenMs == b.lastSeenMs
            && a.visits == b.visits && a.lastSpan == b.lastSpan && a.olderSpans == b.olderSpans && a.activeDays == b.activeDays
            && a.activeDayAnchor == b.activeDayAnchor && a.appliedSource == b.appliedSource
            && a.appliedOffset == b.appliedOffset
            && a.subscriptions == b.subscriptions && a.products == b.products && a.custom == b.custom
            && a.pqlTrait == b.pqlTrait && a.keyEventCounts == b.keyEventCounts
    }

    /// An estimate of the bytes this state occupies: the struct itself plus the heap
    /// storage of its buffers, arrays and of strings too long to be stored inline (over
    /// 15 UTF-8 bytes). Used by tests and the benchmark to show the state is bounded.
    public var approximateBytes: Int {
        func str(_ s: String?) -> Int { guard let s, s.utf8.count > 15 else { return 0 }; return 32 + s.utf8.count }
        func arr<T>(_ a: [T]) -> Int { a.capacity == 0 ? 0 : 32 + a.capacity * MemoryLayout<T>.stride }
        var n = MemoryLayout<UserState>.size + text.heapBytes + arr(olderSpans)
        if let r = rare {
            n += 16 + MemoryLayout<RecentSet<String>>.size * 2 + MemoryLayout<[Latest<CustomTrait>]>.size
                + MemoryLayout<Latest<Double>?>.size + MemoryLayout<[KeyEventCount]>.size
            n += arr(r.subscriptions.items) + r.subscriptions.items.reduce(0) { $0 + str($1.value) }
            n += arr(r.products.items) + r.products.items.reduce(0) { $0 + str($1.value.product) }
            n += arr(r.custom) + r.custom.reduce(0) { $0 + str($1.value.name) + str($1.value.json) }
            n += arr(r.keyEventCounts)
        }
        return n
    }

    /// Whether the event at `offset` of `source` is already folded into this state.
    @inline(__always)
    public func hasApplied(source: UInt32, offset: Int64) -> Bool {
        appliedOffset >= 0 && source == appliedSource && offset <= appliedOffset
    }
}

public struct KeyEventCount: Sendable, Equatable {
    public var index: UInt8
    public var count: UInt32
}
