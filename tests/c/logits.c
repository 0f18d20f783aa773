/*
 * logits.c: the logits run.c computes for a whole sequence, through the public API (bl_logits),
 * for tests/test_logits_parity.py (which compares them with PyTorch's).
 *
 *     build/logits model.bin [--step] < ids      (ids: whitespace-separated token ids)
 *
 * By default all positions go through bl_logits (many positions per forward pass); with --step,
 * through one bl_forward per position (tests/test_logits_parity.py checks that both agree).
 *
 * Writes n * vocab_size little-endian float32 to stdout, row by row; errors: one line, exit 1.
 */
#define BABYLLAMA_NO_MAIN
#include "run.c"  // only its public API (babyllama.h) is used here

int main(int argc, char **argv) {
    char err[BL_ERRLEN];
    bl_model *m = NULL;
    bl_state *s = NULL;
    int step = argc == 3 && strcmp(argv[2], "--step") == 0;
    if (argc != 2 && !step) return fprintf(stderr, "usage: logits model.bin [--step] < ids\n"), 1;
    if (bl_model_open(argv[1], NULL, &m, err, sizeof err) != BL_OK || bl_state_new(m, &s, err, sizeof err) != BL_OK) {
        fprintf(stderr, "error: %s\n", err);
        bl_model_close(m);
        return 1;
    }
    bl_config c = bl_model_config(m);
    int *ids = malloc((size_t)c.seq_len * sizeof(int)), n = 0;
    while (n < c.seq_len && scanf("%d", &ids[n]) == 1) n++;
    float *out = malloc((size_t)n * c.vocab_size * sizeof(float) + 1);
    int rc = step ? BL_OK : bl_logits(s, ids, n, out, err, sizeof err);
    for (int i = 0; step && i < n && rc == BL_OK; i++) {
        float *lg = bl_forward(s, ids[i], i);
        if (!lg) rc = fail(err, sizeof err, BL_ERR_ARG, "token %d at position %d is out of range", ids[i], i);
        else memcpy(out + (size_t)i * c.vocab_size, lg, (size_t)c.vocab_size * sizeof(float));
    }
    if (rc != BL_OK) fprintf(stderr, "error: %s\n", err);
    else fwrite(out, sizeof(float), (size_t)n * c.vocab_size, stdout);
    free(ids), free(out);
    bl_state_free(s);
    bl_model_close(m);
    return rc == BL_OK ? 0 : 1;
}
