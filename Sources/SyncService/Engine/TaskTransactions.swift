import Folding

/// A merging task's transactions, as the readers of its routed records learn them
/// (docs/identity.md, "Transactions on brokers that show aborted records").
///
/// Each ownership of a task writes under a random epoch, its transactions numbered from
/// 0. Every routed record carries its transaction's tag, and its reader holds it until a
/// notice of the task resolves it. A transaction's notices go at the head of the task's
/// next one, into each partition its records went to: "up to `through` of this epoch
/// committed, nothing else before this notice did" (a failed transaction's records,
/// which some brokers show, are dropped by it). A new owner's first transaction writes a
/// notice into every partition naming the last transaction of the former owner that the
/// changelog says committed (the markers carry its tag): what that owner wrote after it,
/// cut by a crash, is dropped.
struct TaskTransactions {
    let epoch: UInt64
    /// The sequence number of the next transaction.
    var next: Int64 = 0
    /// The last transaction of this epoch that committed (-1: none yet).
    var through: Int64 = -1
    /// The former owner's last committed transaction, from the changelog's markers (nil:
    /// none), named by the start notices.
    let prior: StoredUser.MarkerTxn?
    /// Whether the start notices are still to be committed.
    var startPending = true
    /// Partitions holding records of this epoch that no committed notice has resolved.
    var owed: Set<Int32> = []
    /// When the last committed transaction with a notice for every partition began.
    var lastFullMs: Int64
    /// A transaction with routed records failed, and none that writes them again has
    /// committed since: the notice that drops its records must commit with their rewrite
    /// (a transaction of notices alone waits). Its commit may be in doubt: if it did land,
    /// a notice dropping its records, committed alone before a crash, would lose them,
    /// since the next owner restores from its markers and writes them no more.
    var rewritePending = false

    /// How often every partition gets a notice, owed or not: a record that names this task
    /// but no transaction of its writers (written by something else, or late from a former
    /// owner) waits at most that long in its reader's gate.
    static let fullNoticeMs: Int64 = 30_000

    init(prior: StoredUser.MarkerTxn?, nowMs: Int64) {
        self.prior = prior
        lastFullMs = nowMs
        var e: UInt64 = 0
        while e == 0 { e = UInt64.random(in: 1...UInt64.max) }
        epoch = e
    }

    /// What the next transaction writes first: its tag, and its notices (by partition).
    mutating func begin(task: Int32, partitions: Int32, nowMs: Int64) -> (
        tag: RepartitionRecord.Tag, notices: [(partition: Int32, record: RepartitionRecord)], full: Bool
    ) {
        let seq = next
        next += 1
        var notices: [(Int32, RepartitionRecord)] = []
        if startPending {
            let notice = RepartitionRecord.notice(task: task, epoch: prior?.epoch ?? 0, through: prior?.seq ?? -1)
            for q in 0..<max(0, partitions) { notices.append((q, notice)) }
        } else if nowMs - lastFullMs >= Self.fullNoticeMs {
            for q in 0..<max(0, partitions) { notices.append((q, .notice(task: task, epoch: epoch, through: through))) }
        } else {
            for q in owed.sorted() { notices.append((q, .notice(task: task, epoch: epoch, through: through))) }
        }
        return (RepartitionRecord.Tag(task: task, epoch: epoch, seq: seq), notices, notices.count == Int(max(0, partitions)))
    }

    /// Transaction `seq` committed: it wrote `notices` and records into `touched`, and
    /// notices into every partition if `full` (when it began).
    /// `noticesOnly`: a transaction of notices alone (``SyncEngine/writeNotices()``), which
    /// writes nothing again.
    mutating func committed(
        _ seq: Int64, start: Bool, full: Int64? = nil, noticed: Set<Int32>, touched: Set<Int32>, noticesOnly: Bool = false
    ) {
        if !noticesOnly { rewritePending = false }
        through = max(through, seq)
        if let full { lastFullMs = max(lastFullMs, full) }
        if start { startPending = false }
        owed.subtract(noticed)
        owed.formUnion(touched)
    }

    /// Transaction `seq` failed: its records may be visible all the same (on brokers that
    /// show aborted records), and are resolved by the next notices.
    mutating func failed(touched: Set<Int32>) {
        owed.formUnion(touched)
        if !touched.isEmpty { rewritePending = true }
    }

    /// How many notices wait for a transaction (``SyncEngine/checkpointBacklog``).
    var waiting: Int { startPending ? 1 : owed.count }
}
