"""
bench/attention_speed.py: one attention layer's forward + backward on this CPU, PyTorch's
scaled_dot_product_attention (its CPU flash kernel) against attention.py's kernel, side by side in
one run, for the head shapes of llama2.c's models and of our CPU preset. Prints a table.

    python bench/attention_speed.py
    python bench/attention_speed.py --dtype float32 --reps 5

Each cell: the median of --reps timed calls of causal attention on random q, k, v of the given
[B, T, H, D] (KV kv heads) and a backward of sum(output) through it, after one untimed call, with
torch's default threads; inputs in --dtype (bf16 is what training under autocast feeds it).
What it does not do: check results (tests/test_attention.py does), or time whole training steps
(bench/train_speed.py does).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import attention  # noqa: E402

# name -> (B, T, H, KV, D): the micro-batches bench/train_speed.py uses, plus two wider heads
SHAPES = {
    "260K (heads 8 wide)": (32, 512, 8, 4, 8),
    "cpu preset (32)": (16, 256, 5, 5, 32),
    "15M (48)": (8, 256, 6, 6, 48),
    "42M (64), T 256": (8, 256, 8, 8, 64),
    "42M (64), T 1024": (4, 1024, 8, 8, 64),
}


def sdpa(q, k, v):
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          is_causal=True).transpose(1, 2)


def time_ms(fn, shape, dtype, reps):
    B, T, H, KV, D = shape
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, T, H, D, generator=gen).to(dtype).requires_grad_()
    k, v = (torch.randn(B, T, KV, D, generator=gen).to(dtype).requires_grad_() for _ in range(2))
    times = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        fn(q, k, v).float().sum().backward()
        if i:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    if not attention.available():
        sys.exit("error: babyllama._attention is not compiled (pip install -e . or make build/.bindings)")
    dtype = getattr(torch, a.dtype)
    print(f"# {torch.get_num_threads()} threads, inputs {a.dtype}, forward + backward of one layer, "
          f"median of {a.reps}")
    print("| shape | B, T, H, KV, D | sdpa ms | ours ms | ours vs sdpa |")
    print("|---|---|---|---|---|")
    for name, shape in SHAPES.items():
        base, ours = time_ms(sdpa, shape, dtype, a.reps), time_ms(attention.causal_attention, shape, dtype, a.reps)
        print(f"| {name} | {', '.join(map(str, shape))} | {base:.1f} | {ours:.1f} | {base / ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
