import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

extension SyncEngine {
    struct UserEntry {
        // In this order the entry has no padding (one per user), and what the lookup of a
        // chunk's users reads shares the entry's first cache line, which the fold requests
        // for the whole chunk ahead of it (``UserTable/prefetchEntries(_:)``).
        /// The user's identity (empty in a free slot of the table).
        var identity = ""
        /// The partition this user's events last came from.
        var home: OffsetTracker.PartitionIndex = 0
        /// Durable mode: the state changed since the last checkpoint.
        var checkpointPending = false
        /// Identity resolution: the ``SyncEngine/routingGeneration`` at which the graph of
        /// the identity's owner task found it canonical (0: not known). While it is the
        /// current one, a call of the identity read at its owner's source partition is
        /// folded here without asking the graph (``SyncEngine/foldChunk``). A link of the
        /// identity clears it. Beside the identity: read with it for every call, it sat on
        /// the entry's third cache line, a cache miss per call (keys by identity with
        /// `identity.merge` on ran at 0.85 of it off).
        var routedAt: UInt16 = 0
        var state = UserState()
        var delivery = DeliveryState()
        /// Lowest unsettled offsets from before the request in flight (or of now).
        var holds = Holds()
        /// Offsets of changes that arrived while a request was in flight: rare, so boxed
        /// (8 bytes instead of 24 per user). The box is immutable; copies of an entry
        /// never share a change.
        private var flightBox: FlightHolds?

        var flightHolds: Holds {
            get { flightBox?.holds ?? Holds() }
            set { flightBox = newValue.isEmpty ? nil : FlightHolds(newValue) }
        }
    }

    final class FlightHolds: Sendable {
        let holds: Holds
        init(_ holds: Holds) { self.holds = holds }
    }

    /// Bytes of one user's entry stored inline in the table (heap buffers not counted).
    public static var userEntryInlineBytes: Int { MemoryLayout<UserEntry>.stride }
}
