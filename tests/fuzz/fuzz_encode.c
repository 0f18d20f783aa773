/*
 * fuzz_encode.c: libFuzzer target: the input is prompt bytes (any bytes; a NUL ends the C string),
 * encoded with the repository's 4096-piece tokenizer.bin with and without BOS/EOS, with an exact
 * buffer and a too-small one; every id is in range and decodes.
 */
#include "fuzz.h"

static bl_model *model;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    char err[BL_ERRLEN];
    if (bl_model_open(tiny_model(4096), real_tokenizer(), &model, err, sizeof err) != BL_OK) {
        fprintf(stderr, "fuzz_encode: %s (run from the repository root)\n", err);
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    size_t len = strlen(text);
    int cap = (int)len + 3, *ids = malloc((size_t)cap * sizeof(int)), n = 0;
    char err[BL_ERRLEN];
    int flags = size ? data[0] & 3 : 0;
    if (bl_encode(model, text, flags & 1, flags >> 1, ids, cap, &n, err, sizeof err) != BL_OK) abort();
    if (n < 0 || n > cap || (len && n == 0)) abort();
    for (int i = 0; i < n; i++) {
        const char *bytes;
        if (ids[i] < 0 || ids[i] >= 4096 || bl_decode(model, i ? ids[i - 1] : 1, ids[i], &bytes) < 0) abort();
    }
    int m2 = 0;  // a buffer one short must be refused, not overrun
    if (n > 0 && bl_encode(model, text, flags & 1, flags >> 1, ids, n - 1, &m2, err, sizeof err) != BL_ERR_ARG) abort();
    free(ids);
    free(text);
    return 0;
}
