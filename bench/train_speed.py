"""
bench/train_speed.py: train.py's training speed (tokens/s) on this CPU, plain eager fp32 versus the
speed settings train.py offers (bf16 autocast, which runs on AVX512-BF16 or AMX where the CPU has it;
torch.compile; the AdamW implementation; glibc keeping freed memory; our attention kernel; threads),
measured side by side in one run and printed as a table. Each row adds to the one before it, up to
"+ keep memory, our attention", which is what train.py does by default on a CPU with --compile.

    python bench/train_speed.py                      # the 260K and 15M shapes (llama2.c's)
    python bench/train_speed.py --shapes cpu --iters 20

Each cell is one real `train.py` run (a subprocess, fresh data, eval reduced to one batch); its
tokens/s is the median over the iterations after the first --warmup (which include compilation).
Data: 260K needs a 512-piece vocabulary and 15M Meta's 32k one, so the shared TinyStories text is
pretokenized for each (cached under data/bench/). What it does not do: GPUs, or anything but speed.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("BABYLLAMA_SHARED", ROOT.parent / "shared"))
TEXT = SHARED / "data" / "tinystories"
BENCH_DATA = ROOT / "data" / "bench"

# shape -> (train.py args, micro-batch); the batch keeps an iteration around a second or less
SHAPES = {
    "260K": (["--preset", "260K"], 32),
    "15M": (["--preset", "15M"], 8),
    "cpu": (["--preset", "cpu", "--max_minutes", "0"], 32),
}
# name -> train.py args. The baseline is what plain PyTorch does by default on a CPU: fp32, eager,
# AdamW's for-loop implementation, scaled_dot_product_attention, glibc's malloc as it comes, all cores.
PLAIN = ["--attention", "sdpa", "--keep_memory", "false"]
VARIANTS = {
    "eager fp32 (baseline)": ["--dtype", "float32", "--adamw", "loop", *PLAIN],
    "eager fp32, fused AdamW": ["--dtype", "float32", "--adamw", "fused", *PLAIN],
    "eager bf16 autocast, fused AdamW": ["--dtype", "bfloat16", "--adamw", "fused", *PLAIN],
    "compiled bf16, fused AdamW": ["--dtype", "bfloat16", "--adamw", "fused", "--compile", *PLAIN],
    "+ keep memory": ["--dtype", "bfloat16", "--adamw", "fused", "--compile", "--attention", "sdpa"],
    "+ keep memory, our attention": ["--dtype", "bfloat16", "--adamw", "fused", "--compile",
                                     "--attention", "babyllama"],
    "eager fp32, keep memory, our attention": ["--dtype", "float32", "--adamw", "fused", "--attention", "babyllama"],
    "best, 1 thread": ["--dtype", "bfloat16", "--adamw", "fused", "--compile", "--attention", "babyllama",
                       "--threads", "1"],
}


def data_for(shape):
    """A pretokenized directory whose vocabulary fits the shape (made once, then reused)."""
    from tinystories import find_inputs, pretokenize, train_vocab
    paths = find_inputs(TEXT)
    if shape == "260K":
        tok = BENCH_DATA / "tok512.model"
        if not tok.exists():
            train_vocab(512, paths, tok)
    elif shape == "15M":
        tok = SHARED / "tokenizers" / "llama2" / "tokenizer.model"
    else:
        tok = ROOT / "tokenizer.model"
    out = BENCH_DATA / f"{shape}"
    if not (out / "meta.json").exists() or not json.loads((out / "meta.json").read_text()).get("complete"):
        pretokenize(paths, tok, out, progress=False)
    return out


def measure(shape, variant, iters, warmup, data_dir):
    args, batch = SHAPES[shape]
    slug = "".join(c if c.isalnum() else "_" for c in variant)
    out = BENCH_DATA / "runs" / f"{shape}-{slug}"
    if out.exists():
        for f in out.iterdir():
            f.unlink()
    cmd = [sys.executable, str(ROOT / "train.py"), *args, *VARIANTS[variant], "--data_dir", str(data_dir),
           "--out_dir", str(out), "--batch_size", str(batch), "--gradient_accumulation_steps", "1",
           "--max_iters", str(iters), "--eval_interval", str(10**9), "--eval_iters", "1",
           "--log_interval", "1", "--warmup_iters", "10"]
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        return None, f"failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}"
    events = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [e["tok_s"] for e in events if e["event"] == "train" and e["iter"] > warmup]
    warned = "compile failed" in p.stderr
    return statistics.median(rates), f"{time.time() - t0:.0f}s wall" + (" (compile FAILED)" if warned else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("--shapes", nargs="+", default=["260K", "15M"], choices=list(SHAPES))
    ap.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if "1 thread" not in v],
                    choices=list(VARIANTS))
    ap.add_argument("--iters", type=int, default=14, help="training iterations per run")
    ap.add_argument("--warmup", type=int, default=4, help="first iterations left out of the median")
    a = ap.parse_args()
    if not TEXT.is_dir():
        sys.exit(f"error: {TEXT} not found (the shared TinyStories text; set BABYLLAMA_SHARED)")
    if a.iters <= a.warmup:
        sys.exit(f"error: --iters {a.iters} must exceed --warmup {a.warmup}")
    rows = []
    for shape in a.shapes:
        data_dir = data_for(shape)
        base = None
        for v in a.variants:
            print(f"{shape:>5} | {v} ...", file=sys.stderr, flush=True)
            rate, note = measure(shape, v, a.iters, a.warmup, data_dir)
            if v == "eager fp32 (baseline)":
                base = rate
            rows.append((shape, v, rate, (rate / base) if (rate and base) else None, note))
            print(f"{shape:>5} | {v} | {rate or 0:,.0f} tok/s | {note}", file=sys.stderr, flush=True)
    print(f"\n{'shape':>5} | {'settings':<38} | {'tokens/s':>9} | {'vs eager fp32':>13} | note")
    print(f"{'-' * 5}-|-{'-' * 38}-|-{'-' * 9}-|-{'-' * 13}-|-----")
    for shape, v, rate, ratio, note in rows:
        r = f"{rate:9,.0f}" if rate else f"{'-':>9}"
        x = f"{ratio:12.2f}x" if ratio else f"{'-':>13}"
        print(f"{shape:>5} | {v:<38} | {r} | {x} | {note}")


if __name__ == "__main__":
    main()
