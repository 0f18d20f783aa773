/*
 * speed.c: the engine's speed on one model, through its public API, for bench/run_speed.py.
 *
 *     make build/speed build/speed_ref          (fast kernels; run.c's reference kernels)
 *     OMP_NUM_THREADS=2 ./build/speed model.bin [decode_tokens prefill_tokens batch new_tokens]
 *
 * Prints one JSON line of tokens per second:
 *   decode   bl_forward + bl_sample (temperature 1, top-p off: llama2.c's `-t 1.0 -p 1.0`, the
 *            setting of issue 4's llama2.c figures) from BOS, as ./run's loop, timed after the
 *            first position (decode_tokens positions, default 128);
 *   decode_topp  the same with top-p 0.9 (./run's default);
 *   prefill  bl_prefill of a prompt of prefill_tokens ids (default 200) at once: the best of 3;
 *   batch1, batchN   bl_generate_batch of 1 and of `batch` stories (default 32) from BOS,
 *            new_tokens each (default 32), temperature 1, top-p off: new tokens of all stories / time;
 *            the two run in turn 3 times, medians (one story's run is short: a single one moved
 *            by +-20% on this VM, and with it the ratio of the two).
 * It checks nothing (the tests do).
 */
#define BABYLLAMA_NO_MAIN
#include "../run.c"

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void die(const char *what, const char *err) {
    fprintf(stderr, "error: %s: %s\n", what, err);
    exit(1);
}

static double time_decode(bl_model *m, int steps, float top_p) {
    char err[BL_ERRLEN];
    bl_state *s = NULL;
    bl_sampler *smp = NULL;
    if (bl_state_new(m, &s, err, sizeof err) || bl_sampler_new(m->cfg.vocab_size, 1.0f, top_p, 0, 42, &smp, err, sizeof err))
        die("decode", err);
    double t0 = 0;
    int token = 1, pos = 0;
    for (; pos < steps; pos++) {
        token = bl_sample(smp, bl_forward(s, token, pos));
        if (pos == 0) t0 = now_s();
    }
    double rate = (pos - 1) / (now_s() - t0);
    bl_sampler_free(smp), bl_state_free(s);
    return rate;
}

static double time_prefill(bl_model *m, int n) {
    char err[BL_ERRLEN];
    bl_state *s = NULL;
    if (bl_state_new(m, &s, err, sizeof err)) die("prefill", err);
    int *ids = malloc((size_t)n * sizeof(int));
    unsigned long long rng = 3;
    for (int i = 0; i < n; i++) ids[i] = i ? 3 + (int)(random_u32(&rng) % (uint32_t)(m->cfg.vocab_size - 3)) : 1;
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = now_s();
        if (!bl_prefill(s, ids, n, 0)) die("prefill", "bl_prefill failed");
        double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    free(ids), bl_state_free(s);
    return n / best;
}

static double time_batch(bl_model *m, int n, int max_new) {
    char err[BL_ERRLEN];
    const int bos[1] = {1};
    const int **prompts = malloc((size_t)n * sizeof *prompts);
    int *lens = malloc((size_t)n * sizeof(int)), *n_tokens = malloc((size_t)n * sizeof(int));
    int *tokens = malloc((size_t)n * max_new * sizeof(int));
    unsigned long long *seeds = malloc((size_t)n * sizeof *seeds);
    for (int i = 0; i < n; i++) prompts[i] = bos, lens[i] = 1, seeds[i] = 42 + (unsigned long long)i;
    double t0 = now_s();
    if (bl_generate_batch(m, n, prompts, lens, max_new, 1.0f, 1.0f, 0, seeds, tokens, n_tokens, err, sizeof err))
        die("batch", err);
    double dt = now_s() - t0;
    long total = 0;
    for (int i = 0; i < n; i++) total += n_tokens[i];
    free(prompts), free(lens), free(n_tokens), free(tokens), free(seeds);
    return total / dt;
}

static double median3(const double v[3]) {
    double a = v[0], b = v[1], c = v[2];
    return a > b ? (b > c ? b : a > c ? c : a) : (a > c ? a : b > c ? c : b);
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 6) return fprintf(stderr, "usage: speed model.bin [decode prefill batch new]\n"), 1;
    int steps = argc == 6 ? atoi(argv[2]) : 128, n_prefill = argc == 6 ? atoi(argv[3]) : 200;
    int n_batch = argc == 6 ? atoi(argv[4]) : 32, max_new = argc == 6 ? atoi(argv[5]) : 32;
    char err[BL_ERRLEN];
    bl_model *m = NULL;
    if (bl_model_open(argv[1], NULL, &m, err, sizeof err)) die(argv[1], err);
    int ctx = m->cfg.seq_len;
    steps = steps < ctx ? steps : ctx, n_prefill = n_prefill < ctx ? n_prefill : ctx, max_new = max_new < ctx ? max_new : ctx;
    time_decode(m, 8 < ctx ? 8 : ctx, 1.0f);  // page the weights in
    double d = steps > 1 ? time_decode(m, steps, 1.0f) : 0, dp = steps > 1 ? time_decode(m, steps, 0.9f) : 0;
    double p = n_prefill > 0 ? time_prefill(m, n_prefill) : 0;
    double b1s[3] = {0}, bns[3] = {0};
    for (int r = 0; n_batch > 0 && r < 3; r++) b1s[r] = time_batch(m, 1, max_new), bns[r] = time_batch(m, n_batch, max_new);
    double b1 = median3(b1s), bn = median3(bns);
    printf("{\"decode\": %.2f, \"decode_topp\": %.2f, \"prefill\": %.2f, \"batch1\": %.2f, \"batchN\": %.2f, \"batch\": %d}\n",
           d, dp, p, b1, bn, n_batch);
    bl_model_close(m);
    return 0;
}
