/// Why a message (or one element of a batch envelope) was not folded.
///
/// The raw values are stable: they name the `reason` header of dead-letter records and
/// the `reason` label of metrics.
public enum InvalidReason: String, Sendable, CaseIterable {
    case tooLarge = "too-large"
    case invalidUTF8 = "invalid-utf8"
    case notJSON = "not-json"
    case notObject = "not-object"
    case tooDeep = "too-deep"
    case missingIdentity = "missing-identity"
    case wrongType = "wrong-type"
    case badTimestamp = "bad-timestamp"
    case numberOutOfRange = "number-out-of-range"
    case duplicateKey = "duplicate-key"
    case batchTooLarge = "batch-too-large"
    case missingType = "missing-type"
    case identityTooLong = "identity-too-long"
    /// A control record (the key `foldspace-sync.control`) that is not a request this
    /// version understands.
    case invalidControl = "invalid-control"
}

/// A rejected message or batch element, with the field at fault where there is one.
public struct DecodeFailure: Sendable, Equatable, Error {
    public var reason: InvalidReason
    /// The offending field's path, such as `traits.email`.
    public var field: String?

    public init(_ reason: InvalidReason, field: String? = nil) {
        self.reason = reason
        self.field = field
    }
}
