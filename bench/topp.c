/*
 * topp.c: what top-p sampling costs per token over a 32000-token vocabulary, for
 * bench/run_speed.py (which prints it beside a token's time).
 *
 *     make build/topp && ./build/topp        (prints one JSON line; times in microseconds)
 *
 * Times bl_sample at temperature 1 with top-p 0.9 (run.c: filter, buckets of candidates added
 * whole where float addition allows, the others sorted), with top-p off (softmax + one multinomial
 * draw: what every sampled token costs anyway), and llama2.c's algorithm (tests/c/llama2c_topp.h:
 * filter, qsort, two walks) for comparison, on a flat distribution (random-weight models: every
 * token about 1/32000) and a peaked one (Zipf-like, as trained models give). The top-p cost is the difference to top-p off. Each figure is the best
 * of 15 rounds of 20 calls (the least disturbed by other programs). It checks nothing
 * (tests/c/test_api.c checks that run.c's top-p picks llama2.c's token).
 */
#define BABYLLAMA_NO_MAIN
#include "../run.c"
#include "../tests/c/llama2c_topp.h"

enum { V = 32000, CALLS = 20, ROUNDS = 15 };

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}

// llama2.c's sample_topp: the same filter, qsort of every candidate, two walks of the nucleus
static int llama2c_topp(bl_sampler *s, float *logits) {
    static ProbIndex pi[V];
    for (int i = 0; i < V; i++) logits[i] /= s->temperature;
    softmax(logits, V);
    float coin = random_f32(&s->rng);
    int n0 = llama2c_candidates(logits, V, s->top_p, pi);
    return llama2c_draw(pi, n0, s->top_p, coin);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

// best microseconds per call of: way 0 = bl_sample, way 1 = llama2c_topp
static double time_it(const float *logits, float top_p, int way) {
    static float work[V];
    double t[ROUNDS];
    bl_sampler *s = NULL;
    char err[BL_ERRLEN];
    if (bl_sampler_new(V, 1.0f, top_p, 0, 42, &s, err, sizeof err) != BL_OK) exit(fprintf(stderr, "error: %s\n", err) || 1);
    volatile int sink = 0;
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = now_us();
        for (int c = 0; c < CALLS; c++) {
            memcpy(work, logits, sizeof work);
            sink += way ? llama2c_topp(s, work) : bl_sample(s, work);
        }
        t[r] = (now_us() - t0) / CALLS;
    }
    bl_sampler_free(s);
    qsort(t, ROUNDS, sizeof(double), cmp_double);
    return t[0];
}

int main(void) {
    static float flat[V], peaked[V];
    unsigned long long rng = 7;
    for (int i = 0; i < V; i++) {
        flat[i] = 0.05f * (random_f32(&rng) - 0.5f);                     // logits of a random-weight model
        peaked[i] = -1.5f * logf(1.0f + (float)((i * 7919) % V));        // Zipf-like, shuffled
    }
    printf("{");
    const char *names[2] = {"flat", "peaked"};
    const float *dist[2] = {flat, peaked};
    for (int d = 0; d < 2; d++) {
        double topp = time_it(dist[d], 0.9f, 0), off = time_it(dist[d], 1.0f, 0), old = time_it(dist[d], 0.9f, 1);
        printf("%s\"%s\": {\"topp_us\": %.2f, \"off_us\": %.2f, \"llama2c_us\": %.2f}", d ? ", " : "", names[d], topp, off, old);
    }
    printf("}\n");
    return 0;
}
