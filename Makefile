# babyllama: build the C engine, set up Python, run the tests.
#   make             build ./run with the best flags this machine supports
#   make debug       ./run_debug with -g and the address/undefined sanitizers
#   make run_ref     ./run_ref: the portable reference kernels (-DBL_REFERENCE), for comparison
#   make quickstart  virtual environment + install + build + tell a story (CLI and Python)
#   make demo        the web demo (demo.py) on the bundled model at http://127.0.0.1:7860
#   make test        install the test extras and run every test (C and Python)
#   make fuzz        libFuzzer (clang) + ASan + UBSan on each fuzz target for FUZZ_SECONDS (default 60)
#   make valgrind    the C tests (no sanitizers) and one generation of ./run under valgrind

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: all debug test test-c fuzz fuzz-regress fuzz-replay valgrind quickstart demo story-model venv clean

all: run

# ---- C engine ------------------------------------------------------------------------------
# Flags are probed with a test compile and link, so `make` works with any C11 compiler: OpenMP when
# the compiler has it (else only its `simd` pragmas, else none), -march=native when accepted, the
# sanitizers when their runtimes are installed (else the debug builds are plain -g builds).
comma    := ,
accepts   = $(shell echo 'int main(void){return 0;}' | $(CC) $(1) -x c - -o /dev/null 2>/dev/null && echo '$(1)')
OPENMP   := $(or $(call accepts,-fopenmp),$(call accepts,-fopenmp-simd),-Wno-unknown-pragmas)
SIMD     := $(or $(call accepts,-fopenmp-simd),-Wno-unknown-pragmas)
NATIVE   := $(call accepts,-march=native)
ASAN     := $(call accepts,-fsanitize=address$(comma)undefined -fno-sanitize-recover=undefined)
TSAN     := $(call accepts,-fsanitize=thread -pthread)
PTHREAD  := $(call accepts,-pthread)
CFLAGS   ?= -O3 $(NATIVE)
WARN     := -std=c11 -Wall -Wextra
SANITIZE := -g -O1 -fno-omit-frame-pointer $(ASAN) $(SIMD) $(NATIVE)

run: run.c run_simd.h babyllama.h
	$(CC) $(WARN) $(CFLAGS) $(OPENMP) -o $@ run.c -lm $(PTHREAD)

# the same engine with run.c's portable kernels instead of run_simd.h's (bench/run_speed.py
# compares the two; the tests run both)
run_ref: run.c babyllama.h
	$(CC) $(WARN) $(CFLAGS) $(OPENMP) -DBL_REFERENCE -o $@ run.c -lm $(PTHREAD)

# the same engine under AddressSanitizer + UndefinedBehaviorSanitizer (single-threaded)
run_debug: run.c run_simd.h babyllama.h
	$(CC) $(WARN) $(SANITIZE) -o $@ run.c -lm $(PTHREAD)

debug: run_debug

# C test programs (tests/c/*.c include run.c with -DBABYLLAMA_NO_MAIN): build/<name> is optimized
# (the Python tests drive it), build/<name>_debug runs under ASan + UBSan, build/<name>_tsan under
# ThreadSanitizer, without OpenMP (whose runtime is not instrumented).
build/%: tests/c/%.c run.c run_simd.h babyllama.h tests/c/llama2c_topp.h
	@mkdir -p build
	$(CC) $(WARN) $(CFLAGS) $(OPENMP) -I. -o $@ $< -lm $(PTHREAD)

# bench/run_speed.py's programs: the machine's limits, the engine's speed (fast and reference
# kernels), what top-p costs
build/machine: bench/machine.c
	@mkdir -p build
	$(CC) $(WARN) $(CFLAGS) $(OPENMP) -o $@ $< -lm $(PTHREAD)

build/speed: bench/speed.c run.c run_simd.h babyllama.h
	@mkdir -p build
	$(CC) $(WARN) $(CFLAGS) $(OPENMP) -I. -o $@ $< -lm $(PTHREAD)

build/speed_ref: bench/speed.c run.c babyllama.h
	@mkdir -p build
	$(CC) $(WARN) $(CFLAGS) $(OPENMP) -DBL_REFERENCE -I. -o $@ $< -lm $(PTHREAD)

build/speed_serial: bench/speed.c run.c run_simd.h babyllama.h
	@mkdir -p build
	$(CC) $(WARN) $(CFLAGS) $(SIMD) -I. -o $@ $< -lm $(PTHREAD)

build/topp: bench/topp.c run.c run_simd.h babyllama.h tests/c/llama2c_topp.h
	@mkdir -p build
	$(CC) $(WARN) $(CFLAGS) $(SIMD) -I. -o $@ $< -lm $(PTHREAD)

build/%_ref: tests/c/%.c run.c babyllama.h tests/c/llama2c_topp.h
	@mkdir -p build
	$(CC) $(WARN) $(CFLAGS) $(OPENMP) -DBL_REFERENCE -I. -o $@ $< -lm $(PTHREAD)

build/%_debug: tests/c/%.c run.c run_simd.h babyllama.h tests/c/llama2c_topp.h
	@mkdir -p build
	$(CC) $(WARN) $(SANITIZE) -DPARALLEL_MIN_WORK=1 -pthread -I. -o $@ $< -lm $(PTHREAD)

build/%_tsan: tests/c/%.c run.c run_simd.h babyllama.h tests/c/llama2c_topp.h
	@mkdir -p build
	$(CC) $(WARN) -g -O1 $(TSAN) $(SIMD) -DPARALLEL_MIN_WORK=1 -I. -o $@ $< -lm $(PTHREAD)

# attention.c (the training kernel attention.py binds) against its double-precision reference,
# under the sanitizers and optimized as the bindings build it
build/test_attention_debug: tests/c/test_attention.c attention.c
	@mkdir -p build
	$(CC) $(WARN) $(SANITIZE) $(OPENMP) -o $@ $< -lm $(PTHREAD)

build/test_attention: tests/c/test_attention.c attention.c
	@mkdir -p build
	$(CC) $(WARN) $(CFLAGS) -ffp-contract=fast $(OPENMP) -o $@ $< -lm $(PTHREAD)

# the C unit tests, under the sanitizers (leaks and data races included), then optimized with
# the fast kernels and with the reference kernels (two threads: the threaded paths too)
test-c: build/test_api_debug $(if $(TSAN),build/test_api_tsan) build/test_api build/test_api_ref \
        build/test_attention_debug build/test_attention
	OMP_NUM_THREADS=3 ./build/test_api_debug
	OMP_NUM_THREADS=2 ./build/test_api
	OMP_NUM_THREADS=2 ./build/test_api_ref
	OMP_NUM_THREADS=2 ./build/test_attention_debug
	OMP_NUM_THREADS=2 ./build/test_attention
	$(if $(TSAN),OMP_NUM_THREADS=3 ./build/test_api_tsan,@echo "test-c: no ThreadSanitizer runtime here: data-race run skipped")
	$(if $(ASAN),,@echo "test-c: no AddressSanitizer runtime here: ran without sanitizers")

# ---- fuzzing (tests/fuzz/): libFuzzer targets built with clang under ASan + UBSan ---------------
# Each target runs FUZZ_SECONDS from its committed seeds (tests/fuzz/corpus/<t>) plus what earlier
# runs found (build/fuzz/corpus/<t>); any crash, sanitizer report, leak, timeout or OOM fails the
# target and leaves its input in build/fuzz/crash-<t>-*: commit it under tests/fuzz/regressions/<t>/
# with the fix. `fuzz-regress` replays every committed regression input (part of `make fuzz`).
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := checkpoint tokenizer encode cli
FUZZ_FLAGS   := -g -O1 -fno-omit-frame-pointer $(NATIVE) -pthread -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_OPTS    := -timeout=10 -rss_limit_mb=2048 -close_fd_mask=3 -print_final_stats=1

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h run.c run_simd.h babyllama.h
	@mkdir -p build/fuzz
	@command -v $(FUZZ_CC) >/dev/null || { echo "error: make fuzz needs clang with libFuzzer (apt-get install -y clang)" >&2; exit 1; }
	$(FUZZ_CC) $(FUZZ_FLAGS) -I. -o $@ $< -lm

fuzz-regress: $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)
	@for t in $(FUZZ_TARGETS); do \
	  files=$$(ls tests/fuzz/regressions/$$t/* 2>/dev/null); \
	  if [ -n "$$files" ]; then echo "fuzz-regress: $$t: $$(echo $$files | wc -w) inputs"; \
	    ./build/fuzz/fuzz_$$t $(FUZZ_OPTS) $$files >build/fuzz/regress-$$t.log 2>&1 || { tail -40 build/fuzz/regress-$$t.log; exit 1; }; fi; \
	done

# the same targets without libFuzzer (gcc, ASan + UBSan): every seed and regression input, once
build/fuzz_replay_%: tests/fuzz/fuzz_%.c tests/fuzz/replay.c tests/fuzz/fuzz.h run.c run_simd.h babyllama.h
	@mkdir -p build
	$(CC) $(WARN) $(SANITIZE) -pthread -I. -o $@ tests/fuzz/replay.c $< -lm

fuzz-replay: $(FUZZ_TARGETS:%=build/fuzz_replay_%)
	@for t in $(FUZZ_TARGETS); do ./build/fuzz_replay_$$t tests/fuzz/corpus/$$t/* $$(ls tests/fuzz/regressions/$$t/* 2>/dev/null) >/dev/null 2>build/fuzz_replay_$$t.log \
	  || { tail -30 build/fuzz_replay_$$t.log; echo "fuzz-replay: $$t FAILED"; exit 1; }; echo "fuzz-replay: $$t ok"; done

fuzz: fuzz-regress
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus/$$t; echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  ./build/fuzz/fuzz_$$t $(FUZZ_OPTS) -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=build/fuzz/crash-$$t- \
	    build/fuzz/corpus/$$t tests/fuzz/corpus/$$t >build/fuzz/$$t.log 2>&1 \
	    || { tail -60 build/fuzz/$$t.log; echo "fuzz: $$t FAILED (input: build/fuzz/crash-$$t-*)"; exit 1; }; \
	  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" build/fuzz/$$t.log | sed "s/^/fuzz: $$t: /"; \
	done

# ---- valgrind: the C API tests built without sanitizers, and one generation of ./run ------------
VALGRIND := valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect,possible --quiet

build/test_api_plain: tests/c/test_api.c run.c run_simd.h babyllama.h tests/c/llama2c_topp.h
	@mkdir -p build
	$(CC) $(WARN) -g -O1 $(SIMD) -pthread -I. -o $@ $< -lm $(PTHREAD)

build/run_plain: run.c run_simd.h babyllama.h
	@mkdir -p build
	$(CC) $(WARN) -g -O1 $(SIMD) -o $@ run.c -lm $(PTHREAD)

valgrind: build/test_api_plain build/run_plain
	@command -v valgrind >/dev/null || { echo "error: make valgrind needs valgrind (apt-get install -y valgrind)" >&2; exit 1; }
	$(VALGRIND) ./build/test_api_plain
	$(VALGRIND) ./build/run_plain tests/fuzz/corpus/checkpoint/v2_g8.bin -z tests/fuzz/corpus/tokenizer/tok8.bin -n 4 -s 1 -i "a"
	@if [ -f $(VALGRIND_MODEL) ]; then echo "$(VALGRIND) ./build/run_plain $(VALGRIND_MODEL) ..."; \
	  $(VALGRIND) ./build/run_plain $(VALGRIND_MODEL) -z $(VALGRIND_TOK) -n 64 -s 42 -T 2 -i "Once upon a time" >/dev/null; \
	else echo "valgrind: $(VALGRIND_MODEL) absent: generation checked on the tiny seed model only"; fi

VALGRIND_MODEL ?= ../shared/models/aidreams260K/aidreams260K.bin
VALGRIND_TOK   ?= ../shared/models/aidreams260K/tok512.bin

# ---- Python environment ---------------------------------------------------------------------
# The stamp file re-installs when the install files change.
$(VENV)/.installed: pyproject.toml $(wildcard setup.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The bindings' extension (pip install -e . compiled it first) is recompiled in place whenever the
# engine changes, so `import babyllama` always runs the current run.c.
build/.bindings: run.c run_simd.h babyllama.h attention.c babyllama/_build.py $(VENV)/.installed
	@mkdir -p build
	$(PY) babyllama/_build.py
	touch $@

# ---- quickstart: a story from the bundled model, from the C CLI and from Python ----------------
STORY_MODEL := models/tinystories-cpu.bin

quickstart: story-model all build/.bindings
	@echo "--- ./run $(STORY_MODEL) (the C CLI)"
	./run $(STORY_MODEL) -i "Once upon a time" -n 200 -t 0.8 -s 42
	@echo "--- import babyllama (the same engine from Python)"
	$(PY) -m babyllama $(STORY_MODEL) -i "Lily found a little box" -n 150 -t 0.8 -s 7

# ---- demo: the web page of demo.py (DEMO_ARGS passes options, e.g. DEMO_ARGS="--port 8000") -----
demo: story-model build/.bindings
	$(PY) demo.py $(DEMO_ARGS)

story-model:
	@test -f $(STORY_MODEL) || { echo "error: $(STORY_MODEL) is missing: the bundled story model is not in this checkout (train one: see README.md)" >&2; exit 1; }

test: all test-c fuzz-replay run_debug $(VENV)/.installed build/.bindings
	$(PY) -m pytest -q tests

clean:
	rm -rf run run_ref run_debug build *.egg-info babyllama/*.so babyllama/_babyllama.c
