// See include/CZstdSizeHint.h for why this exists.
#include "CZstdSizeHint.h"

#if defined(__linux__)
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// libzstd's sentinels (zstd.h), declared here so that building needs no libzstd-dev.
#define CONTENTSIZE_UNKNOWN (0ULL - 1)
#define CONTENTSIZE_ERROR (0ULL - 2)
// librdkafka refuses a first buffer above receive.message.max.bytes (100 MB by
// default); larger bounds are left to its own guessing.
#define HINT_MAX (64ULL << 20)

typedef unsigned long long (*size_fn)(const void *, size_t);

static size_fn real_content_size;
static size_fn decompress_bound;
// librdkafka's code, so that only its calls are answered differently.
static uintptr_t rdkafka_lo, rdkafka_hi;
static pthread_once_t resolved = PTHREAD_ONCE_INIT;
static atomic_int enabled = 1;
static atomic_ullong hinted;

static int find_rdkafka(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    (void)data;
    if (info->dlpi_name == NULL || strstr(info->dlpi_name, "librdkafka") == NULL) return 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *p = &info->dlpi_phdr[i];
        if (p->p_type != PT_LOAD || (p->p_flags & PF_X) == 0) continue;
        uintptr_t lo = info->dlpi_addr + p->p_vaddr;
        uintptr_t hi = lo + p->p_memsz;
        if (rdkafka_lo == 0 || lo < rdkafka_lo) rdkafka_lo = lo;
        if (hi > rdkafka_hi) rdkafka_hi = hi;
    }
    return 1;
}

static void resolve(void) {
    real_content_size = (size_fn)dlsym(RTLD_NEXT, "ZSTD_getFrameContentSize");
    decompress_bound = (size_fn)dlsym(RTLD_NEXT, "ZSTD_decompressBound");
    dl_iterate_phdr(find_rdkafka, NULL);
}

unsigned long long ZSTD_getFrameContentSize(const void *src, size_t srcSize) {
    pthread_once(&resolved, resolve);
    if (real_content_size == NULL) return CONTENTSIZE_UNKNOWN;
    unsigned long long n = real_content_size(src, srcSize);
    if (n != CONTENTSIZE_UNKNOWN || decompress_bound == NULL
        || !atomic_load_explicit(&enabled, memory_order_relaxed)) return n;
    uintptr_t caller = (uintptr_t)__builtin_return_address(0);
    if (caller < rdkafka_lo || caller >= rdkafka_hi) return n;
    unsigned long long bound = decompress_bound(src, srcSize);
    if (bound == CONTENTSIZE_ERROR || bound == 0 || bound > HINT_MAX) return n;
    atomic_fetch_add_explicit(&hinted, 1, memory_order_relaxed);
    return bound;
}

void fs_zstd_hint_enable(int on) { atomic_store(&enabled, on != 0); }

unsigned long long fs_zstd_hint_count(void) { return atomic_load(&hinted); }

int fs_zstd_hint_installed(void) {
    pthread_once(&resolved, resolve);
    void *bound = dlsym(RTLD_DEFAULT, "ZSTD_getFrameContentSize");
    return bound == (void *)ZSTD_getFrameContentSize && real_content_size != NULL;
}

#else
// Elsewhere (two-level namespaces on Darwin) an executable's definition does not replace
// a library's: the hint is never installed.
void fs_zstd_hint_enable(int on) { (void)on; }
unsigned long long fs_zstd_hint_count(void) { return 0; }
int fs_zstd_hint_installed(void) { return 0; }
#endif
