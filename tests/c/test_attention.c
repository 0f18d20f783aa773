/*
 * test_attention.c: attention.c (the training kernel) against a plain double-precision reference
 * written from the definition, forward and backward, over shapes that reach both of its paths
 * (narrow heads along j; wide ones, D a multiple of 16, four rows at a time) with T on and off a
 * multiple of 16 and grouped-query attention; run by `make test-c` under ASan + UBSan (every read
 * of the padded scratch rows is checked) and optimized. Also: a bad shape returns -1.
 * tests/test_attention.py checks the same against PyTorch, from Python.
 */
#include "../../attention.c"

#include <stdio.h>

static int failures, checks;

static void expect(int ok, const char *what, int B, int T, int H, int KV, int D, double err) {
    checks++;
    if (!ok) failures++, fprintf(stderr, "FAIL %s: B %d T %d H %d KV %d D %d: relative error %.3g\n", what, B, T, H, KV, D, err);
}

static double frand(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (*s >> 8) / 16777216.0 * 2.0 - 1.0;
}

// The definition: out_i = sum_j<=i softmax_j(s_ij) v_j with s_ij = q_i . k_j / sqrt(D), and the
// gradients of sum(out * g) (g = dout) by the chain rule, in double.
static void reference(const float *q, const float *k, const float *v, const float *g, double *out, double *dq,
                      double *dk, double *dv, int B, int T, int H, int KV, int D) {
    double scale = 1.0 / sqrt(D), *p = malloc(sizeof(double) * T), *dp = malloc(sizeof(double) * T);
    memset(dk, 0, sizeof(double) * B * T * KV * D), memset(dv, 0, sizeof(double) * B * T * KV * D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                int g_ = h / (H / KV);
                const float *qi = q + (((size_t)b * T + i) * H + h) * D, *gi = g + (((size_t)b * T + i) * H + h) * D;
                double m = -INFINITY, sum = 0, dot = 0;
                for (int j = 0; j <= i; j++) {
                    const float *kj = k + (((size_t)b * T + j) * KV + g_) * D;
                    double s = 0;
                    for (int d = 0; d < D; d++) s += (double)qi[d] * kj[d];
                    p[j] = s * scale, m = p[j] > m ? p[j] : m;
                }
                for (int j = 0; j <= i; j++) p[j] = exp(p[j] - m), sum += p[j];
                double *oi = out + (((size_t)b * T + i) * H + h) * D, *dqi = dq + (((size_t)b * T + i) * H + h) * D;
                for (int d = 0; d < D; d++) {
                    oi[d] = 0;
                    for (int j = 0; j <= i; j++) oi[d] += p[j] / sum * v[(((size_t)b * T + j) * KV + g_) * D + d];
                    dot += oi[d] * gi[d];
                }
                for (int d = 0; d < D; d++) dqi[d] = 0;
                for (int j = 0; j <= i; j++) {
                    size_t kv = (((size_t)b * T + j) * KV + g_) * D;
                    double pj = p[j] / sum, gv = 0;
                    for (int d = 0; d < D; d++) gv += (double)gi[d] * v[kv + d], dv[kv + d] += pj * gi[d];
                    dp[j] = pj * (gv - dot);  // dL/ds_ij
                    for (int d = 0; d < D; d++) dqi[d] += dp[j] * scale * k[kv + d], dk[kv + d] += dp[j] * scale * qi[d];
                }
            }
    free(p), free(dp);
}

static double rel_err(const float *a, const double *b, size_t n) {
    double err = 0, big = 1e-6;
    for (size_t i = 0; i < n; i++) err = fmax(err, fabs(a[i] - b[i])), big = fmax(big, fabs(b[i]));
    return err / big;
}

static void check_shape(int B, int T, int H, int KV, int D, int threads) {
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KV * D;
    float *f = malloc(sizeof(float) * (4 * nq + 4 * nk + (size_t)B * H * T));
    float *q = f, *g = q + nq, *out = g + nq, *dq = out + nq, *k = dq + nq, *v = k + nk, *dk = v + nk, *dv = dk + nk;
    float *lse = dv + nk;
    double *d = malloc(sizeof(double) * (2 * nq + 2 * nk));
    double *rout = d, *rdq = d + nq, *rdk = d + 2 * nq, *rdv = rdk + nk;
    unsigned seed = (unsigned)(B * 7919 + T * 104729 + D * 31 + H);
    for (size_t i = 0; i < nq; i++) q[i] = (float)(2 * frand(&seed)), g[i] = (float)frand(&seed);
    for (size_t i = 0; i < nk; i++) k[i] = (float)(2 * frand(&seed)), v[i] = (float)frand(&seed);
    reference(q, k, v, g, rout, rdq, rdk, rdv, B, T, H, KV, D);
    int rc = bl_attention_forward(q, k, v, out, lse, B, T, H, KV, D, (float)(1.0 / sqrt(D)), threads);
    expect(rc == 0, "forward returns 0", B, T, H, KV, D, 0);
    rc = bl_attention_backward(g, q, k, v, out, lse, dq, dk, dv, B, T, H, KV, D, (float)(1.0 / sqrt(D)), threads);
    expect(rc == 0, "backward returns 0", B, T, H, KV, D, 0);
    const char *names[4] = {"out", "dq", "dk", "dv"};
    const float *got[4] = {out, dq, dk, dv};
    const double *want[4] = {rout, rdq, rdk, rdv};
    for (int t = 0; t < 4; t++) {
        double e = rel_err(got[t], want[t], t < 2 ? nq : nk);
        expect(e < 2e-5, names[t], B, T, H, KV, D, e);
    }
    free(f), free(d);
}

int main(void) {
    // narrow (along j) and wide (D % 16 == 0) heads, specialized widths and others, T = 1, T on
    // and off a multiple of 16, a partial last group of 4 rows, one kv head for several query heads
    static const int shapes[][5] = {
        {2, 17, 4, 2, 8}, {1, 1, 2, 1, 5}, {2, 33, 8, 1, 13}, {1, 16, 2, 2, 4}, {1, 40, 5, 5, 32},
        {2, 23, 6, 3, 48}, {1, 64, 2, 2, 64}, {1, 18, 2, 1, 16}, {1, 9, 2, 2, 80}, {1, 5, 1, 1, 128},
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int threads = 1; threads <= 3; threads += 2)
            check_shape(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4], threads);
    float x[4] = {0};
    checks++, failures += bl_attention_forward(x, x, x, x, x, 1, 1, 3, 2, 1, 1.0f, 1) != -1;      // KV does not divide H
    checks++, failures += bl_attention_forward(x, x, x, x, x, 1, 1, 1, 1, 257, 1.0f, 1) != -1;    // D over MAX_D
    checks++, failures += bl_attention_backward(x, x, x, x, x, x, x, x, x, 0, 1, 1, 1, 1, 1.0f, 1) != -1;  // B 0
    printf("test_attention: %d checks, %d failures\n", checks, failures);
    return failures != 0;
}
