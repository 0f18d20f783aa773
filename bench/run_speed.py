"""
Generation speed of the C engine (./run and the Python bindings) beside PyTorch, as a table.

    python bench/run_speed.py                       # stories15M and stories110M shapes, 1 and 2 threads
    python bench/run_speed.py --shapes 15M --runs 5 --tokens 256

What it measures: tokens per second while generating from BOS with temperature 1.0 and top-p 0.9,
on random-weight models in llama2.c's stories15M and stories110M shapes (vocab 32000), exported by
export.py as version 1 (fp32) and version 2 (int8 groups of 64). Engines: `./run` (its own
"achieved tok/s" line, which leaves out the first position), the bindings (`Model.generate`,
stream=True, tokens counted as they arrive, timed around the call), and PyTorch's KV-cached
`model.generate` on the same weights (read back with export.load_bin; for the int8 files PyTorch
runs the dequantized fp32 weights, so that column repeats the fp32 measurement). Each cell is the
median of --runs runs in a fresh process with OMP_NUM_THREADS and torch.set_num_threads set to the
thread count. The models are written once to --work (default out/bench) and reused.
What it does not do: check correctness (the tests do) or measure prompt processing.
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="15M,110M", help="comma separated: 15M, 110M")
    ap.add_argument("--threads", default="1,2", help="comma separated thread counts")
    ap.add_argument("--tokens", type=int, default=0,
                    help="tokens per run (default: 128 for 15M, 48 for 110M)")
    ap.add_argument("--runs", type=int, default=3, help="runs per cell; the median is shown")
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
    threads = [int(t) for t in args.threads.split(",") if t]
    if not (ROOT / "run").exists():
        sys.exit("error: ./run is not built (run `make`)")
    work = Path(args.work)
    models = make_models(work, shapes)
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
        tokens = args.tokens or (128 if shape == "15M" else 48)
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
          f"int8 rows; total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
