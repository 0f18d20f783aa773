/*
 * encode.c: run.c's prompt encoder on its own, for tests/test_encode.py (which compares its ids
 * with sentencepiece's). It needs no model: it loads a tokenizer.bin of a given vocabulary size.
 *
 *     build/encode tokenizer.bin 32000 < lines     (each line: the UTF-8 text in hex, maybe empty)
 *
 * For each input line it prints the ids (no BOS/EOS) separated by spaces, one line per text.
 */
#define BABYLLAMA_NO_MAIN
#include "run.c"

static int unhex(const char *s, char *out) {
    int n = 0;
    for (; s[0] && s[1] && s[0] != '\n'; s += 2) {
        unsigned v;
        if (sscanf(s, "%2x", &v) != 1) return -1;
        out[n++] = (char)v;
    }
    out[n] = '\0';
    return n;
}

int main(int argc, char **argv) {
    char err[BL_ERRLEN];
    Tokenizer *t = NULL;
    if (argc != 3) return fprintf(stderr, "usage: encode tokenizer.bin vocab_size < hex lines\n"), 1;
    if (build_tokenizer(&t, argv[1], atoi(argv[2]), err, sizeof err) != BL_OK)
        return fprintf(stderr, "error: %s\n", err), 1;
    static char line[1 << 20], text[1 << 19];
    static int ids[(1 << 19) + 3];
    while (fgets(line, sizeof line, stdin)) {
        int n = unhex(line, text);
        if (n < 0 || strlen(text) != (size_t)n) return fprintf(stderr, "error: bad hex line\n"), 1;
        int count = encode(t, text, 0, 0, ids);
        for (int i = 0; i < count; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
    }
    free_tokenizer(t);
    return 0;
}
