import Events

/// One record of `<group>-repartition` (docs/identity.md, "Routing one call"): a call
/// forwarded to the owner of its target, a link request "id → canonical" to the owner of
/// the id, or the folded state of an id handed over to the owner of its canonical id.
///
/// Framing. The key is the record's ``target`` as UTF-8: the identity whose owner reads
/// it, as every record of the topic is keyed by the identity it is routed by. The value
/// is a three-byte head, the writing transaction's tag (version 2) and a payload:
///
///     kind (1 byte) · version (1 byte, now 2) · hops (1 byte) · tag · payload
///
/// - tag (version 2; version 1 records have none): the task that wrote the record
///   (varint), its writer's epoch (varint, random per ownership of the task) and the
///   transaction's sequence number in that epoch (zigzag varint). A reader folds a tagged
///   record only once a notice of the same task says the transaction committed
///   (``TransactionGate``): brokers that do not hide an aborted transaction's records
///   (librdkafka's mock, tansu) show them to `read_committed` readers, and a checkpoint
///   cut by a crash would otherwise be half read.
/// - kind `n` (0x6E): a notice, written at the head of a task's next transaction into
///   every partition that holds its records still unresolved (and into every partition
///   when a new owner starts): "of this task, transactions up to `through` of `epoch`
///   committed; every other record of the task before this notice did not". Its payload
///   is the task (varint), the epoch (varint) and `through` (zigzag varint, -1: none);
///   its key is not read.
///
/// - kind `e` (0x65): calls, one or more, for one partition; the payload is their count
///   (varint) and, for each, its target (varint length, UTF-8: the identity whose owner
///   reads it), its hops (1 byte) and the decoded call in its compact binary form (varint
///   length, ``SegmentEvent/appendCompact(timeMs:to:)``), read by
///   ``SegmentDecoder/decodeCompact(_:nowMs:into:)`` as the JSON below would be decoded.
///   The key is the first call's target (not read); the head's hops are the first call's.
///   A checkpoint writes the calls a task routes to one partition in a row as one record
///   (up to ``maxBatchCalls`` and ``maxBatchBytes``): one message, one tag and one pass of
///   the gate for hundreds of calls. Builds before it wrote kind `c` and refuse this one (as an unknown
///   kind).
/// - kind `c` (0x63): a call as one compact Segment-spec JSON object
///   (``SegmentEvent/segmentJSON(timeMs:)``), decoded by ``SegmentDecoder``: what builds
///   before kind `e` wrote, still read (records an upgrade left in the topic).
/// - kind `l` (0x6C): a link request; key = the id to link; the payload is the event
///   time of the link (zigzag varint, epoch milliseconds) then the canonical id
///   (varint length, UTF-8).
/// - kind `m` (0x6D): a merge; key = the canonical id; the payload is the id the state
///   was folded under (varint length, UTF-8), then the state as ``StateCodec`` writes a
///   changelog value (the rest of the value).
///
/// Why a head in the value, and not Kafka headers or a bare JSON call told apart by its
/// `{`: a consumed message exposes key, value and time only (`ConsumedMessage` in the
/// Kafka module carries no headers, and reading them would cost a librdkafka call and a
/// parse per message), and a call needs its hop count beside it like the other two kinds.
/// Three fixed bytes cost nothing to read, tell the kinds apart at once, and leave the
/// call's payload whole after the tag, where the decoder reads it in place. A
/// Segment call written to this topic by mistake starts with `{`, which is no kind, and
/// is refused. A later format bumps the version, which this build refuses
/// (``DecodeError/newerVersion(_:)``) rather than misread.
///
/// Decoding never traps, whatever the bytes: every length is checked against what is
/// left, ids must be non-empty UTF-8 of at most ``maxIdentityBytes``, a link's payload
/// must end where its canonical id does, and a merge's state must decode.
public enum RepartitionRecord: Sendable, Equatable {
    /// A call forwarded to `owner(target)`, as earlier builds wrote it. `json` is one
    /// Segment call (not validated here: the decoder that reads it reports a bad one like
    /// any input).
    case call(target: String, hops: UInt8, json: [UInt8])
    /// Calls forwarded to the owner of their targets (one partition), in their compact
    /// form (not validated here either).
    case calls([ForwardedCall])
    /// "`id` → `canonical`", for `owner(id)`, with the event time of the call that linked
    /// them.
    case link(id: String, canonical: String, timeMs: Int64, hops: UInt8)
    /// The folded state of `from`, for `owner(into)` to merge into `into`'s.
    case merge(from: String, into: String, state: UserState, hops: UInt8)
    /// Of task `task`'s records before it in the partition: those of transactions up to
    /// `through` of `epoch` committed, every other one did not (docs/identity.md,
    /// "Transactions on brokers that show aborted records").
    case notice(task: Int32, epoch: UInt64, through: Int64)

    /// A call forwarded to `owner(target)`, `hops` times so far, in its compact form.
    public struct ForwardedCall: Sendable, Equatable {
        public var target: String
        public var hops: UInt8
        public var body: [UInt8]
        /// A first hop's source position (version 3): the task whose source partition the
        /// call was read from, its offset there and its index in its message. The reader
        /// skips a first hop at or below the furthest it has taken from that partition
        /// (docs/identity.md, "A hop that stays in the process"). Nil on a call forwarded
        /// on (hops above 0).
        public var origin: HopMark?
        public init(target: String, hops: UInt8, body: [UInt8], origin: HopMark? = nil) {
            self.target = target
            self.hops = hops
            self.body = body
            self.origin = origin
        }

        /// What it adds to a kind `e` record: its four fields and their lengths.
        public var encodedBytes: Int {
            Self.varintBytes(target.utf8.count) + target.utf8.count + 1 + originBytes + Self.varintBytes(body.count) + body.count
        }

        var originBytes: Int {
            guard let o = origin else { return 1 }
            let zigzag = UInt64(bitPattern: (o.offset << 1) ^ (o.offset >> 63))
            return Self.varintBytes(UInt64(UInt32(bitPattern: o.task)) + 1) + Self.varintBytes(zigzag) + Self.varintBytes(UInt64(o.call))
        }

        static func varintBytes(_ n: Int) -> Int { varintBytes(UInt64(n)) }

        static func varintBytes(_ n: UInt64) -> Int {
            var n = n
            var bytes = 1
            while n >= 0x80 {
                n >>= 7
                bytes += 1
            }
            return bytes
        }
    }

    /// The most bytes of calls a checkpoint puts in one kind `e` record (below the
    /// producer's limit, which also bounds it): large enough that a record's fixed costs
    /// (a message to produce, fetch and pass through the gate) are spread over hundreds of
    /// calls, small enough that a batch is a small share of the gate's 64 MiB.
    public static let maxBatchBytes = 256 * 1024
    /// The most calls in one kind `e` record, written or read (one with more is refused):
    /// a reader decodes a record's calls at once, into memory that holds a decoded call in
    /// about 560 bytes, and a poll batch holds up to a thousand records. With
    /// `max_batch_events`' default for the source's batch envelopes, the same bound.
    public static let maxBatchCalls = 2000

    /// The transaction that wrote a record (version 2).
    public struct Tag: Sendable, Hashable {
        public var task: Int32
        public var epoch: UInt64
        public var seq: Int64
        public init(task: Int32, epoch: UInt64, seq: Int64) {
            self.task = task
            self.epoch = epoch
            self.seq = seq
        }
    }

    /// The format version written (3: calls carry their first hop's source position).
    public static let version: UInt8 = 3
    /// The longest id in bytes: Foldspace takes ids of at most 255 characters (the
    /// decoder refuses longer ones), 4 bytes each at most.
    public static let maxIdentityBytes = 1020

    enum Kind: UInt8 {
        case call = 0x63, calls = 0x65, link = 0x6C, merge = 0x6D, notice = 0x6E
    }

    /// The key notices are written under (not read).
    public static let noticeKey = Array("foldspace-sync.notice".utf8)

    public enum DecodeError: Error, Equatable {
        /// The value is shorter than its head, or a length runs past its end.
        case truncated
        /// The first byte names no kind.
        case unknownKind(UInt8)
        /// Version 0: never written.
        case unsupportedVersion(UInt8)
        /// Written by a later format version than this build reads.
        case newerVersion(UInt8)
        /// The key (the target) is empty, too long or not UTF-8.
        case badKey
        /// A field of the payload is out of its range, or bytes follow a link's fields.
        case badValue
        /// A merge's state does not decode.
        case badState(StateCodec.DecodeError)
    }

    /// A forwarded call of `event`, whose time the engine resolved as `timeMs`.
    public static func call(target: String, hops: UInt8, event: SegmentEvent, timeMs: Int64) -> RepartitionRecord {
        .calls([ForwardedCall(target: target, hops: hops, body: event.compact(timeMs: timeMs))])
    }

    /// The identity whose owner reads the record (its key).
    public var target: String {
        switch self {
        case .call(let target, _, _): target
        case .calls(let calls): calls.first?.target ?? ""
        case .link(let id, _, _, _): id
        case .merge(_, let into, _, _): into
        case .notice: String(decoding: Self.noticeKey, as: UTF8.self)
        }
    }

    /// How many times the record has been forwarded from the owner it was written to.
    public var hops: UInt8 {
        switch self {
        case .call(_, let hops, _), .link(_, _, _, let hops), .merge(_, _, _, let hops): hops
        case .calls(let calls): calls.first?.hops ?? 0
        case .notice: 0
        }
    }

    // MARK: Encoding

    /// The record as written by the transaction `tag` (nil: version 1, untagged, as
    /// builds before tags wrote it; tests read both).
    public func encode(tag: Tag? = nil) -> (key: [UInt8], value: [UInt8]) {
        var w = StateCodec.Writer()
        func head(_ kind: Kind, _ hops: UInt8) {
            w.bytes.append(contentsOf: [kind.rawValue, tag == nil ? 1 : Self.version, hops])
            if let tag {
                w.varint(UInt64(UInt32(bitPattern: tag.task)))
                w.varint(tag.epoch)
                w.zigzag(tag.seq)
            }
        }
        switch self {
        case .call(let target, let hops, let json):
            w.bytes.reserveCapacity(3 + 24 + json.count)
            head(.call, hops)
            w.bytes.append(contentsOf: json)
            return (Array(target.utf8), w.bytes)
        case .calls(let calls):
            w.bytes.reserveCapacity(3 + 24 + 5 + calls.reduce(0) { $0 + $1.encodedBytes })
            head(.calls, calls.first?.hops ?? 0)
            w.varint(UInt64(calls.count))
            for c in calls {
                w.string(c.target)
                w.u8(c.hops)
                if tag != nil {
                    // Version 3: the first hop's source position (task + 1; 0: none).
                    if let o = c.origin {
                        w.varint(UInt64(UInt32(bitPattern: o.task)) + 1)
                        w.zigzag(o.offset)
                        w.varint(UInt64(o.call))
                    } else {
                        w.varint(0)
                    }
                }
                w.varint(UInt64(c.body.count))
                w.bytes.append(contentsOf: c.body)
            }
            return (Array((calls.first?.target ?? "").utf8), w.bytes)
        case .link(let id, let canonical, let timeMs, let hops):
            head(.link, hops)
            w.zigzag(timeMs)
            w.string(canonical)
            return (Array(id.utf8), w.bytes)
        case .notice(let task, let epoch, let through):
            w.bytes.append(contentsOf: [Kind.notice.rawValue, Self.version, 0])
            w.varint(UInt64(UInt32(bitPattern: task)))
            w.varint(epoch)
            w.zigzag(through)
            return (Self.noticeKey, w.bytes)
        case .merge(let from, let into, let state, let hops):
            head(.merge, hops)
            w.string(from)
            w.bytes.append(contentsOf: StateCodec.encode(StoredUser(state: state, dirty: false, settledHash: 0)))
            return (Array(into.utf8), w.bytes)
        }
    }

    // MARK: Decoding

    /// One call of a routed record, read in place: its target, hops and payload, which
    /// is the compact form (kind `e`) or Segment JSON (kind `c`).
    public struct CallView {
        public var target: UnsafeBufferPointer<UInt8>
        public var hops: UInt8
        public var compact: Bool
        public var payload: UnsafeBufferPointer<UInt8>
        /// A first hop's source position (``ForwardedCall/origin``).
        public var origin: HopMark?
    }

    /// Calls `body` with each call of a routed record of calls, in order, read in place
    /// (every target a valid id), when `key` and `value` are one this version can read;
    /// returns false, having called `body` for none, otherwise (``decode(key:value:)``
    /// says why), or as soon as `body` does. For the engine's parallel decode, which
    /// decodes them with the source's calls.
    public static func forEachCall(
        key: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>, _ body: (CallView) -> Bool
    ) -> Bool {
        guard value.count > 3, value[0] == Kind.call.rawValue || value[0] == Kind.calls.rawValue, value[1] >= 1,
            value[1] <= version
        else { return false }
        var r = StateCodec.Reader(bytes: value, pos: 3)
        var writer: Int32?
        if value[1] >= 2 {
            guard let tag = try? readTag(&r), !r.atEnd else { return false }
            writer = tag.task
        }
        if value[0] == Kind.call.rawValue {
            guard isIdentity(key) else { return false }
            return body(CallView(target: key, hops: value[2], compact: false, payload: UnsafeBufferPointer(rebasing: value[r.pos...])))
        }
        // Framing first, whole: `body` sees no call of a record that does not read to its end.
        guard let calls = try? readCalls(&r, version: value[1], writer: writer), r.atEnd else { return false }
        for c in calls {
            let view = CallView(
                target: UnsafeBufferPointer(rebasing: value[c.target]), hops: c.hops, compact: true,
                payload: UnsafeBufferPointer(rebasing: value[c.body]), origin: c.origin)
            guard body(view) else { return false }
        }
        return true
    }

    /// The calls of a kind `e` payload, as where their fields are in the value.
    /// An origin is kept only when it names the record's writer (`writer`): every first
    /// hop is written by the task whose source partition it was read from, and an origin
    /// naming another (damage, or a forged record) would make its reader skip that task's
    /// first hops below it.
    private static func readCalls(
        _ r: inout StateCodec.Reader, version: UInt8, writer: Int32?
    ) throws(StateCodec.DecodeError) -> [(target: Range<Int>, hops: UInt8, body: Range<Int>, origin: HopMark?)] {
        let n = try r.varint()
        // Each call takes four bytes at least.
        guard n >= 1, n <= UInt64(maxBatchCalls), n <= UInt64(r.end - r.pos) / 4 else { throw .badValue }
        var out: [(target: Range<Int>, hops: UInt8, body: Range<Int>, origin: HopMark?)] = []
        out.reserveCapacity(Int(n))
        for _ in 0..<Int(n) {
            let target = try r.utf8()
            guard isIdentity(UnsafeBufferPointer(rebasing: r.bytes[target])) else { throw .badValue }
            let hops = try r.u8()
            var origin: HopMark?
            if version >= 3 {
                let task = try r.varint()
                if task > 0 {
                    let offset = try r.zigzag()
                    let call = try r.varint()
                    guard task - 1 <= UInt64(Int32.max), offset >= 0, call <= UInt64(UInt32.max) else { throw .badValue }
                    if Int32(task - 1) == writer { origin = HopMark(task: Int32(task - 1), offset: offset, call: UInt32(call)) }
                }
            }
            let length = try r.length()
            out.append((target, hops, r.pos..<(r.pos + length), origin))
            r.pos += length
        }
        return out
    }

    /// What a record's head says of the transaction that wrote it, read without the
    /// payload: for ``TransactionGate``, which holds tagged records until a notice of
    /// their task resolves them.
    public enum Head: Equatable, Sendable {
        /// Written by transaction `tag`.
        case tagged(Tag)
        /// A notice.
        case notice(task: Int32, epoch: UInt64, through: Int64)
        /// Version 1 (untagged), or not a record of this format at all (the engine reads
        /// and refuses it as it did before tags).
        case untagged
    }

    /// How many calls a record holds, read from its head (1 for any other record or
    /// bytes, at most ``maxBatchCalls``): for the engine, which decodes a batch of messages
    /// in slices of a bounded number of calls.
    public static func callCount(value: UnsafeBufferPointer<UInt8>) -> Int {
        guard value.count > 3, value[0] == Kind.calls.rawValue, value[1] >= 1, value[1] <= version else { return 1 }
        var r = StateCodec.Reader(bytes: value, pos: 3)
        if value[1] >= 2 && (try? readTag(&r)) == nil { return 1 }
        guard let n = try? r.varint(), n >= 1 else { return 1 }
        return Int(min(n, UInt64(maxBatchCalls)))
    }

    public static func head(value: UnsafeBufferPointer<UInt8>) -> Head {
        guard value.count >= 3, Kind(rawValue: value[0]) != nil, value[1] >= 2, value[1] <= version else { return .untagged }
        var r = StateCodec.Reader(bytes: value, pos: 3)
        guard let tag = try? readTag(&r) else { return .untagged }
        if value[0] == Kind.notice.rawValue {
            guard r.atEnd else { return .untagged }
            return .notice(task: tag.task, epoch: tag.epoch, through: tag.seq)
        }
        return .tagged(tag)
    }

    /// A tag (or a notice's payload, which has its shape).
    static func readTag(_ r: inout StateCodec.Reader) throws(StateCodec.DecodeError) -> Tag {
        let task = try r.varint()
        let epoch = try r.varint()
        let seq = try r.zigzag()
        guard task <= UInt64(Int32.max) else { throw .badValue }
        return Tag(task: Int32(task), epoch: epoch, seq: seq)
    }

    public static func decode(key: [UInt8], value: [UInt8]) throws(DecodeError) -> RepartitionRecord {
        try key.withUnsafeBufferPointer { (k) throws(DecodeError) -> RepartitionRecord in
            try value.withUnsafeBufferPointer { (v) throws(DecodeError) -> RepartitionRecord in try decode(key: k, value: v) }
        }
    }

    /// As ``decode(key:value:)-([UInt8],_)``, from bytes held elsewhere (a consumed
    /// message's, read only during the call).
    public static func decode(key: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) throws(DecodeError) -> RepartitionRecord {
        guard value.count >= 3 else { throw .truncated }
        guard let kind = Kind(rawValue: value[0]) else { throw .unknownKind(value[0]) }
        let v = value[1]
        guard v >= 1 else { throw .unsupportedVersion(v) }
        guard v <= version else { throw .newerVersion(v) }
        let hops = value[2]
        var r = StateCodec.Reader(bytes: value, pos: 3)
        var writer: Int32?
        if v >= 2 {
            let tag: Tag
            do {
                tag = try readTag(&r)
            } catch {
                throw error == .truncated ? .truncated : .badValue
            }
            writer = tag.task
            if kind == .notice {
                guard r.atEnd else { throw .badValue }
                return .notice(task: tag.task, epoch: tag.epoch, through: tag.seq)
            }
        } else if kind == .notice {
            throw .badValue
        }
        // A record of calls names its targets inside; its key is not read.
        guard let target = kind == .calls ? "" : identity(key) else { throw .badKey }
        switch kind {
        case .notice:
            throw .badValue
        case .call:
            return .call(target: target, hops: hops, json: Array(UnsafeBufferPointer(rebasing: value[r.pos...])))
        case .calls:
            let calls: [(target: Range<Int>, hops: UInt8, body: Range<Int>, origin: HopMark?)]
            do {
                calls = try readCalls(&r, version: v, writer: writer)
            } catch {
                throw error == .truncated ? .truncated : .badValue
            }
            guard r.atEnd else { throw .badValue }
            return .calls(
                calls.map {
                    ForwardedCall(
                        target: String(decoding: UnsafeBufferPointer(rebasing: value[$0.target]), as: UTF8.self), hops: $0.hops,
                        body: Array(UnsafeBufferPointer(rebasing: value[$0.body])), origin: v >= 3 ? $0.origin : nil)
                })
        case .link:
            let timeMs: Int64
            let canonical: Range<Int>
            do {
                timeMs = try r.zigzag()
                canonical = try r.utf8()
            } catch {
                throw error == .truncated ? .truncated : .badValue
            }
            guard let id = identity(UnsafeBufferPointer(rebasing: value[canonical])), r.atEnd else { throw .badValue }
            return .link(id: target, canonical: id, timeMs: timeMs, hops: hops)
        case .merge:
            let from: Range<Int>
            do {
                from = try r.utf8()
            } catch {
                throw error == .truncated ? .truncated : .badValue
            }
            guard let fromId = identity(UnsafeBufferPointer(rebasing: value[from])) else { throw .badValue }
            let stored: StoredUser
            do {
                stored = try StateCodec.decode(UnsafeBufferPointer(rebasing: value[r.pos...]))
            } catch {
                throw .badState(error)
            }
            // A changelog marker is no user's state.
            guard stored.markerOffset == nil else { throw .badValue }
            return .merge(from: fromId, into: target, state: stored.state, hops: hops)
        }
    }

    /// `bytes` as an id: non-empty UTF-8 of at most ``maxIdentityBytes``.
    private static func identity(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
        guard isIdentity(bytes) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func isIdentity(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        !bytes.isEmpty && bytes.count <= maxIdentityBytes && UTF8Check.isValid(bytes)
    }
}
