import CPrefetch
import Delivery
import Events
import Folding
import Foundation
import Kafka
import Logging

extension SyncEngine {
    /// The results of work run in parallel, one slot each.
    final class ParallelSlots<T>: @unchecked Sendable {
        private let lock = NSLock()
        private var items: [T]
        init(count: Int, _ empty: T) { items = Array(repeating: empty, count: count) }
        subscript(i: Int) -> T {
            get { lock.withLock { items[i] } }
            set { lock.withLock { items[i] = newValue } }
        }
        var all: [T] { lock.withLock { items } }
    }
}
