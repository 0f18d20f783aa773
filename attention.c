/*
 * attention.c: causal self-attention, forward and backward, for training on a CPU. attention.py
 * makes it a PyTorch operator (babyllama::attention) that train.py uses in place of
 * scaled_dot_product_attention when it runs on a CPU.
 *
 * Why it exists: PyTorch's CPU flash-attention kernel is built from small matrix products, which
 * suit wide heads; llama2.c's 260K shape has heads 8 wide over 512 positions, where that kernel
 * took 81% of a training step. Here the scores run along the key positions j, 16 at a time, with
 * the keys and values of one head transposed to [D][T] first, so the vector width is used
 * whatever the head width D (narrow heads do everything that way); wide heads (D a multiple of
 * 16) take four query rows at a time and run the products with values and the gradients along d
 * (see "Wide heads"). The softmax uses exp16 below (about 1 ulp), not libm's expf, which does not
 * vectorize. bench/attention_speed.py measures it against PyTorch's kernel.
 *
 * Algorithm (FlashAttention's, with whole rows of keys: fast while one head's keys, values and their
 * gradients stay in L2, T x D up to about 16384, where train.py's --attention auto uses it): the forward
 * keeps only O and the log-sum-exp of each row; the backward recomputes the probabilities from
 * them. Grouped-query attention: query head h reads kv head h / (H / KV), as model.py does.
 *
 * Layouts, fp32, contiguous: q, o, dq [B, T, H, D]; k, v, dk, dv [B, T, KV, D]; lse [B, H, T].
 * That is model.py's layout before its transpose, so no copy is needed on either side.
 *
 * What it does not do: masks other than causal, dropout, KV caches, other dtypes, GPUs (attention.py
 * falls back to PyTorch's kernel for all of those).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------------------------
// 16 floats at a time, with GCC/clang vector types: the compiler turns them into one AVX-512
// register, two AVX ones or four SSE/NEON ones. All loops along the keys j go in blocks of 16.

typedef float f16v __attribute__((vector_size(64)));
typedef int i16v __attribute__((vector_size(64)));

static inline f16v load16(const float *p) {
    f16v v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store16(float *p, f16v v) { memcpy(p, &v, sizeof v); }

static inline float sum16(f16v v) {
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += v[i];
    return s;
}

static inline float max16(f16v v) {
    float m = v[0];
    for (int i = 1; i < 16; i++) m = v[i] > m ? v[i] : m;
    return m;
}

// The causal mask of a block of keys j0..j0+15 for query `last`: all ones where j0 + lane <= last.
static inline i16v causal(int j0, int last) {
    const i16v lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return lane + j0 <= last;
}

// mask ? a : b, lane by lane
static inline f16v select16(i16v mask, f16v a, f16v b) { return (f16v)(((i16v)a & mask) | ((i16v)b & ~mask)); }

// e^x (libm's expf does not vectorize): x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor
// series to r^6 (relative error below 2e-7 there), times 2^n built in the exponent bits. Inputs
// below -87 give 0: e^-87 is 1.6e-38, and every row here has a term e^0 = 1.
static inline f16v exp16(f16v x) {
    i16v low = x < -87.0f;  // all ones where x < -87
    f16v c = select16(low, (f16v){0} - 87.0f, x);
    f16v n = c * 1.44269504f + 0.5f;
    i16v ni = __builtin_convertvector(n, i16v);               // truncates toward 0,
    ni -= (i16v)(__builtin_convertvector(ni, f16v) > n) & 1;  // so: floor
    n = __builtin_convertvector(ni, f16v);
    f16v r = c - n * 0.693145751953125f - n * 1.428606765330187e-6f;  // ln2 in two parts: r is exact
    f16v y = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    y *= (f16v)((ni + 127) << 23);
    return (f16v)((i16v)y & ~low);
}

// Rows of the transposed scratch are STRIDE(T) long (keys past T are zeros), so every block of
// 16 keys is whole: no row ends in a scalar remainder loop. The extra 16 keep rows from starting
// a multiple of 4 KB apart: a load from such a row waits on stores to the other (4K aliasing),
// which made the backward 3x slower at T = 512.
#define STRIDE(T) ((((T) + 15) & ~15) + 16)
#define MAX_D 256  // head widths up to this (attention.py falls back beyond it)

// ----------------------------------------------------------------------------------------------
// the work: units of one (batch row b, kv head g), each with its own scratch

typedef struct {
    const float *q, *k, *v, *o, *dout, *lse_in;  // inputs (o, dout, lse_in: backward only)
    float *out, *lse, *dq, *dk, *dv;              // outputs (forward: out, lse; backward: dq, dk, dv)
    int B, T, H, KV, D;
    float scale;
} Job;

// Per-thread scratch: transposed keys and values of one kv head and their gradients, rows of
// STRIDE(T) (the stride P below), and rows of scores.
typedef struct {
    float *kT, *vT, *dkT, *dvT;  // [D][P]
    float *s, *ds;               // [R][P]: rows of scores or probabilities, and of dS
} Scratch;

// m[d * P + t] = x[t * stride + d] for t < T, d < D: one head's [T, D] slice, transposed (the
// padding: zeros).
static void transpose_in(float *m, const float *x, int T, int D, size_t stride) {
    size_t P = STRIDE(T);
    memset(m, 0, sizeof(float) * P * D);
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) m[d * P + t] = x[(size_t)t * stride + d];
}

static void transpose_out(float *x, const float *m, int T, int D, size_t stride) {
    size_t P = STRIDE(T);
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) x[(size_t)t * stride + d] = m[d * P + t];
}

// Query row i of head h of unit (b, .), forward: its scores into S->s (a first pass, for the
// row's max), then e^(s - max) block by block into D vector sums of p * v, and the row's
// log-sum-exp. Inlined with D a constant (see dispatch below), the D sums live in registers.
static inline __attribute__((always_inline)) void forward_row(const Job *J, Scratch *S, int b, int h, int i, const int D) {
    int P = STRIDE(J->T);
    size_t row = ((size_t)b * J->T + i) * J->H + h;
    const float *q = J->q + row * D;
    f16v mv = (f16v){0} - INFINITY, l = {0}, acc[D];
    for (int jb = 0; jb <= i; jb += 16) {
        f16v s = {0};
        for (int d = 0; d < D; d++) s += q[d] * J->scale * load16(S->kT + (size_t)d * P + jb);
        s = select16(causal(jb, i), s, (f16v){0} - INFINITY);
        store16(S->s + jb, s);
        mv = select16(mv >= s, mv, s);
    }
    float m = max16(mv);
    for (int d = 0; d < D; d++) acc[d] = (f16v){0};
    for (int jb = 0; jb <= i; jb += 16) {
        f16v p = exp16(load16(S->s + jb) - m);  // the masked lanes: e^-inf = 0
        l += p;
        for (int d = 0; d < D; d++) acc[d] += p * load16(S->vT + (size_t)d * P + jb);
    }
    float sum = sum16(l);
    for (int d = 0; d < D; d++) J->out[row * D + d] = sum16(acc[d]) / sum;
    J->lse[((size_t)b * J->H + h) * J->T + i] = m + logf(sum);
}

// Query row i, backward (P = e^(s - lse), dS = P * (dP - delta), dP = dO v^T, delta = dO . O),
// block by block: its dq row from D vector sums, and its terms of dk and dv for keys 0..i added to
// the unit's dkT and dvT.
static inline __attribute__((always_inline)) void backward_row(const Job *J, Scratch *S, int b, int h, int i, const int D) {
    int P = STRIDE(J->T);
    size_t row = ((size_t)b * J->T + i) * J->H + h;
    const float *q = J->q + row * D, *dout = J->dout + row * D, *o = J->o + row * D;
    float lse = J->lse_in[((size_t)b * J->H + h) * J->T + i], delta = 0.0f, qs[D];
    f16v acc[D];
    for (int d = 0; d < D; d++) delta += dout[d] * o[d], qs[d] = q[d] * J->scale, acc[d] = (f16v){0};
    for (int jb = 0; jb <= i; jb += 16) {
        f16v s = {0}, dp = {0};
        for (int d = 0; d < D; d++) s += qs[d] * load16(S->kT + (size_t)d * P + jb);
        for (int d = 0; d < D; d++) dp += dout[d] * load16(S->vT + (size_t)d * P + jb);
        f16v p = select16(causal(jb, i), exp16(s - lse), (f16v){0}), ds = p * (dp - delta);
        for (int d = 0; d < D; d++) {
            float *dk = S->dkT + (size_t)d * P + jb, *dv = S->dvT + (size_t)d * P + jb;
            acc[d] += ds * load16(S->kT + (size_t)d * P + jb);
            store16(dk, load16(dk) + qs[d] * ds);
            store16(dv, load16(dv) + dout[d] * p);
        }
    }
    for (int d = 0; d < D; d++) J->dq[row * D + d] = sum16(acc[d]) * J->scale;
}

// ----------------------------------------------------------------------------------------------
// Wide heads (D a multiple of 16: 16, 32, 48, 64, ...). Above, every row makes D passes of one
// multiply-add per load, and the D vector sums do not fit in registers; that lost to PyTorch's
// kernel from D = 32 on. Here R = 4 query rows go together: their scores and dP (along j, from kT
// and vT) take each loaded vector of keys into four sums, and the products with keys and values
// (o, dq, dk, dv) run along d instead, on k, v, dk and dv in their own [T][D] layout, with each
// key's row loaded once for the four query rows. A group at the end of T has nr < R real rows:
// the others repeat a real row in the forward (never stored) and are masked to zero in the
// backward (so they add nothing to dk and dv).
#define R 4

// The nr rows of query head h of unit (b, .) from i0, forward.
static inline __attribute__((always_inline)) void forward_rows(const Job *J, Scratch *S, int b, int h, int i0,
                                                               int nr, const int D) {
    const int NV = D / 16, P = STRIDE(J->T), jmax = i0 + nr - 1;
    size_t kv_stride = (size_t)J->KV * D;
    const float *vb = J->v + (size_t)b * J->T * kv_stride + (size_t)(h / (J->H / J->KV)) * D;
    int last[R];
    float qs[R][D], m[R], sum[R];
    f16v mv[R], acc[R][NV];
    for (int r = 0; r < R; r++) {
        last[r] = i0 + (r < nr ? r : 0);
        const float *q = J->q + (((size_t)b * J->T + last[r]) * J->H + h) * D;
        for (int d = 0; d < D; d++) qs[r][d] = q[d] * J->scale;
        mv[r] = (f16v){0} - INFINITY;
    }
    for (int jb = 0; jb <= jmax; jb += 16) {  // scores, masked, into S->s; each row's max
        f16v s[R] = {{0}};
        for (int d = 0; d < D; d++) {
            f16v kd = load16(S->kT + (size_t)d * P + jb);
            for (int r = 0; r < R; r++) s[r] += qs[r][d] * kd;
        }
        for (int r = 0; r < R; r++) {
            s[r] = select16(causal(jb, last[r]), s[r], (f16v){0} - INFINITY);
            store16(S->s + (size_t)r * P + jb, s[r]);
            mv[r] = select16(mv[r] >= s[r], mv[r], s[r]);
        }
    }
    for (int r = 0; r < R; r++) {  // probabilities (not yet divided by their sum), in place
        f16v l = {0};
        m[r] = max16(mv[r]);
        for (int jb = 0; jb <= jmax; jb += 16) {
            f16v p = exp16(load16(S->s + (size_t)r * P + jb) - m[r]);
            store16(S->s + (size_t)r * P + jb, p);
            l += p;
        }
        sum[r] = sum16(l);
        for (int c = 0; c < NV; c++) acc[r][c] = (f16v){0};
    }
    for (int j = 0; j <= jmax; j++)  // o = p v, along d
        for (int c = 0; c < NV; c++) {
            f16v vj = load16(vb + j * kv_stride + 16 * c);
            for (int r = 0; r < R; r++) acc[r][c] += S->s[(size_t)r * P + j] * vj;
        }
    for (int r = 0; r < nr; r++) {
        size_t row = ((size_t)b * J->T + last[r]) * J->H + h;
        for (int c = 0; c < NV; c++) store16(J->out + row * D + 16 * c, acc[r][c] / sum[r]);
        J->lse[((size_t)b * J->H + h) * J->T + last[r]] = m[r] + logf(sum[r]);
    }
}

// The nr rows of query head h from i0, backward: P and dS along j into S->s and S->ds, then dq
// (summed in registers), dk and dv (added to J->dk and J->dv, which this unit owns) along d.
static inline __attribute__((always_inline)) void backward_rows(const Job *J, Scratch *S, int b, int h, int i0,
                                                                int nr, const int D) {
    const int NV = D / 16, P = STRIDE(J->T), jmax = i0 + nr - 1;
    size_t kv_stride = (size_t)J->KV * D, kv_at = (size_t)b * J->T * kv_stride + (size_t)(h / (J->H / J->KV)) * D;
    int last[R];
    float qs[R][D], go[R][D], lse[R], delta[R];
    f16v acc[R][NV];
    for (int r = 0; r < R; r++) {
        size_t row = ((size_t)b * J->T + i0 + (r < nr ? r : 0)) * J->H + h;
        last[r] = r < nr ? i0 + r : -1;  // -1: a masked row
        lse[r] = r < nr ? J->lse_in[((size_t)b * J->H + h) * J->T + i0 + r] : 0.0f;
        delta[r] = 0.0f;
        for (int d = 0; d < D; d++) {
            qs[r][d] = J->q[row * D + d] * J->scale, go[r][d] = J->dout[row * D + d];
            delta[r] += go[r][d] * J->o[row * D + d];
        }
        for (int c = 0; c < NV; c++) acc[r][c] = (f16v){0};
    }
    for (int jb = 0; jb <= jmax; jb += 16) {  // P and dS along j
        f16v s[R] = {{0}}, dp[R] = {{0}};
        for (int d = 0; d < D; d++) {
            f16v kd = load16(S->kT + (size_t)d * P + jb), vd = load16(S->vT + (size_t)d * P + jb);
            for (int r = 0; r < R; r++) s[r] += qs[r][d] * kd, dp[r] += go[r][d] * vd;
        }
        for (int r = 0; r < R; r++) {
            f16v p = select16(causal(jb, last[r]), exp16(s[r] - lse[r]), (f16v){0});
            store16(S->s + (size_t)r * P + jb, p);
            store16(S->ds + (size_t)r * P + jb, p * (dp[r] - delta[r]));
        }
    }
    for (int j = 0; j <= jmax; j++) {  // dq += dS k, dk += dS^T q, dv += P^T dO, along d
        const float *kj = J->k + kv_at + j * kv_stride;
        float *dkj = J->dk + kv_at + j * kv_stride, *dvj = J->dv + kv_at + j * kv_stride;
        for (int c = 0; c < NV; c++) {
            f16v kv = load16(kj + 16 * c), gk = load16(dkj + 16 * c), gv = load16(dvj + 16 * c);
            for (int r = 0; r < R; r++) {
                float ds = S->ds[(size_t)r * P + j], p = S->s[(size_t)r * P + j];
                acc[r][c] += ds * kv;
                gk += ds * load16(qs[r] + 16 * c);
                gv += p * load16(go[r] + 16 * c);
            }
            store16(dkj + 16 * c, gk), store16(dvj + 16 * c, gv);
        }
    }
    for (int r = 0; r < nr; r++) {
        size_t row = ((size_t)b * J->T + i0 + r) * J->H + h;
        for (int c = 0; c < NV; c++) store16(J->dq + row * D + 16 * c, acc[r][c] * J->scale);
    }
}

// ----------------------------------------------------------------------------------------------
// dispatch: D a compile-time constant for the common head widths (the compiler then unrolls the
// loops over d and keeps the sums in registers)

static void narrow_pass(const Job *J, Scratch *S, int b, int h, int i, int backward) {
#define CASE(W) \
    case W: backward ? backward_row(J, S, b, h, i, W) : forward_row(J, S, b, h, i, W); return;
    switch (J->D) {
        CASE(4) CASE(8) CASE(12)
    default: backward ? backward_row(J, S, b, h, i, J->D) : forward_row(J, S, b, h, i, J->D);
    }
#undef CASE
}

static void wide_pass(const Job *J, Scratch *S, int b, int h, int i0, int nr, int backward) {
#define CASE(W) \
    case W: backward ? backward_rows(J, S, b, h, i0, nr, W) : forward_rows(J, S, b, h, i0, nr, W); return;
    switch (J->D) {
        CASE(16) CASE(32) CASE(48) CASE(64) CASE(128)
    default: backward ? backward_rows(J, S, b, h, i0, nr, J->D) : forward_rows(J, S, b, h, i0, nr, J->D);
    }
#undef CASE
}

// Unit u = (b, g): transpose kv head g of row b, then every row of its query heads.
static void run_unit(Job *J, Scratch *S, int u, int backward) {
    int T = J->T, D = J->D, b = u / J->KV, g = u % J->KV, rep = J->H / J->KV, wide = D % 16 == 0;
    size_t kv_stride = (size_t)J->KV * D, at = (size_t)b * T * kv_stride + (size_t)g * D;
    transpose_in(S->kT, J->k + at, T, D, kv_stride);
    transpose_in(S->vT, J->v + at, T, D, kv_stride);
    if (backward && wide)
        for (int t = 0; t < T; t++)
            memset(J->dk + at + t * kv_stride, 0, sizeof(float) * D), memset(J->dv + at + t * kv_stride, 0, sizeof(float) * D);
    if (backward && !wide) memset(S->dkT, 0, sizeof(float) * STRIDE(T) * D), memset(S->dvT, 0, sizeof(float) * STRIDE(T) * D);
    for (int h = g * rep; h < (g + 1) * rep; h++)
        if (wide)
            for (int i0 = 0; i0 < T; i0 += R) wide_pass(J, S, b, h, i0, T - i0 < R ? T - i0 : R, backward);
        else
            for (int i = 0; i < T; i++) narrow_pass(J, S, b, h, i, backward);
    if (backward && !wide)
        transpose_out(J->dk + at, S->dkT, T, D, kv_stride), transpose_out(J->dv + at, S->dvT, T, D, kv_stride);
}

// Run the job's units on `threads` OpenMP threads. In a process with PyTorch this is PyTorch's own
// OpenMP runtime (one libgomp.so.1 per process), so its waiting threads pick the units up at
// once; a pool of our own would compete with them for the cores. Without OpenMP: one thread.
// Returns 0, or -1 when a thread could not get its scratch memory (its units never ran).
static int run_job(Job *J, int threads, int backward) {
    int units = J->B * J->KV, failed = 0;
    size_t P = STRIDE(J->T), PD = P * J->D;
    (void)threads;
    #pragma omp parallel num_threads(threads < 1 ? 1 : threads) reduction(|:failed)
    {
        float *mem = malloc(sizeof(float) * (4 * PD + 2 * R * P));
        Scratch S = {mem, mem + PD, mem + 2 * PD, mem + 3 * PD, mem + 4 * PD, mem + 4 * PD + R * P};
        #pragma omp for schedule(dynamic)
        for (int u = 0; u < units; u++)
            if (mem) run_unit(J, &S, u, backward);
            else failed = 1;
        free(mem);
    }
    return failed ? -1 : 0;
}

// ----------------------------------------------------------------------------------------------
// the API (declared to cffi in babyllama/_build.py)

static int bad_shape(int B, int T, int H, int KV, int D) {
    return B < 1 || T < 1 || H < 1 || KV < 1 || D < 1 || D > MAX_D || H % KV != 0;
}

// out = softmax(scale q k^T, causal) v; lse = each row's log-sum-exp. Returns 0, or -1.
int bl_attention_forward(const float *q, const float *k, const float *v, float *out, float *lse,
                         int B, int T, int H, int KV, int D, float scale, int threads) {
    if (bad_shape(B, T, H, KV, D)) return -1;
    Job J = {.q = q, .k = k, .v = v, .out = out, .lse = lse, .B = B, .T = T, .H = H, .KV = KV, .D = D, .scale = scale};
    return run_job(&J, threads, 0);
}

// dq, dk, dv from dout, given the forward's inputs, its out and its lse. Returns 0, or -1.
int bl_attention_backward(const float *dout, const float *q, const float *k, const float *v, const float *out,
                          const float *lse, float *dq, float *dk, float *dv, int B, int T, int H, int KV, int D,
                          float scale, int threads) {
    if (bad_shape(B, T, H, KV, D)) return -1;
    Job J = {.q = q, .k = k, .v = v, .o = out, .dout = dout, .lse_in = lse, .dq = dq, .dk = dk, .dv = dv,
             .B = B, .T = T, .H = H, .KV = KV, .D = D, .scale = scale};
    return run_job(&J, threads, 1);
}
