/// Per-user delivery bookkeeping, kept inside each user's entry so that no second map
/// is needed. Times are monotonic milliseconds from the engine's injected clock.
public struct DeliveryState: Sendable, Equatable {
    // 8-byte fields first: no padding (one of these per user).
    /// When the user became dirty (0: clean).
    public var dirtySinceMs: Int64 = 0
    /// The last change to the user's state.
    public var lastChangeMs: Int64 = 0
    /// Not before this time (retry backoff).
    public var notBeforeMs: Int64 = 0
    /// Hash of the last body Foldspace acknowledged (or that was dead-lettered): a body
    /// with this hash is not sent again.
    public var settledHash: UInt64 = 0
    /// Bumped on every change; a flush records the version it sent.
    public var version: UInt32 = 0
    public var sentVersion: UInt32 = 0
    /// Consecutive failed attempts, for the backoff.
    public var attempts: UInt16 = 0
    public var inFlight = false
    /// Whether the user sits in the debouncer's timer heap.
    public var scheduled = false
    /// A request for this user ended without an answer (a timeout, a dropped
    /// connection): Foldspace may still apply it, after a newer one.
    public var unknownOutcome = false
    /// The once-more send after an unknown outcome is what holds the user back (its
    /// `notBeforeMs`): a drain sends it at once.
    public var resendScheduled = false
    /// A resend was asked for while a request was in flight: its acknowledgement does
    /// not settle the body (it went out before the ask).
    public var resendAfterFlight = false

    public init() {}

    public var isDirty: Bool { dirtySinceMs != 0 }
}

/// The debounce policy as a state machine: it decides when each dirty user is due and
/// returns the users to flush; the caller builds and sends the bodies.
///
/// A user is due at `min(lastChange + debounce, dirtySince + maxWait)`, or later while a
/// retry backs off. At most one request per user is in flight: a user whose request is
/// out is not due until it completes. The heap holds one entry per scheduled user and is
/// re-checked lazily, so a burst of changes costs no heap work.
public struct Debouncer<Key: Hashable & Sendable>: Sendable {
    public var debounceMs: Int64
    public var maxWaitMs: Int64
    /// After an unknown outcome is followed by an acknowledgement, how long until the
    /// newest state goes once more: long enough for the unanswered request, if it was
    /// still being processed, to have landed first.
    public var unknownOutcomeResendMs: Int64 = 0
    private var heap = MinHeap<Key>()

    public init(debounceMs: Int64, maxWaitMs: Int64) {
        self.debounceMs = debounceMs
        self.maxWaitMs = max(maxWaitMs, debounceMs)
    }

    /// When the user is due, given its state.
    public func dueMs(_ s: DeliveryState) -> Int64 {
        let due = min(s.lastChangeMs + debounceMs, s.dirtySinceMs + maxWaitMs)
        return max(due, s.notBeforeMs)
    }

    /// The user's state changed at `nowMs`.
    public mutating func changed(_ key: Key, _ s: inout DeliveryState, nowMs: Int64) {
        s.version &+= 1
        s.lastChangeMs = nowMs
        if s.dirtySinceMs == 0 { s.dirtySinceMs = max(nowMs, 1) }
        if !s.inFlight && !s.scheduled {
            s.scheduled = true
            heap.push(key, at: dueMs(s))
        }
    }

    /// The earliest time any scheduled user may be due (it may turn out later).
    public var nextCheckMs: Int64? { heap.peek?.at }

    /// Pops the users due at `nowMs`, up to `limit`. `state` reads a user's current
    /// state (nil if it is gone); users found not yet due are rescheduled.
    ///
    /// With `force` (draining for shutdown or revocation) the debounce is ignored: a
    /// user is due as soon as its retry backoff allows.
    public mutating func popDue(nowMs: Int64, limit: Int, force: Bool = false, state: (Key) -> DeliveryState?) -> [Key] {
        var out: [Key] = []
        while out.count < limit, let top = heap.peek, top.at <= nowMs {
            _ = heap.pop()
            guard let s = state(top.key), s.isDirty, !s.inFlight else { continue }
            // Draining: the debounce is ignored, and so is the wait before a resend after
            // an unknown outcome (it cannot wait past a shutdown); a retry's backoff is not.
            let due = force ? (s.resendScheduled ? nowMs : s.notBeforeMs) : dueMs(s)
            if due > nowMs {
                heap.push(top.key, at: due)
            } else {
                out.append(top.key)
            }
        }
        return out
    }

    /// Marks the user as sent: its request is out with the current version.
    public func willSend(_ s: inout DeliveryState) {
        s.resendScheduled = false
        s.inFlight = true
        s.scheduled = false
        s.sentVersion = s.version
    }

    /// The body built for a due user equals the last settled one: nothing to send.
    public func suppressed(_ s: inout DeliveryState) {
        s.scheduled = false
        s.dirtySinceMs = 0
        s.attempts = 0
    }

    /// The request for `key` finished and its body is settled (acknowledged or
    /// dead-lettered). Returns `true` when the user is now clean; otherwise it changed
    /// while the request was out and is scheduled again.
    ///
    /// After an unknown outcome (see ``failed(_:_:retryAtMs:unknownOutcome:)``) the
    /// acknowledged body is not trusted to be Foldspace's last word: the earlier request
    /// may be applied after it. The user is then due once more, a quiet period and
    /// ``unknownOutcomeResendMs`` later, and its body is sent even if unchanged (no
    /// settled hash).
    public mutating func settled(_ key: Key, _ s: inout DeliveryState, hash: UInt64, nowMs: Int64) -> Bool {
        s.inFlight = false
        s.attempts = 0
        s.notBeforeMs = 0
        s.settledHash = hash
        if s.resendAfterFlight {
            s.resendAfterFlight = false
            s.settledHash = 0
        }
        if s.unknownOutcome {
            s.unknownOutcome = false
            s.settledHash = 0
            s.lastChangeMs = nowMs
            s.dirtySinceMs = max(nowMs, 1)
            s.notBeforeMs = nowMs + unknownOutcomeResendMs
            s.resendScheduled = true
            s.scheduled = true
            heap.push(key, at: dueMs(s))
            return false
        }
        if s.version == s.sentVersion {
            s.dirtySinceMs = 0
            return true
        }
        // Changes arrived during the flight: they count as dirty since they arrived.
        s.dirtySinceMs = max(min(s.lastChangeMs, nowMs), 1)
        s.scheduled = true
        heap.push(key, at: dueMs(s))
        return false
    }

    /// The request failed and will be retried not before `retryAtMs`. With
    /// `unknownOutcome` (no answer: Foldspace may have applied it, or may yet) the user
    /// is sent once more after its next acknowledgement.
    public mutating func failed(_ key: Key, _ s: inout DeliveryState, retryAtMs: Int64, unknownOutcome: Bool = false) {
        if unknownOutcome {
            s.unknownOutcome = true
            // What Foldspace holds is unknown: no body counts as already there.
            s.settledHash = 0
        }
        // The retry goes out after any resend was asked for: it is that resend.
        s.resendAfterFlight = false
        s.inFlight = false
        s.attempts &+= 1
        s.notBeforeMs = retryAtMs
        s.scheduled = true
        heap.push(key, at: dueMs(s))
    }

    /// Makes every scheduled user due now (shutdown, revocation): the heap entries keep
    /// their keys, and `notBefore`/debounce are ignored by callers that pass `force`.
    public mutating func rescheduleAll(at ms: Int64) {
        heap.rebase(at: ms)
    }
}

/// A binary min-heap of keys by time.
struct MinHeap<Key: Sendable>: Sendable {
    private(set) var items: [(at: Int64, key: Key)] = []

    var count: Int { items.count }
    var peek: (at: Int64, key: Key)? { items.first }

    mutating func push(_ key: Key, at: Int64) {
        items.append((at, key))
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if items[p].at <= items[i].at { break }
            items.swapAt(p, i)
            i = p
        }
    }

    mutating func pop() -> (at: Int64, key: Key)? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1
            let r = l + 1
            var m = i
            if l < items.count && items[l].at < items[m].at { m = l }
            if r < items.count && items[r].at < items[m].at { m = r }
            if m == i { break }
            items.swapAt(i, m)
            i = m
        }
        return top
    }

    /// Sets every entry's time to `at` (all equal, so the heap order still holds).
    mutating func rebase(at: Int64) {
        for i in items.indices { items[i].at = at }
    }
}
