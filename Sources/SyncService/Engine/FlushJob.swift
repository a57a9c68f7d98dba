/// One request the flusher is to make.
public struct FlushJob: Sendable {
    public var identifyId: String
    public var body: [UInt8]
    public var hash: UInt64
    public var isProbe: Bool
}
