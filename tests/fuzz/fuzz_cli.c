/*
 * fuzz_cli.c: libFuzzer target: the input, split at NUL bytes, is the argument list after the
 * checkpoint (a tiny model; "-z" names the repository's tokenizer first), given to the whole CLI
 * main (run.c's parse_args, check_options, generation or chat; stdin is empty): every flag, value,
 * prompt and -n.
 */
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (!freopen("/dev/null", "r", stdin)) abort();  // chat mode reads turns from stdin
    setenv("OMP_NUM_THREADS", "1", 0);  // one thread unless an input says -T: spinning helpers
                                        // would halve the executions on shared cores
    return 0;
}

// Only the repository's tokenizer may be opened (the fuzzer must not read arbitrary files), and
// threads (-T) and stories at once (-b) stay small so one input runs in milliseconds. Flags come
// in pairs after the checkpoint, as parse_args reads them.
static int allowed(int argc, char **argv) {
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "-z") == 0 && strcmp(argv[i + 1], real_tokenizer()) != 0) return 0;
        if ((strcmp(argv[i], "-T") == 0 || strcmp(argv[i], "-b") == 0) && atoll(argv[i + 1]) > 4) return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 4096) return 0;
    char *buf = malloc(size + 1);
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *argv[64];
    int argc = 0;
    argv[argc++] = "run";
    argv[argc++] = (char *)tiny_model(4096);
    argv[argc++] = "-z";
    argv[argc++] = (char *)real_tokenizer();
    for (size_t i = 0; i <= size && argc < 63;) {  // NUL-separated arguments
        argv[argc++] = buf + i;
        i += strlen(buf + i) + 1;
    }
    argv[argc] = NULL;
    // the whole CLI: parse_args, check_options, open, generate or chat (16 positions at most);
    // it must return 0 or 1 (2 would be an unexpected path), never crash, leak or hang
    if (allowed(argc, argv) && babyllama_main(argc, argv) > 1) abort();
    bl_set_threads(0);  // -T of this input must not carry over to the next
    free(buf);
    return 0;
}
