import Foundation

/// The process collector's standard series (`process_*`), read from `/proc/self` on
/// Linux at each scrape: a few small reads, no background work.
public struct ProcessMetrics: Sendable, Equatable {
    public var cpuSeconds: Double
    public var residentBytes: Int64
    public var virtualBytes: Int64
    public var openFds: Int
    public var maxFds: Int?
    /// Since the Unix epoch.
    public var startTimeSeconds: Double

    /// Nil where `/proc` is not there (or not readable).
    public static func read() -> ProcessMetrics? {
        #if os(Linux)
            guard let stat = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8) else { return nil }
            return parse(
                stat: stat, procStat: (try? String(contentsOfFile: "/proc/stat", encoding: .utf8)) ?? "",
                openFds: countOpenFds(), maxFds: maxOpenFds(),
                ticksPerSecond: Int(sysconf(Int32(_SC_CLK_TCK))), pageSize: Int(sysconf(Int32(_SC_PAGESIZE))))
        #else
            return nil
        #endif
    }

    /// `/proc/self/stat` and `/proc/stat` (for `btime`) to metrics; nil if malformed.
    /// The command name (field 2) may hold spaces and parentheses: fields count from the
    /// last `)`.
    public static func parse(
        stat: String, procStat: String, openFds: Int, maxFds: Int?,
        ticksPerSecond: Int, pageSize: Int
    ) -> ProcessMetrics? {
        guard ticksPerSecond > 0, pageSize > 0, let close = stat.lastIndex(of: ")") else { return nil }
        // After ")": field 3 (state) is index 0, so field N is index N - 3.
        let f = stat[stat.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        func field(_ n: Int) -> Int64? { n - 3 < f.count ? Int64(f[n - 3].trimmingCharacters(in: .whitespacesAndNewlines)) : nil }
        guard let utime = field(14), let stime = field(15), let start = field(22),
            let vsize = field(23), let rss = field(24)
        else { return nil }
        var btime: Int64 = 0
        for line in procStat.split(separator: "\n") where line.hasPrefix("btime ") {
            btime = Int64(line.dropFirst(6).trimmingCharacters(in: .whitespaces)) ?? 0
        }
        let ticks = Double(ticksPerSecond)
        let (rssBytes, overflow) = rss.multipliedReportingOverflow(by: Int64(pageSize))
        return ProcessMetrics(
            cpuSeconds: (Double(utime) + Double(stime)) / ticks,
            residentBytes: overflow ? .max : max(0, rssBytes), virtualBytes: max(0, vsize),
            openFds: openFds, maxFds: maxFds,
            startTimeSeconds: Double(btime) + Double(start) / ticks)
    }

    static func countOpenFds() -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd"))?.count ?? 1) - 1  // the listing's own
    }

    static func maxOpenFds() -> Int? {
        var l = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &l) == 0, l.rlim_cur != rlim_t.max else { return nil }
        return l.rlim_cur > UInt64(Int.max) ? nil : Int(l.rlim_cur)
    }
}
