import CZstdSizeHint

/// librdkafka's zstd batches decompressed once instead of up to three times.
///
/// A producer that streams its zstd batches (librdkafka built against a shared libzstd,
/// as Debian's is, or the Java client) leaves the decompressed size out of the frame.
/// librdkafka 2.0 then guesses twice the compressed size and, when the batch does not
/// fit, throws the work away and starts again with a buffer three times larger: a batch
/// of JSON events, which compresses about 8x, is decompressed three times. The C target
/// `CZstdSizeHint` defines `ZSTD_getFrameContentSize` in the executable, where the
/// dynamic linker binds librdkafka's call; for a frame without a size it answers
/// libzstd's own upper bound (`ZSTD_decompressBound`), so that the first buffer fits.
/// Other callers, and frames that carry their size, get libzstd's answer unchanged.
public enum ZstdSizeHint {
    /// Whether librdkafka's calls reach the hint in this process.
    public static var isInstalled: Bool { fs_zstd_hint_installed() != 0 }

    /// Batches sized by the hint since the process started.
    public static var framesSized: UInt64 { UInt64(fs_zstd_hint_count()) }

    /// On by default; off restores librdkafka's own guessing (for measuring it).
    public static func setEnabled(_ on: Bool) { fs_zstd_hint_enable(on ? 1 : 0) }
}
