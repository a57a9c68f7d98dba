/// What to do when Foldspace answers 404 for a user.
public enum UserNotFoundPolicy: String, Sendable, CaseIterable {
    case deadLetter = "dead-letter"
    case retry
    case drop
}

/// What becomes of a user after Foldspace's answer to its request: a decision without
/// I/O, which the engine carries out (settling releases the user's offsets; a retry keeps
/// them held).
public enum DeliveryAction: Sendable, Equatable {
    /// Foldspace has the body (or has refused it for good and nothing is to be kept).
    case settle
    /// Settled, and the body is written to the dead-letter topic with the answer.
    case deadLetter(DeadLetterKind, status: Int, response: String)
    /// Sent again at `atMs`. `unknownOutcome`: the request may still be applied (no
    /// answer, or a gateway's), so the newest state is sent once more after a success.
    case retry(atMs: Int64, reason: String, unknownOutcome: Bool)
}

/// The rules that turn an answer into a ``DeliveryAction``.
public struct DeliveryPolicy: Sendable {
    public var onUserNotFound: UserNotFoundPolicy

    public init(onUserNotFound: UserNotFoundPolicy) { self.onUserNotFound = onUserNotFound }

    /// - Parameters:
    ///   - settles: whether a final status may settle this user (``RateLimiter/record``
    ///     says: only per-user evidence does, with the endpoint proven).
    ///   - backoffMs: the user's next backoff delay.
    ///   - pausedUntilMs: the end of a `Retry-After` pause in force.
    public func action(
        for outcome: DeliveryOutcome, settles: Bool, nowMs now: Int64, backoffMs delay: Int64,
        pausedUntilMs: Int64
    ) -> DeliveryAction {
        switch outcome {
        case .acknowledged:
            return .settle
        case .rejected(let status, let response):
            return .deadLetter(.rejectedUpdate, status: status, response: response)
        case .unexpected(let status, let response):
            return settles
                ? .deadLetter(.rejectedUpdate, status: status, response: response)
                : .retry(atMs: now + delay, reason: String(status), unknownOutcome: false)
        case .notFound(let response):
            switch onUserNotFound {
            case .deadLetter where settles: return .deadLetter(.userNotFound, status: 404, response: response)
            case .drop where settles: return .settle
            case .deadLetter, .drop, .retry: return .retry(atMs: now + delay, reason: "404", unknownOutcome: false)
            }
        case .rateLimited:
            return .retry(atMs: max(pausedUntilMs, now + 1), reason: "429", unknownOutcome: false)
        case .unauthorized(let status), .systemic(let status, _):
            return .retry(atMs: now, reason: String(status), unknownOutcome: false)
        case .retryable(let reason):
            // No answer, or a gateway's (502, 504): the request may still be applied,
            // after a newer one.
            return .retry(
                atMs: now + delay, reason: reason,
                unknownOutcome: ["timeout", "connection", "502", "504"].contains(reason))
        }
    }
}
