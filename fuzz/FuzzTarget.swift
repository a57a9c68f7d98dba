// libFuzzer entry point: every input is decoded as a Kafka message value; every event
// it yields is folded, projected, and the body checked against the documented schema.
// Any crash, sanitizer report or schema violation is a finding.
//
// Built by scripts/fuzz.sh together with the sources of Events, Folding and the schema
// checker, as one module.
import Foundation

private let decoder: SegmentDecoder = {
    var o = DecoderOptions()
    o.customAttributes = ["plan", "company"]
    return SegmentDecoder(options: o)
}()

private let config: FoldConfig = {
    var c = FoldConfig()
    c.customAttributes = ["plan", "company"]
    c.keyEvents = [.init(name: "Signed Up"), .init(name: "Paid", weight: 5, cap: 3)]
    c.sendNumberOfVisits = true
    return c
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let folder = Folder(config: config)
    let projector = Projector(config: config)
    var states: [String: UserState] = [:]
    let decoded = decoder.decode(bytes, nowMs: 1_764_000_000_000)
    // The engine's sink (events written in place, rolled back with their message) must
    // hold exactly the same calls, and no event without its outcome.
    var calls = DecodedCalls()
    decoder.decode(bytes, nowMs: 1_764_000_000_000, into: &calls)
    if (0..<calls.count).map({ calls[$0] }) != decoded
        || calls.events.count != calls.outcomes.filter({ if case .event = $0 { true } else { false } }).count
    {
        fatalError("DecodedCalls differs from [Decoded]")
    }
    // A Kafka timestamp from the input's last eight bytes (any Int64, absurd ones
    // included), resolved as the engine does: a call without a plausible payload time
    // takes it only if it is plausible too, else the call is invalid.
    var kafkaMs: Int64 = 1_764_000_000_000
    if size >= 8 { kafkaMs = UnsafeRawPointer(data + size - 8).loadUnaligned(as: Int64.self) }
    calls.resolveTimes(from: 0, kafkaMs: kafkaMs, nowMs: 1_764_000_000_000)
    // One message: every call shares its offset (as the engine folds it) and is told
    // apart by its index within the envelope. No call may be taken for a replay.
    var raw: [String: UserState] = [:]
    for i in 0..<calls.count {
        guard case .event(let e) = calls[i] else { continue }
        guard let t = e.timeMs, Timestamp.isPlausible(t, nowMs: 1_764_000_000_000) else {
            fatalError("call \(i) reached the fold without a plausible time")
        }
        if states[e.identity]?.hasApplied(source: 0, offset: 0, call: UInt32(i)) == true {
            fatalError("call \(i) of the envelope taken for a replay")
        }
        folder.fold(e, timeMs: t, offset: 0, call: UInt32(i), kafkaMs: kafkaMs, into: &states[e.identity, default: UserState()])
        // The raw Kafka time, unchecked, must not trap the fold either (a restored state
        // may hold any time).
        folder.fold(e, timeMs: kafkaMs, offset: Int64(i), into: &raw[e.identity, default: UserState()])
        folder.fold(e, timeMs: kafkaMs &+ Int64(i), offset: Int64(i) + 1_000, into: &raw[e.identity, default: UserState()])
    }
    for (id, s) in raw {
        var adj = Adjustments()
        _ = projector.body(identifyId: id, state: s, nowMs: 1_764_000_000_000, adjustments: &adj)
        _ = try? StateCodec.decode(StateCodec.encode(StoredUser(state: s, dirty: true, settledHash: 1)))
    }
    // The changelog decoder on the same bytes: it must never trap.
    _ = try? StateCodec.decode(Array(bytes))
    for (id, s) in states {
        var adj = Adjustments()
        guard let body = projector.body(identifyId: id, state: s, nowMs: 1_764_000_000_000, adjustments: &adj) else { continue }
        let v = FoldspaceSchema.violations(body: body, pathId: id)
        if !v.isEmpty { fatalError("schema violation \(v) in \(String(decoding: body, as: UTF8.self))") }
        // The state must survive the changelog format.
        let stored = StoredUser(state: s, dirty: true, settledHash: 1)
        guard let back = try? StateCodec.decode(StateCodec.encode(stored)), back == stored else {
            fatalError("state codec round trip failed for \(id)")
        }
    }
    return 0
}
