/*
 * test_api.c: C-level tests of the engine through babyllama.h, meant to run under the address and
 * undefined-behaviour sanitizers (`make test-c`), where a leak or an out-of-bounds read fails too.
 *
 * It writes a tiny random model (GQA, odd hidden size) as versions 0, 1 and 2 and a tiny tokenizer
 * into a temporary folder, checks that they load and agree, then feeds every kind of malformed file
 * through bl_model_open and checks that each one is refused with an error code and a one-line
 * message naming the file. It also checks encoding, decoding and the sampler on known cases, and
 * that one model serves several threads at once (each with its own state and sampler) with the
 * same results as one thread; `make test-c` also runs it under the thread sanitizer.
 * It does not compare with PyTorch (tests/test_logits_parity.py does) or sentencepiece
 * (tests/test_encode.py does).
 */
#define BABYLLAMA_NO_MAIN
#include "run.c"
#include "llama2c_topp.h"

#include <pthread.h>

static int failures = 0, checks = 0;
#define CHECK(cond, ...) do { checks++; if (!(cond)) { failures++; \
    fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); } } while (0)

static char dir[64];

static const char *tmp_path(const char *name) {
    static char buf[8][256];
    static int k = 0;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

// ---- a tiny model ---------------------------------------------------------------------------

enum { D = 16, H = 40, L = 2, NH = 4, NKV = 2, V = 265, S = 12, HS = D / NH, KVD = NKV * HS, GS = 8 };

// tensor kinds, with their per-layer shapes
enum { EMB, RMS_ATT, WQ, WK, WV, WO, RMS_FFN, W1, W2, W3, RMS_FINAL, WCLS, NT };
static const int rows_of[NT] = {V, 1, D, KVD, KVD, D, 1, H, D, H, 1, V};
static const int cols_of[NT] = {D, D, D, D, D, D, D, D, H, D, D, D};
static const int layers_of[NT] = {1, L, L, L, L, L, L, L, L, L, 1, 1};
static float *wt[NT];

static uint64_t lcg = 1234567;
static float rnd(void) {  // deterministic, in [-0.5, 0.5)
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((lcg >> 40) & 0xFFFFFF) / 16777216.0f - 0.5f;
}

static void make_weights(void) {
    for (int t = 0; t < NT; t++) {
        size_t n = (size_t)layers_of[t] * rows_of[t] * cols_of[t];
        wt[t] = malloc(n * sizeof(float));
        int norm = t == RMS_ATT || t == RMS_FFN || t == RMS_FINAL;
        for (size_t i = 0; i < n; i++) wt[t][i] = norm ? 1.0f + 0.2f * rnd() : 0.5f * rnd();
    }
}

static size_t numel(int t) { return (size_t)rows_of[t] * cols_of[t]; }

static void put_i32(FILE *f, int32_t v) { fwrite(&v, 4, 1, f); }
static void put_f32s(FILE *f, const float *x, size_t n) { fwrite(x, 4, n, f); }

static void write_v0(const char *path, int shared) {
    FILE *f = fopen(path, "wb");
    int hdr[7] = {D, H, L, NH, NKV, shared ? V : -V, S};
    for (int i = 0; i < 7; i++) put_i32(f, hdr[i]);
    int order[11] = {EMB, RMS_ATT, WQ, WK, WV, WO, RMS_FFN, W1, W2, W3, RMS_FINAL};
    for (int i = 0; i < 11; i++) put_f32s(f, wt[order[i]], layers_of[order[i]] * numel(order[i]));
    float zero = 0.0f;
    for (int i = 0; i < S * HS; i++) put_f32s(f, &zero, 1);  // two RoPE tables of S * HS/2
    if (!shared) put_f32s(f, wt[WCLS], numel(WCLS));
    fclose(f);
}

static void write_header_v12(FILE *f, int version, int shared, int gs) {
    unsigned char h[256] = {0};
    int32_t vals[9] = {(int32_t)MAGIC, version, D, H, L, NH, NKV, V, S};
    memcpy(h, vals, sizeof vals);
    h[36] = (unsigned char)shared;
    memcpy(h + 37, &gs, 4);
    fwrite(h, 1, 256, f);
}

static void write_v1(const char *path, int shared) {
    FILE *f = fopen(path, "wb");
    write_header_v12(f, 1, shared, 0);
    int order[11] = {RMS_ATT, RMS_FFN, RMS_FINAL, EMB, WQ, WK, WV, WO, W1, W2, W3};
    for (int i = 0; i < 11; i++) put_f32s(f, wt[order[i]], layers_of[order[i]] * numel(order[i]));
    if (!shared) put_f32s(f, wt[WCLS], numel(WCLS));
    fclose(f);
}

// Q8_0 of one matrix: int8 values, then one scale per GS values
static void put_q8(FILE *f, const float *w, size_t n) {
    int8_t *q = malloc(n);
    float *s = malloc(n / GS * sizeof(float));
    for (size_t g = 0; g < n / GS; g++) {
        float m = 0.0f;
        for (int i = 0; i < GS; i++) m = fmaxf(m, fabsf(w[g * GS + i]));
        s[g] = m / 127.0f;
        for (int i = 0; i < GS; i++) q[g * GS + i] = (int8_t)roundf(w[g * GS + i] / s[g]);
    }
    fwrite(q, 1, n, f);
    put_f32s(f, s, n / GS);
    free(q), free(s);
}

static void write_v2(const char *path, int shared) {
    FILE *f = fopen(path, "wb");
    write_header_v12(f, 2, shared, GS);
    int norms[3] = {RMS_ATT, RMS_FFN, RMS_FINAL}, mats[7] = {WQ, WK, WV, WO, W1, W2, W3};
    for (int i = 0; i < 3; i++) put_f32s(f, wt[norms[i]], layers_of[norms[i]] * numel(norms[i]));
    put_q8(f, wt[EMB], numel(EMB));
    for (int i = 0; i < 7; i++)
        for (int l = 0; l < L; l++) put_q8(f, wt[mats[i]] + l * numel(mats[i]), numel(mats[i]));
    if (!shared) put_q8(f, wt[WCLS], numel(WCLS));
    fclose(f);
}

// ---- a tiny tokenizer: <unk>, BOS, EOS, 256 byte pieces, then " ", "a", "b", " a", "ab", " ab" -----

static const char *extra[] = {" ", "a", "b", " a", "ab", " ab"};
static const float extra_score[] = {-1.0f, -1.0f, -1.0f, -2.0f, -3.0f, -1.5f};

static void write_tokenizer(const char *path, int n_pieces, int bad_len_at) {
    FILE *f = fopen(path, "wb");
    put_i32(f, 6);
    for (int i = 0; i < n_pieces; i++) {
        char piece[16];
        float score = 0.0f;
        if (i < 3) snprintf(piece, sizeof piece, "%s", i == 0 ? "<unk>" : i == 1 ? "\n<s>\n" : "\n</s>\n");
        else if (i < 259) snprintf(piece, sizeof piece, "<0x%02X>", i - 3);
        else snprintf(piece, sizeof piece, "%s", extra[i - 259]), score = extra_score[i - 259];
        int len = (int)strlen(piece);
        put_f32s(f, &score, 1);
        put_i32(f, i == bad_len_at ? 100000 : len);
        fwrite(piece, 1, (size_t)len, f);
    }
    fclose(f);
}

// ---- helpers --------------------------------------------------------------------------------

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
}

static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = calloc(1, *n + 16);  // zeroed: a test writes one byte past the file (valgrind checks)
    *n = fread(buf, 1, *n, f);
    fclose(f);
    return buf;
}

// bl_model_open must fail with `code`, a one-line message that names `path`, and no model.
static void expect_refused(const char *ckpt, const char *tok, int code, const char *path, const char *what) {
    char err[BL_ERRLEN] = "";
    bl_model *m = (bl_model *)1;
    int rc = bl_model_open(ckpt, tok, &m, err, sizeof err);
    CHECK(rc == code, "%s: expected error %d, got %d (%s)", what, code, rc, err);
    CHECK(m == NULL, "%s: a failed open must leave *out NULL", what);
    CHECK(strstr(err, path) != NULL, "%s: message '%s' does not name %s", what, err, path);
    CHECK(strchr(err, '\n') == NULL && strlen(err) > 0, "%s: message must be one line: '%s'", what, err);
    if (rc == BL_OK) bl_model_close(m);
}

// a copy of file src with bytes patched at offset, or cut to `size` bytes (size < 0: keep)
static const char *variant(const char *src, const char *name, long size, size_t off, const void *patch, size_t n) {
    size_t len;
    char *data = read_all(src, &len);
    if (patch) memcpy(data + off, patch, n);
    const char *path = tmp_path(name);
    write_bytes(path, data, size >= 0 ? (size_t)size : len);
    free(data);
    return path;
}

static float *logits_of(const char *ckpt, const int *ids, int n) {
    char err[BL_ERRLEN];
    bl_model *m = NULL;
    bl_state *s = NULL;
    if (bl_model_open(ckpt, NULL, &m, err, sizeof err) != BL_OK || bl_state_new(m, &s, err, sizeof err) != BL_OK) {
        CHECK(0, "open %s: %s", ckpt, err);
        bl_model_close(m);
        return NULL;
    }
    float *out = malloc((size_t)n * V * sizeof(float));
    CHECK(bl_logits(s, ids, n, out, err, sizeof err) == BL_OK, "bl_logits: %s", err);
    bl_state_free(s);
    bl_model_close(m);
    return out;
}

static float max_abs_diff(const float *a, const float *b, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

// ---- tests ----------------------------------------------------------------------------------

static void test_versions_agree(void) {
    int ids[S] = {1, 300 % V, 7, 261, 42, 0, 5, 200, 3, 9, 100, 250};
    const char *names[5] = {"v0.bin", "v1.bin", "v0u.bin", "v1u.bin", "v2.bin"};
    float *lg[5];
    for (int i = 0; i < 5; i++) lg[i] = logits_of(tmp_path(names[i]), ids, S);
    if (!lg[0] || !lg[1] || !lg[2] || !lg[3] || !lg[4]) return;
    size_t n = (size_t)S * V;
    CHECK(max_abs_diff(lg[0], lg[1], n) == 0.0f, "v0 and v1 logits differ: %g", max_abs_diff(lg[0], lg[1], n));
    CHECK(max_abs_diff(lg[2], lg[3], n) == 0.0f, "unshared v0 and v1 differ: %g", max_abs_diff(lg[2], lg[3], n));
    CHECK(max_abs_diff(lg[0], lg[2], n) > 1e-3f, "an unshared classifier must change the logits");
    float q = max_abs_diff(lg[0], lg[4], n), range = 0.0f;
    for (size_t i = 0; i < n; i++) range = fmaxf(range, fabsf(lg[0][i]));
    CHECK(q > 0.0f && q < 0.1f * range, "v2 (int8) logits off by %g (max |logit| %g)", q, range);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !isfinite(lg[4][i]);
    CHECK(bad == 0, "%zu v2 logits are not finite", bad);
    for (int i = 0; i < 5; i++) free(lg[i]);
}

static void test_config_and_bounds(void) {
    char err[BL_ERRLEN];
    bl_model *m = NULL;
    bl_state *s = NULL;
    CHECK(bl_model_open(tmp_path("v2.bin"), tmp_path("tok.bin"), &m, err, sizeof err) == BL_OK, "open v2: %s", err);
    if (!m) return;
    bl_config c = bl_model_config(m);
    CHECK(c.dim == D && c.hidden_dim == H && c.n_layers == L && c.n_heads == NH && c.n_kv_heads == NKV &&
          c.vocab_size == V && c.seq_len == S && c.shared_classifier == 1 && c.version == 2 && c.group_size == GS,
          "config of v2.bin is wrong");
    CHECK(bl_state_new(m, &s, err, sizeof err) == BL_OK, "state: %s", err);
    CHECK(bl_forward(s, V, 0) == NULL && bl_forward(s, -1, 0) == NULL, "token out of range must give NULL");
    CHECK(bl_forward(s, 1, S) == NULL && bl_forward(s, 1, -1) == NULL, "pos out of range must give NULL");
    CHECK(bl_forward(s, 1, 0) != NULL, "a valid forward must give logits");
    int ids[S + 1] = {0};
    float *out = malloc((S + 1) * V * sizeof(float));
    CHECK(bl_logits(s, ids, S + 1, out, err, sizeof err) == BL_ERR_ARG, "S+1 tokens must not fit");
    ids[3] = V;
    CHECK(bl_logits(s, ids, 4, out, err, sizeof err) == BL_ERR_ARG, "token V must be refused");
    free(out);
    bl_state_free(s);
    bl_model_close(m);
}

static void test_malformed_checkpoints(void) {
    char v0[256], v1[256], v2[256];  // tmp_path's buffers are reused: keep copies
    const char *p;
    snprintf(v0, sizeof v0, "%s", tmp_path("v0.bin"));
    snprintf(v1, sizeof v1, "%s", tmp_path("v1.bin"));
    snprintf(v2, sizeof v2, "%s", tmp_path("v2.bin"));
    size_t n0, n1;
    free(read_all(v0, &n0)), free(read_all(v1, &n1));
    expect_refused(tmp_path("missing.bin"), NULL, BL_ERR_IO, "missing.bin", "missing file");
    expect_refused(dir, NULL, BL_ERR_IO, dir, "a directory");
    long cuts0[] = {0, 1, 4, 27, 28, 29, 100, (long)n0 / 2, (long)n0 - 4, (long)n0 - 1};
    for (int i = 0; i < 10; i++)
        p = variant(v0, "cut0.bin", cuts0[i], 0, NULL, 0), expect_refused(p, NULL, BL_ERR_FORMAT, p, "truncated v0");
    long cuts1[] = {4, 8, 35, 255, 256, 257, (long)n1 / 2, (long)n1 - 1};
    for (int i = 0; i < 8; i++)
        p = variant(v1, "cut1.bin", cuts1[i], 0, NULL, 0), expect_refused(p, NULL, BL_ERR_FORMAT, p, "truncated v1");
    p = variant(v1, "long1.bin", (long)n1 + 1, 0, NULL, 0);  // one byte too many
    expect_refused(p, NULL, BL_ERR_FORMAT, p, "trailing byte");
    int32_t bad_magic = 0x616b3433, v3 = 3, v0ver = 0, gs3 = 3, gs0 = 0;
    p = variant(v1, "magic.bin", -1, 0, &bad_magic, 4), expect_refused(p, NULL, BL_ERR_FORMAT, p, "wrong magic");
    p = variant(v1, "ver3.bin", -1, 4, &v3, 4), expect_refused(p, NULL, BL_ERR_FORMAT, p, "version 3");
    p = variant(v1, "ver0.bin", -1, 4, &v0ver, 4), expect_refused(p, NULL, BL_ERR_FORMAT, p, "version 0 with magic");
    p = variant(v2, "gs3.bin", -1, 37, &gs3, 4), expect_refused(p, NULL, BL_ERR_FORMAT, p, "group size 3");
    p = variant(v2, "gs0.bin", -1, 37, &gs0, 4), expect_refused(p, NULL, BL_ERR_FORMAT, p, "group size 0");
    p = variant(v1, "shared7.bin", -1, 36, "\x07", 1), expect_refused(p, NULL, BL_ERR_FORMAT, p, "shared byte 7");
    // header fields: zero, negative, huge (overflowing products), inconsistent
    struct { int field; int32_t value; } bad[] = {
        {0, 0}, {0, -16}, {0, INT32_MAX}, {0, 18}, {0, 20}, {1, 0}, {1, INT32_MAX}, {2, -1}, {2, 1 << 24},
        {2, INT32_MAX}, {3, 0}, {3, 3}, {3, 32}, {4, 0}, {4, 3}, {4, 8}, {5, 0}, {5, INT32_MIN},
        {5, INT32_MAX}, {5, 1 << 24}, {6, 0}, {6, -1}, {6, INT32_MAX}, {6, S + 1}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "hdr%zu.bin", i);
        p = variant(v0, name, -1, 4 * (size_t)bad[i].field, &bad[i].value, 4);
        expect_refused(p, NULL, BL_ERR_FORMAT, p, "bad v0 header field");
        snprintf(name, sizeof name, "hdr%zu_v1.bin", i);
        if (bad[i].field != 6) {  // seq_len does not change a version 1 file's size: it is valid there
            p = variant(v1, name, -1, 8 + 4 * (size_t)bad[i].field, &bad[i].value, 4);
            expect_refused(p, NULL, BL_ERR_FORMAT, p, "bad v1 header field");
        }
    }
    int32_t neg_vocab = -V;  // a version 1 header has no sign convention: negative is just wrong
    p = variant(v1, "negv.bin", -1, 8 + 20, &neg_vocab, 4), expect_refused(p, NULL, BL_ERR_FORMAT, p, "v1 vocab < 0");
}

static void test_huge_context(void) {
    // a version 1 file's size does not depend on seq_len: a huge one must fail cleanly at bl_state_new
    int32_t big = 1 << 24;
    const char *p = variant(tmp_path("v1.bin"), "bigctx.bin", -1, 8 + 24, &big, 4);
    char err[BL_ERRLEN];
    bl_model *m = NULL;
    bl_state *s = NULL;
    CHECK(bl_model_open(p, NULL, &m, err, sizeof err) == BL_OK, "open bigctx: %s", err);
    int rc = m ? bl_state_new(m, &s, err, sizeof err) : -1;
    CHECK(rc == BL_OK || rc == BL_ERR_NOMEM, "bl_state_new with seq_len 2^24: rc %d", rc);
    bl_state_free(s);
    bl_model_close(m);
}

static void test_malformed_tokenizers(void) {
    char v0[256];
    const char *p;
    snprintf(v0, sizeof v0, "%s", tmp_path("v0.bin"));
    expect_refused(v0, tmp_path("nothere.bin"), BL_ERR_IO, "nothere.bin", "missing tokenizer");
    p = tmp_path("tok_short.bin"), write_tokenizer(p, V - 1, -1);
    expect_refused(v0, p, BL_ERR_FORMAT, p, "fewer pieces than the vocabulary");
    p = tmp_path("tok_len.bin"), write_tokenizer(p, V, V - 1);
    expect_refused(v0, p, BL_ERR_FORMAT, p, "length past the end");
    p = tmp_path("tok_len0.bin"), write_tokenizer(p, V, 5);
    expect_refused(v0, p, BL_ERR_FORMAT, p, "length past the end, early");
    p = tmp_path("tok_empty.bin"), write_bytes(p, "", 0);
    expect_refused(v0, p, BL_ERR_FORMAT, p, "empty tokenizer");
    int32_t neg[3] = {6, 0, -5};
    p = tmp_path("tok_neg.bin"), write_bytes(p, neg, sizeof neg);
    expect_refused(v0, p, BL_ERR_FORMAT, p, "negative length");
}

static void expect_ids(const bl_model *m, const char *text, int bos, int eos, const int *want, int n_want) {
    int ids[64], n = -1;
    char err[BL_ERRLEN];
    CHECK(bl_encode(m, text, bos, eos, ids, 64, &n, err, sizeof err) == BL_OK, "encode '%s': %s", text, err);
    int same = n == n_want;
    for (int i = 0; same && i < n; i++) same = ids[i] == want[i];
    CHECK(same, "encode '%s': got %d ids, first %d", text, n, n > 0 ? ids[0] : -1);
}

static void test_tokenizer(void) {
    char err[BL_ERRLEN];
    bl_model *m = NULL;
    CHECK(bl_model_open(tmp_path("v0.bin"), tmp_path("tok.bin"), &m, err, sizeof err) == BL_OK, "open: %s", err);
    if (!m) return;
    // ids: " " 259, "a" 260, "b" 261, " a" 262, "ab" 263, " ab" 264
    expect_ids(m, "", 1, 0, (int[]){1}, 1);
    expect_ids(m, "", 0, 1, (int[]){2}, 1);
    expect_ids(m, "a", 1, 1, (int[]){1, 262, 2}, 3);
    expect_ids(m, "ab", 0, 0, (int[]){264}, 1);  // " a" (-2) merges before "ab" (-3), then " ab"
    expect_ids(m, "b a", 0, 0, (int[]){259, 261, 262}, 3);
    expect_ids(m, "\xc3\xa9", 0, 0, (int[]){259, 3 + 0xc3, 3 + 0xa9}, 3);   // é: byte fallback
    expect_ids(m, "<0x41>", 0, 0, (int[]){259, 3 + '<', 3 + '0', 3 + 'x', 3 + '4', 3 + '1', 3 + '>'}, 7);
    expect_ids(m, "\xff\x80\x80\x80\x80", 0, 0, (int[]){259, 3 + 0xff, 3 + 0x80, 3 + 0x80, 3 + 0x80, 3 + 0x80}, 6);
    int ids[4], n;
    CHECK(bl_encode(m, "aaaa", 1, 1, ids, 4, &n, err, sizeof err) == BL_ERR_ARG, "a too small buffer must be refused");
    const char *b;
    CHECK(bl_decode(m, 1, 262, &b) == 1 && b[0] == 'a', "after BOS the leading space is stripped");
    CHECK(bl_decode(m, 5, 262, &b) == 2 && memcmp(b, " a", 2) == 0, "elsewhere it is kept");
    CHECK(bl_decode(m, 5, 3 + 'A', &b) == 1 && b[0] == 'A', "<0x41> decodes to A");
    CHECK(bl_decode(m, 5, 3 + '\n', &b) == 1 && b[0] == '\n', "<0x0A> decodes to a newline");
    CHECK(bl_decode(m, 5, 3 + 1, &b) == 0, "a lone control byte prints nothing");
    CHECK(bl_decode(m, 5, 3 + 0xe4, &b) == 1 && (unsigned char)b[0] == 0xe4, "UTF-8 bytes are kept");
    CHECK(bl_decode(m, 5, V, &b) == -1 && bl_decode(m, 5, -1, &b) == -1, "tokens out of range give -1");
    bl_model_close(m);
    CHECK(bl_model_open(tmp_path("v0.bin"), NULL, &m, err, sizeof err) == BL_OK, "open without tokenizer");
    CHECK(bl_encode(m, "a", 1, 0, ids, 4, &n, err, sizeof err) == BL_ERR_ARG, "encode without tokenizer must fail");
    CHECK(bl_decode(m, 1, 5, &b) == -1, "decode without tokenizer must fail");
    bl_model_close(m);
}

// draw `n` samples from fixed logits; counts[i] = how often token i came
static void draw(bl_sampler *s, const float *logits, int vocab, int n, int *counts) {
    float *tmp = malloc((size_t)vocab * sizeof(float));
    for (int k = 0; k < n; k++) {
        memcpy(tmp, logits, (size_t)vocab * sizeof(float));
        counts[bl_sample(s, tmp)]++;
    }
    free(tmp);
}

static void test_sampler(void) {
    char err[BL_ERRLEN];
    bl_sampler *s = NULL, *s2 = NULL;
    float logits[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    int c[4] = {0};
    bl_sampler_new(4, 0.0f, 0.9f, 0, 1, &s, err, sizeof err);
    draw(s, logits, 4, 10, c);
    CHECK(c[0] == 10, "temperature 0 is argmax");
    bl_sampler_free(s);
    memset(c, 0, sizeof c), bl_sampler_new(4, 1.0f, 0.0f, 0, 7, &s, err, sizeof err);
    draw(s, logits, 4, 20000, c);
    CHECK(abs(c[0] - 10000) < 400 && abs(c[1] - 6000) < 400 && abs(c[3] - 1000) < 200, "multinomial: %d %d %d %d", c[0], c[1], c[2], c[3]);
    bl_sampler_free(s);
    memset(c, 0, sizeof c), bl_sampler_new(4, 1.0f, 0.6f, 0, 7, &s, err, sizeof err);
    draw(s, logits, 4, 5000, c);  // nucleus 0.6 = {0, 1}, in ratio 5:3
    CHECK(c[2] == 0 && c[3] == 0 && abs(c[0] * 3 - c[1] * 5) < 1500, "top-p: %d %d %d %d", c[0], c[1], c[2], c[3]);
    bl_sampler_free(s);
    memset(c, 0, sizeof c), bl_sampler_new(4, 1.0f, 1.0f, 3, 7, &s, err, sizeof err);
    draw(s, logits, 4, 5000, c);
    CHECK(c[3] == 0 && c[2] > 0, "top-k 3 keeps three: %d %d %d %d", c[0], c[1], c[2], c[3]);
    bl_sampler_free(s);
    memset(c, 0, sizeof c), bl_sampler_new(4, 1.0f, 0.9f, 1, 7, &s, err, sizeof err);
    draw(s, logits, 4, 100, c);
    CHECK(c[0] == 100, "top-k 1 is argmax");
    bl_sampler_free(s);
    // the same seed gives the same draws; another seed other draws
    int a[4] = {0}, b[4] = {0}, d[4] = {0};
    bl_sampler_new(4, 1.0f, 0.0f, 0, 42, &s, err, sizeof err), bl_sampler_new(4, 1.0f, 0.0f, 0, 42, &s2, err, sizeof err);
    draw(s, logits, 4, 500, a), draw(s2, logits, 4, 500, b);
    CHECK(memcmp(a, b, sizeof a) == 0, "one seed, one sequence");
    bl_sampler_free(s2), bl_sampler_new(4, 1.0f, 0.0f, 0, 43, &s2, err, sizeof err);
    draw(s2, logits, 4, 500, d);
    CHECK(memcmp(a, d, sizeof a) != 0, "another seed, another sequence");
    bl_sampler_free(s), bl_sampler_free(s2);
    float inf_logits[4] = {INFINITY, INFINITY, 0.0f, 0.0f};
    bl_sampler_new(4, 1.0f, 0.9f, 0, 3, &s, err, sizeof err);
    int t = bl_sample(s, inf_logits);
    CHECK(t >= 0 && t < 4, "infinite logits still give a token");
    bl_sampler_free(s);
    CHECK(bl_sampler_new(4, -1.0f, 0.9f, 0, 1, &s, err, sizeof err) == BL_ERR_ARG && !s, "temperature < 0");
    CHECK(bl_sampler_new(4, NAN, 0.9f, 0, 1, &s, err, sizeof err) == BL_ERR_ARG, "temperature NaN");
    CHECK(bl_sampler_new(4, 1.0f, 1.5f, 0, 1, &s, err, sizeof err) == BL_ERR_ARG, "top_p > 1");
    CHECK(bl_sampler_new(4, 1.0f, 0.9f, -2, 1, &s, err, sizeof err) == BL_ERR_ARG, "top_k < 0");
    CHECK(bl_sampler_new(4, 1.0f, 0.9f, 0, 0, &s, err, sizeof err) == BL_ERR_ARG, "seed 0");
}

// One thread's work on a shared model: logits of a sequence, an encoding, 8 sampled tokens.
typedef struct {
    const bl_model *m;
    float logits[S * V];
    int ids[16], n_ids, sampled[8], rc;
} Job;

static void *run_job(void *arg) {
    Job *j = arg;
    char err[BL_ERRLEN];
    bl_state *s = NULL;
    bl_sampler *smp = NULL;
    int seq[S] = {1, 5, 260, 262, 7, 9, 11, 13, 200, 201, 3, 4};
    j->rc = bl_state_new(j->m, &s, err, sizeof err);
    if (!j->rc) j->rc = bl_logits(s, seq, S, j->logits, err, sizeof err);
    if (!j->rc) j->rc = bl_encode(j->m, "ab b a", 1, 1, j->ids, 16, &j->n_ids, err, sizeof err);
    if (!j->rc) j->rc = bl_sampler_new(V, 1.0f, 0.9f, 0, 99, &smp, err, sizeof err);
    for (int pos = 0, tok = 1; !j->rc && pos < 8; pos++)
        tok = j->sampled[pos] = bl_sample(smp, bl_forward(s, tok, pos));
    bl_sampler_free(smp);
    bl_state_free(s);
    return NULL;
}

static void test_threads(void) {
    enum { T = 4 };
    char err[BL_ERRLEN];
    bl_model *m = NULL;
    CHECK(bl_model_open(tmp_path("v2.bin"), tmp_path("tok.bin"), &m, err, sizeof err) == BL_OK, "open: %s", err);
    if (!m) return;
    Job *jobs = calloc(T + 1, sizeof(Job));
    pthread_t th[T];
    jobs[T].m = m;
    run_job(&jobs[T]);  // the single-threaded reference
    for (int i = 0; i < T; i++) jobs[i].m = m, pthread_create(&th[i], NULL, run_job, &jobs[i]);
    for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
    for (int i = 0; i <= T; i++) CHECK(jobs[i].rc == BL_OK, "thread %d failed: %d", i, jobs[i].rc);
    for (int i = 0; i < T; i++)
        CHECK(memcmp(&jobs[i].logits, &jobs[T].logits, sizeof jobs[T] - offsetof(Job, logits)) == 0,
              "thread %d got other results than a single thread", i);
    free(jobs);
    bl_model_close(m);
}

// add_in_any_order gives the bits of one-by-one addition or declines (-1): sums of many sizes,
// terms small and large, halfway cases, sums that pass a power of two; and it does not always
// decline. Then sum_in_order and sample_mult, which add blocks with it, against one by one, on
// 32,000 tokens.
static void test_sums_any_order(void) {
    float x[100];
    int wrong = 0, whole = 0;
    for (int t = 0; t < 4000; t++) {
        int n = 1 + t % 100, kind = t % 5;
        float s = ldexpf(1.0f + rnd() + 0.5f, -(t % 30));  // 2^-29 .. 4
        for (int i = 0; i < n; i++)
            x[i] = kind == 0 ? s * 1e-3f * (rnd() + 0.5f)                         // small terms
                 : kind == 1 ? s * 0.1f * (rnd() + 0.5f)                          // the sum passes 2^k
                 : kind == 2 ? ldexpf((float)(1 + 2 * (i % 9)), -26 - t % 8)      // halfway at some sums
                 : kind == 3 ? s * 1e-9f * (rnd() + 0.5f) : 0.0f;                 // below half a unit; zeros
        float seq = s;
        for (int i = 0; i < n; i++) seq += x[i];
        float got = add_in_any_order(s, x, n);
        wrong += got != -1.0f && memcmp(&got, &seq, sizeof got) != 0;
        whole += got != -1.0f;
    }
    CHECK(wrong == 0 && whole > 1000, "add_in_any_order: %d wrong sums, %d of 4000 computed whole", wrong, whole);
    enum { V = 32000 };
    static float p[V];
    int differ = 0, sums_differ = 0;
    for (int kind = 0; kind < 3; kind++) {
        for (int i = 0; i < V; i++)
            p[i] = kind == 0 ? 0.05f * rnd() : kind == 1 ? -1.5f * logf(1.0f + (float)((i * 7919) % V)) : 3.0f * rnd();
        exp_shifted(p, V, 0.0f);  // the softmax's terms: sum_in_order against one by one
        float plain = 0.0f, blocks = sum_in_order(p, V);
        for (int i = 0; i < V; i++) plain += p[i];
        sums_differ += memcmp(&plain, &blocks, sizeof plain) != 0;
        for (int i = 0; i < V; i++) p[i] = logf(p[i]);
        softmax(p, V);
        for (int c = 0; c < 100; c++) {
            float coin = (c + 0.5f) / 100.0f, cdf = 0.0f;
            int want = V - 1;
            for (int i = 0; i < V; i++) {
                cdf += p[i];
                if (coin < cdf) {
                    want = i;
                    break;
                }
            }
            differ += sample_mult(p, V, coin) != want;
        }
    }
    CHECK(sums_differ == 0, "sum_in_order differs from adding one by one in %d of 3 vocabularies", sums_differ);
    CHECK(differ == 0, "sample_mult differs from a plain walk in %d of 300 draws", differ);
}

// The radix sort behind top-k (and top-p's large buckets) orders like a stable descending sort
// (llama2.c's qsort on glibc): flat, peaked, tied and zero probabilities; checked against an
// insertion sort.
static void test_sort_desc(void) {
    enum { N = 700 };
    uint64_t a[N], b[N], tmp[N];
    int trips = 0;
    for (int trial = 0; trial < 4; trial++) {
        for (int i = 0; i < N; i++) {
            float r = rnd() + 0.5f;
            float v = trial == 0 ? 1.0f / N + r * 1e-6f          // flat: differ only in low bits
                    : trial == 1 ? expf(20.0f * r) * 1e-9f       // peaked: many exponents
                    : trial == 2 ? (float)(i % 7) / 64.0f        // many exact ties, zeros
                    : (i % 3 ? r : 0.0f);
            a[i] = b[i] = candidate(v, i);
            trips += candidate_prob(a[i]) == v && candidate_index(a[i]) == i;
        }
        for (int i = 1; i < N; i++)  // stable insertion sort, descending
            for (int j = i; j > 0 && candidate_prob(b[j - 1]) < candidate_prob(b[j]); j--) {
                uint64_t t = b[j];
                b[j] = b[j - 1], b[j - 1] = t;
            }
        uint64_t *got = sort_desc(a, tmp, N);
        CHECK(memcmp(got, b, sizeof b) == 0, "sort_desc differs from a stable descending sort (case %d)", trial);
    }
    CHECK(trips == 4 * N, "%d of %d candidates give back another probability or index", 4 * N - trips, 4 * N);
}

// The vectorized filter of top-p's candidates (run_simd.h; the same function in other builds) keeps
// the reference's tokens in the reference's order, for every length up to 40 (partial vectors),
// cutoffs that keep none, some and all, and NaN.
static void test_candidates(void) {
    enum { N = 40 };
    float p[N];
    uint64_t want[N], got[N + 1];
    int bad = 0;
    for (int n = 0; n <= N; n++)
        for (int c = 0; c < 4; c++) {
            for (int i = 0; i < n; i++) p[i] = i % 11 == 3 ? NAN : rnd() + 0.5f;
            float cutoff = c == 0 ? 0.0f : c == 1 ? 0.5f : c == 2 ? 0.8f : 2.0f;
            got[n] = 12345;  // must survive: nothing is written past the kept words
            uint32_t r1[2], r2[2];
            int n1 = candidates(want, p, n, cutoff, r1), n2 = candidates_fast(got, p, n, cutoff, r2);
            bad += n1 != n2 || memcmp(want, got, (size_t)n1 * sizeof want[0]) != 0 || got[n] != 12345;
            bad += memcmp(r1, r2, sizeof r1) != 0;
        }
    CHECK(bad == 0, "candidates_fast differs from candidates in %d of %d cases", bad, 4 * (N + 1));
}

// Top-p (buckets added whole where float addition allows it, the rest sorted) picks llama2.c's
// token for every coin (llama2c_topp.h): flat distributions of several widths (random-weight
// models), peaked, tied, one dominant token, probabilities whose additions round halfway;
// vocabularies of 2 to 32000; top-p 0.5, 0.9 and 0.99; 64 coins each.
static void test_topp_matches_llama2c(void) {
    enum { N = 32000, COINS = 64 };
    static float p[N];
    static ProbIndex pi[N];
    const float top_ps[3] = {0.5f, 0.9f, 0.99f};
    const int sizes[4] = {2, 17, 600, N};
    int mismatches = 0, draws = 0;
    for (int trial = 0; trial < 8 * 4; trial++) {
        int n = sizes[trial / 8], kind = trial % 8;
        for (int i = 0; i < n; i++) {
            float r = rnd();
            p[i] = kind == 0 ? 0.05f * r : kind == 1 ? 0.5f * r : kind == 2 ? 3.0f * r  // flat, wider and wider
                 : kind == 3 ? -1.5f * logf(1.0f + (float)((i * 7919) % n))              // Zipf-like
                 : kind == 4 ? 0.25f * (float)((i * 31) % 7)                              // exact ties
                 : kind == 5 ? (i == n / 3 ? 9.0f : r)                                    // one dominant token
                 : kind == 6 ? 12.0f * r : 0.0f;
        }
        if (kind < 7) softmax(p, n);
        else  // multiples of 2^-25: in [0.5, 1) the odd ones add halfway, the others exactly, and the
              // order decides the roundings (a bucket holds both)
            for (int i = 0; i < n; i++) p[i] = ldexpf((float)((1 << 25) / n - 750 + (i * 7919) % 1500), -25);
        for (int t = 0; t < 3; t++) {
            bl_sampler *s = NULL;
            char err[BL_ERRLEN];
            if (bl_sampler_new(n, 1.0f, top_ps[t], 0, 1, &s, err, sizeof err) != BL_OK) {
                mismatches++;
                continue;
            }
            int n0 = llama2c_candidates(p, n, top_ps[t], pi);
            for (int c = 0; c < COINS && n0 > 0; c++, draws++) {  // (no candidate: llama2.c reads pi[-1])
                float coin = c < COINS / 2 ? (c + 0.5f) / (COINS / 2) : random_f32(&s->rng);
                mismatches += sample_topp(s, p, coin) != llama2c_draw(pi, n0, top_ps[t], coin);
            }
            bl_sampler_free(s);
        }
    }
    CHECK(mismatches == 0, "top-p differs from llama2.c's in %d of %d draws", mismatches, draws);
}

// The vectorized quantizer (run_simd.h; the same function in other builds) gives the reference's
// int8 values and scales: halves, clamping, zero groups and NaN included.
static void test_quantize(void) {
    enum { N = 128, G = 32 };
    float x[N], s1[N / G], s2[N / G];
    int8_t q1[N], q2[N];
    for (int i = 0; i < N; i++) x[i] = 10.0f * rnd();
    x[0] = 127.0f, x[5] = 4.5f, x[6] = -4.5f, x[7] = 0.5f, x[8] = NAN;  // scale 1: exact ties; NaN
    for (int i = 64; i < 96; i++) x[i] = 0.0f;                                           // an all-zero group
    quantize(q1, s1, x, N, G);
    quantize_fast(q2, s2, x, N, G);
    CHECK(memcmp(q1, q2, sizeof q1) == 0 && memcmp(s1, s2, sizeof s1) == 0, "quantize_fast differs from quantize");
}

// The softmax's and SwiGLU's exponentials (run_simd.h's vector expf in fast builds with AVX-512,
// else run.c's loops) are libm's expf bit for bit: every 4099th float from -inf to +inf (NaNs as NaN), and
// logits minus their max. (All 2^32 floats were compared once: no difference.)
static void test_expf_bits(void) {
    enum { N = 1 << 16 };
    static float in[N], got[N];
    long bad = 0, n = 0;
    for (uint64_t b0 = 0; b0 < (1ull << 32); b0 += (uint64_t)N * 4099) {
        int m = 0;
        for (uint64_t b = b0; m < N && b < (1ull << 32); b += 4099, m++) {
            uint32_t bits = (uint32_t)b;
            memcpy(&in[m], &bits, 4);
        }
        memcpy(got, in, sizeof got);
        exp_shifted_fast(got, m, 0.0f);
        for (int i = 0; i < m; i++, n++) {
            float want = expf(in[i]);
            bad += memcmp(&want, &got[i], 4) != 0 && !(isnan(want) && isnan(got[i]));
        }
    }
    for (int i = 0; i < N; i++) in[i] = 12.0f * rnd(), got[i] = in[i];
    exp_shifted_fast(got, N - 3, 5.0f);  // a length that leaves a tail
    for (int i = 0; i < N - 3; i++, n++) {
        float want = expf(in[i] - 5.0f);
        bad += memcmp(&want, &got[i], 4) != 0;
    }
    CHECK(bad == 0, "exp_shifted_fast differs from expf in %ld of %ld arguments", bad, n);
    static float h1[N], h2[N], h3[N];  // SwiGLU, which takes expf too: the same bits
    for (int i = 0; i < N; i++) h1[i] = h2[i] = 30.0f * rnd(), h3[i] = rnd();
    h1[7] = h2[7] = -100.0f, h1[8] = h2[8] = 95.0f, h1[9] = h2[9] = NAN;
    swiglu(h1, h3, N - 5);
    swiglu_fast(h2, h3, N - 5);
    CHECK(memcmp(h1, h2, sizeof h1) == 0, "swiglu_fast differs from swiglu");
#ifdef BL_PANELS
    if (!expf_vector_ok) fprintf(stderr, "note: this libm's expf is not glibc's: the vector expf is off (expf is called)\n");
#endif
}

// One head's attention (run_simd.h's kernels in fast builds for head sizes 16..128, else run.c's
// loops) against run.c's loops, over positions that fill 16-position blocks and leave tails.
static void test_attention_head(void) {
    enum { STRIDE = 144, MAXPOS = 40 };
    static float keys[(MAXPOS + 1) * STRIDE], values[(MAXPOS + 1) * STRIDE], q[128];
    for (int i = 0; i < (MAXPOS + 1) * STRIDE; i++) keys[i] = rnd(), values[i] = rnd();
    for (int i = 0; i < 128; i++) q[i] = 4.0f * rnd();
    const int sizes[] = {8, 16, 48, 64, 128, 24};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
        for (int pos = 0; pos <= MAXPOS; pos += pos < 17 ? 1 : 7) {
            int hs = sizes[k];
            float a1[MAXPOS + 1], a2[MAXPOS + 1], o1[128], o2[128];
            head_scores(a1, q, keys, STRIDE, hs, pos);
            head_scores_fast(a2, q, keys, STRIDE, hs, pos);
            double es = 0.0, eo = 0.0;
            for (int i = 0; i <= pos; i++) es = fmax(es, fabs((double)a1[i] - a2[i]));
            softmax(a1, pos + 1);
            head_values(o1, a1, values, STRIDE, hs, pos);
            head_values_fast(o2, a1, values, STRIDE, hs, pos);
            for (int j = 0; j < hs; j++) eo = fmax(eo, fabs((double)o1[j] - o2[j]));
            CHECK(es < 1e-5 && eo < 1e-6, "attention head, hs %d, pos %d: scores off by %g, output by %g", hs, pos, es, eo);
        }
}

// The int8 panel kernel (run_simd.h, fast builds with VNNI) against rows_q8, the reference, on
// random int8 matrices: every row, every token, within float rounding; and each token's results
// are the same bits whether it comes alone, in a tile of 2-4 or after others (batches = decode).
static void test_q8_panels(void) {
#ifdef BL_PANELS
    enum { MAXB = 9 };
    const int shapes[][3] = {{16, 16, 16}, {32, 64, 32}, {48, 288, 32}, {16, 768, 64}, {64, 128, 128}};  // d, n, gs
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int d = shapes[k][0], n = shapes[k][1], gs = shapes[k][2], G = n / gs;
        size_t bytes = (size_t)d * n + (size_t)d * G * 4;
        char *w = malloc(bytes), *panels = malloc(bytes);
        int8_t *xq = malloc((size_t)MAXB * n);
        float *xs = malloc((size_t)MAXB * G * sizeof(float)), *ref = malloc((size_t)MAXB * d * sizeof(float));
        float *one = malloc((size_t)MAXB * d * sizeof(float)), *all = malloc((size_t)MAXB * d * sizeof(float));
        int32_t *xo = malloc((size_t)MAXB * G * sizeof(int32_t));
        for (size_t i = 0; i < (size_t)d * n; i++) w[i] = (char)(int8_t)(254.0f * rnd());  // -127..127
        w[0] = (char)-127, w[1] = 127;
        for (int i = 0; i < d * G; i++) {
            float sc = 0.01f + 0.02f * (rnd() + 0.5f);
            memcpy(w + (size_t)d * n + 4 * (size_t)i, &sc, 4);
        }
        for (int i = 0; i < MAXB * n; i++) xq[i] = (int8_t)(254.0f * rnd());
        for (int b = 0; b < MAXB; b++) {
            for (int g = 0; g < G; g++) xs[b * G + g] = 0.05f * (rnd() + 0.5f);
            q8_offsets(xo + (size_t)b * G, xq + (size_t)b * n, n, gs);
        }
        Tensor t = {w, bytes, d, n, gs, NULL};
        CHECK(q8_packable(&t), "shape %d x %d, group %d should be packable", d, n, gs);
        pack_panels(panels, w, d, n, gs);
        rows_q8(ref, xq, xs, (const int8_t *)w, w + (size_t)d * n, n, d, gs, 0, d, MAXB);
        rows_q8_panels(all, xq, xs, xo, panels, n, d, gs, 0, d, MAXB);
        for (int b = 0; b < MAXB; b++) rows_q8_panels(one + (size_t)b * d, xq + (size_t)b * n, xs + (size_t)b * G,
                                                      xo + (size_t)b * G, panels, n, d, gs, 0, d, 1);
        double worst = 0.0, scale = 0.0;
        for (int i = 0; i < MAXB * d; i++) {
            worst = fmax(worst, fabs((double)all[i] - ref[i]));
            scale = fmax(scale, fabs((double)ref[i]));
        }
        CHECK(worst <= 1e-5 * scale, "panels %d x %d, group %d: off the reference by %g (max |y| %g)", d, n, gs, worst, scale);
        CHECK(memcmp(one, all, (size_t)MAXB * d * sizeof(float)) == 0,
              "panels %d x %d, group %d: a token's results depend on the tokens beside it", d, n, gs);
        free(w), free(panels), free(xq), free(xs), free(ref), free(one), free(all), free(xo);
    }
    Tensor odd_rows = {NULL, 0, 24, 64, 32, NULL}, odd_group = {NULL, 0, 32, 64, 8, NULL};
    CHECK(!q8_packable(&odd_rows) && !q8_packable(&odd_group), "rows not a multiple of 16, or groups of 8: no panels");
#endif
}

// The fp32 panel kernel (run_simd.h, fast builds) against rows_f32: tiles of 1 to 4 panels and 1
// to 4 tokens; a token's results are the same bits alone as among 8 others.
static void test_f32_panels(void) {
#ifdef BL_PANELS
    enum { MAXB = 9 };
    const int shapes[][2] = {{16, 1}, {48, 7}, {64, 288}, {80, 33}, {112, 16}};  // d, n
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int d = shapes[k][0], n = shapes[k][1];
        float *w = malloc((size_t)d * n * sizeof(float)), *panels = malloc((size_t)d * n * sizeof(float));
        float *x = malloc((size_t)MAXB * n * sizeof(float)), *ref = malloc((size_t)MAXB * d * sizeof(float));
        float *one = malloc((size_t)MAXB * d * sizeof(float)), *all = malloc((size_t)MAXB * d * sizeof(float));
        for (int i = 0; i < d * n; i++) w[i] = rnd();
        for (int i = 0; i < MAXB * n; i++) x[i] = rnd();
        Tensor t = {(const char *)w, (uint64_t)d * n * 4, d, n, 0, NULL};
        CHECK(packable(&t), "fp32 %d x %d should be packable", d, n);
        pack_panels_f32(panels, w, d, n);
        rows_f32(ref, x, w, n, d, 0, d, MAXB);
        rows_f32_panels(all, x, panels, n, d, 0, d, MAXB);
        for (int b = 0; b < MAXB; b++) rows_f32_panels(one + (size_t)b * d, x + (size_t)b * n, panels, n, d, 0, d, 1);
        double worst = 0.0;
        for (int i = 0; i < MAXB * d; i++) worst = fmax(worst, fabs((double)all[i] - ref[i]));
        CHECK(worst <= 1e-5 * (1 + n), "fp32 panels %d x %d: off the reference by %g", d, n, worst);
        CHECK(memcmp(one, all, (size_t)MAXB * d * sizeof(float)) == 0,
              "fp32 panels %d x %d: a token's results depend on the tokens beside it", d, n);
        free(w), free(panels), free(x), free(ref), free(one), free(all);
    }
    Tensor odd = {NULL, 0, 40, 16, 0, NULL};
    CHECK(!packable(&odd), "fp32 rows not a multiple of 16: no panels");
#endif
}

// Prefill (many positions in one pass) and batches (many sequences in one pass) compute exactly
// what one bl_forward per token computes: same logits, same KV cache, same stories.
static void test_prefill_and_batch(const char *ckpt) {
    char err[BL_ERRLEN];
    bl_model *m = NULL;
    bl_state *one = NULL, *many = NULL;
    CHECK(bl_model_open(ckpt, NULL, &m, err, sizeof err) == BL_OK, "open %s: %s", ckpt, err);
    if (!m) return;
    CHECK(bl_state_new(m, &one, err, sizeof err) == BL_OK && bl_state_new(m, &many, err, sizeof err) == BL_OK, "state: %s", err);
    int ids[S] = {1, 17, 260, 262, 7, 9, 11, 13, 200, 201, 3, 4};
    float step[S * V];
    for (int pos = 0; pos < S; pos++) memcpy(step + pos * V, bl_forward(one, ids[pos], pos), V * sizeof(float));
    float *last = bl_prefill(many, ids, 7, 0);  // positions 0..6 in one pass, then 7..11 in another
    CHECK(last && memcmp(last, step + 6 * V, V * sizeof(float)) == 0, "%s: prefill's last logits differ from bl_forward's", ckpt);
    last = bl_prefill(many, ids + 7, S - 7, 7);
    CHECK(last && memcmp(last, step + (S - 1) * V, V * sizeof(float)) == 0, "%s: prefill from position 7 differs", ckpt);
    float all[S * V];
    CHECK(bl_logits(many, ids, S, all, err, sizeof err) == BL_OK && memcmp(all, step, sizeof all) == 0,
          "%s: bl_logits differs from one bl_forward per position", ckpt);
    bl_state *small = NULL;  // passes of 5 rows: a prompt of 12 goes through in 3
    CHECK(state_new(m, 5, 1, S, &small, err, sizeof err) == BL_OK, "state of 5 rows: %s", err);
    last = small ? bl_prefill(small, ids, S, 0) : NULL;
    CHECK(last && memcmp(last, step + (S - 1) * V, V * sizeof(float)) == 0, "%s: prefill in passes of 5 rows differs", ckpt);
    float parts[S * V];
    CHECK(small && bl_logits(small, ids, S, parts, err, sizeof err) == BL_OK && memcmp(parts, step, sizeof parts) == 0,
          "%s: bl_logits in passes of 5 rows differs from one bl_forward per position", ckpt);
    bl_state_free(small);
    CHECK(bl_prefill(many, ids, 0, 0) == NULL && bl_prefill(many, ids, S, 1) == NULL, "prefill past the context must give NULL");
    int bad[2] = {1, V};
    CHECK(bl_prefill(many, bad, 2, 0) == NULL, "prefill of a token out of range must give NULL");

    // three stories at once (different prompts, seeds, lengths) = each one alone
    enum { N = 3, NEW = 9 };
    const int p0[1] = {1}, p1[3] = {1, 260, 262}, p2[2] = {1, 7};
    const int *prompts[N] = {p0, p1, p2}, lens[N] = {1, 3, 2};
    unsigned long long seeds[N] = {5, 6, 7};
    int tokens[N * NEW], n_tokens[N];
    CHECK(bl_generate_batch(m, N, prompts, lens, NEW, 1.0f, 0.9f, 0, seeds, tokens, n_tokens, err, sizeof err) == BL_OK,
          "generate_batch: %s", err);
    for (int i = 0; i < N; i++) {  // the CLI's loop, one story at a time
        bl_sampler *smp = NULL;
        bl_sampler_new(V, 1.0f, 0.9f, 0, seeds[i], &smp, err, sizeof err);
        int tok = prompts[i][0], count = 0, same = 1, steps = lens[i] - 1 + NEW < S ? lens[i] - 1 + NEW : S;
        for (int pos = 0; pos < steps; pos++) {
            float *lg = bl_forward(one, tok, pos);
            int next = pos < lens[i] - 1 ? prompts[i][pos + 1] : bl_sample(smp, lg);
            if (next == 1) break;
            if (pos + 1 >= lens[i]) same &= count < n_tokens[i] && tokens[i * NEW + count] == next, count++;
            if (next == 2) break;
            tok = next;
        }
        CHECK(same && count == n_tokens[i], "%s: story %d of the batch differs from the story alone", ckpt, i);
        bl_sampler_free(smp);
    }
    CHECK(bl_generate_batch(m, N, prompts, lens, NEW, -1.0f, 0.9f, 0, seeds, tokens, n_tokens, err, sizeof err) == BL_ERR_ARG,
          "generate_batch with temperature < 0 must fail");
    bl_state_free(one), bl_state_free(many);
    bl_model_close(m);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/babyllama_test_XXXXXX");
    if (!mkdtemp(dir)) return perror("mkdtemp"), 1;
    make_weights();
    write_v0(tmp_path("v0.bin"), 1), write_v1(tmp_path("v1.bin"), 1);
    write_v0(tmp_path("v0u.bin"), 0), write_v1(tmp_path("v1u.bin"), 0);
    write_v2(tmp_path("v2.bin"), 1);
    write_tokenizer(tmp_path("tok.bin"), V, -1);
    test_versions_agree();
    test_config_and_bounds();
    test_malformed_checkpoints();
    test_huge_context();
    test_malformed_tokenizers();
    test_tokenizer();
    test_sampler();
    test_threads();
    test_sort_desc();
    test_sums_any_order();
    test_candidates();
    test_quantize();
    test_expf_bits();
    test_attention_head();
    test_q8_panels();
    test_f32_panels();
    test_topp_matches_llama2c();
    test_prefill_and_batch(tmp_path("v1.bin"));
    test_prefill_and_batch(tmp_path("v2.bin"));
    for (int t = 0; t < NT; t++) free(wt[t]);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    printf("test_api: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
