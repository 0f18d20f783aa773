/*
 * babyllama.h: the public C API of the babyllama inference engine (implemented in run.c).
 *
 * What it is: open a llama2.c checkpoint (.bin version 0, 1 or 2) and its tokenizer.bin, encode
 * and decode text, run the transformer one token at a time or over a whole sequence, and sample.
 * What it is not: a generation loop or a CLI (run.c's main has those; the Python bindings build
 * their own loop from these calls).
 *
 * Errors: no function exits or aborts on bad input. Functions that can fail return BL_OK (0) or a
 * positive BL_ERR_* code and, when `err` is not NULL, write a one-line NUL-terminated message of at
 * most `errlen` bytes (BL_ERRLEN is always enough) naming the file or argument at fault.
 *
 * Threads: a bl_model is read-only after bl_model_open, so one model may serve any number of
 * threads at once, as long as each thread uses its own bl_state and bl_sampler. A bl_state or
 * bl_sampler must not be used by two threads at the same time. bl_model_close must come last.
 */
#ifndef BABYLLAMA_H
#define BABYLLAMA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BL_ERRLEN 512

enum {
    BL_OK = 0,
    BL_ERR_IO = 1,      /* a file is missing or unreadable */
    BL_ERR_FORMAT = 2,  /* a file is malformed: bad magic/version, header, size, lengths */
    BL_ERR_ARG = 3,     /* a bad argument: token or position out of range, buffer too small, ... */
    BL_ERR_NOMEM = 4,   /* an allocation failed */
};

typedef struct bl_model bl_model;     /* weights (memory-mapped) + tokenizer; read-only once open */
typedef struct bl_state bl_state;     /* one generation's activations and KV cache */
typedef struct bl_sampler bl_sampler; /* temperature / top-p / top-k settings and an RNG */

typedef struct {
    int dim;               /* transformer width */
    int hidden_dim;        /* feed-forward width */
    int n_layers;
    int n_heads;           /* query heads */
    int n_kv_heads;        /* key/value heads (< n_heads: grouped-query attention) */
    int vocab_size;
    int seq_len;           /* context length: positions 0 .. seq_len-1 */
    int shared_classifier; /* 1 when the output classifier is the token embedding */
    int version;           /* checkpoint format: 0 (legacy), 1 (fp32), 2 (int8 groups) */
    int group_size;        /* int8 quantization group size (version 2), else 0 */
} bl_config;

/* Open checkpoint `checkpoint_path` and tokenizer `tokenizer_path` (NULL: no tokenizer; encode and
 * decode then fail with BL_ERR_ARG) into *out. On failure *out is NULL and err says why. */
int bl_model_open(const char *checkpoint_path, const char *tokenizer_path, bl_model **out,
                  char *err, size_t errlen);

/* Unmap and free a model (NULL is fine). Every state made from it must be freed before. */
void bl_model_close(bl_model *m);

/* The model's hyperparameters. */
bl_config bl_model_config(const bl_model *m);

/* Encode UTF-8 `text` like llama2.c / sentencepiece (dummy space prefix, byte fallback, merges by
 * score), optionally with BOS (id 1) first and EOS (id 2) last, into ids[0 .. *n_ids-1].
 * `max_ids` >= strlen(text) + 3 is always enough. */
int bl_encode(const bl_model *m, const char *text, int bos, int eos, int *ids, int max_ids,
              int *n_ids, char *err, size_t errlen);

/* The bytes that token `token` prints when it follows token `prev` (llama2.c's rules: one leading
 * space stripped after BOS, "<0xHH>" becomes that byte, a lone control byte prints nothing; a lone
 * byte >= 0x80 is kept, being part of a UTF-8 character).
 * Sets *bytes to memory owned by the model (not NUL-terminated in general) and returns the byte
 * count, or -1 for a token out of range or a model without tokenizer. */
int bl_decode(const bl_model *m, int prev, int token, const char **bytes);

/* A fresh state (activations + KV cache for seq_len positions) for model m, into *out. */
int bl_state_new(const bl_model *m, bl_state **out, char *err, size_t errlen);

/* Free a state (NULL is fine). */
void bl_state_free(bl_state *s);

/* Run `token` at position `pos` (positions must be fed in order 0, 1, 2, ... since the KV cache
 * of earlier positions is used) and return the vocab_size logits, owned by s and overwritten by
 * the next call; NULL if token or pos is out of range. */
float *bl_forward(bl_state *s, int token, int pos);

/* Run ids[0 .. n-1] at positions pos .. pos+n-1 (prompt processing: the weights are read once
 * for many tokens, not once per token) and return the logits of the last one, owned by s and
 * overwritten by the next call; NULL if n < 1 or a token or position is out of range. The KV
 * cache and the logits equal those of n bl_forward calls. */
float *bl_prefill(bl_state *s, const int *ids, int n, int pos);

/* Logits for every position of ids[0 .. n-1] (positions 0 .. n-1, n <= seq_len) into
 * out[n * vocab_size], row by row. */
int bl_logits(bl_state *s, const int *ids, int n, float *out, char *err, size_t errlen);

/* Tell n stories at once, each exactly as run's generate loop (and bl_forward + bl_sample) would
 * tell it alone: story i forces prompts[i][0 .. prompt_lens[i]-1] (BOS first, as bl_encode gives
 * it), then samples with its own sampler (temperature, top_p, top_k as bl_sampler_new, seed
 * seeds[i]) until BOS (not kept), EOS (kept), max_new new tokens, or the end of the context.
 * Its new tokens go to tokens[i * max_new ...], their count to n_tokens[i]. One forward pass per
 * step carries every story still running, so the weights are read once per step for all of them. */
int bl_generate_batch(const bl_model *m, int n, const int *const *prompts, const int *prompt_lens,
                      int max_new, float temperature, float top_p, int top_k,
                      const unsigned long long *seeds, int *tokens, int *n_tokens, char *err, size_t errlen);

/* bl_generate_batch with seed 001's end-of-story bias (bl_end_bias) on every story: before its
 * n-th new token, BOS's logit gets end_bias * (n - end_bias_after) when n > end_bias_after, so the
 * stories end on their own. end_bias 0 is bl_generate_batch exactly; end_bias must be finite and
 * >= 0, end_bias_after >= 0. */
int bl_generate_stories(const bl_model *m, int n, const int *const *prompts, const int *prompt_lens,
                        int max_new, float temperature, float top_p, int top_k, float end_bias, int end_bias_after,
                        const unsigned long long *seeds, int *tokens, int *n_tokens, char *err, size_t errlen);

/* Seed 001's end-of-story bias: before the n-th new token of a story (n = 1, 2, ...) is sampled,
 * logits[BOS = 1] += rate * (n - after) when n > after (rate 0: nothing changes). Every generation
 * loop (./run, bl_generate_stories, the bindings, model.py) applies it the same way. */
void bl_end_bias(float *logits, float rate, int after, int n);

/* Bytes that bl_build_prompt's output never exceeds, its NUL included. */
#define BL_PROMPTLEN 4096

/* The prompt that asks for a story (conditions.py's build_prompt, byte for byte): topic (UTF-8,
 * NULL: none) with ending "happy" or "sad" (NULL: none), and tags[0 .. n_tags-1], the features
 * BadEnding, Conflict, Dialogue, Foreshadowing, MoralValue, Twist in any case, spaces around them
 * ignored. Writes "Write a story about: {topic}\nWith: {ending} ending", "Features: {tags}" (canonical
 * order, each once), joined by "\n", then "\n\n### Story:\n" into out (outlen >= BL_PROMPTLEN is
 * enough); "" when nothing is asked. The topic's runs of ASCII whitespace become one space, its ends
 * are trimmed, and it must then be 1 to 500 characters. Bad input (an ending without a topic, a
 * topic without an ending, an unknown tag, BadEnding with an ending, text not UTF-8) is BL_ERR_ARG
 * with conditions.py's message. */
int bl_build_prompt(const char *topic, const char *ending, const char *const *tags, int n_tags, char *out,
                    size_t outlen, char *err, size_t errlen);

/* Threads for the engine's parallel loops, process-wide (n <= 0: the default: OpenMP's setting
 * of the calling thread when built with OpenMP, else OMP_NUM_THREADS, else every core). Results
 * do not depend on it. Helper threads start on first use and stop at exit. */
void bl_set_threads(int n);

/* A sampler over `vocab_size` logits: temperature 0 = argmax; else softmax(logits / temperature),
 * then top-k (0: off) and top-p (<= 0 or >= 1: off) as llama2.c, coins from llama2.c's xorshift*
 * RNG seeded with `seed` (must be nonzero: the RNG is stuck at 0). */
int bl_sampler_new(int vocab_size, float temperature, float top_p, int top_k,
                   unsigned long long seed, bl_sampler **out, char *err, size_t errlen);

/* Free a sampler (NULL is fine). */
void bl_sampler_free(bl_sampler *s);

/* Pick the next token from `logits` (vocab_size floats, modified in place). */
int bl_sample(bl_sampler *s, float *logits);

#ifdef __cplusplus
}
#endif
#endif /* BABYLLAMA_H */
