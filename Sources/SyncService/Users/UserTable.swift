import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

extension SyncEngine {
    /// Users by identity: an index from identity to a slot of one dense array of entries
    /// (each entry carries its identity). Growing the index then moves 8-byte records
    /// rather than whole entries, and the entries carry none of the index's spare
    /// capacity.
    struct UserTable {
        private var index: IdentityIndex
        /// Free slots hold an empty entry (empty identity; identities are never empty).
        private var entries: ContiguousArray<UserEntry> = []
        private var free: [Int32] = []

        init(seed: IdentityHash) { index = IdentityIndex(seed: seed) }

        var count: Int { index.count }

        /// The hash the index files `key` under (computed once per event, before the
        /// lookups of a chunk).
        func hash(_ key: String) -> UInt64 { index.seed.hash(key) }

        private func find(_ key: String, hash h: UInt64) -> Int32? {
            entries.withUnsafeBufferPointer { e in index.find(h) { e[Int($0)].identity == key } }
        }

        subscript(key: String) -> UserEntry? {
            get { find(key, hash: hash(key)).map { entries[Int($0)] } }
            set {
                guard !key.isEmpty else { return }  // no event has an empty identity
                let h = hash(key)
                if var newValue {
                    newValue.identity = key
                    let (i, _) = slot(key, hash: h)
                    entries[i] = newValue
                } else if let i = find(key, hash: h) {
                    let seed = index.seed
                    entries.withUnsafeBufferPointer { e in
                        index.remove(h, slot: i) { seed.hash(e[Int($0)].identity) }
                    }
                    entries[Int(i)] = UserEntry()  // releases what the entry held
                    free.append(i)
                }
            }
        }

        /// Makes room for `more` users beyond those held, so that adding them neither
        /// grows the index nor copies the entries.
        mutating func reserve(_ more: Int) {
            let total = entries.count + max(0, more - free.count)
            // At least doubled when it grows (as appending would): assignments arrive in
            // increments, and an exact size would copy the whole table at each.
            if total > entries.capacity { entries.reserveCapacity(max(total, 2 * entries.capacity)) }
            let seed = index.seed
            entries.withUnsafeBufferPointer { e in
                index.reserve(total) { seed.hash(e[Int($0)].identity) }
            }
        }

        /// The slot of `key`, with an empty entry created if there was none.
        mutating func slot(_ key: String) -> (index: Int, isNew: Bool) { slot(key, hash: hash(key)) }

        /// As ``slot(_:)``, with the key's ``hash(_:)`` computed already.
        mutating func slot(_ key: String, hash h: UInt64) -> (index: Int, isNew: Bool) {
            if let i = find(key, hash: h) { return (Int(i), false) }
            let i: Int32
            if let f = free.popLast() {
                i = f
                entries[Int(i)].identity = key
            } else {
                i = Int32(entries.count)
                var e = UserEntry()
                e.identity = key
                entries.append(e)
            }
            let seed = index.seed
            entries.withUnsafeBufferPointer { e in
                index.insert(h, slot: i) { seed.hash(e[Int($0)].identity) }
            }
            return (Int(i), true)
        }

        mutating func modify<R>(_ slot: Int, _ body: (inout UserEntry) -> R) -> R { body(&entries[slot]) }

        /// The slot of `key` (its ``hash(_:)`` given), if it has an entry: nothing is added.
        func existingSlot(_ key: String, hash h: UInt64) -> Int? { find(key, hash: h).map(Int.init) }

        /// ``UserEntry/routedAt`` of the entry in `slot`.
        func routedAt(_ slot: Int) -> UInt16 { entries[slot].routedAt }

        /// Clears every entry's ``UserEntry/routedAt`` (free slots' too: they are 0).
        mutating func forgetRouting() {
            for i in entries.indices { entries[i].routedAt = 0 }
        }

        /// Mutates `key`'s entry in place, if there is one (no copy out and back).
        mutating func modify<R>(_ key: String, _ body: (inout UserEntry) -> R) -> R? {
            guard let i = find(key, hash: hash(key)) else { return nil }
            return body(&entries[Int(i)])
        }

        // Prefetch hints for a chunk of events, each pass over the whole chunk in one
        // call (a call per event copied the table, retaining its three arrays each time).

        /// Starts loading the index bucket each lookup of `hashes` starts at.
        func prefetchBuckets(_ hashes: some Collection<UInt64>) {
            for h in hashes { index.prefetch(h) }
        }

        /// Starts loading the first line of the entry each of `hashes` most likely leads
        /// to (the first slot under its tag): the identity, which the lookup compares.
        func prefetchEntries(_ hashes: some Collection<UInt64>) {
            entries.withUnsafeBufferPointer { e in
                for h in hashes {
                    guard let slot = index.candidate(h) else { continue }
                    fs_prefetch(UnsafeRawPointer(e.baseAddress! + Int(slot)))
                }
            }
        }

        /// Starts loading the rest of the entry at `slot` (a negative slot `s` stands for
        /// `~s`): an entry spans four or five cache lines, the first read by the lookup.
        func prefetchEntryRest(_ slot: Int32) {
            entries.withUnsafeBufferPointer { e in
                let p = UnsafeRawPointer(e.baseAddress! + Int(slot < 0 ? ~slot : slot))
                fs_prefetch(p + 64)
                fs_prefetch(p + 128)
                fs_prefetch(p + 192)
            }
        }

        /// Starts loading the heap storage the entry at `slot` points to, read in place
        /// (the entry itself should be on its way: this reads its pointers).
        func prefetchStorage(_ slot: Int32) {
            let offset = MemoryLayout<UserEntry>.offset(of: \UserEntry.state)!
            entries.withUnsafeBufferPointer { e in
                let entry = UnsafeRawPointer(e.baseAddress! + Int(slot < 0 ? ~slot : slot))
                UserState.prefetch((entry + offset).assumingMemoryBound(to: UserState.self))
            }
        }

        /// Every user, as (identity, entry) pairs (a snapshot: the table may change while
        /// it is walked).
        var all: [(String, UserEntry)] { entries.compactMap { $0.identity.isEmpty ? nil : ($0.identity, $0) } }

        /// Calls `body` for the users in slots `cursor ..< cursor + limit`; returns where
        /// the next call should start (0 once the table was walked to its end).
        func scan(from cursor: Int, limit: Int, _ body: (UserEntry) -> Void) -> Int {
            let end = min(entries.count, cursor + limit)
            guard cursor < end else { return 0 }
            for i in cursor..<end where !entries[i].identity.isEmpty { body(entries[i]) }
            return end == entries.count ? 0 : end
        }

        /// As ``scan(from:limit:_:)``, with each entry mutable in place; stops early, at
        /// the slot after the one for which `body` returned false.
        mutating func scanModifying(from cursor: Int, limit: Int, _ body: (inout UserEntry) -> Bool) -> Int {
            let end = min(entries.count, cursor + limit)
            guard cursor < end else { return 0 }
            for i in cursor..<end where !entries[i].identity.isEmpty {
                if !body(&entries[i]) { return i + 1 == entries.count ? 0 : i + 1 }
            }
            return end == entries.count ? 0 : end
        }
    }
}
