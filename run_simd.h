/*
 * run_simd.h: AVX-512 versions of run.c's kernels, included by run.c when the compiler targets
 * AVX-512 (make's -march=native on a CPU that has it) and BL_REFERENCE is not defined. Same
 * arguments, same results up to float rounding (the exponentials: the same bits); everything else
 * in run.c is shared by both builds, and `make run_ref` builds the reference kernels for comparison.
 *
 * What is here, each with a comment on what it assumes and why it is faster:
 * - matrix products from panels: the weight matrices repacked at load time (run.c's
 *   pack_weights) into blocks of 16 rows in which one vector holds 16 rows' values, so each lane
 *   sums one output row and no horizontal sums remain; fp32 (FMA) and int8 (VNNI's vpdpbusd);
 * - the dot-product tiles (tile_f32, tile_q8) for the matrices the panels do not take (rows not a
 *   multiple of 16, int8 groups not a multiple of 16): 4 weight rows x 4 tokens per pass;
 * - the activations' int8 quantization; one head's attention over the KV cache; glibc's expf.
 * Every (weight row, token) pair sums in one fixed order whatever the tile, so a token gives
 * bit for bit the same logits alone, in a prompt or in a batch, and with any thread count.
 *
 * What it does not do: run-time CPU detection (the build decides), or any other architecture
 * (elsewhere run.c's plain loops run, which compilers vectorize with `omp simd`).
 */
#include <immintrin.h>

#define SIMD_INLINE static inline __attribute__((always_inline))

// Loads v once into a register. Without it GCC folds a weight load into each of the T FMAs that
// use it (a memory operand each): a 4 x 4 tile then does 20 loads per 16 FMAs instead of 8.
#define KEEP_IN_REGISTER(v) __asm__("" : "+v"(v))

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
            KEEP_IN_REGISTER(wv);
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
    if (B == 1) {  // decoding: one row after another, one long stream for the prefetcher; same sums
        for (; i < i1; i++) tile_f32(y, x, w, n, d, i, 0, 1, 1);
        return;
    }
    for (; i + 4 <= i1; i += 4) tiles_f32(y, x, w, n, d, i, 4, B);
    for (; i < i1; i++) tiles_f32(y, x, w, n, d, i, 1, B);
}

// ---- fp32 panels: the weights repacked once, at load time ------------------------------------
// Assumes rows a multiple of 16 (f32_packable). A panel is 16 weight rows, stored column by
// column: for each k, the 16 rows' values w[r][k] (64 bytes). Lane r of a vector sums row r:
// y[b][i + r] = sum over k in order of w[i + r][k] x[b][k], one fused multiply-add per k, the
// same order whatever the tile, so a token's logits stay bit for bit the same alone, in a prompt
// or in a batch. Why it is faster than tile_f32:
// - no horizontal sums: each output vector is 16 rows, stored as it is;
// - a tile of 4 panels (64 rows) x 4 tokens: per k, 4 loads of 64 weight bytes, 4 activations
//   broadcast from memory, 16 FMAs, so prompts and batches run near the FMA peak (one core, 15M's
//   layer matrices at 32 tokens: 116 GFLOP/s of its 117, the dot-product tiles 80);
// - decoding reads the 4 panels front to back, 4 sums in flight: well above memory's speed.
static int f32_packable(const Tensor *t) { return t->gs == 0 && t->rows % 16 == 0; }

// One layer's matrix [d, n] (row after row, as in the file) into panels, the same size.
static void pack_panels_f32(float *dst, const float *w, int d, int n) {
    for (int p = 0; p < d / 16; p++)
        for (int k = 0; k < n; k++)
            for (int r = 0; r < 16; r++) *dst++ = w[(size_t)(16 * p + r) * n + k];
}

// P <= 4 panels from row i x T <= 4 tokens from b (constants after inlining). With next, the
// tile also asks for next_lines cache lines from next into L2, one a column.
SIMD_INLINE void panel_f32(float *y, const float *x, const float *panels, int n, int d, int i, int b, int P, int T,
                           const float *next, int next_lines) {
    __m512 acc[4][4];
    const float *pn[4];
    for (int p = 0; p < P; p++) {
        pn[p] = panels + (size_t)(i / 16 + p) * 16 * n;
        for (int t = 0; t < T; t++) acc[p][t] = _mm512_setzero_ps();
    }
    for (int k = 0; k < n; k++) {
        if (k < next_lines) _mm_prefetch((const char *)(next + 16 * (size_t)k), _MM_HINT_T1);
        for (int p = 0; p < P; p++) {
            __m512 wv = _mm512_loadu_ps(pn[p] + 16 * (size_t)k);
            KEEP_IN_REGISTER(wv);
            for (int t = 0; t < T; t++) acc[p][t] = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[(size_t)(b + t) * n + k]), acc[p][t]);
        }
    }
    for (int p = 0; p < P; p++)
        for (int t = 0; t < T; t++) _mm512_storeu_ps(y + (size_t)(b + t) * d + i + 16 * p, acc[p][t]);
}

// The P panels from row i for all B tokens, 4 at a time. The first tile reads the panels from
// wherever they are (DRAM for a classifier), the others from L2. From 8 tokens on, the tiles after
// the first also fetch the next panels (up to row i1) into L2 while they compute, a line per column
// spread over the tiles: the next panels' first tile then waits less on DRAM (stories15M's
// classifier at 32 tokens, one core: 83-87 -> 89-93 GFLOP/s; batches of 32: +3%). A single token
// has no second tile: decoding streams, the hardware prefetchers follow it, and software prefetch
// there measured slower.
SIMD_INLINE void panels_f32_tokens(float *y, const float *x, const float *panels, int n, int d, int i, int i1, int P, int B) {
    int rest = (i1 - i) / 16 - P, lines = (rest < 4 ? rest : 4) * n, tiles = B / 4;
    const float *next = panels + (size_t)(i / 16 + P) * 16 * n;
    int per_tile = tiles > 1 && lines > 0 ? (lines + tiles - 2) / (tiles - 1) : 0;  // spread over tiles 1..
    int b = 0;
    for (; b + 4 <= B; b += 4) {
        int first = (b / 4 - 1) * per_tile, count = b && first < lines ? (lines - first < per_tile ? lines - first : per_tile) : 0;
        panel_f32(y, x, panels, n, d, i, b, P, 4, next + 16 * (size_t)(count ? first : 0), count);
    }
    switch (B - b) {
    case 3: panel_f32(y, x, panels, n, d, i, b, P, 3, NULL, 0); break;
    case 2: panel_f32(y, x, panels, n, d, i, b, P, 2, NULL, 0); break;
    case 1: panel_f32(y, x, panels, n, d, i, b, P, 1, NULL, 0); break;
    }
}

// rows_f32 from panels: rows i0 <= i < i1 (multiples of 16) of the layer's panels.
static void rows_f32_panels(float *y, const float *x, const float *panels, int n, int d, int i0, int i1, int B) {
    int i = i0;
    for (; i + 64 <= i1; i += 64) panels_f32_tokens(y, x, panels, n, d, i, i1, 4, B);
    switch ((i1 - i) / 16) {
    case 3: panels_f32_tokens(y, x, panels, n, d, i, i1, 3, B); break;
    case 2: panels_f32_tokens(y, x, panels, n, d, i, i1, 2, B); break;
    case 1: panels_f32_tokens(y, x, panels, n, d, i, i1, 1, B); break;
    }
}

// ---- attention of one head over the KV cache ----------------------------------------------
// Assumes a head size that is a multiple of 16, at most 128 (q and the sums stay in registers),
// else run.c's loops run. Faster because: the scores of 16 positions are summed across lanes
// together (15 vector additions for 16 dot products, not 16 chains of scalar adds), and the
// weighted sum of values keeps its hs / 16 vectors in registers, in two sets (even and odd
// positions) so that consecutive positions do not wait on each other, instead of loading and
// storing the output once per position. Both read each cache row once, front to back.

// The 16 lane sums of a[0..15], as the 16 lanes of the result (a pairwise tree).
SIMD_INLINE __m512 sums16(__m512 a[16]) {
    __m512 b[8], c[4], d[2];
    for (int m = 0; m < 8; m++)  // b[m]: lanes 0-7 from a[2m], 8-15 from a[2m+1], halves added
        b[m] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * m], a[2 * m + 1], 0x44), _mm512_shuffle_f32x4(a[2 * m], a[2 * m + 1], 0xEE));
    for (int m = 0; m < 4; m++)
        c[m] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * m], b[2 * m + 1], 0x88), _mm512_shuffle_f32x4(b[2 * m], b[2 * m + 1], 0xDD));
    for (int m = 0; m < 2; m++)
        d[m] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * m], c[2 * m + 1], 0x44), _mm512_shuffle_ps(c[2 * m], c[2 * m + 1], 0xEE));
    __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
    // sum k sits in lane 4 * (k % 4) + k / 4 of e: put the sums back in order
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(order, e);
}

SIMD_INLINE void head_scores_nv(float *att, const float *q, const float *keys, int stride, int hs, int pos, int NV) {
    __m512 qv[8];
    for (int v = 0; v < NV; v++) qv[v] = _mm512_loadu_ps(q + 16 * v);
    const __m512 root = _mm512_set1_ps(sqrtf((float)hs));
    int i = 0;
    for (; i + 16 <= pos + 1; i += 16) {
        __m512 acc[16];
        for (int r = 0; r < 16; r++) {
            const float *k = keys + (size_t)(i + r) * stride;
            acc[r] = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k));
            for (int v = 1; v < NV; v++) acc[r] = _mm512_fmadd_ps(qv[v], _mm512_loadu_ps(k + 16 * v), acc[r]);
        }
        _mm512_storeu_ps(att + i, _mm512_div_ps(sums16(acc), root));
    }
    for (; i <= pos; i++) {
        const float *k = keys + (size_t)i * stride;
        __m512 acc = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k));
        for (int v = 1; v < NV; v++) acc = _mm512_fmadd_ps(qv[v], _mm512_loadu_ps(k + 16 * v), acc);
        att[i] = _mm512_reduce_add_ps(acc) / sqrtf((float)hs);
    }
}

// Ask for one head's keys and values (n floats each, a few KB in a batch) before its scores.
// A (row, head) item reads two short streams from L3 or DRAM, too short for the hardware
// prefetchers to ramp up: loads stalled on every line. Requested all at once (into L2; capped, as
// a long context's streams train the prefetchers anyway), they arrive together: attention of 32
// stories at position 32, 1.5-1.8x faster (1 and 2 threads); 110M at position 200, 1.25x; whole
// batches of 32 on 15M, +1-2% (side by side, 9 runs).
#define FETCH_MAX_FLOATS 16384  // 64 KB of each
static void fetch_head(const float *keys, const float *values, size_t n) {
    n = n < FETCH_MAX_FLOATS ? n : FETCH_MAX_FLOATS;
    for (size_t j = 0; j < n; j += 16) {
        _mm_prefetch((const char *)(keys + j), _MM_HINT_T1);
        _mm_prefetch((const char *)(values + j), _MM_HINT_T1);
    }
}

static void head_scores_fast(float *att, const float *q, const float *keys, int stride, int hs, int pos) {
    switch (hs) {  // a constant NV unrolls the loops over the vectors of a row
    case 16: head_scores_nv(att, q, keys, stride, hs, pos, 1); break;
    case 32: head_scores_nv(att, q, keys, stride, hs, pos, 2); break;
    case 48: head_scores_nv(att, q, keys, stride, hs, pos, 3); break;
    case 64: head_scores_nv(att, q, keys, stride, hs, pos, 4); break;
    case 80: head_scores_nv(att, q, keys, stride, hs, pos, 5); break;
    case 96: head_scores_nv(att, q, keys, stride, hs, pos, 6); break;
    case 112: head_scores_nv(att, q, keys, stride, hs, pos, 7); break;
    case 128: head_scores_nv(att, q, keys, stride, hs, pos, 8); break;
    default: head_scores(att, q, keys, stride, hs, pos);
    }
}

SIMD_INLINE void head_values_nv(float *out, const float *att, const float *values, int stride, int pos, int NV) {
    __m512 even[8], odd[8];
    for (int v = 0; v < NV; v++) even[v] = odd[v] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 2 <= pos + 1; i += 2) {
        const float *v0 = values + (size_t)i * stride, *v1 = v0 + stride;
        __m512 a0 = _mm512_set1_ps(att[i]), a1 = _mm512_set1_ps(att[i + 1]);
        for (int v = 0; v < NV; v++) {
            even[v] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(v0 + 16 * v), even[v]);
            odd[v] = _mm512_fmadd_ps(a1, _mm512_loadu_ps(v1 + 16 * v), odd[v]);
        }
    }
    if (i <= pos) {
        const float *v0 = values + (size_t)i * stride;
        __m512 a0 = _mm512_set1_ps(att[i]);
        for (int v = 0; v < NV; v++) even[v] = _mm512_fmadd_ps(a0, _mm512_loadu_ps(v0 + 16 * v), even[v]);
    }
    for (int v = 0; v < NV; v++) _mm512_storeu_ps(out + 16 * v, _mm512_add_ps(even[v], odd[v]));
}

static void head_values_fast(float *out, const float *att, const float *values, int stride, int hs, int pos) {
    switch (hs) {
    case 16: head_values_nv(out, att, values, stride, pos, 1); break;
    case 32: head_values_nv(out, att, values, stride, pos, 2); break;
    case 48: head_values_nv(out, att, values, stride, pos, 3); break;
    case 64: head_values_nv(out, att, values, stride, pos, 4); break;
    case 80: head_values_nv(out, att, values, stride, pos, 5); break;
    case 96: head_values_nv(out, att, values, stride, pos, 6); break;
    case 112: head_values_nv(out, att, values, stride, pos, 7); break;
    case 128: head_values_nv(out, att, values, stride, pos, 8); break;
    default: head_values(out, att, values, stride, hs, pos);
    }
}

// run.c's candidates() 16 probabilities at a time: one comparison gives the mask of those at or
// above the cutoff (which also picks the keys for the least and greatest), and vpcompressd packs
// their keys (the complemented bits) and indexes to the front of two registers, which are
// interleaved into 8-byte words and stored under a mask; the next store starts where the kept ones
// end. No branch and no per-item store: top-p's filter of a 32000-token vocabulary takes about
// 9 us instead of 18. (Compress into a register, then a masked store: vpcompressd straight to
// memory is microcoded and slow on AMD's Zen 4.) Assumes AVX-512F; w has room for n words.
static int candidates_fast(uint64_t *w, const float *p, int n, float cutoff, uint32_t range[2]) {
    const __m512i lo_pairs = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi_pairs = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 cut = _mm512_set1_ps(cutoff);
    __m512i lo = _mm512_set1_epi32(-1), hi = _mm512_setzero_si512();
    int n0 = 0;
    for (int i = 0; i < n; i += 16) {
        __mmask16 in = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(in, p + i);
        __mmask16 keep = _mm512_mask_cmp_ps_mask(in, x, cut, _CMP_GE_OQ);
        __m512i key = _mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(-1));
        lo = _mm512_mask_min_epu32(lo, keep, lo, key), hi = _mm512_mask_max_epu32(hi, keep, hi, key);
        __m512i k = _mm512_maskz_compress_epi32(keep, key), j = _mm512_maskz_compress_epi32(keep, index);
        int m = __builtin_popcount(keep);
        __mmask16 words = (__mmask16)((1u << m) - 1);  // masked stores: nothing written past the m words
        _mm512_mask_storeu_epi64(w + n0, (__mmask8)words, _mm512_permutex2var_epi32(j, lo_pairs, k));
        if (m > 8) _mm512_mask_storeu_epi64(w + n0 + 8, (__mmask8)(words >> 8), _mm512_permutex2var_epi32(j, hi_pairs, k));
        n0 += m;
        index = _mm512_add_epi32(index, _mm512_set1_epi32(16));
    }
    range[0] = _mm512_reduce_min_epu32(lo), range[1] = _mm512_reduce_max_epu32(hi);
    return n0;
}

// ---- the steps between the matrix products ---------------------------------------------------
// run.c's rmsnorm with the sum of squares in 16 lanes, then a tree, instead of one chain of n
// dependent additions (a 200-token prompt on stories15M runs 2,400 such chains of 288): the same
// result up to float rounding. Assumes n a multiple of 16, else run.c's loop runs.
static void rmsnorm_fast(float *o, const float *x, const float *weight, int n) {
    if (n % 16) {
        rmsnorm(o, x, weight, n);
        return;
    }
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};  // two chains: the FMA latency
    for (int j = 0; j < n; j += 16) {
        __m512 v = _mm512_loadu_ps(x + j);
        acc[(j / 16) % 2] = _mm512_fmadd_ps(v, v, acc[(j / 16) % 2]);
    }
    float ss = 1.0f / sqrtf(_mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) / n + 1e-5f);
    __m512 scale = _mm512_set1_ps(ss);
    for (int j = 0; j < n; j += 16)
        _mm512_storeu_ps(o + j, _mm512_mul_ps(_mm512_loadu_ps(weight + j), _mm512_mul_ps(scale, _mm512_loadu_ps(x + j))));
}

// run.c's rope, 8 pairs at a time: each even lane a*c - b*s, each odd lane b*c + a*s (vfmaddsub
// on the pairs swapped), instead of a scalar loop with a modulo per pair. Assumes a head size that
// is a multiple of 16, else run.c's loop runs.
static void rope_fast(float *v, int n, int head_size, const float *cs) {
    if (head_size % 16) {
        rope(v, n, head_size, cs);
        return;
    }
    for (int h = 0; h < n; h += head_size)
        for (int i = 0; i < head_size; i += 16) {
            __m512 x = _mm512_loadu_ps(v + h + i), t = _mm512_loadu_ps(cs + i);  // t: c0 s0 c1 s1 ...
            __m512 swapped = _mm512_permute_ps(x, 0xB1);                       // b0 a0 b1 a1 ...
            __m512 bs = _mm512_mul_ps(swapped, _mm512_movehdup_ps(t));          // b*s, a*s
            _mm512_storeu_ps(v + h + i, _mm512_fmaddsub_ps(x, _mm512_moveldup_ps(t), bs));
        }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
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

// ---- int8 panels: the weights repacked once, at load time --------------------------------------
// Assumes VNNI, rows a multiple of 16 and a group size that is a multiple of 16 (q8_packable).
// A panel is 16 weight rows. For each group of gs columns it holds gs / 4 chunks of 64 bytes,
// chunk c = the 4 values (4c .. 4c+3 of the group) of row 0, then of row 1, ... of row 15, then
// the 16 rows' scales of that group (16 floats). One vpdpbusd multiplies a chunk by 4 activation
// values broadcast to all lanes: lane r sums row r. Why it is faster than tile_q8:
// - no horizontal sums: the 16 lanes are 16 output rows, stored as they are;
// - 3 instructions per 64 weight bytes (a load, a broadcast of 4 activation bytes, a vpdpbusd)
//   instead of about 11: the scales come once per group, already one per lane;
// - vpdpbusd wants unsigned x signed bytes, so the weights are stored as w + 128 (w ^ 0x80), which
//   makes every sum 128 x (the group's activation sum) too large: one subtraction per group of an
//   offset computed once per token (q8_offsets), instead of a correction per weight row;
// - one stream per panel, read front to back, the same bytes as the file's layout of the matrix.
// The int32 sums are exact in any order, so several partial sums run side by side (vpdpbusd's
// latency) without changing a bit; each row then adds (sum x weight scale) x activation scale
// over the groups in order, as rows_q8 does.
#define BL_PANELS 1

static int q8_packable(const Tensor *t) { return t->gs > 0 && t->gs % 16 == 0 && t->rows % 16 == 0; }

// Which matrices pack_weights repacks: fp32 ones with 16-row panels, int8 ones with these.
static int packable(const Tensor *t) { return t->gs ? q8_packable(t) : f32_packable(t); }

// One layer's matrix (int8 rows, then the scales, as in the file) into panels, the same size.
static void pack_panels(char *dst, const char *src, int d, int n, int gs) {
    const int8_t *q = (const int8_t *)src;
    const char *scales = src + (size_t)d * n;
    int groups = n / gs;
    for (int p = 0; p < d / 16; p++)
        for (int g = 0; g < groups; g++) {
            for (int c = 0; c < gs / 4; c++)
                for (int r = 0; r < 16; r++)
                    for (int k = 0; k < 4; k++) *dst++ = (char)(q[(size_t)(16 * p + r) * n + g * gs + 4 * c + k] ^ 0x80);
            for (int r = 0; r < 16; r++, dst += 4) memcpy(dst, scales + ((size_t)(16 * p + r) * groups + g) * 4, 4);
        }
}

// off[g] = 128 x the sum of the activations of group g: what the stored w + 128 adds to its sums.
static void q8_offsets(int32_t *off, const int8_t *q, int n, int gs) {
    for (int g = 0; g < n / gs; g++) {
        int32_t sum = 0;
        for (int k = 0; k < gs; k++) sum += q[(size_t)g * gs + k];
        off[g] = 128 * sum;
    }
}

// 4 activation bytes at p, in every lane.
SIMD_INLINE __m512i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

// The panel's 16 rows (from i) x T <= 4 tokens from b.
SIMD_INLINE void panel_q8(float *y, const int8_t *xq, const float *xs, const int32_t *xo, const char *panel,
                          int n, int d, int gs, int i, int b, int T) {
    enum { PARTS = 4 };  // partial sums per token: independent vpdpbusd chains
    int groups = n / gs, parts = T == 1 ? PARTS : T == 2 ? 2 : 1;
    __m512 acc[4];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++) {
        __m512i sum[4][PARTS];
        for (int t = 0; t < T; t++)
            for (int u = 0; u < parts; u++) sum[t][u] = _mm512_setzero_si512();
        for (int c = 0; c < gs / 4; c += 4, panel += 256)
            for (int u = 0; u < 4; u++) {
                __m512i wv = _mm512_loadu_si512(panel + 64 * u);
                for (int t = 0; t < T; t++) {
                    const int8_t *x = xq + (size_t)(b + t) * n + (size_t)g * gs + 4 * (c + u);
                    sum[t][u % parts] = _mm512_dpbusd_epi32(sum[t][u % parts], wv, bcast4(x));
                }
            }
        __m512 wscale = _mm512_loadu_ps((const float *)(const void *)panel);
        panel += 64;
        for (int t = 0; t < T; t++) {
            __m512i s = sum[t][0];
            for (int u = 1; u < parts; u++) s = _mm512_add_epi32(s, sum[t][u]);
            s = _mm512_sub_epi32(s, _mm512_set1_epi32(xo[(size_t)(b + t) * groups + g]));
            __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(s), wscale);
            acc[t] = _mm512_fmadd_ps(v, _mm512_set1_ps(xs[(size_t)(b + t) * groups + g]), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) _mm512_storeu_ps(y + (size_t)(b + t) * d + i, acc[t]);
}

// rows_q8 from panels: rows i0 <= i < i1 (multiples of 16) of the layer's panels, B tokens whose
// activation offsets are xo[B, n / gs].
static void rows_q8_panels(float *y, const int8_t *xq, const float *xs, const int32_t *xo, const char *panels,
                           int n, int d, int gs, int i0, int i1, int B) {
    size_t panel_bytes = (size_t)16 * ((size_t)n + (size_t)n / (size_t)gs * 4);
    for (int i = i0; i < i1; i += 16) {
        const char *panel = panels + (size_t)(i / 16) * panel_bytes;
        int b = 0;
        for (; b + 4 <= B; b += 4) panel_q8(y, xq, xs, xo, panel, n, d, gs, i, b, 4);
        switch (B - b) {
        case 3: panel_q8(y, xq, xs, xo, panel, n, d, gs, i, b, 3); break;
        case 2: panel_q8(y, xq, xs, xo, panel, n, d, gs, i, b, 2); break;
        case 1: panel_q8(y, xq, xs, xo, panel, n, d, gs, i, b, 1); break;
        }
    }
}

// ---- libm's expf, 16 at a time --------------------------------------------------------------
// Sampling needs expf of every logit (32,000 per token), and a sampled story is llama2.c's for a
// seed only if every probability has the same bits: an approximation will not do. glibc's expf
// (ARM's optimized-routines algorithm; glibc 2.36 here; its FMA variant, which glibc picks on
// every CPU with AVX-512) computes in double:
// x * 32 / ln2 = k + r (k an integer, |r| <= 1/2), exp(x) = 2^(k/32) * (1 + c2 r + c1 r^2 + c0 r^3),
// 2^(k/32) from a 32-entry table of 2^(i/32) and k's upper bits, then one rounding to float. Here
// are the same steps with the same constants and the same fused multiply-adds, in 8 double lanes:
// the same bits, about 10x faster than calling expf. Lanes with |x| >= 88 or NaN (rare) go to
// expf itself. The constants are facts of that libm, not of this file's choosing, so the first
// call checks the vector version against the expf linked into the program, on 160,000 arguments
// from -104 to 88, near 0 and at the limits; if any differs (another libm) every call goes to expf.
static const uint64_t exp2_frac[32] = {  // bits of 2^(i/32) minus i << 47 (k's part goes back in)
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b,
    0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb,
    0x3feedea64c123422, 0x3feece086061892d, 0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429,
    0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d, 0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da, 0x3fefd0765b6e4540};

// expf of 8 arguments (as doubles), all with |x| < 88.
SIMD_INLINE __m256 expf8(__m512d x) {
    const __m512d scale = _mm512_set1_pd(0x1.71547652b82fep+5), shift = _mm512_set1_pd(0x1.8p52);  // 32 / ln 2; 1.5 * 2^52
    __m512d kd = _mm512_fmadd_pd(scale, x, shift);  // k in the low bits: rounded to an integer
    __m512i ki = _mm512_castpd_si512(kd);
    kd = _mm512_sub_pd(kd, shift);
    __m512d r = _mm512_fmsub_pd(scale, x, kd);
    const __m512i *tab = (const __m512i *)(const void *)exp2_frac;
    __m512i lo = _mm512_permutex2var_epi64(_mm512_loadu_si512(tab), ki, _mm512_loadu_si512(tab + 1));
    __m512i hi = _mm512_permutex2var_epi64(_mm512_loadu_si512(tab + 2), ki, _mm512_loadu_si512(tab + 3));
    __m512i t = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(ki, _mm512_set1_epi64(16)), lo, hi);
    __m512d s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64(ki, 47)));  // 2^(k/32)
    __m512d z = _mm512_fmadd_pd(_mm512_set1_pd(0x1.c6af84b912394p-20), r, _mm512_set1_pd(0x1.ebfce50fac4f3p-13));
    __m512d y = _mm512_fmadd_pd(_mm512_set1_pd(0x1.62e42ff0c52d6p-6), r, _mm512_set1_pd(1.0));
    y = _mm512_fmadd_pd(z, _mm512_mul_pd(r, r), y);
    return _mm512_cvtpd_ps(_mm512_mul_pd(y, s));
}

// expf of 16 lanes: expf8 twice, or expf itself when a lane has |x| >= 88 or NaN (rare).
SIMD_INLINE __m512 expf16(__m512 v) {
    __m512i top = _mm512_and_si512(_mm512_srli_epi32(_mm512_castps_si512(v), 20), _mm512_set1_epi32(0x7ff));
    if (_mm512_cmpge_epu32_mask(top, _mm512_set1_epi32(0x42b))) {
        float t[16];
        _mm512_storeu_ps(t, v);
        for (int j = 0; j < 16; j++) t[j] = expf(t[j]);
        return _mm512_loadu_ps(t);
    }
    __m256 a = expf8(_mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    __m256 b = expf8(_mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
    return _mm512_insertf32x8(_mm512_castps256_ps512(a), b, 1);
}

// x[i] = expf(x[i] - max) for i < n, with expf16 (unchecked: see exp_shifted_fast).
static void exp_shifted_vector(float *x, int n, float max) {
    const __m512 m = _mm512_set1_ps(max);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, expf16(_mm512_sub_ps(_mm512_loadu_ps(x + i), m)));
    if (i < n) {  // the tail under a mask; the lanes past n hold max (expf(0): no slow lane)
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, k, expf16(_mm512_sub_ps(_mm512_mask_loadu_ps(m, k, x + i), m)));
    }
}

static int expf_vector_ok;  // expf8 gives the linked expf's bits (set once by expf_check)

static void expf_check(void) {
    enum { N = 160000 };
    float *in = malloc(2 * N * sizeof(float)), *out = in + N;
    if (!in) return;  // not checked: expf it is
    for (int i = 0; i < N; i++) in[i] = -104.0f + 192.0f * (float)i / (float)N;  // a grid, steps of 0.0012
    for (int e = 0; e < 100; e++) in[e] = (e % 2 ? -1.3f : 1.7f) * ldexpf(1.0f, -e);  // near 0: small exponents
    in[100] = -87.99999f, in[101] = 87.99999f, in[102] = -0.0f, in[103] = 0.0f;      // the limits
    memcpy(out, in, N * sizeof(float));
    exp_shifted_vector(out, N, 0.0f);
    int same = 1;
    for (int i = 0; i < N && same; i++) {
        float want = expf(in[i]);
        same = memcmp(&want, &out[i], sizeof want) == 0;
    }
    free(in);
    expf_vector_ok = same;
}

// Whether expf16 may stand in for expf (checked once per process).
static int expf_vector(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, expf_check);
    return expf_vector_ok;
}

// run.c's exp_shifted (x[i] = expf(x[i] - max)), bit for bit.
static void exp_shifted_fast(float *x, int n, float max) {
    if (expf_vector()) exp_shifted_vector(x, n, max);
    else exp_shifted(x, n, max);
}

// run.c's swiglu, bit for bit: the same operations, 16 at a time.
static void swiglu_fast(float *h1, const float *h3, size_t n) {
    size_t i = 0;
    if (expf_vector())
        for (; i + 16 <= n; i += 16) {
            __m512 v = _mm512_loadu_ps(h1 + i), e = expf16(_mm512_xor_ps(v, _mm512_set1_ps(-0.0f)));  // -v
            _mm512_storeu_ps(h1 + i, _mm512_mul_ps(_mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), _mm512_loadu_ps(h3 + i)));
        }
    swiglu(h1 + i, h3 + i, n - i);
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
#define exp_shifted_fast exp_shifted
#define swiglu_fast swiglu
#endif
