"""
Pretokenization speed: `tinystories.pretokenize` (every core, chunk cache, shards written) against a
single-process sentencepiece loop over the same stories (llama2.c's way: encode story by story,
collect the ids, write them), on the shared TinyStories text repeated --repeat times. Each row is the
best of --trials runs, the rows taking turns in this one run; the ratio is against the loop.

    python bench/pretokenize_speed.py                  # ../shared/data/tinystories, x4
    python bench/pretokenize_speed.py --repeat 8 --tokenizer ../shared/tokenizers/llama2/tokenizer.model

What it does not do: measure download or the reading of all_data JSON shards.
"""
import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import tinystories as ts  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402


def single_loop(paths, model, out):
    """The baseline: one process, one sentencepiece call per story, ids gathered then written."""
    tok = Tokenizer(model)
    ids = []
    for story in ts.iter_stories(paths):
        ids.extend(tok.encode(story, bos=True))
    np.array(ids, dtype=ts.token_dtype(tok.n_words)).tofile(out)
    return len(ids)


def sp_batch(paths, model, threads):
    """sentencepiece's own threaded batch encode of all stories at once (no shards written)."""
    tok = Tokenizer(model)
    return sum(len(x) for x in tok.encode_batch(list(ts.iter_stories(paths)), threads=threads))


def ours(paths, model, out, workers):
    shutil.rmtree(out, ignore_errors=True)
    d = ts.pretokenize(paths, model, out, workers=workers, progress=False)
    meta = ts.load_meta(d)["splits"]
    return meta["train"]["n_tokens"] + meta["val"]["n_tokens"]


def cpu_seconds():
    """CPU time of this process (all its threads) and of its finished child processes."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def best_times(rows, trials):
    """Best wall time of each row over trials (with the CPU time of that run), the rows taking
    turns so that a change in the machine's load hits them all."""
    best = {name: (0, float("inf"), 0.0) for name, _ in rows}
    for _ in range(trials):
        for name, fn in rows:
            t, c = time.perf_counter(), cpu_seconds()
            n = fn()
            wall, cpu = time.perf_counter() - t, cpu_seconds() - c
            if wall < best[name][1]:
                best[name] = (n, wall, cpu)
    return [(name, *best[name]) for name, _ in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "tinystories"))
    ap.add_argument("--tokenizer", default=str(ROOT / "tokenizer.model"))
    ap.add_argument("--repeat", type=int, default=4, help="copies of the text, for a stable timing")
    ap.add_argument("--trials", type=int, default=3)
    args = ap.parse_args()
    try:
        stories = list(ts.iter_stories(ts.find_inputs(args.data_dir)))
        Tokenizer(args.tokenizer)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    cores = os.cpu_count()
    tmp = Path(tempfile.mkdtemp(prefix="pretok_bench_"))
    try:
        text = tmp / "stories.txt"
        text.write_text("".join(s + "\n<|endoftext|>\n" for s in stories) * args.repeat, encoding="utf-8")
        paths = [text]
        rows = [
            ("sentencepiece loop, 1 process (baseline)", lambda: single_loop(paths, args.tokenizer, tmp / "loop.bin")),
            (f"sentencepiece batch encode, {cores} threads, no output",
             lambda: sp_batch(paths, args.tokenizer, cores)),
            ("pretokenize, 1 worker", lambda: ours(paths, args.tokenizer, tmp / "one", 1)),
            (f"pretokenize, {cores} workers (default)", lambda: ours(paths, args.tokenizer, tmp / "all", None)),
        ]
        results = best_times(rows, args.trials)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(stories) * args.repeat:,} stories ({args.repeat} x {len(stories):,}), tokenizer "
          f"{args.tokenizer}, {cores} cores, best wall time of {args.trials}; tokens/s and "
          f"ratio from wall time; CPU s = all threads and processes of that run")
    base = results[0][1] / results[0][2]
    print(f"| {'method':<48} | {'tokens':>10} | {'wall s':>6} | {'CPU s':>6} | {'tokens/s':>10} | {'ratio':>5} |")
    print(f"|{'-' * 50}|{'-' * 12}|{'-' * 8}|{'-' * 8}|{'-' * 12}|{'-' * 7}|")
    for name, n, wall, cpu in results:
        print(f"| {name:<48} | {n:>10,} | {wall:>6.2f} | {cpu:>6.2f} | {n / wall:>10,.0f} | {n / wall / base:>5.2f} |")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f} on {cores} cores "
          f"(other work on the machine lowers the parallel rows most)")

if __name__ == "__main__":
    main()
