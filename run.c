/*
 * run.c: inference for Llama 2 models in one file of pure C (C11, libc + libm + POSIX threads;
 * OpenMP optional), plus run_simd.h's AVX-512 kernels where the compiler targets them.
 *
 * What it does: memory-maps a llama2.c checkpoint (version 0 "legacy", version 1 fp32, version 2
 * int8 groups; told apart by the header, FORMATS.md §2), reads llama2.c's tokenizer.bin (§3),
 * encodes prompts exactly like sentencepiece, runs the transformer with a KV cache (grouped-query
 * attention) one token at a time, or many rows per pass (a whole prompt, many stories at once:
 * each weight is read once per pass), samples like llama2.c (same RNG, same top-p), and tells a
 * story (or -b stories at once, or one asked for by topic, ending and tags) or chats from the
 * command line. The public API (babyllama.h) serves the Python bindings.
 * What it does not do: train, export, or run on a GPU. Nothing here exits on bad input except
 * main(): every library function returns an error code with a one-line message.
 *
 * Where it differs from llama2.c's run on purpose: bad input (a malformed file, an unknown flag, a
 * prompt or an -n that does not fit the context, -t < 0, -p outside [0, 1]) is a one-line error and
 * exit status 1 instead of a crash or a silent clamp; lone bytes >= 0x80 (pieces of UTF-8
 * characters) are printed; -k (top-k), -T (threads), -b (stories at once), -a/-e/-g (a story on
 * request: topic, ending, tags, as conditions.py's build_prompt) and -E/-S (seed 001's end-of-story
 * bias, off by default) are new. Otherwise the
 * same arguments and seed print the same story (prompt passes and batches give each token the
 * same logits, bit for bit, as one-token passes; the AVX-512 kernels differ from the reference ones
 * by float rounding only; top-p picks llama2.c's token).
 *
 * Sections: errors, checkpoint, threads, kernels, forward, tokenizer, sampler, generation, CLI.
 *
 *     make && ./run model.bin -z tokenizer.bin -i "Once upon a time"
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE  // and madvise, where the C library has it
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "babyllama.h"

// ----------------------------------------------------------------------------------------------
// errors

// Write a one-line message into err (when given) and return code, so callers can `return fail(...)`.
static int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

// a * b in 64 bits; returns 1 on overflow (header fields are untrusted, so every size is checked)
static int mul_overflows(uint64_t a, uint64_t b, uint64_t *out) {
    if (a != 0 && b > UINT64_MAX / a) return 1;
    *out = a * b;
    return 0;
}

// ----------------------------------------------------------------------------------------------
// checkpoint

#define MAGIC 0x616b3432u      // "ak42": versions 1 and 2 start with it; version 0 has no magic
#define V0_HEADER 28           // 7 int32
#define V1_HEADER 256          // magic, version, 7 int32, shared byte, group size, zero padding
#define MAX_FIELD (1 << 24)    // no header field is larger; keeps every 2-factor product < 2^48

// One weight matrix for every layer. The layers lie `stride` bytes apart in the mapped file.
typedef struct {
    const char *p;    // layer 0's data in the map (NULL while only measuring the layout)
    uint64_t stride;  // bytes from one layer's matrix to the next
    int rows, cols;   // shape [rows, cols] per layer: y = W x maps cols values to rows values
    int gs;           // 0: fp32 rows; > 0: int8 values then one fp32 scale per gs values (Q8_0)
    const char *panels;  // NULL, or layer 0 of run_simd.h's repacked copy (same stride)
} Tensor;

typedef struct {
    Tensor tok_emb;           // [V, D]
    Tensor rms_att, rms_ffn;  // [L] x [1, D], always fp32
    Tensor rms_final;         // [1, D], always fp32
    Tensor wq, wk, wv, wo;    // [L] x [D, D], [KV, D], [KV, D], [D, D]
    Tensor w1, w2, w3;        // [L] x [H, D], [D, H], [H, D]
    Tensor wcls;              // [V, D]; the same as tok_emb when the classifier is shared
} Weights;

// Walks the file's tensors in order; with base NULL it only adds up their sizes.
typedef struct {
    const char *base;  // start of the mapped file, or NULL while measuring
    uint64_t off;      // bytes used so far
    int overflow;      // a size did not fit in 64 bits (a lying header)
} Cursor;

// The next tensor: `layers` matrices [rows, cols], fp32 (gs 0) or int8 groups of gs.
static Tensor take(Cursor *c, int layers, int rows, int cols, int gs) {
    uint64_t n = (uint64_t)rows * (uint64_t)cols;  // < 2^48: both fields are <= MAX_FIELD
    uint64_t per = gs ? n + n / (uint64_t)gs * 4 : n * 4;
    Tensor t = {c->base ? c->base + c->off : NULL, per, rows, cols, gs, NULL};
    uint64_t all;
    if (mul_overflows(per, (uint64_t)layers, &all) || c->off + all < c->off) c->overflow = 1;
    else c->off += all;
    return t;
}

// The tensors in file order (FORMATS.md §2). Called twice: to measure, then to place pointers.
static void layout(Weights *w, Cursor *c, const bl_config *p) {
    int D = p->dim, H = p->hidden_dim, L = p->n_layers, V = p->vocab_size;
    int hs = D / p->n_heads, KV = p->n_kv_heads * hs, q = p->version == 2 ? p->group_size : 0;
    if (p->version == 0) {
        w->tok_emb = take(c, 1, V, D, 0);
        w->rms_att = take(c, L, 1, D, 0);
        w->wq = take(c, L, D, D, 0), w->wk = take(c, L, KV, D, 0);
        w->wv = take(c, L, KV, D, 0), w->wo = take(c, L, D, D, 0);
        w->rms_ffn = take(c, L, 1, D, 0);
        w->w1 = take(c, L, H, D, 0), w->w2 = take(c, L, D, H, 0), w->w3 = take(c, L, H, D, 0);
        w->rms_final = take(c, 1, 1, D, 0);
        take(c, 2, p->seq_len, hs / 2, 0);  // the old RoPE tables (cos, sin): recomputed instead
    } else {
        w->rms_att = take(c, L, 1, D, 0), w->rms_ffn = take(c, L, 1, D, 0);
        w->rms_final = take(c, 1, 1, D, 0);
        w->tok_emb = take(c, 1, V, D, q);
        w->wq = take(c, L, D, D, q), w->wk = take(c, L, KV, D, q);
        w->wv = take(c, L, KV, D, q), w->wo = take(c, L, D, D, q);
        w->w1 = take(c, L, H, D, q), w->w2 = take(c, L, D, H, q), w->w3 = take(c, L, H, D, q);
    }
    w->wcls = p->shared_classifier ? w->tok_emb : take(c, 1, V, D, q);
}

// Little-endian int32 at p, independent of the host's byte order and alignment.
static int32_t rd_i32(const unsigned char *p) {
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

// Parse the header (h holds the first `n` bytes of the file) into cfg; returns its size or -1.
static int parse_header(const unsigned char *h, size_t n, bl_config *cfg, const char *path,
                        char *err, size_t errlen) {
    memset(cfg, 0, sizeof *cfg);
    int versioned = n >= 4 && (uint32_t)rd_i32(h) == MAGIC, at = versioned ? 8 : 0;
    if (n < (size_t)(versioned ? V1_HEADER : V0_HEADER)) {
        fail(err, errlen, BL_ERR_FORMAT, "%s: file is %zu bytes, too short for a checkpoint header", path, n);
        return -1;
    }
    cfg->version = versioned ? rd_i32(h + 4) : 0;
    if (versioned && cfg->version != 1 && cfg->version != 2) {
        fail(err, errlen, BL_ERR_FORMAT, "%s: unsupported checkpoint version %d (expected 1 or 2)", path, cfg->version);
        return -1;
    }
    int *f[7] = {&cfg->dim, &cfg->hidden_dim, &cfg->n_layers, &cfg->n_heads, &cfg->n_kv_heads,
                 &cfg->vocab_size, &cfg->seq_len};
    for (int i = 0; i < 7; i++) *f[i] = rd_i32(h + at + 4 * i);
    cfg->shared_classifier = versioned ? h[36] : cfg->vocab_size > 0;
    // version 0 marks an unshared classifier with a negative vocab size (INT32_MIN has no positive)
    if (!versioned && cfg->vocab_size < 0 && cfg->vocab_size != INT32_MIN) cfg->vocab_size = -cfg->vocab_size;
    cfg->group_size = cfg->version == 2 ? rd_i32(h + 37) : 0;
    return versioned ? V1_HEADER : V0_HEADER;
}

// The header's numbers must describe a model this code can run, before any size is computed.
static int check_config(const bl_config *p, const char *path, char *err, size_t errlen) {
    const char *name[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
    int val[7] = {p->dim, p->hidden_dim, p->n_layers, p->n_heads, p->n_kv_heads, p->vocab_size, p->seq_len};
    const char *what = p->version ? "" : " (no 'ak42' magic, so read as a version 0 header)";
    for (int i = 0; i < 7; i++)
        if (val[i] <= 0 || val[i] > MAX_FIELD)
            return fail(err, errlen, BL_ERR_FORMAT, "%s: bad header%s: %s = %d is not in 1..%d",
                        path, what, name[i], val[i], MAX_FIELD);
    if (p->dim % p->n_heads || (p->dim / p->n_heads) % 2)
        return fail(err, errlen, BL_ERR_FORMAT, "%s: bad header%s: dim %d is not n_heads %d times an even head size",
                    path, what, p->dim, p->n_heads);
    if (p->n_kv_heads > p->n_heads || p->n_heads % p->n_kv_heads)
        return fail(err, errlen, BL_ERR_FORMAT, "%s: bad header: n_kv_heads %d does not divide n_heads %d",
                    path, p->n_kv_heads, p->n_heads);
    if (p->version && p->shared_classifier > 1)
        return fail(err, errlen, BL_ERR_FORMAT, "%s: bad header: shared_classifier byte is %d (expected 0 or 1)",
                    path, p->shared_classifier);
    if (p->version == 2 && (p->group_size <= 0 || p->dim % p->group_size || p->hidden_dim % p->group_size))
        return fail(err, errlen, BL_ERR_FORMAT, "%s: bad header: group_size %d does not divide dim %d and hidden_dim %d",
                    path, p->group_size, p->dim, p->hidden_dim);
    return BL_OK;
}

// ----------------------------------------------------------------------------------------------
// tokenizer data (the code that uses it is in the tokenizer section below)

typedef struct {
    const char *str;  // piece bytes (not NUL-terminated)
    int len;
    int id;
} PieceIndex;

typedef struct {
    char *data;                   // the whole tokenizer.bin; every piece points into it
    const char **piece;           // [V] piece bytes
    int *len;                     // [V] piece lengths
    float *score;                 // [V] merge scores: higher merges first
    PieceIndex *sorted;           // [n_sorted] mergeable pieces sorted by bytes, for bsearch
    int n_sorted, vocab_size, max_len;
    int byte_id[256];             // id of the piece "<0xHH>" for byte HH (byte fallback), or -1
    char byte_char[256];          // byte_char[b] == b: one-byte strings for decoding "<0xHH>"
} Tokenizer;

struct bl_model {
    bl_config cfg;
    Weights w;
    void *map;          // the memory-mapped checkpoint
    size_t map_size;
    Tokenizer *tok;     // NULL when opened without a tokenizer
    char *packed;       // NULL, or the matrices repacked for the fast kernels (pack_weights)
};

static int build_tokenizer(Tokenizer **out, const char *path, int vocab_size, char *err, size_t errlen);
static void free_tokenizer(Tokenizer *t);
static void pack_weights(bl_model *m);

// Read the header from fd and check it against the file's size: on success cfg describes a
// model whose tensors fill the file exactly. No pointer into the file exists yet.
static int check_checkpoint(int fd, uint64_t size, bl_config *cfg, int *hsize, const char *path,
                            char *err, size_t errlen) {
    unsigned char h[V1_HEADER];
    ssize_t got = pread(fd, h, sizeof h, 0);
    if (got < 0) return fail(err, errlen, BL_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
    *hsize = parse_header(h, (size_t)got, cfg, path, err, errlen);
    if (*hsize < 0) return BL_ERR_FORMAT;
    int rc = check_config(cfg, path, err, errlen);
    if (rc != BL_OK) return rc;
    Weights unused;
    Cursor c = {NULL, (uint64_t)*hsize, 0};
    layout(&unused, &c, cfg);
    if (!c.overflow && c.off == size) return BL_OK;
    return fail(err, errlen, BL_ERR_FORMAT,
                "%s: file is %llu bytes but its version %d header (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
                "n_kv_heads %d, vocab_size %d, seq_len %d) implies %s%llu bytes", path, (unsigned long long)size,
                cfg->version, cfg->dim, cfg->hidden_dim, cfg->n_layers, cfg->n_heads, cfg->n_kv_heads,
                cfg->vocab_size, cfg->seq_len, c.overflow ? "more than " : "", (unsigned long long)c.off);
}

// Validate, then memory-map the checkpoint and point m->w's tensors into it.
static int map_checkpoint(bl_model *m, const char *path, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY), hsize = 0, rc = BL_OK;
    struct stat st;
    if (fd < 0) return fail(err, errlen, BL_ERR_IO, "%s: cannot open checkpoint: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) rc = fail(err, errlen, BL_ERR_IO, "%s: not a regular file", path);
    if (rc == BL_OK) rc = check_checkpoint(fd, (uint64_t)st.st_size, &m->cfg, &hsize, path, err, errlen);
    if (rc == BL_OK) {
        void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) rc = fail(err, errlen, BL_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
        else m->map = map, m->map_size = (size_t)st.st_size;
    }
    close(fd);  // the mapping stays valid without the descriptor
    if (rc != BL_OK) return rc;
    Cursor placed = {(const char *)m->map, (uint64_t)hsize, 0};
    layout(&m->w, &placed, &m->cfg);
    return BL_OK;
}

int bl_model_open(const char *checkpoint_path, const char *tokenizer_path, bl_model **out,
                  char *err, size_t errlen) {
    if (!out) return fail(err, errlen, BL_ERR_ARG, "bl_model_open: out is NULL");
    *out = NULL;
    if (!checkpoint_path) return fail(err, errlen, BL_ERR_ARG, "bl_model_open: checkpoint path is NULL");
    bl_model *m = calloc(1, sizeof *m);
    if (!m) return fail(err, errlen, BL_ERR_NOMEM, "%s: out of memory", checkpoint_path);
    int rc = map_checkpoint(m, checkpoint_path, err, errlen);
    if (rc == BL_OK) pack_weights(m);
    if (rc == BL_OK && tokenizer_path)
        rc = build_tokenizer(&m->tok, tokenizer_path, m->cfg.vocab_size, err, errlen);
    if (rc != BL_OK) {
        bl_model_close(m);
        return rc;
    }
    *out = m;
    return BL_OK;
}

void bl_model_close(bl_model *m) {
    if (!m) return;
    if (m->map) munmap(m->map, m->map_size);
    free(m->packed);
    free_tokenizer(m->tok);
    free(m);
}

bl_config bl_model_config(const bl_model *m) { return m->cfg; }

// ----------------------------------------------------------------------------------------------
// threads: a pool of helper threads that live as long as the process, for the parallel loops.
// Why not `omp parallel for`: on cores shared with other programs, OpenMP's team waits at every
// loop's end for each thread to check in, and a thread the OS has not scheduled yet stalls the
// whole token (2 threads ran 50x slower than 1 on a busy machine). Here the caller takes items
// itself and helpers join when they wake: a late helper finds the work done and costs nothing.
// A helper that is running spins briefly for the next loop (loops come back to back), then sleeps.

typedef void (*Task)(void *arg, int item);

// Below this many multiply-adds a parallel loop costs more in thread wake-ups than it saves
// (the sanitizer tests set it to 1, so that their tiny models run every loop on the pool).
#ifndef PARALLEL_MIN_WORK
#define PARALLEL_MIN_WORK (1L << 16)
#endif

#define MAX_HELPERS 63
#define SPIN_ROUNDS 20000  // ~50 us of polling before a helper sleeps

static struct {
    pthread_mutex_t lock;            // guards the job fields, stop, and the sleep/wake-up
    pthread_cond_t wake;
    pthread_mutex_t busy;            // held by the thread running a job: one job at a time
    pthread_t helper[MAX_HELPERS];
    int helpers, stop, threads;      // started helpers; shutting down; bl_set_threads (0: default)
    int hooked;                      // the exit and fork handlers are registered
    Task task;                       // the job: task(arg, i) for i in 0..n-1, on `width` threads
    void *arg;
    int n, width;
    _Atomic unsigned gen;            // job number: helpers watch it for new work
    _Atomic unsigned long long next; // gen << 32 | the next item to take: a stale helper cannot take one
    _Atomic int done;                // items of this job finished
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .busy = PTHREAD_MUTEX_INITIALIZER};

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// Take and run items of job g until none is left.
static void take_items(unsigned g, Task task, void *arg, int n) {
    for (;;) {
        unsigned long long w = atomic_load(&pool.next);
        if ((unsigned)(w >> 32) != g || (int)(w & 0xffffffffu) >= n) return;
        if (!atomic_compare_exchange_weak(&pool.next, &w, w + 1)) continue;
        task(arg, (int)(w & 0xffffffffu));
        atomic_fetch_add(&pool.done, 1);
    }
}

static void *helper_main(void *id_ptr) {
    int id = (int)(intptr_t)id_ptr;
    unsigned seen = 0;
    for (;;) {
        for (int spin = 0; spin < SPIN_ROUNDS && atomic_load(&pool.gen) == seen; spin++) cpu_relax();
        pthread_mutex_lock(&pool.lock);
        while (atomic_load(&pool.gen) == seen && !pool.stop) pthread_cond_wait(&pool.wake, &pool.lock);
        if (pool.stop) {
            pthread_mutex_unlock(&pool.lock);
            return NULL;
        }
        seen = atomic_load(&pool.gen);
        Task task = pool.task;
        void *arg = pool.arg;
        int n = pool.n, joins = id + 1 < pool.width;
        pthread_mutex_unlock(&pool.lock);
        if (joins) take_items(seen, task, arg, n);
    }
}

// At exit: stop and join the helpers (leak checkers see no thread left behind).
static void stop_helpers(void) {
    pthread_mutex_lock(&pool.lock);
    pool.stop = 1;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    for (int i = 0; i < pool.helpers; i++) pthread_join(pool.helper[i], NULL);
    pool.helpers = 0;
}

// In a child made by fork() the helpers do not exist and the locks may have been held by one:
// start from a fresh pool (the child starts its own helpers when it needs them).
static void pool_after_fork(void) {
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_mutex_init(&pool.busy, NULL);
    pool.helpers = 0;
}

void bl_set_threads(int n) {
    pthread_mutex_lock(&pool.lock);
    pool.threads = n > 0 ? n : 0;
    pthread_mutex_unlock(&pool.lock);
}

// Threads for the calling thread's next loop: bl_set_threads, else OpenMP's setting (which
// follows OMP_NUM_THREADS and omp_set_num_threads), else OMP_NUM_THREADS, else every core.
static int thread_count(void) {
    pthread_mutex_lock(&pool.lock);
    int n = pool.threads;
    pthread_mutex_unlock(&pool.lock);
    if (n > 0) return n;
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    const char *env = getenv("OMP_NUM_THREADS");
    n = env ? atoi(env) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? n : 1;
#endif
}

// task(arg, i) for i in 0..n-1, on up to thread_count() threads when `work` (multiply-adds, say)
// is worth it. Items must be independent. A loop inside a loop, or a second caller while a loop
// runs, runs on its own thread.
static void parallel_for(Task task, void *arg, int n, long work) {
    int width = work >= PARALLEL_MIN_WORK && n > 1 ? thread_count() : 1;
    width = width < n ? width : n;
    width = width < MAX_HELPERS + 1 ? width : MAX_HELPERS + 1;
    if (width <= 1 || pthread_mutex_trylock(&pool.busy) != 0) {
        for (int i = 0; i < n; i++) task(arg, i);
        return;
    }
    pthread_mutex_lock(&pool.lock);
    while (pool.helpers < width - 1 && !pool.stop &&
           pthread_create(&pool.helper[pool.helpers], NULL, helper_main, (void *)(intptr_t)pool.helpers) == 0)
        if (pool.helpers++ == 0 && !pool.hooked) pool.hooked = 1, atexit(stop_helpers), pthread_atfork(NULL, NULL, pool_after_fork);
    unsigned g = atomic_load(&pool.gen) + 1;
    pool.task = task, pool.arg = arg, pool.n = n, pool.width = width;
    atomic_store(&pool.done, 0);
    atomic_store(&pool.next, (unsigned long long)g << 32);
    atomic_store(&pool.gen, g);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    take_items(g, task, arg, n);
    for (long spin = 0; atomic_load(&pool.done) < n; spin++) {  // items a helper took are finishing
        if (spin < 1000) cpu_relax();
        else sched_yield();
    }
    pthread_mutex_unlock(&pool.busy);
}

// ----------------------------------------------------------------------------------------------
// kernels: the few loops all the time goes into. These are the reference versions: plain C that
// any compiler builds. run_simd.h replaces the matrix kernels with vectorized ones when the build
// targets AVX-512 (make's -march=native) and BL_REFERENCE is not defined.

// An fp32 value stored at any byte address (Q8_0 scales follow int8 blocks of any length).
static float load_f32(const char *p) {
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}

// Layer l's fp32 data of an fp32 tensor (offsets are multiples of 4 in versions 0 and 1).
static const float *f32(const Tensor *t, int l) {
    return (const float *)(const void *)(t->p + (size_t)l * t->stride);
}

// o = x / rms(x) * weight
static void rmsnorm(float *o, const float *x, const float *weight, int n) {
    float ss = 0.0f;
    for (int j = 0; j < n; j++) ss += x[j] * x[j];
    ss = 1.0f / sqrtf(ss / n + 1e-5f);
    for (int j = 0; j < n; j++) o[j] = weight[j] * (ss * x[j]);
}

// ---- sums in any order, with the bits of one order ----
// Float addition rounds, so a running sum's bits depend on the order of its terms. llama2.c adds
// one by one in a given order (the softmax's sum and the sampler's walk: index order; top-p:
// descending probability), and matching its bits seems to require the same chain of additions,
// each waiting on the last (about 3 cycles each: 27 us for 32,000 terms). It does not, because:
//   while a running sum s stays in one binade [2^e, 2^(e+1)), where floats are the multiples of
//   u = 2^(e-23), s + x rounds to s + (x rounded to a multiple of u), whatever s is, unless x lies
//   exactly halfway between two multiples (then the rounding goes to the even one, which depends
//   on s). So terms that keep s in its binade, none of them halfway, give the same sum in any
//   order: s + u * (sum of round(x / u)), a sum of integers, which vectorizes.
// Where that fails (the sum passes a power of two, a term is halfway) only one by one gives the
// bits; that is a few blocks in a vocabulary.

// s + x[0] + ... + x[n-1] added one by one, computed at once when the rule above holds for these
// terms; else -1. Assumes x[i] >= 0 (a NaN makes it fail).
static float add_in_any_order(float s, const float *x, int n) {
    uint32_t bits;
    memcpy(&bits, &s, sizeof bits);
    int e = (int)(bits >> 23 & 0xff);  // s in [2^(e-127), 2^(e-126)), u = 2^(e-150)
    if (!(s > 0.0f) || e < 23 || e > 254) return -1.0f;
    uint32_t scale_bits = (uint32_t)(277 - e) << 23;  // 1 / u, a power of two
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    long long units = (long long)(s * scale);  // s / u: an integer in [2^23, 2^24)
    int fails = 0;                              // (no early exit: the loop vectorizes)
    for (int i = 0; i < n; i++) {
        float q = x[i] * scale, r = rintf(q);             // exact below 2^24
        int big = !(q < 0x1p24f);                        // (or NaN): s would leave its binade anyway
        fails |= big || fabsf(q - r) == 0.5f;           // halfway: the order decides
        units += (long long)(big ? 0.0f : r);
    }
    if (fails || units >= 1 << 24) return -1.0f;  // or s would leave its binade
    return (float)units / scale;
}

#define SUM_BLOCK 256  // terms per add_in_any_order call: 32,000 in 9 us (blocks of 64: 13 us)

// x[0] + ... + x[n-1], added one by one in order as llama2.c does: SUM_BLOCK terms at a time
// where add_in_any_order can, else one by one. (Terms >= 0.)
static float sum_in_order(const float *x, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; i += SUM_BLOCK) {
        int m = n - i < SUM_BLOCK ? n - i : SUM_BLOCK;
        float whole = add_in_any_order(sum, x + i, m);
        if (whole >= 0.0f) sum = whole;
        else
            for (int j = i; j < i + m; j++) sum += x[j];
    }
    return sum;
}

typedef struct {
    float *x, max;
    int n, chunk;
} ExpTask;

// x[i] = expf(x[i] - max)
static void exp_shifted(float *x, int n, float max) {
    for (int i = 0; i < n; i++) x[i] = expf(x[i] - max);
}

// y[b, i] = W[i, :] . x[b, :] for rows i0 <= i < i1 of W[d, n] and the B rows of x[B, n] (fp32).
// One weight row serves all B activation rows while it is in cache. (Unused where run_simd.h's
// kernel replaces it: it stays compiled as the reference that `make run_ref` runs.)
#if defined(__GNUC__)
__attribute__((unused))
#endif
static void rows_f32(float *y, const float *x, const float *w, int n, int d, int i0, int i1, int B) {
    for (int i = i0; i < i1; i++) {
        const float *row = w + (size_t)i * n;
        for (int b = 0; b < B; b++) {
            const float *xb = x + (size_t)b * n;
            float val = 0.0f;
            #pragma omp simd reduction(+:val)
            for (int j = 0; j < n; j++) val += row[j] * xb[j];
            y[(size_t)b * d + i] = val;
        }
    }
}

// Nearest int8 in [-127, 127]; NaN (from a corrupt file) becomes 0 instead of undefined behaviour.
static int8_t to_q8(float v) {
    float r = roundf(v);
    return r > 127.0f ? 127 : r < -127.0f ? -127 : r == r ? (int8_t)r : 0;
}

// Quantize x[n] per group of gs: s = max|x| / 127, q = round(x / s) (symmetric, like the weights).
static void quantize(int8_t *q, float *s, const float *x, int n, int gs) {
    for (int g = 0; g < n / gs; g++) {
        const float *xg = x + (size_t)g * gs;
        float wmax = 0.0f;
        for (int i = 0; i < gs; i++) wmax = fmaxf(wmax, fabsf(xg[i]));
        s[g] = wmax / 127.0f;
        for (int i = 0; i < gs; i++) q[(size_t)g * gs + i] = s[g] > 0.0f ? to_q8(xg[i] / s[g]) : 0;
    }
}

// rows_f32 for int8: W's rows are int8 with one fp32 scale per gs values (scales ws, row after
// row), x's B rows are int8 (xq[B, n]) with scales xs[B, n / gs]: int32 sums per group.
static void rows_q8(float *y, const int8_t *xq, const float *xs, const int8_t *wq, const char *ws,
                    int n, int d, int gs, int i0, int i1, int B) {
    for (int i = i0; i < i1; i++) {
        const int8_t *row = wq + (size_t)i * n;
        const char *rs = ws + (size_t)i * (n / gs) * 4;
        for (int b = 0; b < B; b++) {
            const int8_t *xb = xq + (size_t)b * n;
            const float *sb = xs + (size_t)b * (n / gs);
            float val = 0.0f;
            for (int g = 0; g < n / gs; g++) {
                int32_t ival = 0;
                #pragma omp simd reduction(+:ival)
                for (int k = 0; k < gs; k++) ival += (int32_t)xb[g * gs + k] * (int32_t)row[g * gs + k];
                val += (float)ival * load_f32(rs + 4 * (size_t)g) * sb[g];
            }
            y[(size_t)b * d + i] = val;
        }
    }
}

// att[i] = q . k_i / sqrt(hs) for the positions i <= pos of one head: k_i = keys + i * stride.
static void head_scores(float *att, const float *q, const float *keys, int stride, int hs, int pos) {
    for (int i = 0; i <= pos; i++) {
        const float *k = keys + (size_t)i * stride;
        float score = 0.0f;
        #pragma omp simd reduction(+:score)
        for (int j = 0; j < hs; j++) score += q[j] * k[j];
        att[i] = score / sqrtf((float)hs);
    }
}

// out = sum over i <= pos of att[i] v_i, v_i = values + i * stride (one head's hs values).
static void head_values(float *out, const float *att, const float *values, int stride, int hs, int pos) {
    memset(out, 0, (size_t)hs * sizeof(float));
    for (int i = 0; i <= pos; i++) {
        const float *v = values + (size_t)i * stride;
        for (int j = 0; j < hs; j++) out[j] += att[i] * v[j];
    }
}

// cos and sin of RoPE's angle pos * 10000^(-i / head_size) for each pair (i, i+1) of a head:
// cs[i] = cos, cs[i+1] = sin. The same for every layer, and for queries and keys.
static void rope_table(float *cs, int head_size, int pos) {
    for (int i = 0; i < head_size; i += 2) {
        float freq = 1.0f / powf(10000.0f, (float)i / (float)head_size);
        float angle = pos * freq;
        cs[i] = cosf(angle), cs[i + 1] = sinf(angle);
    }
}

// Rotate each pair (v[i], v[i+1]) of every head of v[n] by its angle (cs from rope_table): RoPE.
static void rope(float *v, int n, int head_size, const float *cs) {
    for (int i = 0; i < n; i += 2) {
        float c = cs[i % head_size], s = cs[i % head_size + 1];
        float a = v[i], b = v[i + 1];
        v[i] = a * c - b * s;
        v[i + 1] = a * s + b * c;
    }
}

// SwiGLU: h1 = silu(h1) * h3
static void swiglu(float *h1, const float *h3, size_t n) {
    for (size_t i = 0; i < n; i++) h1[i] = h1[i] / (1.0f + expf(-h1[i])) * h3[i];
}

static void add(float *x, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

#if defined(__AVX512F__) && !defined(BL_REFERENCE)
#include "run_simd.h"  // the *_fast kernels below, same results (AVX-512, VNNI)
#else
#define rows_f32_fast rows_f32
#define rows_q8_fast rows_q8
#define quantize_fast quantize
#define exp_shifted_fast exp_shifted
#define swiglu_fast swiglu
#define head_scores_fast head_scores
#define head_values_fast head_values
#define candidates_fast candidates
#define fetch_head(keys, values, n) ((void)0)
#define rmsnorm_fast rmsnorm
#define rope_fast rope
#endif

static void exp_chunk(void *arg, int c) {
    const ExpTask *t = arg;
    int end = (c + 1) * t->chunk < t->n ? (c + 1) * t->chunk : t->n;
    exp_shifted_fast(t->x + (size_t)c * t->chunk, end - c * t->chunk, t->max);
}

// In place; subtracting the max keeps expf from overflowing. Bit for bit llama2.c's result, which
// fixes libm's expf and the order of the sum; what may change without changing a bit is: the max
// (vectorized), the expf calls (on the thread pool for a vocabulary; fast builds compute glibc's
// expf 16 at a time, exp_shifted_fast), the sum (sum_in_order) and the divisions (vectorized).
static void softmax(float *x, int n) {
    float max = x[0];
    #pragma omp simd reduction(max:max)
    for (int i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    ExpTask t = {x, max, n, 4096};
    parallel_for(exp_chunk, &t, (n + t.chunk - 1) / t.chunk, 16L * n);  // expf: about 16 multiply-adds
    float sum = sum_in_order(x, n);
    #pragma omp simd
    for (int i = 0; i < n; i++) x[i] /= sum;
}

#ifdef BL_PANELS
// Drop the mapped file's pages inside [p, p + n) from this process's memory: the kernels no longer
// read them (were they read, they would come back from the file).
static void release(const char *p, size_t n) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = ((uintptr_t)p + page - 1) / page * page;
    uintptr_t b = ((uintptr_t)p + n) / page * page;
#ifdef MADV_DONTNEED
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
#endif
}

// n bytes in 2 MB pages where the kernel gives them (Linux's transparent huge pages, on request).
// Decoding streams every weight once per token: with 4 KB pages every page costs a TLB miss, and
// the hardware prefetchers stop at each 4 KB boundary. Side by side (9 runs, bench/README.md):
// decoding 1.13-1.51x on the six benchmark models, batches of 32 1.01-1.20x, prompts unchanged.
// Under HUGE_MIN bytes, 4 KB pages as before: a 2 MB page is zeroed whole at its first touch,
// more than a small model saves (and the fuzzers, which open one tiny model per input, ran 10x
// slower).
#define HUGE_MIN ((size_t)8 << 20)
static char *alloc_huge(size_t n) {
    if (n < HUGE_MIN) return aligned_alloc(64, (n + 63) / 64 * 64);
    size_t huge = (size_t)2 << 20, size = (n + huge - 1) / huge * huge;
    char *p = aligned_alloc(huge, size);
#ifdef MADV_HUGEPAGE
    if (p) madvise(p, size, MADV_HUGEPAGE);  // before the first touch; where refused, 4 KB pages
#endif
    return p;
}

// The matrices pack_weights repacks, each layer an item of a parallel loop.
typedef struct {
    Tensor *mats[8];
    int layers[8], first[9];  // mats[k]'s layers are items first[k] .. first[k + 1] - 1
    char *dst[8];             // where mats[k]'s panels go
    const char *keep;         // the embedding table, whose file pages embed() still reads
} PackTask;

static void pack_item(void *arg, int item) {
    const PackTask *t = arg;
    int k = 0;
    while (t->first[k + 1] <= item) k++;
    const Tensor *w = t->mats[k];
    size_t at = (size_t)(item - t->first[k]) * w->stride;
    if (w->gs) pack_panels(t->dst[k] + at, w->p + at, w->rows, w->cols, w->gs);
    else pack_panels_f32((float *)(void *)(t->dst[k] + at), (const float *)(const void *)(w->p + at), w->rows, w->cols);
    if (w->p != t->keep) release(w->p + at, w->stride);  // at once: the peak memory stays the file's size
}
#endif

// The fast build's kernels read the matrices they can take (packable) repacked into panels: one
// copy of each, made here at load time, a layer per item on the thread pool (the file's pages are
// then released: the memory used stays about the file's size). Without memory for the copy, the
// file's layout serves.
static void pack_weights(bl_model *m) {
#ifdef BL_PANELS
    Weights *w = &m->w;
    int L = m->cfg.n_layers;
    PackTask t = {{&w->wq, &w->wk, &w->wv, &w->wo, &w->w1, &w->w2, &w->w3, &w->wcls}, {L, L, L, L, L, L, L, 1}, {0}, {0},
                  w->tok_emb.p};
    size_t total = 0;
    for (int k = 0; k < 8; k++) {
        if (!packable(t.mats[k])) t.layers[k] = 0;
        t.first[k + 1] = t.first[k] + t.layers[k];
        total += (size_t)t.mats[k]->stride * (size_t)t.layers[k];
    }
    if (total == 0 || !(m->packed = alloc_huge(total))) return;
    for (size_t k = 0, at = 0; k < 8; at += (size_t)t.mats[k]->stride * (size_t)t.layers[k], k++) t.dst[k] = m->packed + at;
    parallel_for(pack_item, &t, t.first[8], (long)(total / 4));
    for (int k = 0; k < 8; k++)
        if (t.layers[k]) t.mats[k]->panels = t.dst[k];
#else
    (void)m;  // the reference kernels read the file's layout
#endif
}

// ----------------------------------------------------------------------------------------------
// forward: one pass carries B rows (tokens). Each row has its own position and its own KV cache
// (sequence), so the same code runs one token (decoding), a whole prompt (prefill: one sequence,
// consecutive positions) and many stories at once (one sequence per row). Every weight matrix is
// read once per pass, whatever B is: that is what makes prompts and batches fast.

struct bl_state {
    const bl_model *m;
    int rows;                        // most rows one pass carries
    int n_seq, n_pos;                // KV caches held, and positions in each
    float *x;                        // [rows, D] the residual stream
    float *xb, *xb2;                 // [rows, D] scratch: normed input, attention output, branch output
    float *hb, *hb2;                 // [rows, H] feed-forward scratch
    float *q, *k, *v;                // [rows, D], [rows, KV], [rows, KV] this pass's queries, keys, values
    float *att;                      // [rows, n_heads, n_pos] attention weights
    float *rope;                     // [rows, head_size] RoPE's cos, sin at each row's position
    float *logits;                   // [rows, V]
    float *key_cache, *value_cache;  // [n_seq, L, n_kv_heads, n_pos, head_size]
    int8_t *xq;                      // [rows, max(D, H)] activations quantized for int8 matmuls (version 2)
    float *xs;                       // [rows, max(D, H) / gs] their scales
    int32_t *xo;                     // [rows, max(D, H) / gs] their offsets for int8 panels (q8_offsets)
    const int *pos, *seq;            // the current pass: row b is at position pos[b] of sequence seq[b]
};

static int kv_dim(const bl_config *p) { return p->n_kv_heads * (p->dim / p->n_heads); }

#define PREFILL_ROWS 128  // rows per pass of bl_state_new's states: prompts go through 128 at a time
                          // (a pass reads every weight once and wakes the helpers a dozen times per layer:
                          // against 32 rows, 200-token prompts ran 1.1-1.4x faster)
#define PREFILL_SCRATCH (64u << 20)  // ... or fewer, so that their attention weights and logits
                                     // (per row: n_heads x seq_len + vocab_size floats) fit in 64 MB

// A state for passes of up to `rows` rows over `n_seq` sequences of `n_pos` positions.
static int state_new(const bl_model *m, int rows, int n_seq, int n_pos, bl_state **out, char *err, size_t errlen) {
    const bl_config *p = &m->cfg;
    uint64_t kv, kv_bytes, att;  // the cache is the one size the file does not bound: check it
    if (mul_overflows((uint64_t)p->n_layers * (uint64_t)n_pos, (uint64_t)kv_dim(p), &kv) ||
        mul_overflows(kv, (uint64_t)n_seq, &kv) || mul_overflows(kv, sizeof(float), &kv_bytes) ||
        kv_bytes > SIZE_MAX / 2 || mul_overflows((uint64_t)rows * (uint64_t)p->n_heads, (uint64_t)n_pos, &att) ||
        att > SIZE_MAX / sizeof(float))
        return fail(err, errlen, BL_ERR_NOMEM, "KV cache of %d layers x %d positions x %d sequences does not fit in memory",
                    p->n_layers, n_pos, n_seq);
    size_t D = (size_t)p->dim, H = (size_t)p->hidden_dim, R = (size_t)rows, KV = (size_t)kv_dim(p);
    size_t nq = D > H ? D : H;
    bl_state *s = calloc(1, sizeof *s);
    if (!s) return fail(err, errlen, BL_ERR_NOMEM, "out of memory for the state");
    s->m = m, s->rows = rows, s->n_seq = n_seq, s->n_pos = n_pos;
    s->x = calloc(R * D, sizeof(float)), s->xb = calloc(R * D, sizeof(float));
    s->xb2 = calloc(R * D, sizeof(float)), s->q = calloc(R * D, sizeof(float));
    s->k = calloc(R * KV, sizeof(float)), s->v = calloc(R * KV, sizeof(float));
    s->hb = calloc(R * H, sizeof(float)), s->hb2 = calloc(R * H, sizeof(float));
    s->att = calloc((size_t)att, sizeof(float));
    s->rope = calloc(R * (D / p->n_heads), sizeof(float));
    s->logits = calloc(R * (size_t)p->vocab_size, sizeof(float));
    s->key_cache = calloc(kv, sizeof(float)), s->value_cache = calloc(kv, sizeof(float));
    s->xq = calloc(R * nq, 1), s->xs = calloc(R * nq, sizeof(float)), s->xo = calloc(R * nq, sizeof(int32_t));
    if (!s->x || !s->xb || !s->xb2 || !s->q || !s->k || !s->v || !s->hb || !s->hb2 || !s->att || !s->rope ||
        !s->logits || !s->key_cache || !s->value_cache || !s->xq || !s->xs || !s->xo) {
        bl_state_free(s);
        return fail(err, errlen, BL_ERR_NOMEM, "out of memory for the state (KV cache %llu bytes x 2)",
                    (unsigned long long)kv_bytes);
    }
    *out = s;
    return BL_OK;
}

int bl_state_new(const bl_model *m, bl_state **out, char *err, size_t errlen) {
    if (!out || !m) return fail(err, errlen, BL_ERR_ARG, "bl_state_new: NULL argument");
    *out = NULL;
    const bl_config *p = &m->cfg;
    int rows = p->seq_len < PREFILL_ROWS ? p->seq_len : PREFILL_ROWS;
    size_t per_row = ((size_t)p->n_heads * (size_t)p->seq_len + (size_t)p->vocab_size) * sizeof(float);
    if ((size_t)rows * per_row > PREFILL_SCRATCH) rows = PREFILL_SCRATCH / per_row > 1 ? (int)(PREFILL_SCRATCH / per_row) : 1;
    return state_new(m, rows, 1, p->seq_len, out, err, errlen);
}

void bl_state_free(bl_state *s) {
    if (!s) return;
    free(s->x), free(s->xb), free(s->xb2), free(s->q), free(s->k), free(s->v), free(s->hb), free(s->hb2);
    free(s->att), free(s->rope), free(s->logits), free(s->key_cache), free(s->value_cache);
    free(s->xq), free(s->xs), free(s->xo);
    free(s);
}

#define TILE 16             // rows of W per item are a multiple of this (of every kernel's row tile)
#define ITEM_BYTES (512 << 10)  // an item reads about this much of W in one stretch

// One matrix product of a pass: y[b, :] = W_l x[b, :] for the pass's B rows.
typedef struct {
    float *y;
    const Tensor *w;
} MatJob;

// The matrix products of one parallel loop: items are blocks of rows of every job's W.
typedef struct {
    bl_state *s;
    const float *x;
    const MatJob *jobs;
    int l, B, n, gs, n_jobs, first[4], rows[4];  // job j: its first item, rows per item
} MatTask;

// Rows of W per item of the parallel loop: about ITEM_BYTES of weights, a multiple of TILE, yet
// at least 2 items per thread for balance. Long contiguous reads are what the prefetchers follow,
// and every item costs an atomic claim: against 16-row items, 110M int8 decodes 1.7x faster
// (prefill 1.2x, batches 1.15x), 15M 1.2x (bench/README.md).
static int rows_per_item(const Tensor *w, int threads) {
    size_t row_bytes = w->gs ? (size_t)w->cols + (size_t)w->cols / (size_t)w->gs * 4 : (size_t)w->cols * 4;
    size_t r = ITEM_BYTES / row_bytes, cap = (size_t)w->rows / (2 * (size_t)threads);
    r = r < cap ? r : cap;
    return r < TILE ? TILE : (int)(r / TILE * TILE);
}

static void matmul_block(void *arg, int k) {
    const MatTask *t = arg;
    int j = t->n_jobs - 1;
    while (t->first[j] > k) j--;
    const Tensor *w = t->jobs[j].w;
    const char *base = w->p + (size_t)t->l * w->stride;
    int i0 = (k - t->first[j]) * t->rows[j], i1 = i0 + t->rows[j] < w->rows ? i0 + t->rows[j] : w->rows;
    float *y = t->jobs[j].y;
#ifdef BL_PANELS
    if (w->panels) {  // run_simd.h's repacked copy (pack_weights)
        const char *panels = w->panels + (size_t)t->l * w->stride;
        if (!t->gs) rows_f32_panels(y, t->x, (const float *)(const void *)panels, t->n, w->rows, i0, i1, t->B);
        else rows_q8_panels(y, t->s->xq, t->s->xs, t->s->xo, panels, t->n, w->rows, t->gs, i0, i1, t->B);
        return;
    }
#endif
    if (!t->gs) rows_f32_fast(y, t->x, (const float *)(const void *)base, t->n, w->rows, i0, i1, t->B);
    else rows_q8_fast(y, t->s->xq, t->s->xs, (const int8_t *)base, base + (size_t)w->rows * t->n, t->n, w->rows, t->gs,
                      i0, i1, t->B);
}

// Row b of the pass's input, quantized for int8 weights (and its offsets for int8 panels).
static void quantize_row(void *arg, int b) {
    const MatTask *t = arg;
    size_t at = (size_t)b * t->n, g = (size_t)b * (t->n / t->gs);
    quantize_fast(t->s->xq + at, t->s->xs + g, t->x + at, t->n, t->gs);
#ifdef BL_PANELS
    q8_offsets(t->s->xo + g, t->s->xq + at, t->n, t->gs);
#endif
}

// Run the jobs (matrices of the same input width, like Q, K and V) on the same B input rows, in
// one parallel loop over blocks of rows: one wake-up of the helpers for all of them. int8 weights
// first quantize x per group, like llama2.c's runq. Which thread computes a row never changes its
// value.
static void matmuls(bl_state *s, int l, const float *x, int B, const MatJob *jobs, int n_jobs) {
    MatTask t = {s, x, jobs, l, B, jobs[0].w->cols, jobs[0].w->gs, n_jobs, {0}, {0}};
    int blocks = 0, threads = thread_count();
    long work = 0;
    if (t.gs) parallel_for(quantize_row, &t, B, 16L * B * t.n);  // a division, a rounding, ... per value
    for (int j = 0; j < n_jobs; j++) {
        t.first[j] = blocks;
        t.rows[j] = rows_per_item(jobs[j].w, threads);
        blocks += (jobs[j].w->rows + t.rows[j] - 1) / t.rows[j];
        work += (long)jobs[j].w->rows * t.n * B;
    }
    parallel_for(matmul_block, &t, blocks, work);
}

// x = the embedding row of token (int8 rows are dequantized on the fly: no fp32 copy of the table)
static void embed(float *x, const Tensor *e, int token) {
    size_t at = (size_t)token * e->cols;
    if (!e->gs) {
        memcpy(x, f32(e, 0) + at, (size_t)e->cols * sizeof(float));
        return;
    }
    const int8_t *q = (const int8_t *)e->p;
    const char *scales = e->p + (size_t)e->rows * e->cols;
    for (int i = 0; i < e->cols; i++) x[i] = q[at + i] * load_f32(scales + (at + i) / e->gs * 4);
}

// Layer l's key (value) cache of KV head h in sequence seq: [n_pos, head_size], one head's
// positions one after another, so that attention reads each head's cache as one stream (not a
// slice of every position's row): 110M int8 decoding 256 positions +5%, side by side.
static float *cache_head(const bl_state *s, float *cache, int seq, int l, int h) {
    const bl_config *p = &s->m->cfg;
    return cache + (((size_t)seq * p->n_layers + l) * p->n_kv_heads + h) * s->n_pos * (p->dim / p->n_heads);
}

// A step of layer l over the pass's rows (attention, RoPE, SwiGLU): items are rows or (row, head).
typedef struct {
    bl_state *s;
    int l;
    int fetch;  // attention: ask for each head's cache ahead (fetch_head)
} LayerTask;

// One (row, head) of attention: s->xb's slice = that head's attention of the row's query over
// positions 0..pos of its sequence's layer-l cache. Query head h reads key/value head
// h / (n_heads / n_kv_heads): grouped-query attention.
static void attention_head(void *arg, int bh) {
    const LayerTask *t = arg;
    bl_state *s = t->s;
    const bl_config *p = &s->m->cfg;
    int hs = p->dim / p->n_heads, group = p->n_heads / p->n_kv_heads;
    int b = bh / p->n_heads, h = bh % p->n_heads, pos = s->pos[b];
    const float *q = s->q + (size_t)b * p->dim + (size_t)h * hs;
    const float *keys = cache_head(s, s->key_cache, s->seq[b], t->l, h / group);
    const float *values = cache_head(s, s->value_cache, s->seq[b], t->l, h / group);
    float *att = s->att + (size_t)bh * s->n_pos, *xb = s->xb + (size_t)b * p->dim + (size_t)h * hs;
    if (t->fetch) fetch_head(keys, values, (size_t)(pos + 1) * hs);
    head_scores_fast(att, q, keys, hs, hs, pos);
    softmax(att, pos + 1);
    head_values_fast(xb, att, values, hs, hs, pos);
}

// s->xb = attention for every row and head of the pass.
static void attention(bl_state *s, int l, int B) {
    // A prompt's rows share one cache, which stays in cache after the first row: no need to fetch
    LayerTask t = {s, l, s->seq[0] != s->seq[B - 1] || B == 1};
    long work = 0;
    // 2 multiply-adds per cached float (scores, values), read from L2 or L3 rather than L1: weighed
    // 4x, which puts a stories15M token's attention on 2 threads (+8% decode int8, side by side)
    for (int b = 0; b < B; b++) work += 8L * s->m->cfg.dim * (s->pos[b] + 1);
    parallel_for(attention_head, &t, B * s->m->cfg.n_heads, work);
}

typedef struct {
    float *o;
    const float *x, *weight;
    int n;
} NormTask;

static void norm_row(void *arg, int b) {
    const NormTask *t = arg;
    rmsnorm_fast(t->o + (size_t)b * t->n, t->x + (size_t)b * t->n, t->weight, t->n);
}

// rmsnorm of B rows of n values; in parallel for a prompt or a batch (run.c's sum is one chain of
// dependent additions: weighed as 16 multiply-adds a value).
static void rmsnorm_rows(float *o, const float *x, const float *weight, int n, int B) {
    NormTask t = {o, x, weight, n};
    parallel_for(norm_row, &t, B, 16L * B * n);
}

// Row b's query and key rotated (RoPE), then its key and value stored in the cache at its position.
static void rope_row(void *arg, int b) {
    const LayerTask *t = arg;
    bl_state *s = t->s;
    const bl_config *p = &s->m->cfg;
    int D = p->dim, KV = kv_dim(p), hs = p->dim / p->n_heads;
    const float *cs = s->rope + (size_t)b * hs;
    rope_fast(s->q + (size_t)b * D, D, hs, cs);
    rope_fast(s->k + (size_t)b * KV, KV, hs, cs);
    size_t at = (size_t)s->pos[b] * hs;  // this position's row in each head's cache
    for (int h = 0; h < p->n_kv_heads; h++) {
        size_t from = (size_t)b * KV + (size_t)h * hs;
        memcpy(cache_head(s, s->key_cache, s->seq[b], t->l, h) + at, s->k + from, (size_t)hs * sizeof(float));
        memcpy(cache_head(s, s->value_cache, s->seq[b], t->l, h) + at, s->v + from, (size_t)hs * sizeof(float));
    }
}

static void swiglu_row(void *arg, int b) {
    const LayerTask *t = arg;
    size_t H = (size_t)t->s->m->cfg.hidden_dim;
    swiglu_fast(t->s->hb + b * H, t->s->hb2 + b * H, H);
}

// One transformer block over the pass's B rows: attention then feed-forward, each added to the
// residual stream. The row-wise steps between the matrix products run on the thread pool when a
// prompt or a batch makes them worth it (SwiGLU's expf: weighed as 16 multiply-adds a value).
static void block(bl_state *s, int l, int B) {
    const bl_config *p = &s->m->cfg;
    const Weights *w = &s->m->w;
    size_t D = (size_t)p->dim, H = (size_t)p->hidden_dim, KV = (size_t)kv_dim(p);
    rmsnorm_rows(s->xb, s->x, f32(&w->rms_att, l), (int)D, B);
    MatJob qkv[3] = {{s->q, &w->wq}, {s->k, &w->wk}, {s->v, &w->wv}};
    matmuls(s, l, s->xb, B, qkv, 3);
    LayerTask rows = {s, l, 0};
    parallel_for(rope_row, &rows, B, 4L * B * (long)(D + KV));
    attention(s, l, B);
    MatJob o[1] = {{s->xb2, &w->wo}};
    matmuls(s, l, s->xb, B, o, 1);
    add(s->x, s->xb2, B * D);
    rmsnorm_rows(s->xb, s->x, f32(&w->rms_ffn, l), (int)D, B);
    MatJob up[2] = {{s->hb, &w->w1}, {s->hb2, &w->w3}};
    matmuls(s, l, s->xb, B, up, 2);
    parallel_for(swiglu_row, &rows, B, 16L * B * (long)H);
    MatJob down[1] = {{s->xb2, &w->w2}};
    matmuls(s, l, s->hb, B, down, 1);
    add(s->x, s->xb2, B * D);
}

typedef struct {
    bl_state *s;
    const int *tok;
} StartTask;

// Row b's start: its token's embedding, and RoPE's cos and sin at its position.
static void start_row(void *arg, int b) {
    const StartTask *t = arg;
    const bl_config *p = &t->s->m->cfg;
    int hs = p->dim / p->n_heads;
    embed(t->s->x + (size_t)b * p->dim, &t->s->m->w.tok_emb, t->tok[b]);
    rope_table(t->s->rope + (size_t)b * hs, hs, t->s->pos[b]);
}

// One pass: row b runs token tok[b] at position pos[b] of sequence seq[b], whose earlier positions
// are in the KV cache (rows of one sequence in one pass must have consecutive positions, in
// order). Returns the logits [B, V] (all_logits) or only the last row's (at s->logits).
static float *forward_rows(bl_state *s, int B, const int *tok, const int *pos, const int *seq, int all_logits) {
    const bl_model *m = s->m;
    const bl_config *p = &m->cfg;
    size_t D = (size_t)p->dim;
    s->pos = pos, s->seq = seq;
    StartTask start = {s, tok};
    parallel_for(start_row, &start, B, 64L * B * p->dim);  // powf, cosf, sinf per 2 values: weighed 64
    for (int l = 0; l < p->n_layers; l++) block(s, l, B);
    int first = all_logits ? 0 : B - 1;
    rmsnorm_rows(s->xb, s->x + first * D, f32(&m->w.rms_final, 0), (int)D, B - first);
    MatJob cls[1] = {{s->logits, &m->w.wcls}};
    matmuls(s, 0, s->xb, B - first, cls, 1);
    return s->logits;
}

// Logits for token at pos, given the KV cache of positions 0..pos-1.
static float *forward(bl_state *s, int token, int pos) {
    static const int seq0 = 0;
    return forward_rows(s, 1, &token, &pos, &seq0, 1);
}

float *bl_forward(bl_state *s, int token, int pos) {
    if (!s || token < 0 || token >= s->m->cfg.vocab_size || pos < 0 || pos >= s->n_pos) return NULL;
    return forward(s, token, pos);
}

// Tokens ids[0..n-1] at positions pos0.. of sequence 0, s->rows per pass; with out, every
// position's logits are copied there, row by row.
static float *forward_seq(bl_state *s, const int *ids, int n, int pos0, float *out) {
    int pos[PREFILL_ROWS], seq[PREFILL_ROWS] = {0};
    size_t V = (size_t)s->m->cfg.vocab_size;
    float *logits = NULL;
    for (int at = 0; at < n; at += s->rows) {
        int B = n - at < s->rows ? n - at : s->rows;
        for (int b = 0; b < B; b++) pos[b] = pos0 + at + b;
        logits = forward_rows(s, B, ids + at, pos, seq, out != NULL);
        if (out) memcpy(out + (size_t)at * V, logits, (size_t)B * V * sizeof(float));
    }
    return out ? logits + (size_t)(((n - 1) % s->rows)) * V : logits;
}

// Token ids and positions of a call from outside: checked before any work.
static int check_ids(const bl_state *s, const int *ids, int n, int pos0, char *err, size_t errlen) {
    const bl_config *p = &s->m->cfg;
    if (n < 0 || pos0 < 0 || n > s->n_pos - pos0)
        return fail(err, errlen, BL_ERR_ARG, "%d tokens from position %d do not fit in the context of %d positions",
                    n, pos0, s->n_pos);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= p->vocab_size)
            return fail(err, errlen, BL_ERR_ARG, "token %d at position %d is outside the vocabulary (0..%d)",
                        ids[i], pos0 + i, p->vocab_size - 1);
    return BL_OK;
}

float *bl_prefill(bl_state *s, const int *ids, int n, int pos) {
    if (!s || !ids || n < 1 || check_ids(s, ids, n, pos, NULL, 0) != BL_OK) return NULL;
    return forward_seq(s, ids, n, pos, NULL);
}

int bl_logits(bl_state *s, const int *ids, int n, float *out, char *err, size_t errlen) {
    if (!s || !ids || !out) return fail(err, errlen, BL_ERR_ARG, "bl_logits: NULL argument");
    int rc = check_ids(s, ids, n, 0, err, errlen);
    if (rc == BL_OK && n > 0) forward_seq(s, ids, n, 0, out);
    return rc;
}

// ----------------------------------------------------------------------------------------------
// tokenizer: llama2.c's tokenizer.bin; encoding gives sentencepiece's ids

// Byte HH if the piece is exactly "<0xHH>" (a byte-fallback piece), else -1.
static int byte_piece(const char *s, int n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

// Order pieces by their bytes (memcmp, then length), for sorting and bsearch.
static int cmp_piece(const void *a, const void *b) {
    const PieceIndex *x = a, *y = b;
    int c = memcmp(x->str, y->str, (size_t)(x->len < y->len ? x->len : y->len));
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

// Read the whole file into a fresh buffer; *n its size.
static int slurp(const char *path, char **out, size_t *n, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f) return fail(err, errlen, BL_ERR_IO, "%s: cannot open tokenizer: %s", path, strerror(errno));
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return fail(err, errlen, BL_ERR_IO, "%s: not a regular file", path);
    }
    *n = (size_t)st.st_size;
    *out = malloc(*n + 1);
    int ok = *out && fread(*out, 1, *n, f) == *n;
    fclose(f);
    if (!ok) return fail(err, errlen, *out ? BL_ERR_IO : BL_ERR_NOMEM, "%s: cannot read %zu bytes", path, *n);
    return BL_OK;
}

// Walk "uint32 max_len, then per piece: float score, int32 len, len bytes", checking each length
// against the end of the file; fewer pieces than the model's vocabulary is an error.
static int parse_pieces(Tokenizer *t, size_t n, const char *path, char *err, size_t errlen) {
    if (n < 4) return fail(err, errlen, BL_ERR_FORMAT, "%s: file is %zu bytes, too short for a tokenizer", path, n);
    size_t off = 4;
    for (int i = 0; i < t->vocab_size; i++) {
        if (n - off < 8)
            return fail(err, errlen, BL_ERR_FORMAT, "%s: has only %d pieces, the model's vocabulary needs %d",
                        path, i, t->vocab_size);
        const unsigned char *h = (const unsigned char *)t->data + off;
        int32_t bits = rd_i32(h), len = rd_i32(h + 4);
        off += 8;
        if (len < 0 || (size_t)len > n - off)
            return fail(err, errlen, BL_ERR_FORMAT, "%s: piece %d has length %d, past the end of the file",
                        path, i, (int)len);
        memcpy(&t->score[i], &bits, sizeof(float));
        t->piece[i] = t->data + off, t->len[i] = len;
        if (len > t->max_len) t->max_len = len;
        off += (size_t)len;
    }
    return BL_OK;
}

// The lookup table for merging holds every piece but the specials (<unk>, BOS, EOS) and the
// "<0xHH>" byte pieces: sentencepiece never merges into those, so neither may we.
static void index_pieces(Tokenizer *t) {
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1, t->byte_char[b] = (char)b;
    for (int i = 0; i < t->vocab_size; i++) {
        int b = byte_piece(t->piece[i], t->len[i]);
        if (b >= 0 && t->byte_id[b] < 0) t->byte_id[b] = i;
        if (b < 0 && i > 2) t->sorted[t->n_sorted++] = (PieceIndex){t->piece[i], t->len[i], i};
    }
    qsort(t->sorted, (size_t)t->n_sorted, sizeof(PieceIndex), cmp_piece);
}

static int build_tokenizer(Tokenizer **out, const char *path, int vocab_size, char *err, size_t errlen) {
    // encoding emits BOS (1) and EOS (2) whatever the file says: they must be in the vocabulary
    if (vocab_size < 3)
        return fail(err, errlen, BL_ERR_FORMAT, "%s: the model's vocab_size %d is too small for a tokenizer "
                    "(ids 0, 1, 2 are <unk>, BOS, EOS)", path, vocab_size);
    Tokenizer *t = calloc(1, sizeof *t);
    if (!t) return fail(err, errlen, BL_ERR_NOMEM, "%s: out of memory", path);
    t->vocab_size = vocab_size;
    size_t n = 0;
    int rc = slurp(path, &t->data, &n, err, errlen);
    if (rc == BL_OK) {
        t->piece = calloc(vocab_size, sizeof(char *)), t->len = calloc(vocab_size, sizeof(int));
        t->score = calloc(vocab_size, sizeof(float)), t->sorted = calloc(vocab_size, sizeof(PieceIndex));
        if (!t->piece || !t->len || !t->score || !t->sorted) rc = fail(err, errlen, BL_ERR_NOMEM, "%s: out of memory", path);
    }
    if (rc == BL_OK) rc = parse_pieces(t, n, path, err, errlen);
    if (rc != BL_OK) {
        free_tokenizer(t);
        return rc;
    }
    index_pieces(t);
    *out = t;
    return BL_OK;
}

static void free_tokenizer(Tokenizer *t) {
    if (!t) return;
    free(t->data), free(t->piece), free(t->len), free(t->score), free(t->sorted);
    free(t);
}

// Id of the mergeable piece with exactly these bytes, or -1.
static int lookup(const Tokenizer *t, const char *s, int n) {
    PieceIndex key = {s, n, -1};
    const PieceIndex *hit = bsearch(&key, t->sorted, (size_t)t->n_sorted, sizeof key, cmp_piece);
    return hit ? hit->id : -1;
}

// Append the id of piece s[0..n), or (byte fallback) one id per byte: "<0xHH>", else <unk> (0).
static void emit(const Tokenizer *t, const char *s, int n, int *ids, int *count) {
    int id = lookup(t, s, n);
    if (id >= 0) {
        ids[(*count)++] = id;
        return;
    }
    for (int i = 0; i < n; i++) {
        int b = t->byte_id[(unsigned char)s[i]];
        ids[(*count)++] = b >= 0 ? b : 0;
    }
}

// Id of the mergeable piece spelled by piece a then piece b, or -1 (buf: room for both).
static int pair_id(const Tokenizer *t, int a, int b, char *buf) {
    memcpy(buf, t->piece[a], (size_t)t->len[a]);
    memcpy(buf + t->len[a], t->piece[b], (size_t)t->len[b]);
    return lookup(t, buf, t->len[a] + t->len[b]);
}

// A mergeable adjacent pair: symbols left, right (indices into ids, which never move), the ids
// they held when it was found, and the piece they merge into.
typedef struct {
    float score;
    int left, right, id_left, id_right, merged;
} Candidate;

// Heap order: the best score first, the leftmost on ties (sentencepiece's order).
static int before(const Candidate *a, const Candidate *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void push(Candidate *heap, int *n, Candidate c) {
    int i = (*n)++;
    for (; i > 0 && before(&c, &heap[(i - 1) / 2]); i = (i - 1) / 2) heap[i] = heap[(i - 1) / 2];
    heap[i] = c;
}

static Candidate pop(Candidate *heap, int *n) {
    Candidate top = heap[0], last = heap[--*n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && before(&heap[c + 1], &heap[c])) c++;
        if (!before(&heap[c], &last)) break;
        heap[i] = heap[c], i = c;
    }
    if (*n > 0) heap[i] = last;
    return top;
}

// Push the pair of symbols a, b (adjacent) when their concatenation is a piece.
static void offer(const Tokenizer *t, const int *ids, int a, int b, Candidate *heap, int *n, char *buf) {
    int m = pair_id(t, ids[a], ids[b], buf);
    if (m >= 0) push(heap, n, (Candidate){t->score[m], a, b, ids[a], ids[b], m});
}

// Merge the adjacent pair whose concatenation is the best-scoring piece (the leftmost on ties, as
// sentencepiece), until no pair is a piece. Symbols form a linked list over ids (a merge keeps the
// left one and unlinks the right one), and the candidate pairs wait in a heap; a candidate whose
// symbols have changed since it was found is stale and skipped. O(n log n): a 200 KB text encodes
// in a fraction of a second (rescanning every pair after each merge took 45 s). Returns -1 when
// out of memory.
static int merge(const Tokenizer *t, int *ids, int *count, char *buf) {
    int n = *count, n_heap = 0;
    if (n < 2) return 0;
    int *next = malloc((size_t)n * sizeof(int)), *prev = malloc((size_t)n * sizeof(int));
    Candidate *heap = malloc(3 * (size_t)n * sizeof(Candidate));  // n - 1 pairs + 2 per merge
    if (!next || !prev || !heap) {
        free(next), free(prev), free(heap);
        return -1;
    }
    for (int i = 0; i < n; i++) next[i] = i + 1, prev[i] = i - 1;
    for (int i = 0; i + 1 < n; i++) offer(t, ids, i, i + 1, heap, &n_heap, buf);
    while (n_heap > 0) {
        Candidate c = pop(heap, &n_heap);
        if (next[c.left] != c.right || ids[c.left] != c.id_left || ids[c.right] != c.id_right) continue;
        int after = next[c.right];
        ids[c.left] = c.merged, ids[c.right] = -1;  // -1: unlinked (no candidate can match it)
        next[c.left] = after;
        if (after < n) prev[after] = c.left, offer(t, ids, c.left, after, heap, &n_heap, buf);
        if (prev[c.left] >= 0) offer(t, ids, prev[c.left], c.left, heap, &n_heap, buf);
    }
    int k = 0;
    for (int i = 0; i < n; i = next[i]) ids[k++] = ids[i];  // symbol 0 is never unlinked
    *count = k;
    free(next), free(prev), free(heap);
    return 0;
}

// Encode into ids (room for strlen(text) + 3): BOS?, then " " + text split into UTF-8 characters
// (sentencepiece's dummy prefix; U+2581 counts as a space as in sentencepiece; unknown characters
// fall back to bytes), merged; EOS?.
static int encode(const Tokenizer *t, const char *text, int bos, int eos, int *ids) {
    int count = 0;
    if (bos) ids[count++] = 1;
    int start = count;
    if (text[0] != '\0') emit(t, " ", 1, ids, &count);
    for (const char *c = text; *c;) {
        int n = 1;  // a lead byte and its continuation bytes (10xxxxxx), at most 4
        while (n < 4 && ((unsigned char)c[n] & 0xC0) == 0x80) n++;
        int meta_space = n == 3 && memcmp(c, "\xe2\x96\x81", 3) == 0;  // U+2581: sentencepiece's space
        emit(t, meta_space ? " " : c, meta_space ? 1 : n, ids, &count);
        c += n;
    }
    int merged = count - start;
    char *buf = malloc(2 * (size_t)t->max_len + 1);
    int ok = buf && merge(t, ids + start, &merged, buf) == 0;
    free(buf);
    if (!ok) return -1;
    count = start + merged;
    if (eos) ids[count++] = 2;
    return count;
}

int bl_encode(const bl_model *m, const char *text, int bos, int eos, int *ids, int max_ids,
              int *n_ids, char *err, size_t errlen) {
    if (!m || !text || !ids || !n_ids) return fail(err, errlen, BL_ERR_ARG, "bl_encode: NULL argument");
    if (!m->tok) return fail(err, errlen, BL_ERR_ARG, "bl_encode: the model was opened without a tokenizer");
    size_t len = strlen(text);
    if (len > (size_t)INT32_MAX - 3) return fail(err, errlen, BL_ERR_ARG, "bl_encode: text of %zu bytes is too long", len);
    int *tmp = malloc((len + 3) * sizeof(int));
    int n = tmp ? encode(m->tok, text, bos, eos, tmp) : -1;
    if (n < 0) {
        free(tmp);
        return fail(err, errlen, BL_ERR_NOMEM, "bl_encode: out of memory");
    }
    if (n > max_ids) {
        free(tmp);
        return fail(err, errlen, BL_ERR_ARG, "bl_encode: %d ids do not fit in a buffer of %d", n, max_ids);
    }
    memcpy(ids, tmp, (size_t)n * sizeof(int));
    free(tmp);
    *n_ids = n;
    return BL_OK;
}

// What token prints after prev: one leading space dropped after BOS, "<0xHH>" becomes the byte,
// a lone control byte prints nothing. Unlike llama2.c in the C locale, bytes >= 0x80 (pieces of
// UTF-8 characters) are printed, so characters spelled with byte-fallback tokens survive.
static int decode(const Tokenizer *t, int prev, int token, const char **out) {
    const char *p = t->piece[token];
    int n = t->len[token];
    if (prev == 1 && n > 0 && p[0] == ' ') p++, n--;
    int b = byte_piece(p, n);
    if (b >= 0) p = &t->byte_char[b], n = 1;
    unsigned char c = n == 1 ? (unsigned char)p[0] : 'x';
    if (!((c >= 0x20 && c != 0x7f) || (c >= '\t' && c <= '\r'))) n = 0;
    *out = p;
    return n;
}

int bl_decode(const bl_model *m, int prev, int token, const char **bytes) {
    if (!m || !m->tok || !bytes || token < 0 || token >= m->cfg.vocab_size) return -1;
    return decode(m->tok, prev, token, bytes);
}

// ----------------------------------------------------------------------------------------------
// sampler: llama2.c's algorithms and random generator, plus top-k

struct bl_sampler {
    int vocab_size;
    float temperature, top_p;
    int top_k;               // 0: off
    unsigned long long rng;  // xorshift* state
    uint64_t *cand, *spare;  // [vocab_size] top-p / top-k candidates as words (candidate()); the sort's other buffer
    float *cum;              // [max(vocab_size, TOPP_BUCKETS + 1)] top-k's sorted probabilities, then their
                             // running sums; or top-p's sums before each bucket
    float *prob;             // [vocab_size] the probabilities of a top-p bucket
    int *start;              // [TOPP_BUCKETS + 1] where each top-p bucket begins in spare
};

// xorshift*: the generator llama2.c uses, so one seed gives one story in both programs
static uint32_t random_u32(unsigned long long *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float random_f32(unsigned long long *state) { return (random_u32(state) >> 8) / 16777216.0f; }

static int argmax(const float *p, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) if (p[i] > p[best]) best = i;
    return best;
}

// Walk the cumulative distribution until it passes coin (one coin per token). A block of
// SUM_BLOCK that the walk crosses whole is added at once where add_in_any_order can (the same
// bits); the block where the sum passes coin, and those where the rule fails, go one by one.
static int sample_mult(const float *p, int n, float coin) {
    float cdf = 0.0f;
    for (int i = 0; i < n; i += SUM_BLOCK) {
        int m = n - i < SUM_BLOCK ? n - i : SUM_BLOCK;
        float next = add_in_any_order(cdf, p + i, m);
        if (next >= 0.0f && !(coin < next)) {
            cdf = next;
            continue;
        }
        for (int j = i; j < i + m; j++) {
            cdf += p[j];
            if (coin < cdf) return j;
        }
    }
    return n - 1;  // rounding left the total just below coin
}

// A top-p / top-k candidate as one 64-bit word: a sort key above the token's index. For floats
// >= 0 the bits order like the values, so their complement orders probabilities descending; the
// probability comes back from the key (candidate_prob) and the index from the low half.
static uint64_t candidate(float prob, int index) {
    uint32_t bits;
    memcpy(&bits, &prob, sizeof bits);
    return (uint64_t)~bits << 32 | (uint32_t)index;
}

static uint32_t candidate_key(uint64_t w) { return (uint32_t)(w >> 32); }
static int candidate_index(uint64_t w) { return (int)(uint32_t)w; }

static float candidate_prob(uint64_t w) {
    uint32_t bits = ~candidate_key(w);
    float prob;
    memcpy(&prob, &bits, sizeof prob);
    return prob;
}

// The tokens of p[0..n) whose probability is at least cutoff, as candidates in index order, into w;
// returns how many. range[0] and range[1]: their least and greatest key (top-p's buckets span
// them). (run_simd.h's candidates_fast does 16 at a time.)
#if defined(__GNUC__)
__attribute__((unused))
#endif
static int candidates(uint64_t *w, const float *p, int n, float cutoff, uint32_t range[2]) {
    int n0 = 0;
    range[0] = UINT32_MAX, range[1] = 0;
    for (int i = 0; i < n; i++) {  // without a branch, which would mispredict on peaked distributions
        w[n0] = candidate(p[i], i);
        int keep = p[i] >= cutoff;
        uint32_t k = candidate_key(w[n0]);
        range[0] = keep && k < range[0] ? k : range[0], range[1] = keep && k > range[1] ? k : range[1];
        n0 += keep;
    }
    return n0;
}

// Sort w[0..n) by descending probability; equal ones keep their order. That is the order
// llama2.c's qsort gives (glibc's qsort is a stable merge sort), in O(n) instead of O(n log n):
// an LSD radix sort on the keys, only over the bits in which they differ, in as few passes of at
// most 11 bits as they need (2 passes of 10 bits for a flat distribution). One read counts the
// digits of every pass at once. Returns w or tmp, whichever holds the result. Top-k sorts with it;
// top-p only its buckets of more than 64.
static uint64_t *sort_desc(uint64_t *w, uint64_t *tmp, int n) {
    uint32_t lo = UINT32_MAX, hi = 0;
    for (int i = 0; i < n; i++) {
        uint32_t k = candidate_key(w[i]);
        lo = k < lo ? k : lo, hi = k > hi ? k : hi;
    }
    int bits = 0;
    while (bits < 32 && (hi - lo) >> bits) bits++;
    int passes = (bits + 10) / 11, width = passes ? (bits + passes - 1) / passes : 0, mask = (1 << width) - 1;
    int count[3][2048 + 1] = {{0}};
    for (int i = 0; i < n; i++) {
        uint32_t k = candidate_key(w[i]) - lo;
        count[0][(k & mask) + 1]++;
        // the digits of the other passes, only where they exist: an unused digit is 0 for every
        // item, and n increments of one counter wait on each other
        if (passes > 1) count[1][(k >> width & mask) + 1]++;
        if (passes > 2) count[2][(k >> 2 * width & mask) + 1]++;
    }
    for (int p = 0; p < passes; p++) {
        int *c = count[p];
        for (int d = 0; d < mask + 1; d++) c[d + 1] += c[d];
        for (int i = 0; i < n; i++) tmp[c[(candidate_key(w[i]) - lo) >> (p * width) & mask]++] = w[i];
        uint64_t *t = w;
        w = tmp, tmp = t;
    }
    return w;
}

// Sample within the shortest prefix of the sorted candidates w[0..n), whose probabilities are
// cum[0..n), whose mass exceeds top_p (no cut for top_p outside (0, 1)), scaling the coin by that
// prefix's mass. llama2.c walks the prefix twice; here the first walk leaves its running sums in
// cum[] (the second walk would add the same terms in the same order, so they are its sums too),
// and a binary search finds the first one above the coin: they never decrease.
static int sample_prefix(const uint64_t *w, float *cum, int n, float top_p, float coin) {
    float sum = 0.0f;
    int last = n - 1;
    for (int i = 0; i < n; i++) {
        sum += cum[i];
        cum[i] = sum;
        if (top_p > 0.0f && top_p < 1.0f && sum > top_p) {
            last = i;
            break;
        }
    }
    float r = coin * sum;
    int lo = 0, hi = last;  // the first i <= last with r < cum[i], else last
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (r < cum[mid]) hi = mid;
        else lo = mid + 1;
    }
    return candidate_index(w[lo]);
}

// ---- top-p ----
// llama2.c's top-p drops the tokens below (1 - top_p) / (n - 1) (they cannot be in the nucleus),
// sorts the rest by descending probability, adds them in that order until the sum passes top_p
// (cum), then walks the same sums again to the first one above coin * cum. Its token depends on
// each addition's rounding, which seems to need the full sort (on a flat distribution ~29,000 of
// 32,000 candidates are in the nucleus). It does not: sample_topp splits the candidates into
// buckets by probability (one counting pass, no sort), takes the buckets in descending order, and
// adds a whole bucket at once where add_in_any_order can and the sum stays at or below top_p. The
// others (about one bucket per power of two the sum passes, the bucket where it passes top_p, the
// first) it sorts alone and adds one by one. The coin's bucket is then found from the sums between
// buckets, sorted, and walked. The result is llama2.c's token for every coin (tests/c/test_api.c
// compares them), at a small part of the sort's cost.

#define TOPP_BUCKETS 2048  // at most; about 32 candidates each

// Sort a bucket (candidates in index order) by descending probability, ties in index order: an
// insertion sort of the words, whose order is exactly that; sort_desc for large buckets.
static void sort_bucket(uint64_t *w, uint64_t *tmp, int n) {
    if (n > 64) {
        if (sort_desc(w, tmp, n) == tmp) memcpy(w, tmp, (size_t)n * sizeof *w);
        return;
    }
    for (int i = 1; i < n; i++) {
        uint64_t x = w[i];
        int j = i;
        for (; j > 0 && w[j - 1] > x; j--) w[j] = w[j - 1];
        w[j] = x;
    }
}

// Split w[0..n), whose keys lie in [lo, hi], into buckets of keys (descending probability), stably,
// into out; start[b] is where bucket b begins and start[nb] = n. Returns nb.
static int bucket_candidates(const uint64_t *w, uint64_t *out, int n, uint32_t lo, uint32_t hi, int *start) {
    int want = 2, shift = 0;  // buckets: a power of two, so that shift stays below 32
    while (want < TOPP_BUCKETS && want * 32 < n) want *= 2;
    while (((hi - lo) >> shift) >= (uint32_t)want) shift++;
    int nb = (int)((hi - lo) >> shift) + 1, at[TOPP_BUCKETS];
    memset(start, 0, (size_t)(nb + 1) * sizeof *start);
    for (int i = 0; i < n; i++) start[((candidate_key(w[i]) - lo) >> shift) + 1]++;
    for (int b = 0; b < nb; b++) start[b + 1] += start[b], at[b] = start[b];
    for (int i = 0; i < n; i++) out[at[(candidate_key(w[i]) - lo) >> shift]++] = w[i];
    return nb;
}

// Candidates in s->spare, bucket by bucket: add the buckets in order (the first, those where
// add_in_any_order fails and the one where the sum passes top_p one by one, sorted); the sum before
// bucket b goes to s->cum[b]. *last_b and *last_i: where the nucleus ends. Returns the nucleus's sum.
static float nucleus_sum(bl_sampler *s, const int *start, int nb, int *last_b, int *last_i) {
    float sum = 0.0f, *prob = s->prob;  // a bucket's probabilities
    for (int b = 0; b < nb; b++) {
        uint64_t *w = s->spare + start[b];
        int n = start[b + 1] - start[b];
        s->cum[b] = sum;
        if (n == 0) continue;
        for (int i = 0; i < n; i++) prob[i] = candidate_prob(w[i]);
        float whole = add_in_any_order(sum, prob, n);
        if (whole >= 0.0f && whole <= s->top_p) {
            sum = whole;
            continue;
        }
        sort_bucket(w, s->cand + start[b], n);
        for (int i = 0; i < n; i++) {
            sum += candidate_prob(w[i]);
            if (sum > s->top_p) {
                *last_b = b, *last_i = i;
                return sum;
            }
        }
    }
    *last_b = nb - 1, *last_i = start[nb] - start[nb - 1] - 1;  // all of them (rounding kept the sum <= top_p)
    return sum;
}

// llama2.c's top-p by buckets (above): its token, for every coin.
static int sample_topp(bl_sampler *s, const float *p, float coin) {
    uint32_t range[2];
    int n = s->vocab_size, n0 = candidates_fast(s->cand, p, n, (1.0f - s->top_p) / (float)(n - 1), range);
    if (n0 == 0) return argmax(p, n);  // only when p holds NaN (infinite logits)
    int *start = s->start, nb = bucket_candidates(s->cand, s->spare, n0, range[0], range[1], start);
    int last_b = 0, last_i = 0;
    float cum = nucleus_sum(s, start, nb, &last_b, &last_i), r = coin * cum;
    int b = 0;  // the bucket of the first sum above r: the first whose sums end above r
    while (b < last_b && !(r < s->cum[b + 1])) b++;
    uint64_t *w = s->spare + start[b];
    sort_bucket(w, s->cand + start[b], start[b + 1] - start[b]);  // (if not sorted already)
    int m = b == last_b ? last_i + 1 : start[b + 1] - start[b];
    float cdf = s->cum[b];
    for (int i = 0; i < m; i++) {
        cdf += candidate_prob(w[i]);
        if (r < cdf) return candidate_index(w[i]);
    }
    return candidate_index(w[m - 1]);  // r at or above every sum: llama2.c's last candidate
}

// Top-k: keep the k most probable, renormalize, then top-p within them (if on).
static int sample_topk(bl_sampler *s, const float *p, float coin) {
    uint32_t range[2];
    int n = candidates_fast(s->cand, p, s->vocab_size, 0.0f, range), k = s->top_k < n ? s->top_k : n;
    if (n == 0) return argmax(p, s->vocab_size);  // NaN
    uint64_t *w = sort_desc(s->cand, s->spare, n);
    float mass = 0.0f;
    for (int i = 0; i < k; i++) mass += candidate_prob(w[i]);
    if (!(mass > 0.0f)) return candidate_index(w[0]);
    for (int i = 0; i < k; i++) s->cum[i] = candidate_prob(w[i]) / mass;
    return sample_prefix(w, s->cum, k, s->top_p, coin);
}

int bl_sampler_new(int vocab_size, float temperature, float top_p, int top_k,
                   unsigned long long seed, bl_sampler **out, char *err, size_t errlen) {
    if (!out) return fail(err, errlen, BL_ERR_ARG, "bl_sampler_new: out is NULL");
    *out = NULL;
    if (vocab_size < 2) return fail(err, errlen, BL_ERR_ARG, "vocab_size %d: need at least 2", vocab_size);
    if (!(temperature >= 0.0f) || isinf(temperature))
        return fail(err, errlen, BL_ERR_ARG, "temperature %g: must be a finite number >= 0", temperature);
    if (!(top_p >= 0.0f && top_p <= 1.0f)) return fail(err, errlen, BL_ERR_ARG, "top_p %g: must be in [0, 1]", top_p);
    if (top_k < 0) return fail(err, errlen, BL_ERR_ARG, "top_k %d: must be >= 0 (0: off)", top_k);
    if (seed == 0) return fail(err, errlen, BL_ERR_ARG, "seed 0: the generator needs a nonzero seed");
    bl_sampler *s = calloc(1, sizeof *s);
    uint64_t *cand = calloc((size_t)vocab_size, sizeof(uint64_t)), *spare = calloc((size_t)vocab_size, sizeof(uint64_t));
    size_t n_cum = vocab_size > TOPP_BUCKETS ? (size_t)vocab_size : TOPP_BUCKETS + 1;  // top-k's or top-p's, never both
    float *cum = calloc(n_cum, sizeof(float)), *prob = calloc((size_t)vocab_size, sizeof(float));
    int *start = calloc(TOPP_BUCKETS + 1, sizeof(int));
    if (!s || !cand || !spare || !cum || !prob || !start) {
        free(s), free(cand), free(spare), free(cum), free(prob), free(start);
        return fail(err, errlen, BL_ERR_NOMEM, "out of memory for the sampler");
    }
    *s = (bl_sampler){vocab_size, temperature, top_p, top_k, seed, cand, spare, cum, prob, start};
    *out = s;
    return BL_OK;
}

void bl_sampler_free(bl_sampler *s) {
    if (!s) return;
    free(s->cand), free(s->spare), free(s->cum), free(s->prob), free(s->start);
    free(s);
}

int bl_sample(bl_sampler *s, float *logits) {
    if (s->temperature == 0.0f) return argmax(logits, s->vocab_size);
    if (s->temperature != 1.0f)  // x / 1 is x: skipping it changes no bit
        for (int i = 0; i < s->vocab_size; i++) logits[i] /= s->temperature;
    softmax(logits, s->vocab_size);
    float coin = random_f32(&s->rng);
    if (s->top_k > 0) return sample_topk(s, logits, coin);
    if (s->top_p <= 0.0f || s->top_p >= 1.0f) return sample_mult(logits, s->vocab_size, coin);
    return sample_topp(s, logits, coin);
}

// ----------------------------------------------------------------------------------------------
// stories on request: conditions.py's build_prompt, to the byte (its docstring states the rule;
// tests/test_conditions_gen.py compares the two on many inputs)

static const char *const FEATURES[] = {"BadEnding", "Conflict", "Dialogue", "Foreshadowing", "MoralValue", "Twist"};
#define N_FEATURES 6
#define MAX_TOPIC_CHARS 500
#define STORY_MARK "\n\n### Story:\n"

// The UTF-8 character at s: its code point in *cp and its length, or 0 when the bytes there are
// not valid UTF-8 (overlong, surrogate, beyond U+10FFFF, cut short: a NUL stops the scan).
static int utf8_char(const char *str, unsigned *cp) {
    const unsigned char *s = (const unsigned char *)str;
    static const unsigned least[] = {0, 0, 0x80, 0x800, 0x10000};
    int n = s[0] < 0x80 ? 1 : s[0] < 0xc2 ? 0 : s[0] < 0xe0 ? 2 : s[0] < 0xf0 ? 3 : s[0] < 0xf5 ? 4 : 0;
    if (n <= 1) return *cp = s[0], n;
    unsigned c = s[0] & (0x7fu >> n);
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        c = c << 6 | (s[i] & 0x3f);
    }
    if (c < least[n] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
    return *cp = c, n;
}

// Python's str.isspace(): what str.strip() removes from a tag (Unicode whitespace, not only ASCII).
static int py_space(unsigned c) {
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

// Index in FEATURES of `tag` (stripped as Python strips, compared without case), or -1. Only ASCII
// letters fold: no other character lowercases to a letter of a feature name (U+212A, the Kelvin
// sign, becomes 'k', which none has), so Python's str.lower() agrees.
static int feature_of(const char *tag) {
    const char *a = NULL, *b = NULL;  // the first and one past the last non-space character
    unsigned c;
    for (const char *s = tag; *s;) {
        int n = utf8_char(s, &c);
        if (n == 0) return -1;
        if (!py_space(c)) b = s + n, a = a ? a : s;
        s += n;
    }
    for (int f = 0; a && f < N_FEATURES; f++) {
        size_t len = strlen(FEATURES[f]), i = 0;
        if ((size_t)(b - a) != len) continue;
        for (; i < len; i++) {
            char x = a[i] >= 'A' && a[i] <= 'Z' ? (char)(a[i] - 'A' + 'a') : a[i];
            char y = FEATURES[f][i] >= 'A' && FEATURES[f][i] <= 'Z' ? (char)(FEATURES[f][i] - 'A' + 'a') : FEATURES[f][i];
            if (x != y) break;
        }
        if (i == len) return f;
    }
    return -1;
}

// Append a formatted piece to out[*len ..]; 1 when it does not fit in cap bytes (with the NUL).
static int append(char *out, size_t cap, size_t *len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap - *len) return 1;
    *len += (size_t)n;
    return 0;
}

int bl_build_prompt(const char *topic, const char *ending, const char *const *tags, int n_tags, char *out,
                    size_t outlen, char *err, size_t errlen) {
    if (!out || outlen == 0 || n_tags < 0 || (n_tags > 0 && !tags))
        return fail(err, errlen, BL_ERR_ARG, "bl_build_prompt: NULL or empty output, or bad tags");
    out[0] = '\0';
    char clean[MAX_TOPIC_CHARS * 4 + 1];  // the topic with its whitespace collapsed (at most 500 characters)
    size_t len = 0, n_chars = 0;
    if (topic) {
        unsigned c;
        for (const char *s = topic; *s;) {  // runs of ASCII whitespace become one space, ends trimmed
            int n = utf8_char(s, &c);
            if (n == 0) return fail(err, errlen, BL_ERR_ARG, "topic is not valid UTF-8 text");
            if (strchr(" \t\n\r\v\f", *s)) {
                while (*s && strchr(" \t\n\r\v\f", *s)) s++;
                if (n_chars && *s) {
                    if (n_chars++ < MAX_TOPIC_CHARS) clean[len++] = ' ';
                }
                continue;
            }
            if (n_chars++ < MAX_TOPIC_CHARS) memcpy(clean + len, s, (size_t)n), len += (size_t)n;
            s += n;
        }
        clean[len] = '\0';
        if (n_chars == 0) return fail(err, errlen, BL_ERR_ARG, "topic is empty");
        if (n_chars > MAX_TOPIC_CHARS)
            return fail(err, errlen, BL_ERR_ARG, "topic is %zu characters, more than %d", n_chars, MAX_TOPIC_CHARS);
        if (!ending || (strcmp(ending, "happy") && strcmp(ending, "sad")))
            return ending ? fail(err, errlen, BL_ERR_ARG, "ending must be 'happy' or 'sad', got '%s'", ending)
                          : fail(err, errlen, BL_ERR_ARG, "ending must be 'happy' or 'sad', got None");
    } else if (ending) {
        return fail(err, errlen, BL_ERR_ARG, "an ending needs a topic");
    }
    int want[N_FEATURES] = {0}, any = 0;
    for (int i = 0; i < n_tags; i++) {
        int f = tags[i] ? feature_of(tags[i]) : -1;
        if (f < 0)
            return fail(err, errlen, BL_ERR_ARG, "unknown tag '%s' (choose from BadEnding, Conflict, Dialogue, "
                        "Foreshadowing, MoralValue, Twist)", tags[i] ? tags[i] : "(null)");
        want[f] = any = 1;
    }
    if (want[0] && ending)
        return fail(err, errlen, BL_ERR_ARG, "tag BadEnding goes with no ending line: ask for ending='sad' instead");
    size_t at = 0;
    int full = 0;
    if (topic) full |= append(out, outlen, &at, "Write a story about: %s\nWith: %s ending", clean, ending);
    for (int f = 0, k = 0; any && f < N_FEATURES; f++)
        if (want[f]) full |= append(out, outlen, &at, "%s%s", k++ ? ", " : at ? "\nFeatures: " : "Features: ", FEATURES[f]);
    if (topic || any) full |= append(out, outlen, &at, STORY_MARK);
    if (full) {
        out[0] = '\0';
        return fail(err, errlen, BL_ERR_ARG, "bl_build_prompt: the output buffer of %zu bytes is too small (BL_PROMPTLEN is enough)", outlen);
    }
    return BL_OK;
}

// ----------------------------------------------------------------------------------------------
// generation (many stories at once for the API; the CLI's loops; the bindings have their own
// single-story loop on top of the API)

// Seed 001's end-of-story bias, the same in every loop (CLI, batch, bindings; model.py mirrors
// it): a linear push on BOS, the story separator, so a story ends on its own soon after `after`.
void bl_end_bias(float *logits, float rate, int after, int n) {
    if (logits && rate != 0.0f && n > after) logits[1] += rate * (float)(n - after);
}

// One story of a batch: the CLI's loop state.
typedef struct {
    const int *prompt;
    int n_prompt, steps;  // positions this story runs: prompt + new tokens, within the context
    int pos, token, done;
    bl_sampler *sampler;
} Story;

// One step of a batch: row b of the pass belongs to story row_of[b].
typedef struct {
    Story *st;
    const int *row_of;
    float *logits;
    int *tokens, *n_tokens;
    int vocab_size, max_new;
    float end_bias;
    int end_bias_after;
} StepTask;

// The CLI's loop for one story: force the prompt, then sample; keep the new token.
static void story_step(void *arg, int b) {
    const StepTask *t = arg;
    int i = t->row_of[b];
    Story *x = &t->st[i];
    float *logits = t->logits + (size_t)b * t->vocab_size;
    if (x->pos >= x->n_prompt - 1) bl_end_bias(logits, t->end_bias, t->end_bias_after, x->pos - x->n_prompt + 2);
    int next = x->pos < x->n_prompt - 1 ? x->prompt[x->pos + 1] : bl_sample(x->sampler, logits);
    x->pos++;
    if (next == 1) x->done = 1;  // BOS: another story would begin
    else {
        if (x->pos >= x->n_prompt) t->tokens[(size_t)i * t->max_new + t->n_tokens[i]++] = next;
        x->done = next == 2;      // EOS is kept, then the story ends
        x->token = next;
    }
}

int bl_generate_batch(const bl_model *m, int n, const int *const *prompts, const int *prompt_lens,
                      int max_new, float temperature, float top_p, int top_k,
                      const unsigned long long *seeds, int *tokens, int *n_tokens, char *err, size_t errlen) {
    return bl_generate_stories(m, n, prompts, prompt_lens, max_new, temperature, top_p, top_k, 0.0f, 0, seeds,
                               tokens, n_tokens, err, errlen);
}

int bl_generate_stories(const bl_model *m, int n, const int *const *prompts, const int *prompt_lens,
                        int max_new, float temperature, float top_p, int top_k, float end_bias, int end_bias_after,
                        const unsigned long long *seeds, int *tokens, int *n_tokens, char *err, size_t errlen) {
    if (!m || !prompts || !prompt_lens || !seeds || !tokens || !n_tokens)
        return fail(err, errlen, BL_ERR_ARG, "bl_generate_batch: NULL argument");
    if (!isfinite(end_bias) || end_bias < 0.0f || end_bias_after < 0)
        return fail(err, errlen, BL_ERR_ARG, "end_bias %g must be finite and >= 0, end_bias_after %d >= 0",
                    end_bias, end_bias_after);
    const bl_config *p = &m->cfg;
    if (n < 1 || max_new < 0) return fail(err, errlen, BL_ERR_ARG, "bl_generate_batch: n %d must be >= 1, max_new %d >= 0", n, max_new);
    int n_pos = 1;
    for (int i = 0; i < n; i++) {
        if (!prompts[i] || prompt_lens[i] < 1 || prompt_lens[i] > p->seq_len)
            return fail(err, errlen, BL_ERR_ARG, "prompt %d: %d tokens, need 1 to the context of %d", i, prompt_lens[i], p->seq_len);
        for (int j = 0; j < prompt_lens[i]; j++)
            if (prompts[i][j] < 0 || prompts[i][j] >= p->vocab_size)
                return fail(err, errlen, BL_ERR_ARG, "prompt %d: token %d at position %d is outside the vocabulary (0..%d)",
                            i, prompts[i][j], j, p->vocab_size - 1);
        long steps = (long)prompt_lens[i] - 1 + max_new;
        if (steps > n_pos) n_pos = steps < p->seq_len ? (int)steps : p->seq_len;
    }
    Story *st = calloc((size_t)n, sizeof *st);
    int *tok = calloc((size_t)n, sizeof(int)), *pos = calloc((size_t)n, sizeof(int)), *seq = calloc((size_t)n, sizeof(int));
    int *row_of = calloc((size_t)n, sizeof(int));
    bl_state *s = NULL;
    int rc = st && tok && pos && seq && row_of ? BL_OK : fail(err, errlen, BL_ERR_NOMEM, "out of memory for %d stories", n);
    for (int i = 0; rc == BL_OK && i < n; i++) {
        long steps = (long)prompt_lens[i] - 1 + max_new;
        st[i] = (Story){prompts[i], prompt_lens[i], steps < p->seq_len ? (int)steps : p->seq_len, 0, prompts[i][0], 0, NULL};
        n_tokens[i] = 0;
        rc = bl_sampler_new(p->vocab_size, temperature, top_p, top_k, seeds[i], &st[i].sampler, err, errlen);
    }
    if (rc == BL_OK) rc = state_new(m, n, n, n_pos, &s, err, errlen);
    for (;;) {
        int B = 0;  // this step's rows: the stories still running
        for (int i = 0; rc == BL_OK && i < n; i++)
            if (!st[i].done && st[i].pos < st[i].steps) tok[B] = st[i].token, pos[B] = st[i].pos, seq[B] = i, row_of[B++] = i;
        if (B == 0) break;
        StepTask t = {st, row_of, forward_rows(s, B, tok, pos, seq, 1), tokens, n_tokens, p->vocab_size, max_new,
                      end_bias, end_bias_after};
        parallel_for(story_step, &t, B, (long)B * p->vocab_size);  // the samplers are independent
    }
    for (int i = 0; st && i < n; i++) bl_sampler_free(st[i].sampler);
    bl_state_free(s);
    free(st), free(tok), free(pos), free(seq), free(row_of);
    return rc;
}

#ifndef BABYLLAMA_NO_MAIN

static long time_in_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void print_piece(const bl_model *m, int prev, int token) {
    const char *bytes;
    int n = bl_decode(m, prev, token, &bytes);
    if (n > 0) fwrite(bytes, 1, (size_t)n, stdout);
    fflush(stdout);
}

static const char *prompt_name = "prompt (-i)";  // what the errors below call it

// Encode the prompt with BOS; it must fit in `steps` positions. Returns the count or -1.
static int encode_prompt(const bl_model *m, const char *prompt, int steps, int **ids) {
    char err[BL_ERRLEN];
    size_t cap = strlen(prompt) + 3;
    // every id covers at most max_len bytes: a prompt this long cannot fit, refuse before encoding
    if (strlen(prompt) / (size_t)(m->tok->max_len > 0 ? m->tok->max_len : 1) > (size_t)steps) {
        fprintf(stderr, "error: %s of %zu bytes is longer than the %d positions of -n\n", prompt_name, strlen(prompt), steps);
        return -1;
    }
    int n = 0;
    *ids = malloc(cap * sizeof(int));
    if (!*ids || bl_encode(m, prompt, 1, 0, *ids, (int)cap, &n, err, sizeof err) != BL_OK) {
        fprintf(stderr, "error: %s\n", *ids ? err : "out of memory");
        return -1;
    }
    if (n > steps) {
        fprintf(stderr, "error: %s is %d tokens with BOS, more than the %d positions of -n "
                        "(the context holds %d)\n", prompt_name, n, steps, m->cfg.seq_len);
        return -1;
    }
    return n;
}

// llama2.c's loop: force the prompt's tokens, then sample; print each token as it is chosen;
// stop at BOS (the start of another story), after EOS, or after `steps` positions. EOS itself is
// printed ("\n</s>\n"), as llama2.c prints it: its golden outputs contain it.
static int generate(const bl_model *m, bl_state *st, bl_sampler *sampler, const char *prompt, int steps,
                    float end_bias, int end_bias_after) {
    int *prompt_ids = NULL, n_prompt = encode_prompt(m, prompt, steps, &prompt_ids);
    if (n_prompt < 0) {
        free(prompt_ids);
        return 1;
    }
    long start = 0;
    int token = prompt_ids[0], pos = 0, timed_from = 0;
    if (n_prompt > 2) {  // the prompt's forced positions in one pass (the same cache as one by one)
        bl_prefill(st, prompt_ids, n_prompt - 1, 0);
        for (; pos < n_prompt - 1; pos++) print_piece(m, prompt_ids[pos], prompt_ids[pos + 1]);
        token = prompt_ids[pos];
    }
    while (pos < steps) {
        float *logits = forward(st, token, pos);
        if (pos >= n_prompt - 1) bl_end_bias(logits, end_bias, end_bias_after, pos - n_prompt + 2);
        int next = pos < n_prompt - 1 ? prompt_ids[pos + 1] : bl_sample(sampler, logits);
        pos++;
        if (next == 1) break;
        print_piece(m, token, next);
        if (next == 2) break;
        token = next;
        if (start == 0) start = time_in_ms(), timed_from = pos;  // the first step warms caches: time the rest
    }
    printf("\n");
    long end = time_in_ms();
    if (pos > timed_from && start && end > start)
        fprintf(stderr, "achieved tok/s: %f\n", (pos - timed_from) / (double)(end - start) * 1000);
    free(prompt_ids);
    return 0;
}

// Read a line from stdin into buf (bounded), without its newline; 0 at end of input.
static int read_line(const char *guide, char *buf, size_t size) {
    printf("%s", guide);
    fflush(stdout);
    if (!fgets(buf, (int)size, stdin)) return 0;
    buf[strcspn(buf, "\n")] = '\0';
    return 1;
}

// The llama 2 chat template; the system prompt only in the first turn. Returns a malloc'd string.
static char *render_turn(const char *system, const char *user) {
    const char *fmt = system && system[0] ? "[INST] <<SYS>>\n%s\n<</SYS>>\n\n%s [/INST]" : "[INST] %s%s [/INST]";
    const char *a = system && system[0] ? system : "";
    int n = snprintf(NULL, 0, fmt, a, user);
    char *out = n < 0 ? NULL : malloc((size_t)n + 1);
    if (out) snprintf(out, (size_t)n + 1, fmt, a, user);
    return out;
}

// Chat like llama2.c: each user turn is rendered, encoded with BOS and forced; the assistant
// answers until EOS; all turns share one context of `steps` positions.
static int chat(const bl_model *m, bl_state *st, bl_sampler *sampler, const char *cli_user,
                const char *cli_system, int steps) {
    char system[4096] = "", user[4096];
    int *ids = NULL, n_ids = 0, at = 0, pos = 0, token = 0, next = 0, user_turn = 1;
    while (pos < steps) {
        if (user_turn) {
            if (pos == 0 && cli_system) snprintf(system, sizeof system, "%s", cli_system);
            else if (pos == 0 && !read_line("Enter system prompt (optional): ", system, sizeof system)) break;
            if (pos == 0 && cli_user) snprintf(user, sizeof user, "%s", cli_user);
            else if (!read_line("User: ", user, sizeof user)) break;
            char *rendered = render_turn(pos == 0 ? system : NULL, user);
            free(ids);
            ids = NULL;
            n_ids = rendered ? encode_prompt(m, rendered, steps - pos, &ids) : -1;
            free(rendered);
            if (n_ids < 0) {
                free(ids);
                return 1;
            }
            at = 0, user_turn = 0;
            printf("Assistant: ");
        }
        token = at < n_ids ? ids[at++] : next;
        if (token == 2) user_turn = 1;  // EOS ends the assistant's turn
        next = bl_sample(sampler, forward(st, token, pos));
        pos++;
        if (at >= n_ids && next != 2) print_piece(m, token, next);
        if (next == 2) printf("\n");
    }
    printf("\n");
    free(ids);
    return 0;
}

// ----------------------------------------------------------------------------------------------
// CLI

typedef struct {
    const char *checkpoint, *tokenizer, *prompt, *system_prompt, *mode;
    float temperature, top_p;
    int top_k, steps, steps_given, threads, batch;
    long long seed;
    const char *topic, *ending, *tags;  // a story on request (-a -e -g), NULL when not asked
    float end_bias;                     // -E: seed 001's end-of-story bias rate (0: off)
    int end_bias_after;                 // -S: new tokens before it starts
} Options;

static void usage(FILE *f) {
    fprintf(f, "Usage:   run <checkpoint> [options]\n"
               "Example: run model.bin -n 256 -i \"Once upon a time\"\n"
               "Options:\n"
               "  -t <float>  temperature in [0,inf), default 1.0 (0: greedy argmax)\n"
               "  -p <float>  top-p (nucleus) in [0,1], default 0.9 (0 or 1: off)\n"
               "  -k <int>    top-k, default 0 (off)\n"
               "  -s <int>    random seed, default time(NULL) (0 or less: the time)\n"
               "  -n <int>    positions to run, prompt included, default 256 (0: the whole context)\n"
               "  -i <string> input prompt\n"
               "  -z <string> tokenizer path, default tokenizer.bin\n"
               "  -m <string> mode: generate|chat, default generate\n"
               "  -y <string> system prompt in chat mode\n"
               "  -T <int>    threads, default: OMP_NUM_THREADS, else all cores\n"
               "  -b <int>    stories at once (seeds -s, -s + 1, ...), printed one after another, default 1\n"
               "  -a <string> topic: ask for a story about it (needs -e)\n"
               "  -e <string> ending: happy|sad (needs -a)\n"
               "  -g <string> tags, comma-separated, any case: BadEnding,Conflict,Dialogue,Foreshadowing,MoralValue,Twist\n"
               "              (with -a/-e/-g the prompt is conditions.py's request, e.g. \"Write a story about:\n"
               "              {topic}\\nWith: {ending} ending\\n\\n### Story:\\n\", then -i as the story's start)\n"
               "  -E <float>  end-of-story bias, default 0 (off): before new token n > -S, BOS's logit += E * (n - S)\n"
               "  -S <int>    new tokens before the end-of-story bias starts, default 200\n"
               "  -h          this help\n");
}

// Parse a whole argument as a finite float / an int in [lo, hi]; print a one-line error if not.
static int parse_float(const char *flag, const char *s, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v) || fabs(v) > 3.0e38) {
        fprintf(stderr, "error: %s expects a number, got '%s'\n", flag, s);
        return 1;
    }
    *out = (float)v;
    return 0;
}

static int parse_int(const char *flag, const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "error: %s expects an integer in %lld..%lld, got '%s'\n", flag, lo, hi, s);
        return 1;
    }
    *out = v;
    return 0;
}

// One flag and its value. Returns 0, or 1 after printing a one-line error.
static int parse_flag(Options *o, const char *flag, const char *val) {
    long long v = 0;
    switch (flag[1]) {
    case 't': return parse_float(flag, val, &o->temperature);
    case 'p': return parse_float(flag, val, &o->top_p);
    case 's': return parse_int(flag, val, LLONG_MIN, LLONG_MAX, &o->seed);
    case 'i': o->prompt = val; return 0;
    case 'z': o->tokenizer = val; return 0;
    case 'm': o->mode = val; return 0;
    case 'y': o->system_prompt = val; return 0;
    case 'k': if (parse_int(flag, val, 0, INT32_MAX, &v)) return 1; o->top_k = (int)v; return 0;
    case 'n': if (parse_int(flag, val, 0, INT32_MAX, &v)) return 1; o->steps = (int)v, o->steps_given = 1; return 0;
    case 'T': if (parse_int(flag, val, 1, 4096, &v)) return 1; o->threads = (int)v; return 0;
    case 'b': if (parse_int(flag, val, 1, 4096, &v)) return 1; o->batch = (int)v; return 0;
    case 'a': o->topic = val; return 0;
    case 'e': o->ending = val; return 0;
    case 'g': o->tags = val; return 0;
    case 'E': return parse_float(flag, val, &o->end_bias);
    case 'S': if (parse_int(flag, val, 0, INT32_MAX, &v)) return 1; o->end_bias_after = (int)v; return 0;
    }
    fprintf(stderr, "error: unknown flag %s (run -h for usage)\n", flag);
    return 1;
}

// Returns 0 to run, 1 after printing a one-line error, 2 after printing the help.
static int parse_args(Options *o, int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) return usage(stdout), 2;
    if (argc < 2 || argv[1][0] == '-') {
        fprintf(stderr, "error: the first argument must be a checkpoint path (run -h for usage)\n");
        return 1;
    }
    o->checkpoint = argv[1];
    for (int i = 2; i < argc; i += 2) {
        if (argv[i][0] != '-' || strlen(argv[i]) != 2) {
            fprintf(stderr, "error: expected a flag like -t, got '%s' (run -h for usage)\n", argv[i]);
            return 1;
        }
        if (!strchr("tpsizmyknTbaegES", argv[i][1])) return parse_flag(o, argv[i], "");
        if (i + 1 >= argc) {
            fprintf(stderr, "error: flag %s needs a value (run -h for usage)\n", argv[i]);
            return 1;
        }
        if (parse_flag(o, argv[i], argv[i + 1])) return 1;
    }
    return 0;
}

// Checks that need no model; 0 or 1 after a one-line error.
static int check_options(Options *o) {
    if (o->temperature < 0.0f) return fprintf(stderr, "error: -t %g: temperature must be >= 0\n", o->temperature), 1;
    if (o->top_p < 0.0f || o->top_p > 1.0f) return fprintf(stderr, "error: -p %g: top-p must be in [0, 1]\n", o->top_p), 1;
    if (strcmp(o->mode, "generate") && strcmp(o->mode, "chat"))
        return fprintf(stderr, "error: -m %s: mode must be generate or chat\n", o->mode), 1;
    if (o->system_prompt && strcmp(o->mode, "chat"))
        return fprintf(stderr, "error: -y (system prompt) needs -m chat\n"), 1;
    if (o->batch > 1 && strcmp(o->mode, "generate"))
        return fprintf(stderr, "error: -b (stories at once) needs -m generate\n"), 1;
    if ((o->topic || o->ending || o->tags) && strcmp(o->mode, "generate"))
        return fprintf(stderr, "error: -a/-e/-g (a story on request) need -m generate\n"), 1;
    if (o->end_bias < 0.0f) return fprintf(stderr, "error: -E %g: the end-of-story bias must be >= 0\n", o->end_bias), 1;
    if (o->end_bias > 0.0f && strcmp(o->mode, "generate"))
        return fprintf(stderr, "error: -E (end-of-story bias) needs -m generate\n"), 1;
    if (o->seed <= 0) o->seed = (long long)time(NULL);  // llama2.c: 0 or less means the time
    return 0;
}

// -n: 0 means the whole context; not given means 256 clamped to the context; beyond it is an error.
static int resolve_steps(Options *o, int seq_len) {
    if (!o->steps_given) o->steps = o->steps < seq_len ? o->steps : seq_len;
    if (o->steps == 0) o->steps = seq_len;
    if (o->steps > seq_len) {
        fprintf(stderr, "error: -n %d is beyond the model's context of %d positions\n", o->steps, seq_len);
        return 1;
    }
    return 0;
}

// -a/-e/-g: the request (bl_build_prompt), then -i as the story's start; NULL after a one-line
// error. Returns a malloc'd string.
static char *request_prompt(const Options *o) {
    char err[BL_ERRLEN], head[BL_PROMPTLEN];
    const char *tags[64];
    int n_tags = 0, rc = BL_OK;
    char *list = o->tags ? strdup(o->tags) : NULL;  // -g split at commas, as Python's split(",")
    if (o->tags && !list) rc = fail(err, sizeof err, BL_ERR_NOMEM, "out of memory");
    for (char *t = list; rc == BL_OK && t; n_tags++) {
        if (n_tags == 64) rc = fail(err, sizeof err, BL_ERR_ARG, "more than 64 tags");
        char *comma = strchr(t, ',');
        if (comma) *comma = '\0';
        tags[n_tags < 64 ? n_tags : 63] = t;
        t = comma ? comma + 1 : NULL;
    }
    if (rc == BL_OK) rc = bl_build_prompt(o->topic, o->ending, tags, n_tags, head, sizeof head, err, sizeof err);
    free(list);
    if (rc != BL_OK) {
        fprintf(stderr, "error: -a/-e/-g: %s\n", err);
        return NULL;
    }
    size_t n = strlen(head) + strlen(o->prompt) + 1;
    char *out = malloc(n);
    if (!out) fprintf(stderr, "error: out of memory\n");
    else snprintf(out, n, "%s%s", head, o->prompt);
    return out;
}

// -b: o->batch stories of the same prompt at once, with seeds seed, seed + 1, ...: prints what
// `run -s seed`, `run -s seed+1`, ... would print, one after another (bl_generate_batch).
static int generate_many(const bl_model *m, const char *prompt, int steps, const Options *o) {
    char err[BL_ERRLEN];
    int *ids = NULL, n_prompt = encode_prompt(m, prompt, steps, &ids), n = o->batch, rc = 1;
    int max_new = steps - n_prompt + 1, total = 0;
    const int **prompts = calloc((size_t)n, sizeof *prompts);
    int *lens = calloc((size_t)n, sizeof(int)), *n_tokens = calloc((size_t)n, sizeof(int));
    unsigned long long *seeds = calloc((size_t)n, sizeof *seeds);
    int *tokens = calloc((size_t)n * (max_new > 0 ? max_new : 1), sizeof(int));
    if (n_prompt > 0 && !(prompts && lens && n_tokens && seeds && tokens)) fprintf(stderr, "error: out of memory for -b %d\n", n);
    else if (n_prompt > 0) {
        for (int i = 0; i < n; i++) prompts[i] = ids, lens[i] = n_prompt, seeds[i] = (unsigned long long)o->seed + i;
        long start = time_in_ms();
        rc = bl_generate_stories(m, n, prompts, lens, max_new, o->temperature, o->top_p, o->top_k, o->end_bias,
                                 o->end_bias_after, seeds, tokens, n_tokens, err, sizeof err) != BL_OK;
        long end = time_in_ms();
        if (rc) fprintf(stderr, "error: %s\n", err);
        for (int i = 0; !rc && i < n; i++) {
            for (int j = 0; j + 1 < n_prompt; j++) print_piece(m, ids[j], ids[j + 1]);
            for (int j = 0; j < n_tokens[i]; j++) print_piece(m, j ? tokens[(size_t)i * max_new + j - 1] : ids[n_prompt - 1],
                                                            tokens[(size_t)i * max_new + j]);
            printf("\n");
            total += n_tokens[i];
        }
        if (!rc && end > start) fprintf(stderr, "achieved tok/s: %f (%d stories, %d new tokens)\n", total / (double)(end - start) * 1000, n, total);
    }
    free(ids), free(prompts), free(lens), free(n_tokens), free(seeds), free(tokens);
    return rc;
}

int main(int argc, char **argv) {
    Options o = {NULL, "tokenizer.bin", "", NULL, "generate", 1.0f, 0.9f, 0, 256, 0, 0, 1, 0, NULL, NULL, NULL, 0.0f, 200};
    int rc = parse_args(&o, argc, argv);
    if (rc) return rc == 2 ? 0 : 1;
    if (check_options(&o)) return 1;
    char *request = NULL;  // the prompt of -a/-e/-g, checked before the model is opened
    if ((o.topic || o.ending || o.tags) && !(request = request_prompt(&o))) return 1;
    if (request) o.prompt = request, prompt_name = "prompt (the -a/-e/-g request, then -i)";
    if (o.threads > 0) bl_set_threads(o.threads);
    char err[BL_ERRLEN];
    bl_model *m = NULL;
    bl_state *st = NULL;
    bl_sampler *sampler = NULL;
    if (bl_model_open(o.checkpoint, o.tokenizer, &m, err, sizeof err) != BL_OK ||
        bl_state_new(m, &st, err, sizeof err) != BL_OK ||
        bl_sampler_new(m->cfg.vocab_size, o.temperature, o.top_p, o.top_k, (unsigned long long)o.seed,
                       &sampler, err, sizeof err) != BL_OK) {
        fprintf(stderr, "error: %s\n", err);
        rc = 1;
    }
    if (rc == 0) rc = resolve_steps(&o, m->cfg.seq_len);
    if (rc == 0 && strcmp(o.mode, "chat") == 0) rc = chat(m, st, sampler, o.prompt[0] ? o.prompt : NULL, o.system_prompt, o.steps);
    else if (rc == 0 && o.batch > 1) rc = generate_many(m, o.prompt, o.steps, &o);
    else if (rc == 0) rc = generate(m, st, sampler, o.prompt, o.steps, o.end_bias, o.end_bias_after);
    free(request);
    bl_sampler_free(sampler);
    bl_state_free(st);
    bl_model_close(m);
    return rc;
}
#endif
