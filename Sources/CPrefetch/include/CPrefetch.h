#ifndef FOLDSPACE_CPREFETCH_H
#define FOLDSPACE_CPREFETCH_H

/// Asks the CPU to start loading the cache line at `p` for reading, without waiting for
/// it (a hint: it never faults, whatever `p` is). Swift has no prefetch of its own.
static inline void fs_prefetch(const void *p) {
    __builtin_prefetch(p, 0, 3);
}

#endif
