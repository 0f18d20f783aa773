/*
 * fuzz_cli.c: libFuzzer target: the input, split at NUL bytes, is the argument list after the
 * checkpoint (a tiny model; "-z" names the repository's tokenizer first, so the input may override
 * it). First run.c's parse_args and check_options alone, then, when they accept, the whole CLI main:
 * every flag, value, prompt and -n, generation and chat (stdin is empty).
 */
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (!freopen("/dev/null", "r", stdin)) abort();  // chat mode reads turns from stdin
    return 0;
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
    Options o = {NULL, "tokenizer.bin", "", NULL, "generate", 1.0f, 0.9f, 0, 256, 0, 0, 0};
    int rc = parse_args(&o, argc, argv);
    if (rc == 0 && check_options(&o) == 0) {
        // generation is bounded by the tiny model's 16 positions; a file path given with -z is
        // only opened when it is the repository's (the fuzzer must not read arbitrary files)
        if (strcmp(o.tokenizer, real_tokenizer()) == 0 && babyllama_main(argc, argv) > 1) abort();
    }
    free(buf);
    return 0;
}
