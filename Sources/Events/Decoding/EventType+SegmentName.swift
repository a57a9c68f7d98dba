extension EventType {
    /// The name Segment's calls give the type.
    var segmentName: String {
        switch self {
        case .identify: "identify"
        case .track: "track"
        case .page: "page"
        case .screen: "screen"
        case .group: "group"
        case .alias: "alias"
        }
    }

    /// The type whose name is exactly `bytes`, if any.
    init?(segmentName bytes: UnsafeBufferPointer<UInt8>) {
        // Told apart by length and first byte; the rest is checked against the name's
        // static bytes (a String's `withUTF8` and a generic `elementsEqual` cost many
        // more instructions an event, by callgrind).
        let t: EventType
        let name: StaticString
        switch (bytes.count, bytes.first) {
        case (8, UInt8(ascii: "i")?):
            t = .identify
            name = "identify"
        case (5, UInt8(ascii: "t")?):
            t = .track
            name = "track"
        case (4, UInt8(ascii: "p")?):
            t = .page
            name = "page"
        case (6, UInt8(ascii: "s")?):
            t = .screen
            name = "screen"
        case (5, UInt8(ascii: "g")?):
            t = .group
            name = "group"
        case (5, UInt8(ascii: "a")?):
            t = .alias
            name = "alias"
        default: return nil
        }
        guard let b = bytes.baseAddress, ByteRuns.equal(b, name.utf8Start, count: bytes.count) else { return nil }
        self = t
    }

    /// The type named `segmentName`, if any (the same match as for raw bytes).
    init?(segmentName: String) {
        var name = segmentName
        guard let t = name.withUTF8({ EventType(segmentName: $0) }) else { return nil }
        self = t
    }
}
