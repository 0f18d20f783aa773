/*
 * fuzz_checkpoint.c: libFuzzer target: the input is a whole checkpoint file (any version; the seeds
 * in corpus/checkpoint are tiny valid v0, v1 and v2 files). It must be refused with an error code
 * or, when it opens, run two forward steps and sample without a sanitizer report.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path("checkpoint.bin");
    write_bytes(path, data, size);
    char err[BL_ERRLEN];
    bl_model *m = NULL;
    if (bl_model_open(path, NULL, &m, err, sizeof err) != BL_OK) {
        if (m || !memchr(err, '\0', sizeof err) || strchr(err, '\n')) abort();  // one line, no model
        return 0;
    }
    bl_config c = bl_model_config(m);
    // the KV cache is the one allocation the file does not bound: keep it small under the fuzzer
    uint64_t cache = (uint64_t)c.n_layers * c.seq_len * kv_dim(&c) * 4 + (uint64_t)c.n_heads * c.seq_len * 4;
    bl_state *s = NULL;
    bl_sampler *sm = NULL;
    if (cache < (64u << 20) && bl_state_new(m, &s, err, sizeof err) == BL_OK &&
        bl_sampler_new(c.vocab_size, 0.9f, 0.8f, size % 3, 7, &sm, err, sizeof err) == BL_OK) {
        int token = 0;
        for (int pos = 0; pos < 2 && pos < c.seq_len; pos++) {
            float *logits = bl_forward(s, token, pos);
            if (!logits) abort();
            token = bl_sample(sm, logits);
            if (token < 0 || token >= c.vocab_size) abort();
        }
    }
    bl_sampler_free(sm);
    bl_state_free(s);
    bl_model_close(m);
    return 0;
}
