import Testing

@testable import SyncService

/// The user entry's layout, which the fold's speed depends on.
@Suite struct UserEntryLayoutTests {
    /// What the lookup of a chunk's users reads for every call (the identity, and with
    /// identity resolution the generation its owner's graph found it canonical at) lies in
    /// the entry's first 32 bytes: inside the cache line the fold requests ahead for the
    /// whole chunk, wherever the entry starts in it in most cases. `routedAt` sat at byte
    /// 182, a cache miss per call: keys by identity with `identity.merge` on ran at 0.85 of
    /// it off.
    @Test func whatEveryLookupReadsLiesAtTheEntrysStart() {
        let routedAt = MemoryLayout<SyncEngine.UserEntry>.offset(of: \SyncEngine.UserEntry.routedAt)!
        let identity = MemoryLayout<SyncEngine.UserEntry>.offset(of: \SyncEngine.UserEntry.identity)!
        #expect(identity == 0)
        #expect(routedAt + MemoryLayout<UInt16>.size <= 32)
    }
}
