"""Tests of the conditional-format shards and of instruction fine-tuning: `pretokenize --format`
keeps each example's boundaries (the shards decode back to conditions.format_example's prompt and
story, encoded as conditions.encode_example does), --balance evens the endings, the aligned reader
gives whole examples with the prompt masked, the masked loss counts the story tokens only, and
`train.py --preset finetune --init_from` fine-tunes the bundled model (the loss falls, checkpoints
are written, a resumed run ends where an uninterrupted one does). Bad inputs fail in one line.

Fixtures: tests/fixtures/instruct_sample.txt (the parser's edge cases) and instruct_finetune.txt:
48 stories of the shared TinyStories text (stories 1000 on of TinyStories-train.head.txt with at
most 120 words) in the TinyStoriesInstruct layout (both field orders, `Story:` alone or with the
first line). Its Summary is the story's first sentence and every fourth example (1, 5, 9, ...) is
labelled BadEnding: labels made for these tests, not judged from the stories. CPU only, seconds.
"""
import json
import math
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT

import conditions
import tinystories as ts
import train
from tokenizer import Tokenizer

PY = sys.executable
FIX = ROOT / "tests" / "fixtures"
SAMPLE, FT = FIX / "instruct_sample.txt", FIX / "instruct_finetune.txt"
BIN = ROOT / "models" / "tinystories-cpu.bin"
pytestmark = pytest.mark.usefixtures("one_thread")


def pretok(src, out, fmt="instruct", **kw):
    kw = {"val_frac": 0.05, "test_frac": 0.10, **kw}
    return ts.pretokenize([src], out_dir=out, workers=1, progress=False, fmt=fmt, **kw)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def ft_data(tmp_path_factory):
    """instruct_finetune.txt through the CLI, as a user runs it (85/5/10 by default)."""
    out = tmp_path_factory.mktemp("ft") / "instruct"
    r = subprocess.run([PY, str(ROOT / "tinystories.py"), "pretokenize", "--format", "instruct", str(FT),
                        "--out_dir", str(out), "--workers", "1"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def all_examples(d):
    return {k: ts.ExampleStream(d, k) for k in ts.load_meta(d)["splits"]}


# ---------------------------------------------------------------- shards


def test_instruct_shards_round_trip_boundaries(ft_data, tok):
    meta = ts.load_meta(ft_data)
    assert meta["version"] == 2 and meta["settings"]["format"] == "instruct"
    assert meta["settings"]["val_frac"] == 0.05 and meta["settings"]["test_frac"] == 0.10
    want = [conditions.format_example(ex, "instruct") for ex in conditions.read_examples(FT)]
    assert len(want) == 48
    got = {}
    for split, st in all_examples(ft_data).items():
        assert ts.read_header(ft_data / f"{split}_00000.bin")["version"] == 2
        n_target = 0
        for i in range(len(st)):
            p, s = st.example(i)
            got[tok.decode(s)] = (split, p, s)
            n_target += len(s) + 1
        assert meta["splits"][split]["n_stories"] == len(st)
        assert meta["splits"][split]["n_target_tokens"] == n_target
    assert len(got) == 48
    for prompt, story in want:
        split, p, s = got[story]
        assert (p, s) == tuple(conditions.encode_example(tok, prompt, story))  # the generator's prompt ids
        assert p[0] == 1 and tok.decode(p) == prompt
        assert split == ts.split_of(story, 0.05, 0.10)
    assert {k: v["n_stories"] for k, v in meta["splits"].items()}["train"] > 30
    assert sum(v["n_bytes"] for v in meta["splits"].values()) == sum(len(s.encode()) for _, s in want)


@pytest.mark.parametrize("fmt, line", [("tags", "Features: Dialogue\n"), ("instruct", "With: sad ending"),
                                       ("instruct_tags", "With: sad ending\nFeatures: Dialogue\n")])
def test_each_format_on_the_parser_fixture(fmt, line, tmp_path, tok):
    out = pretok(SAMPLE, tmp_path / fmt, fmt, val_frac=0.0, test_frac=0.0)
    st = ts.ExampleStream(out, "train")
    prompts = [tok.decode(st.example(i)[0]) for i in range(len(st))]
    assert len(prompts) == 4  # the two blocks without a Summary or a Story are skipped
    want = [conditions.format_example(ex, fmt)[0] for ex in conditions.read_examples(SAMPLE)]
    assert prompts == want and any(line in p for p in prompts)


def test_all_data_and_gpt4_rows_too(tmp_path, tok):
    files = sorted((FIX / "all_data").glob("data*.json")) + [FIX / "gpt4_sample.parquet"]
    out = ts.pretokenize(files, out_dir=tmp_path / "o", workers=1, progress=False, fmt="instruct_tags",
                         val_frac=0.0, test_frac=0.0)
    st = ts.ExampleStream(out, "train")
    want = [conditions.format_example(ex, "instruct_tags") for f in files for ex in conditions.read_examples(f)]
    got = [tuple(tok.decode(part) for part in st.example(i)) for i in range(len(st))]
    assert len(got) == len(want) > 0 and [g[0] for g in got] == [w[0] for w in want]
    # a directory: the conditional formats take its .parquet files too, plain never does
    assert files[-1] in ts.find_inputs(FIX, labelled=True) and files[-1] not in ts.find_inputs(FIX)


def test_rerun_skips_and_settings_are_kept(ft_data, tmp_path):
    out = pretok(FT, tmp_path / "a")
    before = {p.name: p.read_bytes() for p in out.glob("*.bin")}
    pretok(FT, out)
    assert {p.name: p.read_bytes() for p in out.glob("*.bin")} == before
    assert before == {p.name: p.read_bytes() for p in ft_data.glob("*.bin")}  # CLI = function
    with pytest.raises(ValueError, match="another format"):
        pretok(FT, out, "tags")


def test_balance_gives_equal_endings(tmp_path, tok):
    def endings(d):
        n = {"happy": 0, "sad": 0}
        for st in all_examples(d).values():
            for i in range(len(st)):
                n["sad" if "With: sad ending" in tok.decode(st.example(i)[0]) else "happy"] += 1
        return n
    assert endings(pretok(FT, tmp_path / "raw")) == {"happy": 36, "sad": 12}
    out = tmp_path / "bal"
    r = subprocess.run([PY, str(ROOT / "tinystories.py"), "pretokenize", "--format", "instruct", "--balance",
                        str(FT), "--out_dir", str(out), "--workers", "1"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert endings(out) == {"happy": 12, "sad": 12}
    assert ts.load_meta(out)["settings"]["balance"] is True


# ---------------------------------------------------------------- the aligned reader


def test_aligned_batches_are_whole_masked_examples(ft_data):
    st = ts.ExampleStream(ft_data, "train")
    n = len(st)
    bpe = ts.batches_per_epoch(ft_data, "train", 8, 256)
    assert bpe == math.ceil(n / 8)
    seen = []
    for k, (x, y) in enumerate(ts.iter_examples("train", 8, 256, ft_data, seed=7, n_batches=bpe)):
        rows = st.rows(k, 8, 256, 7, 0, 1)
        assert x.shape == y.shape and x.shape[1] == min(256, int(st.tlen[rows].max()))
        for r, i in enumerate(rows):
            p, s = st.example(int(i))
            ids = (p + s + [1])[:x.shape[1] + 1]
            m = len(ids) - 1
            assert x[r, :m].tolist() == ids[:-1] and x[r, 0] == 1
            assert (y[r, :len(p) - 1] == -100).all() and y[r, len(p) - 1:m].tolist() == ids[len(p):]
            assert (x[r, m:] == 0).all() and (y[r, m:] == -100).all()  # padding
        seen += rows.tolist()
    assert sorted(seen) == list(range(n))  # one epoch: every example once
    # batch k is a pure function of (seed, rank, k): resume, another seed, disjoint ranks
    a = list(ts.iter_examples("train", 4, 256, ft_data, seed=7, n_batches=6))
    b = list(ts.iter_examples("train", 4, 256, ft_data, seed=7, start_batch=3, n_batches=3))
    assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) for u, v in zip(a[3:], b))
    c = next(ts.iter_examples("train", 4, 256, ft_data, seed=8))
    assert not torch.equal(a[0][0], c[0]) or not torch.equal(a[1][0], c[1])
    r0 = {int(i) for k in range(5) for i in st.rows(k, 4, 256, 7, 0, 2)}
    r1 = {int(i) for k in range(5) for i in st.rows(k, 4, 256, 7, 1, 2)}
    assert not r0 & r1 and len(r0 | r1) == 2 * (n // 2)
    w = list(ts.iter_examples("train", 4, 256, ft_data, seed=7, n_batches=6, num_workers=1))
    assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) for u, v in zip(a, w))


def test_short_seq_len_cuts_and_skips_long_prompts(ft_data):
    st = ts.ExampleStream(ft_data, "train")
    T = int(np.median(st.plen))  # about half the prompts fit
    keep = st.usable(T)
    assert 0 < len(keep) < len(st) and (st.plen[keep] <= T).all()
    x, y = next(ts.iter_examples("train", 64, T, ft_data, shuffle=False))
    assert x.shape == (len(keep), T) and ((y != -100).sum(1) >= 1).all()


# ---------------------------------------------------------------- the masked loss


def test_masked_loss_counts_story_tokens_only(ft_data):
    from model import ModelArgs, Transformer
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=4096, max_seq_len=256))
    st = ts.ExampleStream(ft_data, "train")
    x, y = next(ts.iter_examples("train", 4, 256, ft_data, seed=1))
    rows = st.rows(0, 4, 256, 1, 0, 1)
    logits, loss = model(x, y)
    # expected: cross-entropy at the positions predicting a story token or the final BOS, found
    # from the shard's table (not from y), averaged over those positions only
    picked, targets = [], []
    for r, i in enumerate(rows):
        p, t = int(st.plen[i]), int(st.tlen[i])
        ids = st.example(int(i))
        ids = ids[0] + ids[1] + [1]
        for pos in range(p - 1, min(t, x.shape[1])):
            picked.append(logits[r, pos])
            targets.append(ids[pos + 1])
    want = F.cross_entropy(torch.stack(picked).float(), torch.tensor(targets))
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    # counted, the prompt's targets would change the loss (so the mask is what keeps them out) ...
    y2 = y.clone()
    y2[y == -100] = 5
    assert model(x, y2)[1].item() != pytest.approx(loss.item(), rel=1e-4)
    # ... and with the mask no gradient reaches a prompt or padding position
    lg = logits.detach().requires_grad_(True)
    F.cross_entropy(lg.view(-1, lg.size(-1)), y.view(-1), ignore_index=-100).backward()
    g = lg.grad.abs().sum(-1)
    assert (g[y == -100] == 0).all() and (g[y != -100] > 0).all()


# ---------------------------------------------------------------- fine-tuning

FT_ARGS = ["--preset", "finetune", "--device", "cpu", "--threads", "1", "--dtype", "float32",
           "--learning_rate", "1e-3", "--eval_interval", "4", "--eval_iters", "4", "--log_interval", "2"]


def run_train(args):
    """train.py's main in this process (the CLI minus the seconds of a fresh interpreter)."""
    train.main([str(a) for a in args])


def evals(out):
    return [e for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if e["event"] == "eval"]


def test_finetune_from_bin_loss_falls_and_resumes(ft_data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run_train(FT_ARGS + ["--init_from", BIN, "--data_dir", ft_data, "--out_dir", full, "--epochs", 2])
    ev = evals(full)
    bpe = ts.batches_per_epoch(ft_data, "train", 8, 256)
    ck = torch.load(full / "ckpt.pt", weights_only=True)
    dim, seq_len = struct.unpack("<7i", BIN.read_bytes()[8:36])[0::6]  # the .bin's v1 header: its shape
    assert ck["iter_num"] == 2 * bpe and ck["model_args"]["dim"] == dim and ck["model_args"]["max_seq_len"] == seq_len
    assert ev[0]["iter"] == 0 and ev[-1]["iter"] == 2 * bpe
    assert ev[-1]["train_loss"] < ev[0]["train_loss"] - 0.1  # it learns the fine-tuning stories
    assert all(e["val_ppl"] == pytest.approx(math.exp(e["val_loss"])) for e in ev)
    assert "test_loss" in ev[-1] and "test_loss" not in ev[0]
    meta = ts.load_meta(ft_data)["splits"]["val"]
    assert ev[-1]["val_bpb"] == pytest.approx(ev[-1]["val_loss"] / math.log(2) * meta["n_target_tokens"]
                                              / meta["n_bytes"])
    # the same run in two pieces: one epoch, then resumed to two, ends on the same weights
    run_train(FT_ARGS + ["--init_from", BIN, "--data_dir", ft_data, "--out_dir", part, "--epochs", 1])
    assert torch.load(part / "ckpt.pt", weights_only=True)["iter_num"] == bpe
    run_train(FT_ARGS + ["--init_from", "resume", "--data_dir", ft_data, "--out_dir", part, "--epochs", 2])
    ck2 = torch.load(part / "ckpt.pt", weights_only=True)
    assert ck2["iter_num"] == 2 * bpe
    assert all(torch.equal(ck["model"][k], ck2["model"][k]) for k in ck["model"])
    # and a ckpt.pt of ours is a starting point too: it starts where the other run ended
    again = tmp_path / "again"
    run_train(FT_ARGS + ["--init_from", full / "ckpt.pt", "--data_dir", ft_data, "--out_dir", again,
                         "--epochs", 1])
    assert evals(again)[0]["val_loss"] == pytest.approx(ev[-1]["val_loss"], rel=1e-5)


# ---------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def plain_data(tmp_path_factory):
    return ts.pretokenize([SAMPLE], out_dir=tmp_path_factory.mktemp("plain") / "p", workers=1,
                          progress=False, val_frac=0.5)


def one_line_error(capsys, args, *says):
    """train.py with args exits with status 1 and one stderr line saying all of `says`."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_train(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1 and err[0].startswith("error: "), err
    assert all(s in err[0] for s in says), err[0]


def test_reader_refuses_plain_or_broken_tables(plain_data, ft_data, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"train_00000.bin: no example boundaries \(a --format plain shard\)"):
        ts.iter_examples("train", 2, 64, plain_data)
    one_line_error(capsys, FT_ARGS + ["--init_from", BIN, "--data_dir", plain_data, "--out_dir", tmp_path / "o"],
                   "no example boundaries", str(plain_data))
    src = (ft_data / "train_00000.bin").read_bytes()
    h = ts.read_header(ft_data / "train_00000.bin")
    table_at = 64 + 2 * h["n_tokens"]
    bad = tmp_path / "bad.bin"
    for at, value, says in [(table_at + 4, 1, "corrupt example table"),  # a total length cut short
                            (table_at, 0, "prompt length 0"),
                            (len(src) - 4, 10 ** 6, "covers")]:
        b = bytearray(src)
        b[at:at + 4] = value.to_bytes(4, "little")
        bad.write_bytes(bytes(b))
        with pytest.raises(ValueError, match=says):
            ts.read_bounds(bad)
    bad.write_bytes(src[:-3])
    with pytest.raises(ValueError, match="truncated"):
        ts.read_bounds(bad)


def test_init_from_missing_or_corrupt_is_one_line(ft_data, tmp_path, capsys):
    base = FT_ARGS + ["--data_dir", ft_data, "--out_dir", tmp_path / "o"]
    one_line_error(capsys, base + ["--init_from", tmp_path / "none.bin"], "none.bin")
    one_line_error(capsys, base + ["--init_from", tmp_path / "none.pt"], "checkpoint not found", "none.pt")
    cut = tmp_path / "cut.bin"
    cut.write_bytes(BIN.read_bytes()[:100_000])
    one_line_error(capsys, base + ["--init_from", cut], "cut.bin", "not a readable llama2.c model")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint" * 100)
    one_line_error(capsys, base + ["--init_from", junk], "junk.pt", "not a readable checkpoint")
    one_line_error(capsys, base + ["--init_from", "scratch"], "--max_seq_len must be positive")
    assert not (tmp_path / "o" / "ckpt.pt").exists()
