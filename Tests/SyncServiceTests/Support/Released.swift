import Delivery
import Folding
import Foundation
import Kafka
import TestSupport
import Testing

@testable import SyncService

final class Released: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [TopicPartition] = []
    func add(_ p: [TopicPartition]) { lock.withLock { items += p } }
    var all: [TopicPartition] { lock.withLock { items } }
}
