/*
 * attention.c: causal self-attention, forward and backward, for training on a CPU. attention.py
 * makes it a PyTorch operator (babyllama::attention) that train.py uses in place of
 * scaled_dot_product_attention when it runs on a CPU.
 *
 * Why it exists: PyTorch's CPU flash-attention kernel is built from small matrix products, which
 * suit wide heads; llama2.c's 260K shape has heads 8 wide over 512 positions, where that kernel
 * took 81% of a training step. Here every loop runs along the key positions j, with the keys and
 * values of one head transposed to [D][T] first, so each loop is a unit-stride pass over up to T
 * floats that the compiler vectorizes (`omp simd`), whatever the head width D. The softmax uses
 * exp16 below (about 1 ulp), not libm's expf, which does not vectorize.
 *
 * Algorithm (FlashAttention's, with whole rows: T <= a few thousand fits in L1/L2): the forward
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
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64

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
    _Atomic int next;  // the next unit to take
} Job;

// Per-thread scratch: transposed keys and values of one kv head and their gradients, rows of
// STRIDE(T) (the stride P below), and one row of scores.
typedef struct {
    float *kT, *vT, *dkT, *dvT;  // [D][P]
    float *s;                    // [P]
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

// One row, forward or backward, with D a compile-time constant for the common head widths (the
// compiler then unrolls the loops over d and keeps the D sums in registers).
static void row_pass(const Job *J, Scratch *S, int b, int h, int i, int backward) {
#define CASE(W) \
    case W: backward ? backward_row(J, S, b, h, i, W) : forward_row(J, S, b, h, i, W); return;
    switch (J->D) {
        CASE(8) CASE(16) CASE(32) CASE(48) CASE(64)
    default: backward ? backward_row(J, S, b, h, i, J->D) : forward_row(J, S, b, h, i, J->D);
    }
#undef CASE
}

// Unit u = (b, g): transpose kv head g of row b, then every row of its query heads.
static void run_unit(Job *J, Scratch *S, int u, int backward) {
    int T = J->T, D = J->D, b = u / J->KV, g = u % J->KV, rep = J->H / J->KV;
    size_t kv_stride = (size_t)J->KV * D, at = (size_t)b * T * kv_stride + (size_t)g * D;
    transpose_in(S->kT, J->k + at, T, D, kv_stride);
    transpose_in(S->vT, J->v + at, T, D, kv_stride);
    if (backward) memset(S->dkT, 0, sizeof(float) * STRIDE(T) * D), memset(S->dvT, 0, sizeof(float) * STRIDE(T) * D);
    for (int h = g * rep; h < (g + 1) * rep; h++)
        for (int i = 0; i < T; i++) row_pass(J, S, b, h, i, backward);
    if (backward) transpose_out(J->dk + at, S->dkT, T, D, kv_stride), transpose_out(J->dv + at, S->dvT, T, D, kv_stride);
}

typedef struct {
    Job *job;
    int backward, failed;
} Worker;

// A thread: take units until none is left.
static void *worker(void *arg) {
    Worker *w = arg;
    Job *J = w->job;
    size_t P = STRIDE(J->T), PD = P * J->D;
    float *mem = malloc(sizeof(float) * (4 * PD + P));
    if (!mem) {
        w->failed = 1;
        return NULL;
    }
    Scratch S = {mem, mem + PD, mem + 2 * PD, mem + 3 * PD, mem + 4 * PD};
    for (int u; (u = atomic_fetch_add(&J->next, 1)) < J->B * J->KV;) run_unit(J, &S, u, w->backward);
    free(mem);
    return NULL;
}

// Run the job's units on `threads` threads (the caller is one of them). Returns 0, or -1 when
// scratch memory could not be had (some units then never ran).
static int run_job(Job *J, int threads, int backward) {
    threads = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    threads = threads < J->B * J->KV ? threads : J->B * J->KV;
    Worker w[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    int started = 0, failed = 0;
    for (int t = 0; t < threads; t++) w[t] = (Worker){J, backward, 0};
    for (int t = 1; t < threads; t++)
        if (pthread_create(&tid[t], NULL, worker, &w[t]) == 0) started = t;
        else break;
    worker(&w[0]);
    for (int t = 1; t <= started; t++) pthread_join(tid[t], NULL);
    for (int t = 0; t < threads; t++) failed |= w[t].failed;
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
    atomic_init(&J.next, 0);
    return run_job(&J, threads, 0);
}

// dq, dk, dv from dout, given the forward's inputs, its out and its lse. Returns 0, or -1.
int bl_attention_backward(const float *dout, const float *q, const float *k, const float *v, const float *out,
                          const float *lse, float *dq, float *dk, float *dv, int B, int T, int H, int KV, int D,
                          float scale, int threads) {
    if (bad_shape(B, T, H, KV, D)) return -1;
    Job J = {.q = q, .k = k, .v = v, .o = out, .dout = dout, .lse_in = lse, .dq = dq, .dk = dk, .dv = dv,
             .B = B, .T = T, .H = H, .KV = KV, .D = D, .scale = scale};
    atomic_init(&J.next, 0);
    return run_job(&J, threads, 1);
}
