import ArgumentParser
import Delivery
import Events
import Folding
import FoldspaceAPI
import Foundation
import Kafka
import Logging
import Simulation
import SyncService

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The entry point: a synchronous main that waits for the command on a task. An async
/// main ends in `dispatch_main`, whose signal thread calls `sigsuspend` with a mask in
/// read-only memory, and valgrind 3.19 (Debian's) writes to that mask and dies, so no
/// subcommand could run under `valgrind --tool=callgrind`.
@main
enum BenchMain {
    static func main() {
        let done = DispatchSemaphore(value: 0)
        // Detached: main is on the main actor, which this thread, blocked, never serves.
        Task.detached {
            await FoldspaceBench.main()
            done.signal()
        }
        done.wait()
    }
}

/// The benchmark driver behind `scripts/bench.sh`. Each subcommand prints `key=value`
/// lines that the script collects into one table.
struct FoldspaceBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "foldspace-bench",
        abstract: "Benchmarks for foldspace-sync: produce, raw read rate, folded rate, memory, core costs.",
        subcommands: [
            Produce.self, Placement.self, RawRead.self, Pipeline.self, Binary.self, Latency.self, Memory.self, Core.self, Soak.self,
            Restore.self,
        ])
}

extension FoldspaceBench {
    /// `ZSTD_HINT=0` measures librdkafka's own sizing of zstd batches (``ZstdSizeHint``).
    static var zstdHintFromEnvironment: Bool { ProcessInfo.processInfo.environment["ZSTD_HINT"] != "0" }
}
