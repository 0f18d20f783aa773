/*
 * fuzz_checkpoint.c: libFuzzer target: the input is a whole checkpoint file (any version; the seeds
 * in corpus/checkpoint are tiny valid v0, v1 and v2 files). It must be refused with an error code
 * or, when it opens, run two forward steps and sample, prefill, logits and a batch of two stories,
 * without a sanitizer report.
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
        // the many-row paths: prefill, logits of every position, a batch of two stories
        int ids[3], n = c.seq_len < 3 ? c.seq_len : 3;
        for (int i = 0; i < n; i++) ids[i] = (int)(data[(size_t)i * 7 % size] % (unsigned)c.vocab_size);
        if (!bl_prefill(s, ids, n, 0)) abort();
        ids[n - 1] = c.vocab_size;  // out of range: refused, not read
        if (bl_prefill(s, ids, n, 0) || bl_logits(s, ids, n, NULL, err, sizeof err) == BL_OK) abort();
        ids[n - 1] = 0;
        float *out = malloc((size_t)n * (size_t)c.vocab_size * sizeof(float));
        if (out && bl_logits(s, ids, n, out, err, sizeof err) != BL_OK) abort();
        free(out);
        const int *prompts[2] = {ids, ids + n - 1};
        int lens[2] = {n, 1}, toks[4], counts[2];
        unsigned long long seeds[2] = {1, 2};
        if (bl_generate_batch(m, 2, prompts, lens, 2, 0.8f, 0.9f, 0, seeds, toks, counts, err, sizeof err) == BL_OK)
            for (int i = 0; i < 2; i++)
                if (counts[i] < 0 || counts[i] > 2) abort();
    }
    bl_sampler_free(sm);
    bl_state_free(s);
    bl_model_close(m);
    return 0;
}
