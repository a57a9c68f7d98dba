/// Limits and options of the decoder.
public struct DecoderOptions: Sendable {
    /// Messages larger than this are invalid (`max_message_bytes`, default 1 MiB).
    public var maxMessageBytes: Int = 1 << 20
    /// Deepest JSON nesting accepted; at most 64.
    public var maxDepth: Int = 64
    /// Most calls accepted in one `{"batch": [...]}` envelope (`max_batch_events`).
    public var maxBatchEvents: Int = 2000
    /// Trait names captured for `customAttributes`.
    public var customAttributes: [String] = []

    public init() {}
}

/// Decodes Segment-spec JSON (one call, or a batch envelope) into ``SegmentEvent``s.
///
/// Pure and allocation-light: it validates the whole message (UTF-8, grammar, nesting)
/// and materialises only the fields the Foldspace mapping reads. It never traps on
/// input; every failure is a ``DecodeFailure``.
///
/// Type rules: `null` and `""` mean absent. Identity-like fields (`userId`,
/// `anonymousId`, `groupId`, `subscriptionId`, `phone`, `postalCode`) accept integers and
/// turn them into strings, as Segment's libraries do. Any other type in a field the
/// mapping reads is `wrong-type`, as is a key repeated in one object.
public struct SegmentDecoder: Sendable {
    public var options: DecoderOptions
    let customKeys: [[UInt8]]

    public init(options: DecoderOptions = DecoderOptions()) {
        self.options = options
        self.options.maxDepth = min(max(options.maxDepth, 1), 64)
        self.customKeys = options.customAttributes.map { Array($0.utf8) }
    }

    /// Decodes one Kafka message value. `nowMs` is the wall clock, for plausibility.
    public func decode(_ bytes: UnsafeBufferPointer<UInt8>, nowMs: Int64) -> [Decoded] {
        var out: [Decoded] = []
        decode(bytes, nowMs: nowMs, into: &out)
        return out
    }

    public func decode(_ bytes: [UInt8], nowMs: Int64) -> [Decoded] {
        bytes.withUnsafeBufferPointer { decode($0, nowMs: nowMs) }
    }

    /// Decodes one message, appending one ``Decoded`` per call it holds.
    public func decode(_ bytes: UnsafeBufferPointer<UInt8>, nowMs: Int64, into out: inout [Decoded]) {
        decodeMessage(bytes, nowMs: nowMs, into: &out)
    }

    /// Decodes one message into `out`, each event written in place.
    public func decode(_ bytes: UnsafeBufferPointer<UInt8>, nowMs: Int64, into out: inout DecodedCalls) {
        decodeMessage(bytes, nowMs: nowMs, into: &out)
    }

    // Generic inside the module only, where it is specialized for each sink; the public
    // entry points above are concrete (a generic call from another module would run the
    // unspecialized code).
    private func decodeMessage<Sink: DecodeSink>(_ bytes: UnsafeBufferPointer<UInt8>, nowMs: Int64, into out: inout Sink) {
        if bytes.count > options.maxMessageBytes {
            out.append(.invalid(DecodeFailure(.tooLarge)))
            return
        }
        // UTF-8 is checked by the scanner inside strings, the one place non-ASCII bytes
        // belong (a separate pass over every message cost a share of decoding worth
        // saving); a message that fails for any reason is checked whole below, so that
        // invalid UTF-8 is reported as such wherever it is.
        var s = JSONScanner(bytes, maxDepth: options.maxDepth)
        let mark = out.mark
        do {
            guard try s.peekKind() == .object else {
                try s.skipValue()
                try s.expectEnd()
                out.append(.invalid(DecodeFailure(.notObject)))
                return
            }
            var call = CallFields()
            var seen = FieldSet()
            // A batch envelope's elements go straight to `out`, after `batchMark`; they
            // are rolled back if the envelope turns out to be one call (it has a `type`).
            var batchMark: Int? = nil
            try s.beginObject()
            var first = true
            while let k = try s.nextKey(first: first) {
                first = false
                if k.is("batch") {
                    guard batchMark == nil else {
                        call.fail(.duplicateKey, "batch")
                        try s.skipValue()
                        continue
                    }
                    guard try s.peekKind() == .array else {
                        call.fail(.wrongType, "batch")
                        try s.skipValue()
                        continue
                    }
                    batchMark = out.mark
                    try s.beginArray()
                    var firstElement = true
                    var count = 0
                    while try s.nextElement(first: firstElement) {
                        firstElement = false
                        count += 1
                        if count > options.maxBatchEvents {
                            try s.skipValue()
                            continue
                        }
                        if try s.peekKind() != .object {
                            try s.skipValue()
                            out.append(.invalid(DecodeFailure(.notObject)))
                            continue
                        }
                        var element = CallFields()
                        try readCall(&s, into: &element)
                        out.appendCall(&element, nowMs: nowMs)
                    }
                    if count > options.maxBatchEvents {
                        out.rollBack(to: batchMark!)
                        out.append(.invalid(DecodeFailure(.batchTooLarge)))
                    }
                } else {
                    try readCallField(&s, key: k, into: &call, seen: &seen)
                }
            }
            try s.expectEnd()
            if batchMark == nil || call.typeText != nil {
                // One call (an envelope with a `type` is one: its elements go).
                if let batchMark { out.rollBack(to: batchMark) }
                out.appendCall(&call, nowMs: nowMs)
            }
        } catch {
            out.rollBack(to: mark)
            // Invalid UTF-8 anywhere is the reason, whatever the scanner tripped on first.
            let reason: InvalidReason
            switch error {
            case _ where error == .invalidUTF8 || !UTF8Check.isValid(bytes): reason = .invalidUTF8
            case .tooDeep: reason = .tooDeep
            case .numberOutOfRange: reason = .numberOutOfRange
            case .syntax, .invalidUnicode, .invalidUTF8: reason = .notJSON
            }
            out.append(.invalid(DecodeFailure(reason)))
        }
    }
}
