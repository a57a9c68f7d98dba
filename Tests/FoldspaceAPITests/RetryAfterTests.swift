import Delivery
import Testing

@testable import FoldspaceAPI

/// `Retry-After` in both of its forms, and its cap.
@Suite struct RetryAfterTests {
    /// A `Retry-After` far in the future pauses at most the cap, never traps.
    @Test func aHugeRetryAfterIsCapped() {
        var r = RateLimiter(ratePerSecond: 100, burst: 100, nowMs: 1_000)
        r.record(.rateLimited(retryAfterMs: .max), wasProbe: false, nowMs: 1_000, backoffMs: 0)
        #expect(r.pausedUntilMs == .max)
        r = RateLimiter(ratePerSecond: 100, burst: 100, nowMs: 1_000)
        r.record(
            .rateLimited(retryAfterMs: parseRetryAfter("99999999999999999999999", nowEpochMs: 0)), wasProbe: false, nowMs: 1_000,
            backoffMs: 0)
        #expect(r.pausedUntilMs == 1_000 + retryAfterCapMs)
    }

    @Test func retryAfterForms() {
        #expect(parseRetryAfter("2", nowEpochMs: 0) == 2000)
        #expect(parseRetryAfter(" 0 ", nowEpochMs: 0) == 0)
        // Sun, 06 Nov 1994 08:49:37 GMT = 784111777 s
        #expect(parseRetryAfter("Sun, 06 Nov 1994 08:49:37 GMT", nowEpochMs: 784_111_770_000) == 7000)
        #expect(parseRetryAfter("Sun, 06 Nov 1994 08:49:37 GMT", nowEpochMs: 784_111_790_000) == 0)
        #expect(parseRetryAfter("soon", nowEpochMs: 0) == nil)
        #expect(parseRetryAfter("-3", nowEpochMs: 0) == nil)
        // The obsolete forms RFC 9110 says a recipient must accept.
        #expect(parseRetryAfter("Sunday, 06-Nov-94 08:49:37 GMT", nowEpochMs: 784_111_770_000) == 7000)
        #expect(parseRetryAfter("Sun Nov  6 08:49:37 1994", nowEpochMs: 784_111_770_000) == 7000)
        #expect(parseRetryAfter("Sun Nov  6 08:59:37 1994", nowEpochMs: 784_111_770_000) == 607_000)
        #expect(parseRetryAfter("Wed Nov 16 08:49:37 1994", nowEpochMs: 784_111_770_000) == retryAfterCapMs)
        // Both forms are capped.
        #expect(parseRetryAfter("86400", nowEpochMs: 0) == retryAfterCapMs)
        #expect(parseRetryAfter("99999999999999999999999", nowEpochMs: 0) == retryAfterCapMs)
        #expect(parseRetryAfter("Sun, 06 Nov 2094 08:49:37 GMT", nowEpochMs: 784_111_770_000) == retryAfterCapMs)
        // Out-of-range fields are no date (a year of eleven digits overflowed and trapped).
        #expect(parseRetryAfter("Sun, 06 Nov 99999999999 08:49:37 GMT", nowEpochMs: 0) == nil)
        #expect(parseRetryAfter("Sun, 06 Nov 1994 08:49:99 GMT", nowEpochMs: 0) == nil)
        #expect(parseRetryAfter("Sun, 32 Nov 1994 08:49:37 GMT", nowEpochMs: 0) == nil)
        #expect(parseRetryAfter("Sun, 06 Nov 1994 8:49:37 GMT", nowEpochMs: 0) == nil)
        #expect(parseRetryAfter("", nowEpochMs: 0) == nil)
    }
}
