"""
kill -9 at random moments, then resume: train.py and `tinystories.py pretokenize` must lose nothing.

- train.py: a tiny run is killed (SIGKILL to its process group) several times at random moments,
  one of them in the middle of a checkpoint write (BABYLLAMA_SLOW_CKPT_WRITE makes every write of
  the checkpoint pause, and the kill waits for ckpt.pt.tmp to appear), and resumed each time. After
  every kill, ckpt.pt is loaded: it must be complete (every key, every tensor) and be the previous
  or a later checkpoint, never a half-written one. The final weights, optimizer state and last
  validation loss equal those of an uninterrupted run, bit for bit.
- pretokenize: killed at random moments and re-run; after every kill each shard under its final
  name is complete; the finished shards and meta.json are byte-identical to a clean run's.
What it does not do: kill a torchrun job (one process group per rank; tests/test_train.py covers DDP).
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, write_stories

PY = sys.executable
TINY = ["--dim", "32", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2", "--max_seq_len", "32",
        "--batch_size", "4", "--gradient_accumulation_steps", "2", "--dtype", "float32", "--device", "cpu",
        "--threads", "1", "--learning_rate", "5e-3", "--warmup_iters", "5", "--min_lr", "5e-4",
        "--max_iters", "21", "--eval_interval", "3", "--eval_iters", "1", "--log_interval", "1",
        "--dropout", "0.1", "--seed", "11", "--compile", "false"]
KEYS = {"model", "model_args", "optimizer", "iter_num", "best_val_loss", "config", "rng"}


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    """About 400 stories of real TinyStories text."""
    return write_stories(tmp_path_factory.mktemp("txt") / "stories.txt", 400)


def start(argv, env=None):
    return subprocess.Popen([PY, *map(str, argv)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, **(env or {})), start_new_session=True)


def kill9(proc):
    """SIGKILL the process and its children (pool workers), as a machine crash would."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    proc.stderr.close()


def wait_for(pred, proc, timeout=60):
    deadline = time.time() + timeout
    while not pred() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    return pred()


def load_complete(path, n_params):
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert KEYS <= set(ck), f"{path}: keys {sorted(ck)}"
    assert len(ck["model"]) == n_params and all(torch.isfinite(t).all() for t in ck["model"].values())
    assert len(ck["optimizer"]["state"]) > 0
    return ck


def test_train_survives_kill9_and_resumes_bit_identical(stories, tmp_path):
    from tinystories import pretokenize
    data = pretokenize([stories], out_dir=tmp_path / "data", progress=False, workers=1)
    args = TINY + ["--data_dir", data]
    a, b = tmp_path / "a", tmp_path / "b"
    p = subprocess.run([PY, ROOT / "train.py", *map(str, args), "--out_dir", a], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    ref = torch.load(a / "ckpt.pt", map_location="cpu", weights_only=True)
    n_params = len(ref["model"])
    rng = random.Random()  # a different schedule of kills each run
    seen = 0

    def trained_past(it):  # metrics.jsonl shows a training step after iteration `it`
        m = b / "metrics.jsonl"
        lines = m.read_text().splitlines() if m.exists() else []
        return any(e.get("event") == "train" and e["iter"] > it for e in map(json.loads, lines[-3:]) if e)

    # kills: during training (after some steps past the last checkpoint), and twice in the middle of
    # writing a checkpoint over an existing one (the slow writer pauses 2 ms per write call)
    mid_write = 0
    for k, kind in enumerate(["train", "write", "train", "write"]):
        resume = (b / "ckpt.pt").exists()
        (b / "ckpt.pt.tmp").unlink(missing_ok=True)  # a killed write's leftover (the next save overwrites it)
        proc = start(["train.py", *args, "--out_dir", b] + (["--init_from", "resume"] if resume else []),
                     env={"BABYLLAMA_SLOW_CKPT_WRITE": "0.002"} if kind == "write" else None)
        if kind == "write":
            assert wait_for(lambda: (b / "ckpt.pt.tmp").exists(), proc), "no checkpoint write seen"
            time.sleep(rng.uniform(0.0, 0.03))
        else:
            target = seen + 3 + rng.randint(1, 2)  # past the next checkpoint
            assert wait_for(lambda: trained_past(target), proc), f"no training past {target}"
            time.sleep(rng.uniform(0.0, 0.2))
        assert proc.poll() is None, "finished before the kill: " + proc.stderr.read().decode()[-2000:]
        kill9(proc)
        torn = (b / "ckpt.pt.tmp").exists()  # killed while the new checkpoint was half written
        mid_write += torn
        ck = load_complete(b / "ckpt.pt", n_params)
        print(f"kill {k + 1} ({kind}{', mid-write' if torn else ''}): ckpt.pt complete, iter {ck['iter_num']} "
              f"(before: {seen})")
        assert ck["iter_num"] >= seen and ck["iter_num"] % 3 == 0, (ck["iter_num"], seen)
        seen = ck["iter_num"]
    assert mid_write >= 1, "no kill landed in the middle of a checkpoint write"
    p = subprocess.run([PY, ROOT / "train.py", *map(str, args), "--out_dir", b, "--init_from", "resume"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = load_complete(b / "ckpt.pt", n_params)
    assert got["iter_num"] == ref["iter_num"] == 21
    for k in ref["model"]:
        assert torch.equal(ref["model"][k], got["model"][k]), k
    for sa, sb in zip(ref["optimizer"]["state"].values(), got["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    last = [json.loads(x) for x in (d / "metrics.jsonl" for d in (a, b)) for x in [x.read_text().splitlines()[-1]]]
    assert last[0]["event"] == last[1]["event"] == "eval" and last[0]["val_loss"] == last[1]["val_loss"]


def test_pretokenize_survives_kill9(stories, tmp_path):
    from tinystories import shard_done
    cmd = ["tinystories.py", "pretokenize", stories, "--shard_stories", "20", "--workers", "1"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    p = subprocess.run([PY, *map(str, cmd), "--out_dir", clean], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    meta = json.loads((clean / "meta.json").read_text())
    sha, vocab = meta["tokenizer"]["sha256"], meta["vocab_size"]
    rng = random.Random()
    kills, delay = 0, 0.3
    for _ in range(12):
        proc = start(cmd + ["--out_dir", killed])
        # the tokenizer loads in ~1 s, then shards appear quickly: kill anywhere in that span
        wait_for(lambda: any(killed.glob("*.bin")) or any(killed.glob("*.tmp")), proc, timeout=30)
        time.sleep(rng.uniform(0.0, delay))
        if proc.poll() is not None:  # it finished first: start over, kill sooner
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
            proc.stderr.close()
            shutil.rmtree(killed)
            kills, delay = 0, delay / 2
            continue
        kill9(proc)
        kills += 1
        for f in killed.glob("*.bin"):  # whatever holds a final name is a whole shard
            assert shard_done(f, vocab, sha), f"{f.name} is incomplete after kill {kills}"
        if kills >= 4:
            break
    assert kills >= 3, f"pretokenize finished before 3 kills ({kills})"
    p = subprocess.run([PY, *map(str, cmd), "--out_dir", killed], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    names = sorted(f.name for f in clean.iterdir())
    assert names == sorted(f.name for f in killed.iterdir() if not f.name.endswith(".tmp"))
    for n in names:
        assert (clean / n).read_bytes() == (killed / n).read_bytes(), n
