/// Why a record went to the dead-letter topic: the `reason` header of each letter, and
/// the label of `foldspace_sync_dead_letters_total`.
public enum DeadLetterKind: String, Sendable, CaseIterable {
    /// A message that is not a Segment call this version folds (bad JSON, a missing id,
    /// a field of the wrong type, a control record it does not understand).
    case invalidEvent = "invalid-event"
    /// Foldspace answered a user's body with a final 4xx (400, 422, …).
    case rejectedUpdate = "rejected-update"
    /// Foldspace answered 404 for the user and `on_user_not_found` is `dead-letter`.
    case userNotFound = "user-not-found"
    /// Durable mode: a user's state record exceeds what the changelog accepts.
    case stateTooLarge = "state-too-large"
}
