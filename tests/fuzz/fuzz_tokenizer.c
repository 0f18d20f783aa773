/*
 * fuzz_tokenizer.c: libFuzzer target: the input is a whole tokenizer.bin, loaded for a tiny model
 * whose vocabulary size (1..300) comes from the input's size. When it loads, a few texts are encoded
 * with it and every piece is decoded.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *texts[] = {"", "Once upon a time", " a  b ", "\xe2\x96\x81x\xe2\x96\x81",
                                  "\xff\xfe\xc3", "<0x41>\x01\x7f", "\xf0\x9f\x98\x80 \xe4\xb8\xad"};
    int vocab = 1 + (int)(size % 300);
    const char *path = fuzz_path("tokenizer.bin");
    write_bytes(path, data, size);
    char err[BL_ERRLEN];
    bl_model *m = NULL;
    if (bl_model_open(tiny_model(vocab), path, &m, err, sizeof err) != BL_OK) {
        if (m || strchr(err, '\n')) abort();
        return 0;
    }
    int ids[64], n = 0;
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        if (bl_encode(m, texts[i], 1, 1, ids, 64, &n, err, sizeof err) != BL_OK) abort();
        for (int j = 0; j < n; j++)
            if (ids[j] < 0 || ids[j] >= vocab) abort();
    }
    const char *bytes;
    for (int t = 0; t < vocab; t++)
        for (int prev = 0; prev < 2; prev++) {
            int k = bl_decode(m, prev, t, &bytes);
            if (k < 0) abort();
            volatile char sink = 0;
            for (int j = 0; j < k; j++) sink ^= bytes[j];  // ASan checks every byte is readable
        }
    bl_model_close(m);
    return 0;
}
