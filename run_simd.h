/*
 * run_simd.h: AVX-512 versions of run.c's two matrix kernels (rows_f32, rows_q8), included by
 * run.c when the compiler targets AVX-512 (make's -march=native on a CPU that has it) and
 * BL_REFERENCE is not defined. Same arguments, same results up to float rounding; everything else
 * in run.c is shared by both builds, and `make run_ref` builds the reference kernels for comparison.
 *
 * What it does not do: run-time CPU detection (the build decides), or any other architecture
 * (elsewhere run.c's plain loops run, which compilers vectorize with `omp simd`).
 *
 * Why these are faster than the plain loops:
 * - A tile of 4 weight rows x up to 4 activation rows (tokens) per pass: each weight vector
 *   loaded feeds 4 tokens and each activation vector 4 weight rows, with 16 independent FMA
 *   chains in flight. Decoding (one token) is bound by reading the weights; prefill and batches
 *   reuse each loaded weight 4 times from registers and more from L1, which makes them compute-bound.
 * - int8 uses VNNI's vpdpbusd (64 multiply-adds of u8 x s8 into 16 int32 per instruction).
 * Each (weight row, token) pair sums in one fixed order whatever the tile, so a token gives
 * bit for bit the same logits alone, in a prompt or in a batch, and with any thread count.
 */
#include <immintrin.h>

#define SIMD_INLINE static inline __attribute__((always_inline))

// run.c's plain fp32 kernel stays defined beside this one (the reference for `make run_ref`)
static void rows_f32(float *y, const float *x, const float *w, int n, int d, int i0, int i1, int B) __attribute__((unused));

// Load n < 16 trailing floats, zeros after them (a zero adds nothing to an FMA sum).
SIMD_INLINE __m512 load_tail(const float *p, int n) { return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p); }

// R weight rows from i, T tokens from b (R, T <= 4 and constant after inlining: the accumulators
// stay in registers). Assumes AVX-512F; n needs no particular multiple (the tail is masked).
SIMD_INLINE void tile_f32(float *y, const float *x, const float *w, int n, int d, int i, int b, int R, int T) {
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    int j = 0;
    for (; j + 16 <= n; j += 16) {
        __m512 xv[4];
        for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(x + (size_t)(b + t) * n + j);
        for (int r = 0; r < R; r++) {
            __m512 wv = _mm512_loadu_ps(w + (size_t)(i + r) * n + j);
            for (int t = 0; t < T; t++) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if (j < n) {
        __m512 xv[4];
        for (int t = 0; t < T; t++) xv[t] = load_tail(x + (size_t)(b + t) * n + j, n - j);
        for (int r = 0; r < R; r++) {
            __m512 wv = load_tail(w + (size_t)(i + r) * n + j, n - j);
            for (int t = 0; t < T; t++) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) y[(size_t)(b + t) * d + i + r] = _mm512_reduce_add_ps(acc[r][t]);
}

// All B tokens against R rows from i, four tokens at a time.
SIMD_INLINE void tiles_f32(float *y, const float *x, const float *w, int n, int d, int i, int R, int B) {
    int b = 0;
    for (; b + 4 <= B; b += 4) tile_f32(y, x, w, n, d, i, b, R, 4);
    switch (B - b) {
    case 3: tile_f32(y, x, w, n, d, i, b, R, 3); break;
    case 2: tile_f32(y, x, w, n, d, i, b, R, 2); break;
    case 1: tile_f32(y, x, w, n, d, i, b, R, 1); break;
    }
}

static void rows_f32_fast(float *y, const float *x, const float *w, int n, int d, int i0, int i1, int B) {
    int i = i0;
    for (; i + 4 <= i1; i += 4) tiles_f32(y, x, w, n, d, i, 4, B);
    for (; i < i1; i++) tiles_f32(y, x, w, n, d, i, 1, B);
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// int8 tile: R <= 4 weight rows x T <= 2 tokens, groups of gs (a multiple of 64) values. Assumes AVX-512
// VNNI. vpdpbusd multiplies unsigned by signed bytes, so the activations go in shifted by 128
// (x ^ 0x80 = x + 128, once per token vector) and each group subtracts 128 * sum(w), which one
// more vpdpbusd against a vector of ones gives per weight row. Per group, the exact int32 sums
// turn into floats scaled by (weight scale x activation scale) in 16 lanes; one horizontal sum
// per (row, token) at the end.
SIMD_INLINE void tile_q8(float *y, const int8_t *xq, const float *xs, const int8_t *wq, const char *ws,
                         int n, int d, int gs, int i, int b, int R, int T) {
    const __m512i shift = _mm512_set1_epi8((char)0x80), ones = _mm512_set1_epi8(1);
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    int groups = n / gs;
    for (int g = 0; g < groups; g++) {
        __m512i dot[4][4], wsum[4];
        for (int r = 0; r < R; r++) {
            wsum[r] = _mm512_setzero_si512();
            for (int t = 0; t < T; t++) dot[r][t] = _mm512_setzero_si512();
        }
        for (int j = g * gs; j < (g + 1) * gs; j += 64) {
            __m512i xv[4];
            for (int t = 0; t < T; t++)
                xv[t] = _mm512_xor_si512(_mm512_loadu_si512((const void *)(xq + (size_t)(b + t) * n + j)), shift);
            for (int r = 0; r < R; r++) {
                __m512i wv = _mm512_loadu_si512((const void *)(wq + (size_t)(i + r) * n + j));
                wsum[r] = _mm512_dpbusd_epi32(wsum[r], ones, wv);
                for (int t = 0; t < T; t++) dot[r][t] = _mm512_dpbusd_epi32(dot[r][t], xv[t], wv);
            }
        }
        for (int r = 0; r < R; r++) {
            float sw = load_f32(ws + ((size_t)(i + r) * groups + g) * 4);
            __m512i corr = _mm512_slli_epi32(wsum[r], 7);
            for (int t = 0; t < T; t++) {
                __m512 sums = _mm512_cvtepi32_ps(_mm512_sub_epi32(dot[r][t], corr));
                __m512 scale = _mm512_set1_ps(sw * xs[(size_t)(b + t) * groups + g]);
                acc[r][t] = _mm512_fmadd_ps(sums, scale, acc[r][t]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) y[(size_t)(b + t) * d + i + r] = _mm512_reduce_add_ps(acc[r][t]);
}

SIMD_INLINE void tiles_q8(float *y, const int8_t *xq, const float *xs, const int8_t *wq, const char *ws,
                          int n, int d, int gs, int i, int R, int B) {
    int b = 0;  // two tokens at a time: 4 x 2 int32 sums, 8 float sums and 4 row sums fit the 32 registers
    for (; b + 2 <= B; b += 2) tile_q8(y, xq, xs, wq, ws, n, d, gs, i, b, R, 2);
    if (b < B) tile_q8(y, xq, xs, wq, ws, n, d, gs, i, b, R, 1);
}

// Group sizes that are not a multiple of 64 (rare: export.py picks 64 when it divides the
// widths) take run.c's plain loops.
static void rows_q8_fast(float *y, const int8_t *xq, const float *xs, const int8_t *wq, const char *ws,
                         int n, int d, int gs, int i0, int i1, int B) {
    if (gs % 64) {
        rows_q8(y, xq, xs, wq, ws, n, d, gs, i0, i1, B);
        return;
    }
    int i = i0;
    for (; i + 4 <= i1; i += 4) tiles_q8(y, xq, xs, wq, ws, n, d, gs, i, 4, B);
    for (; i < i1; i++) tiles_q8(y, xq, xs, wq, ws, n, d, gs, i, 1, B);
}
#else
#define rows_q8_fast rows_q8
#endif
