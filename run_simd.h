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
 *   chains in flight. Prefill and batches reuse each loaded weight 4 times from registers and more
 *   from L1, which makes them compute-bound.
 * - Decoding (one token) is bound by reading the weights, and there the tile would only interleave
 *   4 short row streams (a stories15M row is 18 cache lines), which the hardware prefetcher follows
 *   worse than one long stream: one row after another decodes 1.1-1.8x faster (15M/110M, fp32 and
 *   int8, 1 and 2 threads; bench/README.md), with the very same sums.
 * - int8 uses VNNI's vpdpbusd (64 multiply-adds of u8 x s8 into 16 int32 per instruction).
 * Each (weight row, token) pair sums in one fixed order whatever the tile, so a token gives
 * bit for bit the same logits alone, in a prompt or in a batch, and with any thread count.
 */
#include <immintrin.h>

#define SIMD_INLINE static inline __attribute__((always_inline))

// Load n < 16 trailing floats, zeros after them (a zero adds nothing to an FMA sum).
SIMD_INLINE __m512 load_tail(const float *p, int n) { return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p); }

// The 16 sums of a full 4 x 4 tile at once: acc[r][t]'s 16 lanes added in exactly the tree of
// _mm512_reduce_add_ps (lane i + lane i+8, then i + i+4, i + i+2, i + i+1), so a full tile gives
// the same bits as the one-by-one sums of the other tiles, in 15 vector additions instead of 16
// reductions. Row r, token t lands in y[(b + t) * d + i + r].
SIMD_INLINE void store_sums16(float *y, __m512 acc[4][4], int d, int i, int b) {
    __m512 z[8], w[4], v[2];
    for (int m = 0; m < 8; m++) {  // z[m]: lanes 0-7 from acc 2m, 8-15 from acc 2m+1 (acc k = acc[k / 4][k % 4])
        __m512 x = acc[(2 * m) / 4][(2 * m) % 4], y2 = acc[(2 * m + 1) / 4][(2 * m + 1) % 4];
        z[m] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y2, 0x44), _mm512_shuffle_f32x4(x, y2, 0xEE));
    }
    for (int p = 0; p < 4; p++)  // w[p], quarter k: acc 4p + k, 4 lanes
        w[p] = _mm512_add_ps(_mm512_shuffle_f32x4(z[2 * p], z[2 * p + 1], 0x88),
                             _mm512_shuffle_f32x4(z[2 * p], z[2 * p + 1], 0xDD));
    for (int u = 0; u < 2; u++)  // v[u], quarter k: acc 8u + k, then acc 8u + 4 + k, 2 lanes each
        v[u] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * u], w[2 * u + 1], 0x44),
                             _mm512_shuffle_ps(w[2 * u], w[2 * u + 1], 0xEE));
    // quarter k: accs k, 4 + k, 8 + k, 12 + k, i.e. token k, rows 0..3
    __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], 0x88), _mm512_shuffle_ps(v[0], v[1], 0xDD));
    _mm_storeu_ps(y + (size_t)b * d + i, _mm512_extractf32x4_ps(sums, 0));
    _mm_storeu_ps(y + (size_t)(b + 1) * d + i, _mm512_extractf32x4_ps(sums, 1));
    _mm_storeu_ps(y + (size_t)(b + 2) * d + i, _mm512_extractf32x4_ps(sums, 2));
    _mm_storeu_ps(y + (size_t)(b + 3) * d + i, _mm512_extractf32x4_ps(sums, 3));
}

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
    if (R == 4 && T == 4) {
        store_sums16(y, acc, d, i, b);
        return;
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
    if (B == 1) {  // decoding: one row after another (see the header comment), same sums
        for (; i < i1; i++) tile_f32(y, x, w, n, d, i, 0, 1, 1);
        return;
    }
    for (; i + 4 <= i1; i += 4) tiles_f32(y, x, w, n, d, i, 4, B);
    for (; i < i1; i++) tiles_f32(y, x, w, n, d, i, 1, B);
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// Scales of the 64 int8 values from j, one per 32-bit lane: lane L (values j+4L .. j+4L+3) is in
// group (j + 4L) / gs. s: the scales of groups 0, 1, ... as stored (any alignment).
SIMD_INLINE __m512 chunk_scales(const char *s, int j, int n, int gs, __m512i lane_group) {
    if (gs >= 64) return _mm512_set1_ps(load_f32(s + (size_t)(j / gs) * 4));
    int left = (n - j) / gs, groups = left < 64 / gs ? left : 64 / gs;
    __m512 v = _mm512_maskz_loadu_ps((__mmask16)((1u << groups) - 1), s + (size_t)(j / gs) * 4);
    return _mm512_permutexvar_ps(lane_group, v);
}

// int8 tile: R <= 4 weight rows x T <= 4 tokens, 64 values per step (a masked tail when n is
// not a multiple of 64). Assumes AVX-512 VNNI and a group size that is 16, 32 or a multiple of 64.
// vpdpbusd multiplies unsigned by signed bytes, so the activations go in shifted by 128
// (x ^ 0x80 = x + 128, once per token vector) and each sum starts from -128 * sum(w), which one
// more vpdpbusd against a vector of ones gives per weight row (shared by the T tokens). The exact
// int32 sums of each 64 values become floats scaled per lane by weight scale x activation scale.
SIMD_INLINE void tile_q8(float *y, const int8_t *xq, const float *xs, const int8_t *wq, const char *ws,
                         int n, int d, int gs, int i, int b, int R, int T) {
    const __m512i shift = _mm512_set1_epi8((char)0x80), ones = _mm512_set1_epi8(1), zero = _mm512_setzero_si512();
    int groups = n / gs, lanes_log = gs == 16 ? 2 : 3;  // gs < 64: lane L is in group L >> log2(gs / 4)
    __m512i lane_group = _mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), lanes_log);
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    for (int j = 0; j < n; j += 64) {
        __mmask64 m = n - j >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (n - j)) - 1;
        __m512i xv[4];
        __m512 xscale[4];
        for (int t = 0; t < T; t++) {
            xv[t] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, xq + (size_t)(b + t) * n + j), shift);
            xscale[t] = chunk_scales((const char *)(xs + (size_t)(b + t) * groups), j, n, gs, lane_group);
        }
        for (int r = 0; r < R; r++) {
            // int8 rows are short (288 bytes in stories15M): ask for rows ahead so the loads overlap
            _mm_prefetch((const char *)(wq + (size_t)(i + r + 4 * R) * n + j), _MM_HINT_T0);
            __m512i wv = _mm512_maskz_loadu_epi8(m, wq + (size_t)(i + r) * n + j);
            __m512i start = _mm512_sub_epi32(zero, _mm512_slli_epi32(_mm512_dpbusd_epi32(zero, ones, wv), 7));
            __m512 wscale = chunk_scales(ws + (size_t)(i + r) * groups * 4, j, n, gs, lane_group);
            for (int t = 0; t < T; t++) {
                __m512 sums = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, xv[t], wv));
                acc[r][t] = _mm512_fmadd_ps(sums, _mm512_mul_ps(wscale, xscale[t]), acc[r][t]);
            }
        }
    }
    if (R == 4 && T == 4) {
        store_sums16(y, acc, d, i, b);
        return;
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) y[(size_t)(b + t) * d + i + r] = _mm512_reduce_add_ps(acc[r][t]);
}

SIMD_INLINE void tiles_q8(float *y, const int8_t *xq, const float *xs, const int8_t *wq, const char *ws,
                          int n, int d, int gs, int i, int R, int B) {
    int b = 0;
    for (; b + 4 <= B; b += 4) tile_q8(y, xq, xs, wq, ws, n, d, gs, i, b, R, 4);
    switch (B - b) {
    case 3: tile_q8(y, xq, xs, wq, ws, n, d, gs, i, b, R, 3); break;
    case 2: tile_q8(y, xq, xs, wq, ws, n, d, gs, i, b, R, 2); break;
    case 1: tile_q8(y, xq, xs, wq, ws, n, d, gs, i, b, R, 1); break;
    }
}

// run.c's quantize (max |x| per group / 127, round halves away from zero, clamp to [-127, 127],
// NaN to 0) with 16 values per instruction, for group sizes that are multiples of 16: the same
// int8 values and scales. Faster because the compiler does not vectorize roundf's rule.
static void quantize_fast(int8_t *q, float *s, const float *x, int n, int gs) {
    if (gs % 16) {
        quantize(q, s, x, n, gs);
        return;
    }
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f), lim = _mm512_set1_ps(127.0f);
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int g = 0; g < n / gs; g++) {
        const float *xg = x + (size_t)g * gs;
        __m512 m = _mm512_setzero_ps();
        for (int i = 0; i < gs; i += 16) m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xg + i)), m);  // NaN skipped
        float scale = s[g] = _mm512_reduce_max_ps(m) / 127.0f;
        if (!(scale > 0.0f)) {
            memset(q + (size_t)g * gs, 0, (size_t)gs);
            continue;
        }
        __m512 sv = _mm512_set1_ps(scale);
        for (int i = 0; i < gs; i += 16) {
            __m512 v = _mm512_div_ps(_mm512_loadu_ps(xg + i), sv);
            __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), half, _CMP_GE_OQ);
            __m512 r = _mm512_mask_add_ps(t, up, t, _mm512_or_ps(one, _mm512_and_ps(v, sign)));
            r = _mm512_min_ps(_mm512_max_ps(r, _mm512_sub_ps(_mm512_setzero_ps(), lim)), lim);
            r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), r);  // NaN -> 0
            _mm_storeu_si128((__m128i *)(void *)(q + (size_t)g * gs + i), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(r)));
        }
    }
}

// Other group sizes (8, 48, ...: export.py picks 64, else the largest divisor it can) take
// run.c's plain loops.
static void rows_q8_fast(float *y, const int8_t *xq, const float *xs, const int8_t *wq, const char *ws,
                         int n, int d, int gs, int i0, int i1, int B) {
    if (!(gs == 16 || gs == 32 || gs % 64 == 0)) {
        rows_q8(y, xq, xs, wq, ws, n, d, gs, i0, i1, B);
        return;
    }
    int i = i0;
    if (B == 1) {  // decoding: one row after another, as rows_f32_fast
        for (; i < i1; i++) tile_q8(y, xq, xs, wq, ws, n, d, gs, i, 0, 1, 1);
        return;
    }
    for (; i + 4 <= i1; i += 4) tiles_q8(y, xq, xs, wq, ws, n, d, gs, i, 4, B);
    for (; i < i1; i++) tiles_q8(y, xq, xs, wq, ws, n, d, gs, i, 1, B);
}
#else
#define rows_q8_fast rows_q8
#define quantize_fast quantize
#endif
