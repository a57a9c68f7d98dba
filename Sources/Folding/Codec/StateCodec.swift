import Events

/// One changelog record's value: a user's folded state plus what delivery needs to
/// resume after a restart.
public struct StoredUser: Sendable, Equatable {
    public var state: UserState
    /// The user has changes Foldspace has not acknowledged: flush it after restore.
    public var dirty: Bool
    /// Hash of the last body Foldspace acknowledged (no-op suppression survives restarts).
    public var settledHash: UInt64
    /// The source topic's partition count when this was written: if the source is
    /// repartitioned, keys move, and the changelog no longer matches it.
    public var sourcePartitions: Int32
    /// Set on a changelog marker (no user): the source offset committed with the
    /// checkpoint that wrote it (see ``StateCodec/encodeMarker(committedOffset:sourcePartitions:)``).
    public var markerOffset: Int64?
    /// Set on a marker written by a merging task's transaction (identity resolution): that
    /// transaction's writer epoch and sequence number (``RepartitionRecord/Tag``).
    public var markerTxn: MarkerTxn?
    /// Only on a merging task's source marker (identity resolution, docs/identity.md,
    /// "A hop that stays in the process"): per source partition (a task), the furthest
    /// first hop this task has taken from it (`A(q, p)`), and the furthest first hop this
    /// task's source partition sent each other task through `<group>-repartition`
    /// (`S(p, q)`), both as of the transaction that wrote the marker.
    public var hopsTaken: [HopMark] = []
    public var hopsSent: [HopMark] = []
    /// Whether the marker says what its task sent (``hopsSent``, even none): a marker
    /// written before the in-process hop does not, and its task sent every first hop
    /// through Kafka.
    public var hopsKnown = false

    public struct MarkerTxn: Sendable, Hashable {
        public var epoch: UInt64
        public var seq: Int64
        public init(epoch: UInt64, seq: Int64) {
            self.epoch = epoch
            self.seq = seq
        }
    }

    public init(
        state: UserState, dirty: Bool, settledHash: UInt64, sourcePartitions: Int32 = 0, markerOffset: Int64? = nil,
        markerTxn: MarkerTxn? = nil
    ) {
        self.state = state
        self.dirty = dirty
        self.settledHash = settledHash
        self.sourcePartitions = sourcePartitions
        self.markerOffset = markerOffset
        self.markerTxn = markerTxn
    }
}

/// The changelog record format: compact, versioned, and tolerant.
///
/// Layout: the magic bytes `F S`, a format version (2), then fields as
/// `tag (1 byte) · length (varint) · payload`. A reader skips tags it does not know, so a
/// newer writer can add fields without breaking older readers, and a newer reader fills
/// defaults for fields an older writer did not have. Integers are LEB128 varints (signed
/// ones zigzag-encoded); strings are length-prefixed UTF-8.
///
/// Version 2 replaced the single applied position (tag 27: source, offset) with one per
/// source partition, each with the call index within its message and the message's
/// Kafka time in seconds (tag 28); a version-1 record is still read (its position covers
/// every call of its message, as version 1 skipped them all, with an unknown Kafka time). A record of a later version is refused with
/// ``DecodeError/newerVersion(_:)``: its fields may mean what this build cannot know.
/// Decoding never traps, whatever the bytes: every length and value read is checked.
public enum StateCodec {
    public static let version: UInt8 = 2

    enum Tag: UInt8 {
        case explicitUserType = 1, sawUserId, email, name, role, phone, timezone, image
        case leadDate, signUpDate, firstVisit, lastSeen
        case country, region, city, postalCode, countryCode
        case lastSubscription, subscriptions, products, custom, pqlTrait
        case visits, spans, activeDays, keyEventCounts, applied, appliedPositions
        case dirty = 40, settledHash, sourcePartitions
        /// Only in a marker record. A reader that does not know it (written before it
        /// existed) skips it as a newer writer's field and reads an empty user, which
        /// applied nothing of any source partition: it is never restored as one.
        case markerOffset
        /// Only in a marker of a merging task's transaction: its epoch and sequence number.
        case markerTxn
        /// Only in a merging task's source marker: ``StoredUser/hopsTaken`` and
        /// ``StoredUser/hopsSent``.
        case hopsTaken, hopsSent
    }

    public enum DecodeError: Error, Equatable {
        case badMagic
        /// Version 0: never written.
        case unsupportedVersion(UInt8)
        /// Written by a later format version than this build reads.
        case newerVersion(UInt8)
        case truncated
        case badValue
    }

    // MARK: Encoding

    /// A changelog marker's value: an empty user carrying the source offset committed
    /// with it and the source's partition count. Readers of this format that predate
    /// markers decode it as an empty user of no partition and leave it.
    public static func encodeMarker(
        committedOffset: Int64, sourcePartitions: Int32, txn: StoredUser.MarkerTxn? = nil, hopsTaken: [HopMark] = [],
        hopsSent: [HopMark] = []
    ) -> [UInt8] {
        var u = StoredUser(
            state: UserState(), dirty: false, settledHash: 0, sourcePartitions: sourcePartitions,
            markerOffset: committedOffset, markerTxn: txn)
        u.hopsTaken = hopsTaken
        u.hopsSent = hopsSent
        u.hopsKnown = txn != nil
        return encode(u)
    }

    public static func encode(_ u: StoredUser) -> [UInt8] {
        var w = Writer()
        // Room for a typical user (~310 bytes) at once: a record grows without copies.
        w.bytes.reserveCapacity(384)
        w.bytes.append(contentsOf: [0x46, 0x53, version])
        let s = u.state
        if let v = s.explicitUserType {
            w.field(.explicitUserType) { f in
                f.u8(UInt8(UserType.allCases.firstIndex(of: v.value)!))
                f.stamp(v.stamp)
            }
        }
        if s.sawUserId { w.field(.sawUserId) { $0.u8(1) } }
        w.latest(.email, s.email)
        w.latest(.name, s.name)
        w.latest(.role, s.role)
        w.latest(.phone, s.phone)
        w.latest(.timezone, s.timezone)
        w.latest(.image, s.image)
        if let v = s.leadDate { w.field(.leadDate) { $0.zigzag(v) } }
        if let v = s.signUpDate { w.field(.signUpDate) { $0.zigzag(v) } }
        if s.firstVisitMs != .max { w.field(.firstVisit) { $0.zigzag(s.firstVisitMs) } }
        if s.lastSeenMs != .min { w.field(.lastSeen) { $0.zigzag(s.lastSeenMs) } }
        w.latest(.country, s.country)
        w.latest(.region, s.region)
        w.latest(.city, s.city)
        w.latest(.postalCode, s.postalCode)
        w.latest(.countryCode, s.countryCode)
        w.latest(.lastSubscription, s.lastSubscription)
        if !s.subscriptions.items.isEmpty {
            w.field(.subscriptions) { f in
                f.varint(UInt64(s.subscriptions.items.count))
                for i in s.subscriptions.items {
                    f.string(i.value)
                    f.stamp(i.stamp)
                }
            }
        }
        if !s.products.items.isEmpty {
            w.field(.products) { f in
                f.varint(UInt64(s.products.items.count))
                for i in s.products.items {
                    f.string(i.value.product)
                    f.zigzag(i.value.environment.map { $0 + 1 } ?? 0)  // 0: none
                    f.stamp(i.stamp)
                }
            }
        }
        if !s.custom.isEmpty {
            w.field(.custom) { f in
                f.varint(UInt64(s.custom.count))
                for c in s.custom {
                    f.string(c.value.name)
                    f.string(c.value.json)
                    f.stamp(c.stamp)
                }
            }
        }
        if let p = s.pqlTrait {
            w.field(.pqlTrait) { f in
                f.u64(p.value.bitPattern)
                f.stamp(p.stamp)
            }
        }
        if s.visits > 0 { w.field(.visits) { $0.varint(UInt64(s.visits)) } }
        if !s.spans.isEmpty {
            w.field(.spans) { f in
                f.varint(UInt64(s.spans.count))
                for sp in s.spans {
                    f.zigzag(sp.start)
                    f.zigzag(sp.end)
                }
            }
        }
        if s.activeDayAnchor != .min {
            w.field(.activeDays) { f in
                f.u64(s.activeDays)
                f.zigzag(Int64(s.activeDayAnchor))
            }
        }
        if !s.keyEventCounts.isEmpty {
            w.field(.keyEventCounts) { f in
                f.varint(UInt64(s.keyEventCounts.count))
                for k in s.keyEventCounts {
                    f.u8(k.index)
                    f.varint(UInt64(k.count))
                }
            }
        }
        let applied = s.appliedPositions
        if !applied.isEmpty {
            w.field(.appliedPositions) { f in
                f.varint(UInt64(applied.count))
                for p in applied {
                    f.varint(UInt64(p.source))
                    f.zigzag(p.offset)
                    f.varint(UInt64(p.call))
                    f.varint(UInt64(p.kafkaSeconds))
                }
            }
        }
        if u.dirty { w.field(.dirty) { $0.u8(1) } }
        if u.settledHash != 0 { w.field(.settledHash) { $0.u64(u.settledHash) } }
        if u.sourcePartitions > 0 { w.field(.sourcePartitions) { $0.varint(UInt64(u.sourcePartitions)) } }
        if let o = u.markerOffset { w.field(.markerOffset) { $0.zigzag(o) } }
        if let t = u.markerTxn {
            w.field(.markerTxn) {
                $0.varint(t.epoch)
                $0.zigzag(t.seq)
            }
        }
        for (tag, marks) in [(Tag.hopsTaken, u.hopsTaken), (.hopsSent, u.hopsSent)]
        where !marks.isEmpty || (tag == .hopsSent && u.hopsKnown) {
            w.field(tag) { f in
                f.varint(UInt64(marks.count))
                for m in marks {
                    f.varint(UInt64(UInt32(bitPattern: m.task)))
                    f.zigzag(m.offset)
                    f.varint(UInt64(m.call))
                }
            }
        }
        return w.bytes
    }

    // MARK: Decoding

    public static func decode(_ bytes: [UInt8]) throws(DecodeError) -> StoredUser {
        try bytes.withUnsafeBufferPointer { (b) throws(DecodeError) -> StoredUser in try decode(b) }
    }

    /// As ``decode(_:)-([UInt8])``, from bytes held elsewhere (read only during the call).
    /// Text fields are checked as UTF-8 and packed straight from them: no `String` per
    /// field (a `String` each was most of a restore's decoding).
    public static func decode(_ bytes: UnsafeBufferPointer<UInt8>) throws(DecodeError) -> StoredUser {
        var r = Reader(bytes: bytes)
        guard try r.u8() == 0x46, try r.u8() == 0x53 else { throw .badMagic }
        let v = try r.u8()
        guard v >= 1 else { throw .unsupportedVersion(v) }
        guard v <= version else { throw .newerVersion(v) }
        var s = UserState()
        var dirty = false
        var hash: UInt64 = 0
        var sourcePartitions: Int32 = 0
        var markerOffset: Int64?
        var markerTxn: StoredUser.MarkerTxn?
        var hops: [Tag: [HopMark]] = [:]
        // The text fields, packed once at the end (see ``TextFields/Registers``).
        var text = TextFields.Registers()
        while !r.atEnd {
            let tag = try r.u8()
            let len = try r.length()
            var f = Reader(bytes: bytes, pos: r.pos, end: r.pos + len)
            r.pos += len
            guard let t = Tag(rawValue: tag) else { continue }  // a newer writer's field
            switch t {
            case .explicitUserType:
                let i = Int(try f.u8())
                guard i < UserType.allCases.count else { throw .badValue }
                s.explicitUserType = Latest(value: UserType.allCases[i], stamp: try f.stamp())
            case .sawUserId: s.sawUserId = try f.u8() != 0
            case .email: try f.text(.email, into: &text)
            case .name: try f.text(.name, into: &text)
            case .role: try f.text(.role, into: &text)
            case .phone: try f.text(.phone, into: &text)
            case .timezone: try f.text(.timezone, into: &text)
            case .image: try f.text(.image, into: &text)
            case .leadDate: s.leadDate = try f.zigzag()
            case .signUpDate: s.signUpDate = try f.zigzag()
            case .firstVisit: s.firstVisitMs = try f.zigzag()
            case .lastSeen: s.lastSeenMs = try f.zigzag()
            case .country: try f.text(.country, into: &text)
            case .region: try f.text(.region, into: &text)
            case .city: try f.text(.city, into: &text)
            case .postalCode: try f.text(.postalCode, into: &text)
            case .countryCode: try f.text(.countryCode, into: &text)
            case .lastSubscription: try f.text(.lastSubscription, into: &text)
            case .subscriptions:
                let n = try f.count(limit: UserState.subscriptionLimit)
                for _ in 0..<n {
                    let id = try f.string()
                    _ = s.subscriptions.insert(id, at: try f.stamp(), limit: UserState.subscriptionLimit)
                }
            case .products:
                let n = try f.count(limit: UserState.productLimit)
                for _ in 0..<n {
                    let code = try f.string()
                    let env = try f.zigzag()
                    guard env != .min else { throw .badValue }
                    let key = ProductKey(product: code, environment: env == 0 ? nil : env - 1)
                    _ = s.products.insert(key, at: try f.stamp(), limit: UserState.productLimit)
                }
            case .custom:
                let n = try f.count(limit: 64)
                for _ in 0..<n {
                    let name = try f.string()
                    let json = try f.string()
                    s.custom.append(Latest(value: CustomTrait(name: name, json: json), stamp: try f.stamp()))
                }
            case .pqlTrait:
                let d = Double(bitPattern: try f.u64())
                guard d.isFinite, d >= 0, d <= 100 else { throw .badValue }  // as the fold accepts it
                s.pqlTrait = Latest(value: d, stamp: try f.stamp())
            case .visits: s.visits = UInt32(truncatingIfNeeded: try f.varint())
            case .spans:
                let n = try f.count(limit: UserState.maxSpans)
                for _ in 0..<n { s.spans.append(VisitSpan(start: try f.zigzag(), end: try f.zigzag())) }
            case .activeDays:
                s.activeDays = try f.u64()
                s.activeDayAnchor = Int32(truncatingIfNeeded: try f.zigzag())
            case .keyEventCounts:
                let n = try f.count(limit: FoldConfig.maxKeyEvents)
                for _ in 0..<n {
                    s.keyEventCounts.append(KeyEventCount(index: try f.u8(), count: UInt32(truncatingIfNeeded: try f.varint())))
                }
            case .applied:  // version 1
                let source = UInt32(truncatingIfNeeded: try f.varint())
                let offset = try f.zigzag()
                // Version 1 skipped every call at or below its offset: the whole message
                // was applied, so every call of it counts as applied.
                if offset >= 0 { s.appliedPositions = [AppliedPosition(source: source, offset: offset, call: .max, kafkaSeconds: 0)] }
            case .appliedPositions:
                let n = try f.count(limit: UserState.maxAppliedSources)
                var positions: [AppliedPosition] = []
                for _ in 0..<n {
                    let source = UInt32(truncatingIfNeeded: try f.varint())
                    let offset = try f.zigzag()
                    let call = UInt32(truncatingIfNeeded: try f.varint())
                    let kafkaSeconds = UInt32(truncatingIfNeeded: try f.varint())
                    guard offset >= 0 else { throw .badValue }
                    positions.append(AppliedPosition(source: source, offset: offset, call: call, kafkaSeconds: kafkaSeconds))
                }
                s.appliedPositions = positions
            case .dirty: dirty = try f.u8() != 0
            case .settledHash: hash = try f.u64()
            case .sourcePartitions: sourcePartitions = Int32(truncatingIfNeeded: try f.varint())
            case .markerOffset: markerOffset = try f.zigzag()
            case .markerTxn: markerTxn = StoredUser.MarkerTxn(epoch: try f.varint(), seq: try f.zigzag())
            case .hopsTaken, .hopsSent:
                let n = try f.count(limit: HopMark.maxTasks)
                var marks: [HopMark] = []
                for _ in 0..<n {
                    let task = try f.varint()
                    let offset = try f.zigzag()
                    let call = try f.varint()
                    guard task <= UInt64(Int32.max), offset >= 0, call <= UInt64(UInt32.max) else { throw .badValue }
                    marks.append(HopMark(task: Int32(task), offset: offset, call: UInt32(call)))
                }
                hops[t] = marks
            }
        }
        s.text = TextFields(text, from: bytes)
        var u = StoredUser(
            state: s, dirty: dirty, settledHash: hash, sourcePartitions: sourcePartitions, markerOffset: markerOffset, markerTxn: markerTxn)
        u.hopsTaken = hops[.hopsTaken] ?? []
        u.hopsSent = hops[.hopsSent] ?? []
        u.hopsKnown = hops[.hopsSent] != nil
        return u
    }
}

/// A first hop's source position with the task it concerns (``StoredUser/hopsTaken``,
/// ``StoredUser/hopsSent``): the source offset and the call's index in its message.
public struct HopMark: Sendable, Equatable {
    public var task: Int32
    public var offset: Int64
    public var call: UInt32
    public init(task: Int32, offset: Int64, call: UInt32) {
        self.task = task
        self.offset = offset
        self.call = call
    }

    /// The most tasks a marker lists (Kafka allows far fewer partitions in practice).
    public static let maxTasks = 100_000
}
