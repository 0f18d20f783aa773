"""Tests of train.py on the shared TinyStories text: loss falls, a run killed at a random point and
resumed ends bit-identical to an uninterrupted one, a 2-process torchrun (gloo) run trains, the time
budget stops a run cleanly, and bad configs fail at start with one line. Tiny models, CPU only."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, TINYSTORIES, need

import train

PY = sys.executable
# a tiny model (GQA: 4 heads, 2 kv heads) that trains in seconds on one thread
TINY = ["--dim", "32", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2", "--max_seq_len", "32",
        "--batch_size", "4", "--gradient_accumulation_steps", "2", "--dtype", "float32", "--device", "cpu",
        "--threads", "1", "--learning_rate", "5e-3", "--warmup_iters", "5", "--min_lr", "5e-4"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The shared TinyStories text, pretokenized with the project tokenizer (about a second)."""
    from tinystories import find_inputs, pretokenize
    need(TINYSTORIES)
    out = tmp_path_factory.mktemp("data") / "tok4096"
    pretokenize(find_inputs(TINYSTORIES), out_dir=out, progress=False)
    return out


def run_train(args, env=None, check=True, torchrun=False):
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun else [PY]
    e = dict(os.environ, **(env or {}))
    p = subprocess.run(cmd + [str(ROOT / "train.py")] + [str(a) for a in args], cwd=ROOT, env=e,
                       capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, f"train.py failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def events(out_dir, kind):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def test_loss_falls_and_outputs_are_written(data_dir, tmp_path):
    out = tmp_path / "out"
    run_train(TINY + ["--data_dir", data_dir, "--out_dir", out, "--max_iters", 80, "--eval_interval", 40,
                      "--eval_iters", 8, "--log_interval", 10])
    ev = events(out, "eval")
    assert [e["iter"] for e in ev] == [0, 40, 80]
    # from uniform over 4096 pieces (ln 4096 = 8.3) to clearly below it, on held-out text too
    assert ev[0]["val_loss"] > 8.0
    assert ev[-1]["val_loss"] < ev[0]["val_loss"] - 2.0
    assert ev[-1]["val_loss"] < ev[1]["val_loss"]
    meta = json.loads((data_dir / "meta.json").read_text())["splits"]["val"]
    assert ev[-1]["val_bpb"] == pytest.approx(ev[-1]["val_loss"] / 0.6931471805599453 * meta["n_tokens"]
                                              / meta["n_bytes"])
    tr = events(out, "train")
    assert [e["iter"] for e in tr] == list(range(10, 81, 10))
    assert all(e["tok_s"] > 0 and e["ms"] > 0 for e in tr)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    assert ck["iter_num"] == 80 and ck["model_args"]["n_kv_heads"] == 2
    assert ck["tokenizer"]["vocab_size"] == 4096 and len(ck["tokenizer"]["sha256"]) == 64
    assert set(ck["rng"]) >= {"python", "numpy", "torch", "cuda"}
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ck["model"])


def test_killed_and_resumed_run_is_bit_identical(data_dir, tmp_path):
    # dropout on, so the restored RNG state matters too
    args = TINY + ["--data_dir", data_dir, "--max_iters", 40, "--eval_interval", 4, "--eval_iters", 1,
                   "--log_interval", 1, "--dropout", "0.1", "--seed", 7]
    a, b = tmp_path / "a", tmp_path / "b"
    run_train(args + ["--out_dir", a])
    ev = events(a, "eval")
    t_first, t_end = ev[1]["elapsed_s"], ev[-1]["elapsed_s"]

    proc = subprocess.Popen([PY, str(ROOT / "train.py")] + [str(x) for x in args + ["--out_dir", b]],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (b / "ckpt.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    delay = random.uniform(0.0, 0.7 * (t_end - t_first))
    print(f"killing after the first checkpoint + {delay:.2f}s")
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = torch.load(b / "ckpt.pt", weights_only=True)["iter_num"]
    assert 4 <= killed_at < 40

    run_train(args + ["--out_dir", b, "--init_from", "resume"])
    ca, cb = (torch.load(d / "ckpt.pt", weights_only=True) for d in (a, b))
    assert ca["iter_num"] == cb["iter_num"] == 40
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert events(a, "eval")[-1]["val_loss"] == events(b, "eval")[-1]["val_loss"]


def test_torchrun_two_processes_gloo(data_dir, tmp_path):
    out = tmp_path / "ddp"
    p = run_train(TINY + ["--data_dir", data_dir, "--out_dir", out, "--max_iters", 12, "--eval_interval", 6,
                          "--eval_iters", 2, "--log_interval", 3], torchrun=True)
    start = events(out, "start")[0]
    assert start["world_size"] == 2
    ev = events(out, "eval")
    assert [e["iter"] for e in ev] == [0, 6, 12] and ev[-1]["val_loss"] < ev[0]["val_loss"]
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 12
    assert p.stdout.count("eval iter 12") == 1  # rank 0 alone logs


def test_time_budget_stops_cleanly(data_dir, tmp_path):
    out = tmp_path / "budget"
    run_train(TINY + ["--data_dir", data_dir, "--out_dir", out, "--max_iters", 1000000, "--max_minutes", 0.1,
                      "--eval_interval", 1000000, "--eval_iters", 2, "--log_interval", 1])
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    assert 0 < ck["iter_num"] < 1000000
    tr = events(out, "train")
    assert tr[-1]["iter"] == ck["iter_num"]
    # the time-based cosine schedule has run its course: the last lr is near min_lr
    assert tr[-1]["lr"] < 0.15 * 5e-3
    assert ck["elapsed_s"] < 6 + 6  # budget 6 s; the final evaluation fits in it (slack for a loaded machine)


@pytest.mark.parametrize("args, env, says", [
    (["--n_heads", "5"], {}, "--n_heads 5 does not divide --dim 32"),
    (["--n_kv_heads", "3"], {}, "--n_kv_heads 3 does not divide --n_heads 4"),
    (["--vocab_size", "512"], {}, "--vocab_size 512 does not match the data"),
    (["--gradient_accumulation_steps", "3"], {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
     "not divisible by the number of processes (2)"),
    (["--init_from", "resume"], {}, "checkpoint not found"),
    (["--preset", "7B"], {}, "--preset '7B'"),
    (["--dtype", "float16"], {}, "float16 needs CUDA"),
])
def test_bad_config_fails_in_one_line(data_dir, tmp_path, monkeypatch, capsys, args, env, says):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        train.main(TINY + ["--data_dir", str(data_dir), "--out_dir", str(tmp_path / "o")] + args)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not (tmp_path / "o" / "ckpt.pt").exists()


def test_missing_data_fails_in_one_line_from_the_cli(data_dir, tmp_path):
    p = run_train(TINY + ["--data_dir", tmp_path / "nope"], check=False)
    assert p.returncode == 1 and p.stderr.strip() == f"error: data directory not found: {tmp_path / 'nope'} " \
        "(make it with `python tinystories.py pretokenize`)"
    # a data directory whose shard went missing
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "meta.json").write_text((data_dir / "meta.json").read_text())
    p = run_train(TINY + ["--data_dir", broken], check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and "train_00000.bin" in lines[0], p.stderr


def test_settings_come_from_defaults_preset_file_and_cli(tmp_path, capsys):
    assert train.parse_config([])["dim"] == 288 and train.parse_config([])["learning_rate"] == 5e-4
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"preset": "260K", "dim": 128, "learning_rate": 1}))
    cfg = train.parse_config(["--config", str(js), "--learning_rate", "3e-3"])
    assert (cfg["n_layers"], cfg["n_kv_heads"], cfg["dim"], cfg["learning_rate"]) == (5, 4, 128, 3e-3)
    py = tmp_path / "c.py"
    py.write_text("n_layers = 3\ncompile = True\n")
    cfg = train.parse_config(["--config", str(py), "--compile", "false"])
    assert cfg["n_layers"] == 3 and cfg["compile"] is False
    py.write_text("nlayers = 3\n")
    with pytest.raises(train.ConfigError, match="unknown setting 'nlayers'"):
        train.parse_config(["--config", str(py)])
    with pytest.raises(SystemExit):
        train.parse_config(["--help"])
    helptext = capsys.readouterr().out
    assert all(f"--{k}" in helptext for k in train.DEFAULTS)
