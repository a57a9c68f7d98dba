import Delivery
import Events
import Foundation
import Kafka
import Logging
import Testing

@testable import SyncService

/// A clock the test moves by hand.
final class ManualClock: @unchecked Sendable {
    private let lock = NSLock()
    private var mono: Int64 = 1_000
    let epochBase: Int64 = 1_764_000_000_000
    var now: Int64 { lock.withLock { mono } }
    func advance(_ ms: Int64) { lock.withLock { mono += ms } }
    var engineClock: EngineClock {
        EngineClock(monotonicMs: { self.now }, epochMs: { self.epochBase + self.now })
    }
}
