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
        || calls.events.count != calls.outcomes.filter({ if case .event = $0 { true } else { false } }).count {
        fatalError("DecodedCalls differs from [Decoded]")
    }
    // One message: every call shares its offset (as the engine folds it) and is told
    // apart by its index within the envelope. No call may be taken for a replay.
    for (i, d) in decoded.enumerated() {
        guard case .event(let e) = d else { continue }
        if states[e.identity]?.hasApplied(source: 0, offset: 0, call: UInt32(i)) == true {
            fatalError("call \(i) of the envelope taken for a replay")
        }
        folder.fold(e, timeMs: e.timeMs ?? 1_764_000_000_000, offset: 0, call: UInt32(i), kafkaMs: 1_764_000_000_000,
                    into: &states[e.identity, default: UserState()])
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
