import Events
import Testing

@testable import Folding

/// The records of `<group>-repartition`: each kind comes back as written, the head tells
/// them apart, and no bytes make the decoder trap.
@Suite struct RepartitionRecordTests {
    private static let now: Int64 = 1_764_000_000_000

    static func state() -> UserState {
        let folder = Folder(config: FoldConfig())
        var s = UserState()
        var e = SegmentEvent(type: .identify, identity: "anon-1", hasUserId: false)
        var t = Traits()
        t.email = "ann@example.com"
        t.name = "Ann Lee"
        t.custom = [CustomTrait(name: "plan", json: #""pro""#)]
        e.traits = t
        e.product = ProductRef(product: "P1", environment: 2)
        folder.fold(e, timeMs: now - 86_400_000, offset: 3, source: 4, into: &s)
        folder.fold(SegmentEvent(type: .page, identity: "anon-1", hasUserId: false), timeMs: now, offset: 9, source: 4, into: &s)
        return s
    }

    static func samples() -> [RepartitionRecord] {
        var e = SegmentEvent(type: .track, identity: "user-7", hasUserId: true)
        e.linkedId = "anon-\u{1F600}"
        e.eventName = "Signed \"Up\""
        return [
            .call(target: "user-7", hops: 0, event: e, timeMs: now),
            .call(target: "canon-李", hops: 16, event: e, timeMs: now),
            // Calls for one partition in one record, as a checkpoint writes them.
            .calls([
                .init(target: "user-7", hops: 0, body: e.compact(timeMs: now)),
                .init(target: "canon-李", hops: 16, body: e.compact(timeMs: now - 1)),
                .init(target: String(repeating: "x", count: RepartitionRecord.maxIdentityBytes), hops: 255, body: [0xFF]),
            ]),
            // As builds before the compact form wrote a call.
            .call(target: "user-7", hops: 2, json: e.segmentJSON(timeMs: now)),
            .link(id: "anon-1", canonical: "user-7", timeMs: now, hops: 0),
            .link(id: "a", canonical: String(repeating: "é", count: 255), timeMs: .min, hops: 255),
            .merge(from: "anon-1", into: "user-7", state: state(), hops: 1),
            .merge(from: "x", into: "y", state: UserState(), hops: 0),
        ]
    }

    @Test func everyKindRoundTrips() throws {
        for r in Self.samples() {
            let (key, value) = r.encode()
            #expect(key == Array(r.target.utf8))
            #expect(value[2] == r.hops)
            let back = try RepartitionRecord.decode(key: key, value: value)
            #expect(back == r)
            #expect(back.target == r.target && back.hops == r.hops)
        }
    }

    /// The head's first byte names the kind; a forwarded call's value is the call in its
    /// compact form from the fourth byte, which the decoder reads back to the event; a
    /// call as earlier builds wrote it (Segment JSON, kind `c`) is still read.
    @Test func aCallCarriesItsEventInCompactForm() throws {
        var e = SegmentEvent(type: .identify, identity: "user-7", hasUserId: true)
        e.linkedId = "anon-1"
        var t = Traits()
        t.firstName = "Ann"
        e.traits = t
        let (key, value) = RepartitionRecord.call(target: "canon", hops: 3, event: e, timeMs: Self.now).encode()
        #expect(key == Array("canon".utf8))
        // Untagged: version 1, as builds before transaction tags wrote it.
        #expect(Array(value.prefix(3)) == [UInt8(ascii: "e"), 1, 3])
        guard case .calls(let forwarded) = try RepartitionRecord.decode(key: key, value: value), forwarded.count == 1 else {
            Issue.record("not a call")
            return
        }
        #expect(forwarded[0].target == "canon" && forwarded[0].hops == 3)
        var want = e
        want.timeMs = Self.now
        var calls = DecodedCalls()
        #expect(forwarded[0].body.withUnsafeBufferPointer { SegmentDecoder().decodeCompact($0, nowMs: Self.now, into: &calls) })
        #expect(calls.count == 1 && calls[0] == .event(want))
        let (_, legacy) = RepartitionRecord.call(target: "canon", hops: 3, json: e.segmentJSON(timeMs: Self.now)).encode()
        #expect(Array(legacy.prefix(4)) == [UInt8(ascii: "c"), 1, 3, UInt8(ascii: "{")])
        guard case .call(_, _, let json) = try RepartitionRecord.decode(key: key, value: legacy) else {
            Issue.record("not a call")
            return
        }
        #expect(SegmentDecoder().decode(json, nowMs: Self.now) == [.event(want)])
        let link = RepartitionRecord.link(id: "a", canonical: "b", timeMs: 1, hops: 0).encode().value
        let merge = RepartitionRecord.merge(from: "a", into: "b", state: UserState(), hops: 0).encode().value
        #expect(link[0] == UInt8(ascii: "l") && merge[0] == UInt8(ascii: "m"))
    }

    /// Version 2: every kind carries the tag of the transaction that wrote it, which the
    /// head gives back without the payload; a notice round-trips; a call's JSON is read
    /// in place past the tag; version 1 records and other bytes have no tag.
    @Test func taggedRecordsAndNoticesRoundTrip() throws {
        let tags = [
            RepartitionRecord.Tag(task: 0, epoch: 1, seq: 0),
            RepartitionRecord.Tag(task: 255, epoch: .max, seq: .max),
            RepartitionRecord.Tag(task: .max, epoch: 0x1234_5678_9ABC, seq: 70_000),
        ]
        for r in Self.samples() {
            let untagged = r.encode()
            #expect(RepartitionRecord.head(value: untagged.value.withUnsafeBufferPointer { $0 }) == .untagged)
            for tag in tags {
                let (key, value) = r.encode(tag: tag)
                #expect(value[1] == RepartitionRecord.version && value[2] == r.hops)
                #expect(try RepartitionRecord.decode(key: key, value: value) == r)
                value.withUnsafeBufferPointer { v in
                    #expect(RepartitionRecord.head(value: v) == .tagged(tag))
                    key.withUnsafeBufferPointer { k in
                        var seen: [RepartitionRecord.ForwardedCall] = []
                        var compact: [Bool] = []
                        let read = RepartitionRecord.forEachCall(key: k, value: v) { c in
                            seen.append(.init(target: String(decoding: c.target, as: UTF8.self), hops: c.hops, body: Array(c.payload)))
                            compact.append(c.compact)
                            return true
                        }
                        switch r {
                        case .call(let target, let hops, let json):
                            #expect(read && seen == [.init(target: target, hops: hops, body: json)] && compact == [false])
                        case .calls(let calls):
                            #expect(read && seen == calls && compact.allSatisfy { $0 })
                        default:
                            #expect(!read && seen.isEmpty)
                        }
                    }
                }
            }
        }
        for notice in [
            RepartitionRecord.notice(task: 3, epoch: 77, through: -1), .notice(task: 0, epoch: .max, through: .max),
            .notice(task: 9, epoch: 0, through: 12),
        ] {
            let (key, value) = notice.encode()
            #expect(try RepartitionRecord.decode(key: key, value: value) == notice)
            guard case .notice(let task, let epoch, let through) = notice else { continue }
            #expect(
                RepartitionRecord.head(value: value.withUnsafeBufferPointer { $0 }) == .notice(task: task, epoch: epoch, through: through))
            // Bytes after a notice's fields: no notice.
            #expect(throws: RepartitionRecord.DecodeError.badValue) { try RepartitionRecord.decode(key: key, value: value + [0]) }
            #expect(RepartitionRecord.head(value: (value + [0]).withUnsafeBufferPointer { $0 }) == .untagged)
        }
        // A notice of version 1 never existed.
        #expect(throws: RepartitionRecord.DecodeError.badValue) {
            try RepartitionRecord.decode(key: RepartitionRecord.noticeKey, value: [0x6E, 1, 0, 0, 0, 0])
        }
        #expect(RepartitionRecord.head(value: Array(#"{"type":"page"}"#.utf8).withUnsafeBufferPointer { $0 }) == .untagged)
    }

    /// Version 3: a first hop carries its source position (task, offset, call), read back
    /// by both decoders; a call forwarded on carries none, and its size is what
    /// ``RepartitionRecord/ForwardedCall/encodedBytes`` says.
    @Test func firstHopsCarryTheirSourcePosition() throws {
        let calls = [
            RepartitionRecord.ForwardedCall(target: "a-1", hops: 1, body: [1, 2, 3], origin: HopMark(task: 3, offset: 0, call: 0)),
            .init(target: "person-2", hops: 1, body: [4], origin: HopMark(task: 3, offset: .max, call: .max)),
            .init(target: "a-3", hops: 2, body: [5, 6], origin: nil),
            .init(target: "a-4", hops: 1, body: [7], origin: HopMark(task: 3, offset: 1_234_567, call: 1_999)),
        ]
        let tag = RepartitionRecord.Tag(task: 3, epoch: 9, seq: 4)
        let record = RepartitionRecord.calls(calls)
        let (key, value) = record.encode(tag: tag)
        #expect(try RepartitionRecord.decode(key: key, value: value) == record)
        // An origin naming another task than the record's writer is read as none: every
        // first hop is written by the task it was read at.
        var forged = calls
        forged[1].origin = HopMark(task: 15, offset: .max, call: 0)
        forged[3].origin = HopMark(task: .max, offset: 9, call: 0)
        let f = RepartitionRecord.calls(forged).encode(tag: tag)
        guard case .calls(let forgedRead) = try RepartitionRecord.decode(key: f.key, value: f.value) else {
            Issue.record("not calls")
            return
        }
        #expect(forgedRead.map(\.origin) == [calls[0].origin, nil, nil, nil])
        let frame = RepartitionRecord.calls([]).encode(tag: tag).value.count
        // The count's varint grows from zero calls to four by nothing.
        #expect(value.count == frame + calls.reduce(0) { $0 + $1.encodedBytes })
        var origins: [HopMark?] = []
        let read = key.withUnsafeBufferPointer { k in
            value.withUnsafeBufferPointer { v in
                RepartitionRecord.forEachCall(key: k, value: v) { c in
                    origins.append(c.origin)
                    return true
                }
            }
        }
        #expect(read && origins == calls.map(\.origin))
        // Untagged (version 1, as tests write old records): no positions.
        let old = RepartitionRecord.calls(calls).encode()
        guard case .calls(let decoded) = try RepartitionRecord.decode(key: old.key, value: old.value) else {
            Issue.record("not calls")
            return
        }
        #expect(decoded.allSatisfy { $0.origin == nil } && decoded.map(\.body) == calls.map(\.body))
    }

    @Test func refusesWhatItCannotRead() throws {
        let (key, link) = RepartitionRecord.link(id: "anon-1", canonical: "user-7", timeMs: Self.now, hops: 0).encode()
        #expect(throws: RepartitionRecord.DecodeError.badKey) { try RepartitionRecord.decode(key: [], value: link) }
        #expect(throws: RepartitionRecord.DecodeError.badKey) { try RepartitionRecord.decode(key: [0xC3], value: link) }
        let tooLong = [UInt8](repeating: 0x61, count: RepartitionRecord.maxIdentityBytes + 1)
        #expect(throws: RepartitionRecord.DecodeError.badKey) { try RepartitionRecord.decode(key: tooLong, value: link) }
        #expect(throws: RepartitionRecord.DecodeError.truncated) { try RepartitionRecord.decode(key: key, value: Array(link.prefix(2))) }
        // A bare Segment call is no record.
        #expect(throws: RepartitionRecord.DecodeError.unknownKind(UInt8(ascii: "{"))) {
            try RepartitionRecord.decode(key: key, value: Array(#"{"type":"page","userId":"u"}"#.utf8))
        }
        var newer = link
        newer[1] = RepartitionRecord.version &+ 1
        #expect(throws: RepartitionRecord.DecodeError.newerVersion(RepartitionRecord.version &+ 1)) {
            try RepartitionRecord.decode(key: key, value: newer)
        }
        var zero = link
        zero[1] = 0
        #expect(throws: RepartitionRecord.DecodeError.unsupportedVersion(0)) { try RepartitionRecord.decode(key: key, value: zero) }
        #expect(throws: RepartitionRecord.DecodeError.badValue) { try RepartitionRecord.decode(key: key, value: link + [0]) }
        #expect(throws: RepartitionRecord.DecodeError.truncated) {
            try RepartitionRecord.decode(key: key, value: Array(link.dropLast()))
        }
        // Records of calls: none, an empty target, a body running past the end, bytes after
        // the last call.
        let calls = RepartitionRecord.calls([.init(target: "u", hops: 1, body: [1, 2])]).encode().value
        #expect(Array(calls) == [UInt8(ascii: "e"), 1, 1, 1, 1, UInt8(ascii: "u"), 1, 2, 1, 2])
        for bad in [
            [UInt8(ascii: "e"), 1, 0, 0], [UInt8(ascii: "e"), 1, 0, 1, 0, 0, 0], [UInt8(ascii: "e"), 1, 0, 1, 1, 0x75, 0, 3, 1],
            calls + [0],
        ] {
            #expect(throws: RepartitionRecord.DecodeError.self) { try RepartitionRecord.decode(key: key, value: bad) }
            let read = key.withUnsafeBufferPointer { k in
                bad.withUnsafeBufferPointer { v in RepartitionRecord.forEachCall(key: k, value: v) { _ in true } }
            }
            #expect(!read)
        }
        // More calls than a reader decodes at once.
        let many = (0...RepartitionRecord.maxBatchCalls).map { _ in RepartitionRecord.ForwardedCall(target: "u", hops: 0, body: [1]) }
        let (_, tooMany) = RepartitionRecord.calls(many).encode()
        #expect(throws: RepartitionRecord.DecodeError.badValue) { try RepartitionRecord.decode(key: key, value: tooMany) }
        let (_, enough) = RepartitionRecord.calls(Array(many.dropLast())).encode()
        #expect(throws: Never.self) { try RepartitionRecord.decode(key: key, value: enough) }
        // A link to an empty canonical id.
        #expect(throws: RepartitionRecord.DecodeError.badValue) {
            try RepartitionRecord.decode(key: key, value: [UInt8(ascii: "l"), 1, 0, 0x02, 0x00])
        }
        let (mk, merge) = RepartitionRecord.merge(from: "anon-1", into: "user-7", state: Self.state(), hops: 0).encode()
        // The state's magic replaced.
        var bad = merge
        bad[3 + 1 + 6] = 0x00
        #expect(throws: RepartitionRecord.DecodeError.badState(.badMagic)) { try RepartitionRecord.decode(key: mk, value: bad) }
        // A changelog marker is no state.
        let marker = [UInt8(ascii: "m"), 1, 0, 0x01, 0x61] + StateCodec.encodeMarker(committedOffset: 5, sourcePartitions: 2)
        #expect(throws: RepartitionRecord.DecodeError.badValue) { try RepartitionRecord.decode(key: mk, value: marker) }
    }

    /// Random bytes, and good records of every kind with bytes changed, cut short or
    /// lengthened: decoding returns or throws, never traps; a changed record that
    /// decodes encodes to a record that decodes to itself.
    @Test func decodingArbitraryBytesNeverTraps() async {
        var rng = SystemRandomNumberGenerator()
        let tag = RepartitionRecord.Tag(task: 1, epoch: 0xABCDEF, seq: 5)
        let good =
            Self.samples().map { $0.encode() } + Self.samples().map { $0.encode(tag: tag) }
            + [RepartitionRecord.notice(task: 2, epoch: 9, through: 4).encode()]
        let kinds: [UInt8] = [0x63, 0x65, 0x6C, 0x6D, 0x6E, 0x7B, 0x00]
        var decoded = 0
        for round in 0..<20_000 {
            if round % 1_000 == 0 { await Task.yield() }  // CPU-bound: let the pool run other tests
            var (key, value) = good.randomElement(using: &rng)!
            switch round % 4 {
            case 0:
                value = [kinds.randomElement(using: &rng)!, UInt8.random(in: 0...2, using: &rng)]
                for _ in 0..<Int.random(in: 0..<48, using: &rng) { value.append(UInt8.random(in: 0...255, using: &rng)) }
            case 1:
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    value[Int.random(in: 0..<value.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
            case 2:
                value = Array(value.prefix(Int.random(in: 0..<value.count, using: &rng)))
            default:
                value += [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01].prefix(Int.random(in: 1...10, using: &rng))
                if Bool.random(using: &rng), !key.isEmpty { key[Int.random(in: 0..<key.count, using: &rng)] = 0xFF }
            }
            _ = value.withUnsafeBufferPointer { RepartitionRecord.head(value: $0) }
            guard let r = try? RepartitionRecord.decode(key: key, value: value) else { continue }
            decoded += 1
            let again = r.encode()
            #expect((try? RepartitionRecord.decode(key: again.key, value: again.value)) == r)
        }
        #expect(decoded > 0, "some changed records still decode (calls: the JSON is not checked here)")
    }
}
