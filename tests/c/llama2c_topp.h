/*
 * llama2c_topp.h: llama2.c's top-p sampling as llama2.c writes it, the reference that
 * tests/c/test_api.c compares run.c's top-p with (the same token for every coin) and that
 * bench/topp.c times. In two steps: the candidates, filtered and sorted, then the two walks of the
 * nucleus for one coin. llama2.c's qsort compares probabilities only; glibc's qsort is a stable
 * merge sort, so ties keep their index order: the comparator here says so explicitly, which makes
 * the order the same with any qsort. Not run.c's algorithm (run.c's is much faster).
 */
#include <stdlib.h>

typedef struct {
    float prob;
    int index;
} ProbIndex;

static int llama2c_cmp(const void *a, const void *b) {
    const ProbIndex *x = a, *y = b;
    return x->prob > y->prob ? -1 : x->prob < y->prob ? 1 : (x->index > y->index) - (x->index < y->index);
}

// The tokens of p[0..n) at or above (1 - top_p) / (n - 1), sorted by descending probability, into
// pi; returns how many.
static int llama2c_candidates(const float *p, int n, float top_p, ProbIndex *pi) {
    int n0 = 0;
    float cutoff = (1.0f - top_p) / (float)(n - 1);
    for (int i = 0; i < n; i++)
        if (p[i] >= cutoff) pi[n0++] = (ProbIndex){p[i], i};
    qsort(pi, (size_t)n0, sizeof *pi, llama2c_cmp);
    return n0;
}

// The token for coin: the nucleus is the shortest prefix whose sum passes top_p; the first of its
// running sums above coin * that sum. (n0 >= 1: with no candidate llama2.c reads pi[-1].)
static int llama2c_draw(const ProbIndex *pi, int n0, float top_p, float coin) {
    float cum = 0.0f;
    int last = n0 - 1;
    for (int i = 0; i < n0; i++) {
        cum += pi[i].prob;
        if (cum > top_p) {
            last = i;
            break;
        }
    }
    float r = coin * cum, cdf = 0.0f;
    for (int i = 0; i <= last; i++) {
        cdf += pi[i].prob;
        if (r < cdf) return pi[i].index;
    }
    return pi[last].index;
}
