/*
 * machine.c: this machine's limits, for bench/run_speed.py's "% of the floor" columns.
 *
 *     make build/machine && OMP_NUM_THREADS=2 ./build/machine [megabytes]
 *
 * Prints one JSON line: memory read bandwidth (GB/s; every thread sums its share of a buffer of
 * `megabytes`, default 512, far larger than the caches; best of 5 sweeps as one stream per thread
 * and 5 as four; the buffer in 2 MB pages where the kernel gives them, as run.c's weight panels
 * are: with 4 KB pages the reads measured 20-30% slower) and fp32 FMA peak
 * (GFLOP/s; every thread runs 16 independent chains of AVX-512 FMAs, or of plain a*b+c
 * where there is no AVX-512), both with the OpenMP thread count of the environment.
 */
#define _DEFAULT_SOURCE  // madvise
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __AVX512F__
#include <immintrin.h>
#endif

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// Sum a[0..n) as `streams` (1 or 4) streams side by side (its quarters, for 4). Which reads faster
// varies (4 streams keep more reads in flight, as the engine's kernels do with 4 weight panels at
// a time; one stream suits the prefetcher): main takes the best of both.
static float sum_range(const float *a, size_t n, int streams) {
#ifdef __AVX512F__
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    if (streams == 1) {
        for (size_t i = 0; i + 64 <= n; i += 64) {
            s0 = _mm512_add_ps(s0, _mm512_loadu_ps(a + i)), s1 = _mm512_add_ps(s1, _mm512_loadu_ps(a + i + 16));
            s2 = _mm512_add_ps(s2, _mm512_loadu_ps(a + i + 32)), s3 = _mm512_add_ps(s3, _mm512_loadu_ps(a + i + 48));
        }
    } else {
        size_t q = n / 4 / 16 * 16;
        const float *b = a + q, *c = a + 2 * q, *d = a + 3 * q;
        for (size_t i = 0; i + 16 <= q; i += 16) {
            s0 = _mm512_add_ps(s0, _mm512_loadu_ps(a + i)), s1 = _mm512_add_ps(s1, _mm512_loadu_ps(b + i));
            s2 = _mm512_add_ps(s2, _mm512_loadu_ps(c + i)), s3 = _mm512_add_ps(s3, _mm512_loadu_ps(d + i));
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
#else
    (void)streams;
    float s[16] = {0};
    for (size_t i = 0; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) s[k] += a[i + k];
    float t = 0;
    for (int k = 0; k < 16; k++) t += s[k];
    return t;
#endif
}

static double fma_chains(long iters) {
#ifdef __AVX512F__
    __m512 acc[16], m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int k = 0; k < 16; k++) acc[k] = _mm512_set1_ps((float)k);
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 16; k++) acc[k] = _mm512_fmadd_ps(acc[k], m, c);
    float t = 0;
    for (int k = 0; k < 16; k++) t += _mm512_reduce_add_ps(acc[k]);
    return t;
#else
    float acc[16][16];
    for (int k = 0; k < 16; k++)
        for (int l = 0; l < 16; l++) acc[k][l] = (float)k;
    for (long i = 0; i < iters; i++)
        for (int k = 0; k < 16; k++)
            for (int l = 0; l < 16; l++) acc[k][l] = acc[k][l] * 0.999999f + 1e-7f;
    float t = 0;
    for (int k = 0; k < 16; k++) t += acc[k][0];
    return t;
#endif
}

int main(int argc, char **argv) {
    size_t mb = argc > 1 ? (size_t)atol(argv[1]) : 512, n = mb << 18, huge = (size_t)2 << 20;
    size_t bytes = (n * sizeof(float) + huge - 1) / huge * huge;
    float *a = aligned_alloc(huge, bytes);
#ifdef MADV_HUGEPAGE
    if (a) madvise(a, bytes, MADV_HUGEPAGE);  // before the first touch
#endif
    if (!a) return fprintf(stderr, "error: cannot allocate %zu MB\n", mb), 1;
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = 1.0f;  // each thread touches the pages it will read
    double best = 1e30;
    volatile float sink = 0;
    for (int r = 0; r < 10; r++) {  // 5 sweeps of each way
        double t0 = now_s();
        float total = 0;
        #pragma omp parallel reduction(+:total)
        {
            int t = 0, nt = 1;
#ifdef _OPENMP
            t = omp_get_thread_num(), nt = omp_get_num_threads();
#endif
            size_t lo = n / nt * t, hi = t == nt - 1 ? n : n / nt * (t + 1);
            total += sum_range(a + lo, hi - lo, r % 2 ? 4 : 1);
        }
        sink += total;
        double dt = now_s() - t0;
        best = dt < best ? dt : best;
    }
    double gbs = n * sizeof(float) / best / 1e9;
    long iters = 20000000;
    double t0 = now_s();
    #pragma omp parallel
    sink += (float)fma_chains(iters);
    double dt = now_s() - t0;
    double gflops = threads * (double)iters * 16 * 16 * 2 / dt / 1e9;
    printf("{\"threads\": %d, \"read_gbs\": %.2f, \"fma_gflops\": %.1f}\n", threads, gbs, gflops);
    free(a);
    return 0;
}
