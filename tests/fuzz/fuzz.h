/*
 * fuzz.h: what the libFuzzer targets in tests/fuzz/ share: the engine itself (run.c is included, so
 * its static functions, the CLI's parse_args among them, are callable), and tiny valid files to
 * load next to the fuzzed bytes.
 * What it is not: a target (each fuzz_*.c is one) or a test of results (targets look for crashes,
 * sanitizer reports, leaks and hangs; the Python tests check what the engine computes).
 */
#define main babyllama_main  // the CLI's main becomes a function a target can call
#include "../../run.c"       // first: it sets _POSIX_C_SOURCE before any system header
#undef main

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// A private path for this process (parallel fuzzing jobs must not share files).
__attribute__((unused)) static const char *fuzz_path(const char *name) {
    static char buf[8][256];
    static int next = 0;
    char *p = buf[next++ % 8];
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(p, 256, "%s/babyllama_fuzz_%d_%s", dir, (int)getpid(), name);
    return p;
}

__attribute__((unused)) static void write_bytes(const char *path, const uint8_t *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    fclose(f);
}

// A valid version 1 checkpoint with a tiny shape and vocabulary `vocab` (dim 8, hidden 16, one
// layer, 2 query heads sharing one KV head, context 16), weights from a fixed LCG in [-0.5, 0.5).
__attribute__((unused)) static const char *tiny_model(int vocab) {
    char name[64];
    snprintf(name, sizeof name, "tiny_v%d.bin", vocab);
    const char *path = fuzz_path(name);
    if (access(path, R_OK) == 0) return path;
    int D = 8, H = 16, L = 1, NH = 2, KV = 1, S = 16, hs = D / NH;
    size_t nf = (size_t)L * D * 2 + D + (size_t)vocab * D + (size_t)L * (D * D + 2 * KV * hs * D + D * D + 3 * H * D);
    uint8_t *buf = calloc(1, 256 + nf * 4);
    int32_t hdr[9] = {0x616b3432, 1, D, H, L, NH, KV, vocab, S};
    memcpy(buf, hdr, sizeof hdr);
    buf[36] = 1;  // shared classifier
    uint32_t s = 12345;
    for (size_t i = 0; i < nf; i++) {
        s = s * 1664525u + 1013904223u;
        float v = (float)(s >> 8) / 16777216.0f - 0.5f;
        memcpy(buf + 256 + 4 * i, &v, 4);
    }
    write_bytes(path, buf, 256 + nf * 4);
    free(buf);
    return path;
}

// The repository's tokenizer.bin (4096 pieces), or BABYLLAMA_FUZZ_TOKENIZER.
__attribute__((unused)) static const char *real_tokenizer(void) {
    const char *p = getenv("BABYLLAMA_FUZZ_TOKENIZER");
    return p ? p : "tokenizer.bin";
}
