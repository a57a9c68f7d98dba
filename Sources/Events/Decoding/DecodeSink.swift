/// What one Segment call in a message decoded to.
public enum Decoded: Sendable, Equatable {
    case event(SegmentEvent)
    /// A well-formed call of a type the mapping does not use (the type as sent).
    case ignored(String)
    case invalid(DecodeFailure)

    /// The identity of an event, read in place (the event is not copied).
    public var identity: String? {
        switch self {
        case .event(let e): return e.identity
        default: return nil
        }
    }
}

/// Where the decoder puts what a message decoded to: an array of ``Decoded``, or
/// ``DecodedCalls``, which keeps the events apart so that they are written in place.
public protocol DecodeSink {
    /// A position to roll back to (a message that fails as a whole leaves only its failure).
    var mark: Int { get }
    mutating func rollBack(to mark: Int)
    mutating func append(_ d: Decoded)
    /// Appends what a fully read call comes to.
    mutating func appendCall(_ call: inout CallFields, nowMs: Int64)
}

extension Array: DecodeSink where Element == Decoded {
    public var mark: Int { count }
    public mutating func rollBack(to mark: Int) { removeSubrange(mark...) }
    public mutating func appendCall(_ call: inout CallFields, nowMs: Int64) { append(call.finish(nowMs: nowMs)) }
}

/// Decoded calls with the events held apart from what each call came to: an event is
/// written where it lies, never moved between arrays (an event is 560 bytes, and moving
/// them through an array of ``Decoded`` was a large share of the engine's cost).
public struct DecodedCalls: DecodeSink, Sendable {
    /// What a call came to; an event is an index into ``events``.
    public enum Outcome: Sendable, Equatable {
        case event(Int32)
        case ignored(String)
        case invalid(DecodeFailure)
    }

    public private(set) var events: [SegmentEvent] = []
    public private(set) var outcomes: [Outcome] = []

    public init() {}

    public var count: Int { outcomes.count }
    public var mark: Int { outcomes.count }

    /// Empties both arrays, keeping their capacity up to ``keptCapacity`` events (a chunk
    /// of records of routed calls can hold thousands: their memory is not kept for good).
    public mutating func removeAll() {
        events.removeAll(keepingCapacity: events.capacity <= Self.keptCapacity)
        outcomes.removeAll(keepingCapacity: outcomes.capacity <= Self.keptCapacity)
    }

    /// The most events whose room ``removeAll()`` keeps (about 2 MiB).
    public static let keptCapacity = 4096

    public mutating func rollBack(to mark: Int) {
        let firstEvent = outcomes[mark...].lazy.compactMap { if case .event(let i) = $0 { Int(i) } else { nil } }.first
        if let firstEvent { events.removeSubrange(firstEvent...) }
        outcomes.removeSubrange(mark...)
    }

    public mutating func append(_ d: Decoded) {
        switch d {
        case .event(let e):
            events.append(e)
            outcomes.append(.event(Int32(events.count - 1)))
        case .ignored(let t): outcomes.append(.ignored(t))
        case .invalid(let f): outcomes.append(.invalid(f))
        }
    }

    /// Appends `event`, then lets `fill` finish it where it lies; when `fill` throws, the
    /// event stays appended (``rollBack(to:)`` removes it).
    mutating func appendEvent<E: Error>(_ event: SegmentEvent, _ fill: (inout SegmentEvent) throws(E) -> Void) throws(E) {
        events.append(event)
        outcomes.append(.event(Int32(events.count - 1)))
        try fill(&events[events.count - 1])
    }

    public mutating func appendCall(_ call: inout CallFields, nowMs: Int64) {
        switch call.head() {
        case .ignored(let t): outcomes.append(.ignored(t))
        case .invalid(let f): outcomes.append(.invalid(f))
        case .event(let h):
            events.append(SegmentEvent(type: h.type, identity: h.identity, hasUserId: h.hasUserId))
            call.fill(&events[events.count - 1], type: h.type, nowMs: nowMs)
            outcomes.append(.event(Int32(events.count - 1)))
        }
    }

    /// Resolves the time of every event from call `mark` on that carries no plausible
    /// payload time to the Kafka time of its message, `kafkaMs`, which must pass the same
    /// rule (``Timestamp/isPlausible(_:nowMs:)``): when it does not, the event becomes
    /// invalid (`bad-timestamp`, field `kafka.timestamp`). A Kafka time near `Int64.max`
    /// once reached the fold unchecked and trapped it on every restart. Without a Kafka
    /// time (`nil`) nothing changes: the caller then uses the wall clock.
    public mutating func resolveTimes(from mark: Int, kafkaMs: Int64?, nowMs: Int64) {
        guard let kafkaMs else { return }
        let plausible = Timestamp.isPlausible(kafkaMs, nowMs: nowMs)
        for j in mark..<outcomes.count {
            guard case .event(let k) = outcomes[j], events[Int(k)].timeMs == nil else { continue }
            if plausible {
                events[Int(k)].timeMs = kafkaMs
            } else {
                outcomes[j] = .invalid(DecodeFailure(.badTimestamp, field: "kafka.timestamp"))
            }
        }
    }

    /// The events where they lie, for a consumer that spends them (the next
    /// ``removeAll()`` drops them).
    public mutating func withEvents<R>(_ body: (UnsafeMutableBufferPointer<SegmentEvent>) throws -> R) rethrows -> R {
        try events.withUnsafeMutableBufferPointer { try body($0) }
    }

    /// The identity of call `i` if it is an event.
    public func identity(_ i: Int) -> String? {
        if case .event(let k) = outcomes[i] { return events[Int(k)].identity }
        return nil
    }

    /// Call `i` as a ``Decoded`` (a copy; for tests and tools).
    public subscript(i: Int) -> Decoded {
        switch outcomes[i] {
        case .event(let k): return .event(events[Int(k)])
        case .ignored(let t): return .ignored(t)
        case .invalid(let f): return .invalid(f)
        }
    }
}
