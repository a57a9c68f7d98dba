import CPrefetch
import Events

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
    /// The applied position of the source partition this user's latest event came from
    /// (offset -1: none), inline; those of other source partitions, if any, are in the
    /// rare box (``appliedPositions``). A replayed call is skipped by them.
    public private(set) var appliedOffset: Int64 = -1
    public private(set) var appliedSource: UInt32 = 0
    /// The call's index within its message (a batch envelope's calls share the offset).
    public private(set) var appliedCall: UInt32 = 0
    /// The Kafka time of the message at `appliedOffset`, in seconds (0: unknown), to tell
    /// a recreated topic (offsets restarted) from a replay.
    public private(set) var appliedKafkaSeconds: UInt32 = 0
    /// Visits counted so far.
    public var visits: UInt32 = 0
    public var activeDayAnchor: Int32 = .min
    /// A `userId` was seen for this identity.
    public var sawUserId = false

    public static let maxSpans = 8
    /// Source partitions whose applied positions a user keeps. A user whose events come
    /// from more keeps the most recently applied ones: a replay from a partition it has
    /// forgotten is folded again (counted by the engine, see docs/decisions.md).
    public static let maxAppliedSources = 8
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
        /// Applied positions of source partitions other than the inline one, most
        /// recently applied first.
        var otherApplied: [AppliedPosition] = []

        init() {}

        init(copying o: Rare) {
            explicitUserType = o.explicitUserType
            subscriptions = o.subscriptions
            products = o.products
            custom = o.custom
            pqlTrait = o.pqlTrait
            keyEventCounts = o.keyEventCounts
            otherApplied = o.otherApplied
        }
    }

    private mutating func writableRare() -> Rare {
        if let r = rare, isKnownUniquelyReferenced(&rare!) { return r }
        let r = rare.map(Rare.init(copying:)) ?? Rare()
        rare = r
        return r
    }

    // MARK: Text attributes

    public var email: Latest<String>? {
        get { text.get(.email) }
        set { text.set(.email, newValue) }
    }
    /// The raw display name (`name`, or `firstName lastName`); fitted at projection.
    public var name: Latest<String>? {
        get { text.get(.name) }
        set { text.set(.name, newValue) }
    }
    public var role: Latest<String>? {
        get { text.get(.role) }
        set { text.set(.role, newValue) }
    }
    public var phone: Latest<String>? {
        get { text.get(.phone) }
        set { text.set(.phone, newValue) }
    }
    public var timezone: Latest<String>? {
        get { text.get(.timezone) }
        set { text.set(.timezone, newValue) }
    }
    public var image: Latest<String>? {
        get { text.get(.image) }
        set { text.set(.image, newValue) }
    }
    public var country: Latest<String>? {
        get { text.get(.country) }
        set { text.set(.country, newValue) }
    }
    public var region: Latest<String>? {
        get { text.get(.region) }
        set { text.set(.region, newValue) }
    }
    public var city: Latest<String>? {
        get { text.get(.city) }
        set { text.set(.city, newValue) }
    }
    public var postalCode: Latest<String>? {
        get { text.get(.postalCode) }
        set { text.set(.postalCode, newValue) }
    }
    public var countryCode: Latest<String>? {
        get { text.get(.countryCode) }
        set { text.set(.countryCode, newValue) }
    }
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
    /// reallocations and copies (a profile of the benchmark's fold showed starting spans
    /// take a smaller share of all samples this way). The price: a user with 3 or 4 older
    /// spans holds room for 7 (144 bytes instead of 96).
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
        _modify {
            let r = writableRare()
            yield &r.subscriptions
        }
    }
    public var products: RecentSet<ProductKey> {
        get { rare?.products ?? RecentSet() }
        set { writableRare().products = newValue }
        _modify {
            let r = writableRare()
            yield &r.products
        }
    }
    public var custom: [Latest<CustomTrait>] {
        get { rare?.custom ?? [] }
        set { writableRare().custom = newValue }
        _modify {
            let r = writableRare()
            yield &r.custom
        }
    }
    public var pqlTrait: Latest<Double>? {
        get { rare?.pqlTrait }
        set { if newValue != nil || rare != nil { writableRare().pqlTrait = newValue } }
    }
    /// Counts of configured key events: (index into the configuration, count).
    public var keyEventCounts: [KeyEventCount] {
        get { rare?.keyEventCounts ?? [] }
        set { writableRare().keyEventCounts = newValue }
        _modify {
            let r = writableRare()
            yield &r.keyEventCounts
        }
    }

    public static func == (a: UserState, b: UserState) -> Bool {
        a.text == b.text && a.explicitUserType == b.explicitUserType && a.sawUserId == b.sawUserId
            && a.leadDateMs == b.leadDateMs && a.signUpDateMs == b.signUpDateMs
            && a.firstVisitMs == b.firstVisitMs && a.lastSeenMs == b.lastSeenMs
            && a.visits == b.visits && a.lastSpan == b.lastSpan && a.olderSpans == b.olderSpans && a.activeDays == b.activeDays
            && a.activeDayAnchor == b.activeDayAnchor && a.appliedPositions == b.appliedPositions
            && a.subscriptions == b.subscriptions && a.products == b.products && a.custom == b.custom
            && a.pqlTrait == b.pqlTrait && a.keyEventCounts == b.keyEventCounts
    }

    /// An estimate of the bytes this state occupies: the struct itself plus the heap
    /// storage of its buffers, arrays and of strings too long to be stored inline (over
    /// 15 UTF-8 bytes). Used by tests and the benchmark to show the state is bounded.
    public var approximateBytes: Int {
        func str(_ s: String?) -> Int {
            guard let s, s.utf8.count > 15 else { return 0 }
            return 32 + s.utf8.count
        }
        func arr<T>(_ a: [T]) -> Int { a.capacity == 0 ? 0 : 32 + a.capacity * MemoryLayout<T>.stride }
        var n = MemoryLayout<UserState>.size + text.heapBytes + arr(olderSpans)
        if let r = rare {
            n +=
                16 + MemoryLayout<RecentSet<String>>.size * 2 + MemoryLayout<[Latest<CustomTrait>]>.size
                + MemoryLayout<Latest<Double>?>.size + MemoryLayout<[KeyEventCount]>.size
            n += arr(r.subscriptions.items) + r.subscriptions.items.reduce(0) { $0 + str($1.value) }
            n += arr(r.products.items) + r.products.items.reduce(0) { $0 + str($1.value.product) }
            n += arr(r.custom) + r.custom.reduce(0) { $0 + str($1.value.name) + str($1.value.json) }
            n += arr(r.keyEventCounts) + arr(r.otherApplied)
        }
        return n
    }

    // MARK: Applied positions

    /// Every applied position, the inline one (the latest event's source) first, then
    /// the others, most recently applied first. Setting keeps the first
    /// ``maxAppliedSources`` with a non-negative offset, one per source.
    public var appliedPositions: [AppliedPosition] {
        get {
            guard appliedOffset >= 0 else { return [] }
            let first = AppliedPosition(source: appliedSource, offset: appliedOffset, call: appliedCall, kafkaSeconds: appliedKafkaSeconds)
            guard let others = rare?.otherApplied, !others.isEmpty else { return [first] }
            return [first] + others
        }
        set {
            // One position and none kept aside (almost every user, and every restored
            // one of a single partition): set inline, nothing allocated.
            if newValue.count <= 1 && rare?.otherApplied.isEmpty != false {
                setInline(newValue.first.flatMap { $0.offset >= 0 ? $0 : nil })
                return
            }
            var seen: Set<UInt32> = []
            let kept = newValue.filter { $0.offset >= 0 && seen.insert($0.source).inserted }.prefix(Self.maxAppliedSources)
            setInline(kept.first)
            let others = Array(kept.dropFirst())
            if !others.isEmpty || rare?.otherApplied.isEmpty == false { writableRare().otherApplied = others }
        }
    }

    /// The inline position (none: cleared).
    private mutating func setInline(_ p: AppliedPosition?) {
        appliedOffset = p?.offset ?? -1
        appliedSource = p?.source ?? 0
        appliedCall = p?.call ?? 0
        appliedKafkaSeconds = p?.kafkaSeconds ?? 0
    }

    /// The applied position of `source`, if this state has one.
    @inline(__always)
    public func appliedPosition(source: UInt32) -> AppliedPosition? {
        guard appliedOffset >= 0 else { return nil }
        if source == appliedSource {
            return AppliedPosition(source: source, offset: appliedOffset, call: appliedCall, kafkaSeconds: appliedKafkaSeconds)
        }
        return rare?.otherApplied.first { $0.source == source }
    }

    /// Whether call `call` of the message at `offset` of `source` is already folded into
    /// this state.
    @inline(__always)
    public func hasApplied(source: UInt32, offset: Int64, call: UInt32 = 0) -> Bool {
        guard appliedOffset >= 0 else { return false }
        if source == appliedSource {
            return offset < appliedOffset || (offset == appliedOffset && call <= appliedCall)
        }
        guard let p = rare?.otherApplied.first(where: { $0.source == source }) else { return false }
        return offset < p.offset || (offset == p.offset && call <= p.call)
    }

    /// Whether recording a position of `source` would make the state forget another
    /// source's (it already keeps ``maxAppliedSources`` others).
    public func wouldForgetASource(recording source: UInt32) -> Bool {
        guard appliedOffset >= 0, source != appliedSource, let others = rare?.otherApplied else { return false }
        return others.count >= Self.maxAppliedSources - 1 && !others.contains { $0.source == source }
    }

    /// Records `position` as its source's applied position (it becomes the inline one).
    /// The same source as the latest event's (the rule) touches only the inline fields.
    @inline(__always)
    public mutating func recordApplied(_ position: AppliedPosition) {
        if appliedOffset < 0 || position.source == appliedSource {
            setInline(position)
            return
        }
        let previous = AppliedPosition(source: appliedSource, offset: appliedOffset, call: appliedCall, kafkaSeconds: appliedKafkaSeconds)
        let r = writableRare()
        r.otherApplied.removeAll { $0.source == position.source }
        r.otherApplied.insert(previous, at: 0)
        if r.otherApplied.count > Self.maxAppliedSources - 1 {
            r.otherApplied.removeLast(r.otherApplied.count - (Self.maxAppliedSources - 1))
        }
        setInline(position)
    }

    /// Forgets the applied position of `source` (its topic was recreated: its offsets
    /// mean other events now).
    public mutating func forgetApplied(source: UInt32) {
        appliedPositions = appliedPositions.filter { $0.source != source }
    }

    /// Whether this state has applied, for every source partition `other` has a position
    /// of, at least as far as `other` (so `other` is not newer anywhere).
    public func covers(_ other: UserState) -> Bool {
        other.appliedPositions.allSatisfy { p in
            guard let mine = appliedPosition(source: p.source) else { return false }
            return mine.offset > p.offset || (mine.offset == p.offset && mine.call >= p.call)
        }
    }
}
