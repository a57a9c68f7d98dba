#ifndef CZSTD_SIZE_HINT_H
#define CZSTD_SIZE_HINT_H

// librdkafka sizes a zstd batch's output buffer from the frame's content size. Producers
// that stream their batches (librdkafka linked to a shared libzstd, as Debian's is; the
// Java client) leave it out, and librdkafka then guesses twice the compressed size and
// decompresses again into a buffer three times larger until the batch fits: JSON that
// compresses 8x is decompressed three times. This module defines
// ZSTD_getFrameContentSize in the executable, which the dynamic linker binds
// librdkafka's call to: for a frame without a content size it answers libzstd's own upper
// bound of the output (ZSTD_decompressBound), so a batch is decompressed once. Every other
// caller, and every frame that carries its size, gets libzstd's answer unchanged.

/// Turns the hint on (non-zero, the default) or off (librdkafka's own guessing).
void fs_zstd_hint_enable(int on);

/// Frames answered with a bound since the process started.
unsigned long long fs_zstd_hint_count(void);

/// Non-zero when librdkafka's calls reach this definition (the executable exports it).
int fs_zstd_hint_installed(void);

#endif
