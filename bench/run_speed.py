"""
Speed of the C engine beside the machine's limits, as tables.

    python bench/run_speed.py                  # the engine table: 15M, 42M, 110M shapes (~6 minutes)
    python bench/run_speed.py --shapes 15M     # one shape
    python bench/run_speed.py --compare        # also ./run, the bindings and PyTorch, 1 and 2 threads

The engine table (the default): first the machine, measured in the same run (bench/machine.c:
memory read bandwidth and fp32 FMA peak, 1 and 2 threads). Then, for random-weight models in
llama2.c's stories15M, stories42M and stories110M shapes (vocab 32000), exported by export.py as
version 1 (fp32) and version 2 (int8 groups of 64, or the largest size that divides the widths),
bench/speed.c (the engine through babyllama.h, OMP_NUM_THREADS=--threads) measures:
- decode tok/s: bl_forward + bl_sample one token at a time, as ./run does, with t=1 and top-p
  off: llama2.c's `-t 1.0 -p 1.0`, the setting of the llama2.c figures in issue 4 (and the same
  with top-p 0.9, ./run's default, in its own column); the median of --engine_runs runs;
  GB/s = the weight bytes read per token x tok/s; % floor = tok/s / (read bandwidth / weight bytes),
  decoding one stream reads every weight once per token, so that is its speed limit; the read
  bandwidth is probed again just before each run ("probe GB/s": the median of those probes): on
  this VM it moves between ~30 and ~58 GB/s from one minute to the next;
- the same decode with run.c's portable reference kernels (`-DBL_REFERENCE`, built in this run
  with the same flags, run in turn with the fast build): "ref" and the speedup over it;
- prefill tok/s: a 200-token prompt in one bl_prefill (best of 3), and its ratio to decode;
- batch: bl_generate_batch of 1 and of --batch stories (t=1, top-p off): new tokens of all
  stories per second, and the ratio.
Then: 2 threads against 1 (110M fp32 decode), a build without OpenMP against the OpenMP build on
one thread (15M fp32), each pair run in turn --engine_runs times (medians), and what top-p costs
per token (bench/topp.c) beside a 15M token's time.
The --compare table is the previous issue's: tok/s of ./run, of the bindings and of PyTorch's
KV-cached generate on the same weights, 1 and 2 threads, median of --runs.
What it does not do: check correctness (the tests do). Numbers depend on the machine's load: the
load average is printed with them.
"""
import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {  # llama2.c's published shapes (FORMATS.md §2)
    "15M": dict(dim=288, n_layers=6, n_heads=6, hidden_dim=768, max_seq_len=256),
    "42M": dict(dim=512, n_layers=8, n_heads=8, hidden_dim=1376, max_seq_len=1024),
    "110M": dict(dim=768, n_layers=12, n_heads=12, hidden_dim=2048, max_seq_len=1024),
}
VOCAB = 32000


def write_tokenizer(path):
    """A 32000-piece tokenizer.bin whose every piece is printable ASCII, so that each generated
    token prints something (random weights make no sense anyway) and one token = one piece."""
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b" w%d" % i for i in range(3, VOCAB)]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<I", max(map(len, pieces))))
        for i, p in enumerate(pieces):
            f.write(struct.pack("<fi", -float(i), len(p)) + p)
    os.replace(tmp, path)


def make_models(work, shapes):
    """Random-weight models, exported once: {(shape, 'fp32'|'int8'): path}."""
    sys.path.insert(0, str(ROOT))
    import torch
    import export
    from model import ModelArgs, Transformer

    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for shape in shapes:
        paths = {"fp32": work / f"random{shape}_v1.bin", "int8": work / f"random{shape}_v2.bin"}
        if not all(p.exists() for p in paths.values()):
            print(f"exporting random {shape} models to {work} ...", file=sys.stderr, flush=True)
            torch.manual_seed(1337)
            model = Transformer(ModelArgs(vocab_size=VOCAB, **SHAPES[shape])).eval()
            export.export_v1(model, str(paths["fp32"]))
            export.export_v2(model, str(paths["int8"]), group_size=64)
            del model
        for fmt, p in paths.items():
            out[(shape, fmt)] = p
    return out


# ---------------------------------------------------------------------------------------------
# workers: each runs in its own process (so thread settings start fresh) and prints JSON

def worker_bindings(model, tok, tokens, runs, threads):
    import babyllama
    rates = []
    with babyllama.Model(model, tok, threads=threads) as m:
        m.generate("", max_new_tokens=4, seed=1)  # warm-up: page in the weights
        for r in range(runs):
            t0 = time.perf_counter()
            n = sum(1 for _ in m.generate("", max_new_tokens=tokens, seed=42 + r, stream=True))
            rates.append(n / (time.perf_counter() - t0))
    return rates


def worker_torch(model, tokens, runs, threads):
    import torch
    sys.path.insert(0, str(ROOT))
    import export
    torch.set_num_threads(threads)
    net = export.load_bin(str(model)).eval()
    idx = torch.tensor([[1]])
    net.generate(idx, 4, temperature=1.0, top_p=0.9)  # warm-up
    rates = []
    for r in range(runs):
        torch.manual_seed(42 + r)
        t0 = time.perf_counter()
        out = net.generate(idx, tokens, temperature=1.0, top_p=0.9)
        rates.append((out.shape[1] - 1) / (time.perf_counter() - t0))
    return rates


def run_cli(model, tok, tokens, runs, threads):
    """./run's own tok/s line (it starts the clock after the first position)."""
    rates = []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for r in range(runs):
        cmd = [str(ROOT / "run"), str(model), "-z", str(tok), "-n", str(tokens + 1), "-t", "1.0",
               "-p", "0.9", "-s", str(42 + r), "-T", str(threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if res.returncode != 0:
            sys.exit(f"error: {' '.join(cmd)} failed: {res.stderr.strip()}")
        m = re.search(r"achieved tok/s:\s*([0-9.]+)", res.stderr)
        if not m:
            sys.exit(f"error: no 'achieved tok/s' in ./run's stderr: {res.stderr.strip()}")
        rates.append(float(m.group(1)))
    return rates


def in_process(kind, model, tok, tokens, runs, threads):
    """Run one worker in a fresh interpreter with `threads` OpenMP / torch threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    args = [sys.executable, __file__, "--worker", kind, "--model", str(model), "--tok", str(tok),
            "--tokens", str(tokens), "--runs", str(runs), "--threads", str(threads)]
    res = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    if res.returncode != 0:
        sys.exit(f"error: {kind} worker failed on {model}: {res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# the engine table: bench/speed.c (fast and reference kernels), bench/machine.c, bench/topp.c

TOKENS = {"15M": (128, 32), "42M": (64, 16), "110M": (32, 8)}  # decode positions, new tokens per story


def build(targets):
    """make the bench programs (the Makefile's flags: -O3 -march=native, OpenMP)."""
    res = subprocess.run(["make", "-s", *targets], cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"error: make {' '.join(targets)} failed: {res.stderr.strip()[-2000:]}")


def run_json(cmd, threads, timeout=900):
    """Run a bench program with OMP_NUM_THREADS=threads; its last stdout line is JSON."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout)
    if res.returncode != 0:
        sys.exit(f"error: {' '.join(map(str, cmd))} failed: {res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def speeds(binaries, model, shape, threads, batch, prefill=200, runs=1, probe=False):
    """{binary: bench/speed.c's rates}, the binaries run in turn (side by side), `runs` times, the
    median of each rate. probe: a read-bandwidth probe (bench/machine.c) before each round, whose
    median comes back as binaries[0]'s "probe"."""
    steps, new = TOKENS[shape]
    got = {b: [] for b in binaries}
    probes = []
    for _ in range(runs):
        if probe:
            probes.append(run_json([ROOT / "build" / "machine"], threads)["read_gbs"])
        for b in binaries:
            got[b].append(run_json([ROOT / "build" / b, model, steps, prefill, batch, new], threads))
    out = {b: {k: statistics.median(g[k] for g in got[b]) for k in got[b][0]} for b in binaries}
    if probe:
        out[binaries[0]]["probe"] = statistics.median(probes)
    return out


def decode_in_turn(cases, runs):
    """Median decode tok/s of each (binary, model, shape, threads), the cases run in turn `runs`
    times: side by side, as this VM's speed moves from minute to minute."""
    got = [[] for _ in cases]
    for _ in range(runs):
        for i, (binary, model, shape, threads) in enumerate(cases):
            got[i].append(run_json([ROOT / "build" / binary, model, TOKENS[shape][0], 0, 0, 0], threads)["decode"])
    return [statistics.median(g) for g in got]


def engine_table(shapes, models, threads, batch, runs):
    build(["build/machine", "build/speed", "build/speed_ref", "build/speed_serial", "build/topp"])
    one = run_json([ROOT / "build" / "machine"], 1)
    many = run_json([ROOT / "build" / "machine"], threads)
    bw = many["read_gbs"]
    print(f"# machine: memory read {one['read_gbs']:.1f} GB/s (1 thread), {bw:.1f} GB/s ({threads} threads); "
          f"fp32 FMA peak {one['fma_gflops']:.0f} GFLOP/s (1 thread), {many['fma_gflops']:.0f} GFLOP/s "
          f"({threads} threads)")
    scaling = many["fma_gflops"] / one["fma_gflops"]
    if scaling < 0.9 * threads:  # on a shared VM a core can be partly taken by another guest
        print(f"# warning: {threads} threads compute only {scaling:.2f}x one thread's FMA peak: a core is partly "
              f"taken by other work, so whatever needs all {threads} threads (prompts, batches) reads low in this run")
    print(f"# engine: {threads} threads, median of {runs} runs (fast and reference builds in turn); decode from BOS with t=1.0 and top-p off "
          f"(llama2.c's -t 1.0 -p 1.0, as in issue 4's figures), and with top-p 0.9 (./run's default); "
          f"floor = read bandwidth / weight bytes, the bandwidth probed again just before each run (this VM's "
          f"moves from minute to minute; the median probe of a model's runs is shown); ref = run.c's reference kernels (-DBL_REFERENCE); "
          f"prefill = a 200-token prompt in one pass; batch = {batch} stories at once vs 1 (aggregate new "
          f"tok/s, t=1.0, top-p off)")
    head = ("| model | format | weights MB | probe GB/s | decode tok/s | GB/s | % floor | top-p 0.9 tok/s | ref tok/s | speedup | "
            f"prefill tok/s | prefill/decode | batch 1 tok/s | batch {batch} tok/s | batch gain |")
    print(head)
    print("|" + "|".join("---" for _ in head.split("|")[1:-1]) + "|")
    decode = {}
    for shape in shapes:
        for fmt in ("fp32", "int8"):
            model = models[(shape, fmt)]
            mb = model.stat().st_size / 1e6
            both = speeds(["speed", "speed_ref"], model, shape, threads, batch, runs=runs, probe=True)
            fast, ref = both["speed"], both["speed_ref"]
            probe = fast["probe"]
            d = decode[(shape, fmt)] = fast["decode"]
            floor = probe * 1e3 / mb
            print(f"| stories{shape} | {fmt} | {mb:.0f} | {probe:.1f} | {d:.1f} | {d * mb / 1e3:.1f} | {100 * d / floor:.0f}% | "
                  f"{fast['decode_topp']:.1f} | {ref['decode']:.1f} | {d / ref['decode']:.2f}x | {fast['prefill']:.0f} | "
                  f"{fast['prefill'] / d:.1f}x | {fast['batch1']:.1f} | {fast['batchN']:.0f} | "
                  f"{fast['batchN'] / fast['batch1']:.1f}x |", flush=True)
            print(f"|   reference kernels |  |  |  | {ref['decode']:.1f} |  |  | {ref['decode_topp']:.1f} |  |  | "
                  f"{ref['prefill']:.0f} | {ref['prefill'] / ref['decode']:.1f}x | {ref['batch1']:.1f} | "
                  f"{ref['batchN']:.0f} | {ref['batchN'] / ref['batch1']:.1f}x |", flush=True)
    big = "110M" if "110M" in shapes else shapes[-1]
    big_model = models[(big, "fp32")]
    t1, tn = decode_in_turn([("speed", big_model, big, 1), ("speed", big_model, big, threads)], runs)
    print(f"# threads: stories{big} fp32 decode {t1:.1f} tok/s on 1 thread, {tn:.1f} on {threads}, in turn "
          f"(median of {runs}): {tn / t1:.2f}x (memory read bandwidth: {bw / one['read_gbs']:.2f}x)")
    small = "15M" if "15M" in shapes else shapes[0]
    small_model = models[(small, "fp32")]
    omp1, serial = decode_in_turn([("speed", small_model, small, 1), ("speed_serial", small_model, small, 1)], runs)
    print(f"# without OpenMP: stories{small} fp32 decode {serial:.1f} tok/s, with OpenMP on 1 thread "
          f"{omp1:.1f} tok/s, in turn (median of {runs}): {serial / omp1:.2f}x")
    tp = run_json([ROOT / "build" / "topp"], 1)
    for dist in ("flat", "peaked"):
        x = tp[dist]
        cost = max(x["topp_us"] - x["off_us"], 0.0)
        share = ", ".join(f"{100 * cost * decode[(small, f)] / 1e6:.1f}% of a stories{small} {f} token"
                          for f in ("fp32", "int8"))
        print(f"# top-p 0.9 over 32000 tokens, {dist} distribution: {cost:.0f} us per token beyond plain "
              f"sampling ({x['off_us']:.0f} us; llama2.c's qsort top-p: "
              f"{max(x['llama2c_us'] - x['off_us'], 0.0):.0f} us), {share}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="15M,42M,110M", help="comma separated: 15M, 42M, 110M")
    ap.add_argument("--engine_threads", type=int, default=2, help="threads for the engine table")
    ap.add_argument("--batch", type=int, default=32, help="stories at once for the batch columns")
    ap.add_argument("--engine_runs", type=int, default=3, help="runs of each cell (fast and reference builds in turn); the median is shown")
    ap.add_argument("--compare", action="store_true",
                    help="also the ./run / bindings / PyTorch table (1 and 2 threads; minutes more)")
    ap.add_argument("--threads", default="1,2", help="comma separated thread counts (--compare)")
    ap.add_argument("--tokens", type=int, default=0,
                    help="tokens per run for --compare (default: 128 for 15M, 64 for 42M, 48 for 110M)")
    ap.add_argument("--runs", type=int, default=3, help="runs per --compare cell; the median is shown")
    ap.add_argument("--work", default=str(ROOT / "out" / "bench"), help="where the models are written")
    ap.add_argument("--worker", choices=("bindings", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--tok", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        threads = int(args.threads)
        if args.worker == "bindings":
            rates = worker_bindings(args.model, args.tok, args.tokens, args.runs, threads)
        else:
            rates = worker_torch(args.model, args.tokens, args.runs, threads)
        print(json.dumps(rates))
        return

    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            sys.exit(f"error: --shapes: unknown shape {s!r} (known: {', '.join(SHAPES)})")
    if args.engine_threads < 1 or args.batch < 2 or args.engine_runs < 1:
        sys.exit("error: --engine_threads and --engine_runs must be >= 1, --batch >= 2")
    work = Path(args.work)
    models = make_models(work, shapes)
    load = os.getloadavg()
    print(f"# {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    t_start = time.time()
    engine_table(shapes, models, args.engine_threads, args.batch, args.engine_runs)
    if args.compare:
        compare_table(args, shapes, models, work)
    load = os.getloadavg()
    print(f"# total {time.time() - t_start:.0f} s; load average after: {load[0]:.2f}")


def compare_table(args, shapes, models, work):
    """The previous issue's table: ./run, the bindings and PyTorch, 1 and 2 threads."""
    threads = [int(t) for t in args.threads.split(",") if t]
    if not (ROOT / "run").exists():
        sys.exit("error: ./run is not built (run `make`)")
    tok = work / "tokenizer32000.bin"
    if not tok.exists():
        write_tokenizer(tok)

    load = os.getloadavg()
    print(f"# {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"median of {args.runs} runs; tok/s generating from BOS (t=1.0, top-p 0.9)")
    head = f"| {'model':<12} | {'format':<6} | {'threads':>7} | {'tokens':>6} | {'./run':>8} | " \
           f"{'bindings':>8} | {'PyTorch':>8} | {'run/torch':>9} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    t_start = time.time()
    for shape in shapes:
        tokens = args.tokens or {"15M": 128, "42M": 64}.get(shape, 48)
        for t in threads:
            torch_rate = None
            for fmt in ("fp32", "int8"):
                model = models[(shape, fmt)]
                cli = statistics.median(run_cli(model, tok, tokens, args.runs, t))
                py = statistics.median(in_process("bindings", model, tok, tokens, args.runs, t))
                if torch_rate is None:  # PyTorch runs fp32 weights for both rows
                    torch_rate = statistics.median(
                        in_process("torch", models[(shape, "fp32")], tok, tokens, args.runs, t))
                print(f"| {'stories' + shape:<12} | {fmt:<6} | {t:>7} | {tokens:>6} | {cli:>8.1f} | "
                      f"{py:>8.1f} | {torch_rate:>8.1f} | {cli / torch_rate:>8.2f}x |", flush=True)
    print(f"# PyTorch {__import__('torch').__version__} runs the dequantized fp32 weights in the "
          f"int8 rows; {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
