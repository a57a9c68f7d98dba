/// A configuration problem, with a message for the operator (never holding secrets).
public struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ message: String) { description = message }
}
