"""Tests of the data pipeline (tinystories.py) and of the tokenizers it makes: readers on fixtures
in the documented layouts, train_vocab and the tokenizer.bin export, encoding parity with run.c's
greedy merge, shards that decode back to the stories, resumable re-runs, refused shards, and the
determinism of the training reader."""
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import META_TOKENIZER, ROOT, TINYSTORIES, need
import tinystories as ts
from tokenizer import Tokenizer, read_tokenizer_bin

PY = sys.executable


def shared_stories(n=None):
    return list(ts.iter_stories(ts.find_inputs(need(TINYSTORIES))))[:n]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small input directory in both native layouts, cut from the shared text: a .txt release
    and two all_data JSON shards (one spelling the prompt key `prompt:`)."""
    stories = shared_stories()
    d = tmp_path_factory.mktemp("corpus")
    txt, js = stories[:240], stories[-160:]
    (d / "stories.txt").write_text("".join(s + "\n<|endoftext|>\n" for s in txt), encoding="utf-8")
    for i, key in enumerate(["prompt", "prompt:"]):
        part = js[80 * i: 80 * (i + 1)]
        items = [{"story": " " + s + "\n", "summary": "x", "source": "GPT-4",
                  "instruction": {key: f"p{i}", "words": ["a"], "features": ["dialogue"]}} for s in part]
        (d / f"data{i:02d}.json").write_text(json.dumps(items), encoding="utf-8")
    (d / "notes.md").write_text("not an input")
    # find_inputs orders files by name: data00.json, data01.json, stories.txt
    return d, js + txt


# ---------------------------------------------------------------- readers

def test_txt_reader_layout(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("Once upon a time.\nThe end.\n<|endoftext|>\n\n  Second story.  \n<|endoftext|>\n"
                 "<|endoftext|>\nLast one, no separator", encoding="utf-8")
    assert list(ts.iter_txt(p)) == ["Once upon a time.\nThe end.", "Second story.", "Last one, no separator"]


def test_json_reader_both_prompt_keys(corpus):
    d, _ = corpus
    ex0 = next(ts.iter_json_examples(d / "data00.json"))
    ex1 = next(ts.iter_json_examples(d / "data01.json"))
    assert (ex0["prompt"], ex1["prompt"]) == ("p0", "p1")
    assert ex1["features"] == ["dialogue"] and ex1["words"] == ["a"]
    assert not ex0["story"].startswith(" ") and not ex0["story"].endswith("\n")


def test_find_inputs_and_stories(corpus, monkeypatch):
    d, stories = corpus
    assert [p.name for p in ts.find_inputs(d)] == ["data00.json", "data01.json", "stories.txt"]
    monkeypatch.setenv("TINYSTORIES_DIR", str(d))
    assert list(ts.iter_stories(ts.find_inputs())) == stories
    with pytest.raises(FileNotFoundError, match="nope"):
        ts.find_inputs(d / "nope")
    # progress shares: the stories of each file account for all of its bytes
    pairs = list(ts.iter_stories(ts.find_inputs(d), with_bytes=True))
    assert [s for s, _ in pairs] == stories
    assert sum(n for _, n in pairs) == sum(p.stat().st_size for p in ts.find_inputs(d))


def test_txt_not_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"fine\n<|endoftext|>\nbad \xff byte\n")
    with pytest.raises(ValueError, match="bad.txt: line 3"):
        list(ts.iter_txt(p))


def test_bad_json_names_the_file(tmp_path):
    bad = tmp_path / "data00.json"
    bad.write_text('{"story": "not a list"}')
    with pytest.raises(ValueError, match="data00.json"):
        list(ts.iter_stories([bad]))
    bad.write_text('[{"story": "ok"}, {"summary": "no story"}]')
    with pytest.raises(ValueError, match="item 1"):
        list(ts.iter_stories([bad]))


def test_val_split_is_a_function_of_the_text():
    stories = [f"story number {i}" for i in range(4000)]
    val = [s for s in stories if ts.is_val(s, 0.05)]
    assert 120 < len(val) < 290  # about 5%
    assert val == [s for s in reversed(stories) if ts.is_val(s, 0.05)][::-1]


# ---------------------------------------------------------------- tokenizers

def greedy_encode(text, pieces, scores):
    """run.c's encoder, re-implemented: dummy-prefix space, one token per UTF-8 character (bytes
    + 3 when the character is not a piece), then merge the best-scoring adjacent pair (leftmost
    on ties) until no pair is a piece."""
    lookup = {}
    for i, p in enumerate(pieces):
        lookup.setdefault(p, i)
    ids = [lookup[b" "]] if text else []
    for ch in text:
        b = ch.encode("utf-8")
        ids += [lookup[b]] if b in lookup else [x + 3 for x in b]

    def pair(i):  # (score, id) of merging ids[i] and ids[i+1], or None
        j = lookup.get(pieces[ids[i]] + pieces[ids[i + 1]])
        return None if j is None else (scores[j], j)
    pairs = [pair(i) for i in range(len(ids) - 1)]  # kept in step with ids, so each step is a scan
    while True:
        best, at = -1e10, -1
        for i, p in enumerate(pairs):
            if p is not None and p[0] > best:
                best, at = p[0], i
        if at < 0:
            return ids
        ids[at:at + 2] = [pairs[at][1]]
        del pairs[at]
        if at < len(pairs):
            pairs[at] = pair(at)
        if at > 0:
            pairs[at - 1] = pair(at - 1)


EDGE_TEXTS = ["a  b   c", "  two leading", "trailing  ", "digits 1234567 and 3.14", "x1y22z",
              "héllo naïve café 你好 🙂", "line one\nline two\n\nthree", "tab\tand\u00a0nbsp", "\"Hi!\" she said."]


def test_project_tokenizer_is_committed_and_consistent(tmp_path):
    tok = Tokenizer(ROOT / "tokenizer.model")
    assert tok.n_words == 4096 and (tok.bos_id, tok.eos_id, tok.sp.unk_id(), tok.pad_id) == (1, 2, 0, -1)
    # the committed tokenizer.bin is exactly the export of the committed tokenizer.model
    assert tok.export(tmp_path / "t.bin").read_bytes() == (ROOT / "tokenizer.bin").read_bytes()


def test_project_tokenizer_encodes_like_run_c():
    tok = Tokenizer(ROOT / "tokenizer.model")
    _, pieces, scores = read_tokenizer_bin(ROOT / "tokenizer.bin", tok.n_words)
    texts = EDGE_TEXTS + shared_stories()[::12]
    for t in texts:
        assert greedy_encode(t, pieces, scores) == tok.sp.encode(t), t[:60]


def check_export(model_path, out):
    """tokenizer.bin written from model_path holds sentencepiece's pieces and scores, id by id."""
    tok = Tokenizer(model_path)
    tok.export(out)
    max_len, pieces, scores = read_tokenizer_bin(out, tok.n_words)
    assert out.stat().st_size == 4 + sum(8 + len(p) for p in pieces)  # nothing left over
    assert max_len == max(len(p) for p in pieces)
    for i in range(tok.n_words):
        want = {tok.bos_id: "\n<s>\n", tok.eos_id: "\n</s>\n"}.get(i, tok.sp.id_to_piece(i).replace("\u2581", " "))
        assert pieces[i] == want.encode("utf-8"), i
        assert scores[i] == np.float32(tok.sp.get_score(i)), i
    return pieces


def test_meta_tokenizer_export(tmp_path):
    pieces = check_export(need(META_TOKENIZER), tmp_path / "meta.bin")
    assert len(pieces) == 32000 and pieces[3] == b"<0x00>" and pieces[1] == b"\n<s>\n"


@pytest.fixture(scope="module")
def tok512(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocab") / "tok512.model"
    ts.train_vocab(512, ts.find_inputs(need(TINYSTORIES)), out, sample=1500, seed=7, verbose=False)
    return out


def test_train_vocab_options_and_export(tok512, tmp_path):
    tok = Tokenizer(tok512)
    sp = tok.sp
    assert sp.vocab_size() == 512
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"] and sp.pad_id() == -1
    assert all(sp.is_byte(i) and sp.id_to_piece(i) == f"<0x{i - 3:02X}>" for i in range(3, 259))
    normal = [sp.id_to_piece(i) for i in range(259, 512)]
    # split_digits: no multi-character piece holds a digit; spaces only start (or fill) a piece
    assert not [p for p in normal if len(p) > 1 and any(c.isdigit() for c in p)]
    assert not [p for p in normal if "\u2581" in p.lstrip("\u2581")]
    # identity normalization, no whitespace squashing, byte fallback: text survives exactly
    for t in EDGE_TEXTS:
        assert tok.decode(tok.encode(t, bos=False)) == t
    pieces = check_export(tok512, tmp_path / "tok512.bin")
    assert (tok512.with_suffix(".bin")).read_bytes() == (tmp_path / "tok512.bin").read_bytes()
    scores = read_tokenizer_bin(tmp_path / "tok512.bin", 512)[2]
    for t in EDGE_TEXTS + shared_stories()[:20]:
        assert greedy_encode(t, pieces, scores) == sp.encode(t), t[:60]


def test_train_vocab_is_seeded(tok512, tmp_path):
    again = tmp_path / "again.model"
    ts.train_vocab(512, ts.find_inputs(need(TINYSTORIES)), again, sample=1500, seed=7, verbose=False)
    assert again.read_bytes() == tok512.read_bytes()


@pytest.mark.parametrize("model", ["project", "meta"])
def test_story_encoder_equals_sentencepiece(model):
    path = ROOT / "tokenizer.model" if model == "project" else need(META_TOKENIZER)
    enc = ts.StoryEncoder(path)
    assert enc.chunked  # the fast path is the one under test
    # a literal U+2581 counts as a space in sentencepiece: "x\u2581 y" may merge across the words
    odd = ["x\u2581 y", "a \u2581b", "\u2581\u2581", "a\u2581", "one  two", ""]
    stories = shared_stories() + [t.strip() for t in EDGE_TEXTS] + odd
    want = [[enc.bos] + ids for ids in enc.sp.encode(stories)]
    assert [enc.encode(s) for s in stories] == want


# ---------------------------------------------------------------- pretokenize

def pretok(corpus_dir, out, **kw):
    kw.setdefault("shard_stories", 150)
    return ts.pretokenize(ts.find_inputs(corpus_dir), ROOT / "tokenizer.model", out, progress=False, **kw)


def decode_shard(path, tok):
    ids = ts.open_shard(path).tolist()
    assert ids == [] or ids[0] == tok.bos_id
    starts = [i for i, t in enumerate(ids) if t == tok.bos_id] + [len(ids)]
    return [tok.decode(ids[a + 1:b]) for a, b in zip(starts, starts[1:])]


def test_pretokenize_round_trip(corpus, tmp_path):
    d, stories = corpus
    out = pretok(d, tmp_path / "shards", val_frac=0.1)
    meta = ts.load_meta(out)
    tok = Tokenizer(ROOT / "tokenizer.model")
    assert meta["complete"] and meta["tokenizer"]["sha256"] == tok.identity()["sha256"]
    assert meta["vocab_size"] == 4096 and meta["token_width"] == 2
    for split in ("train", "val"):
        want = [s for s in stories if ts.is_val(s, 0.1) == (split == "val")]
        shards = meta["splits"][split]["shards"]
        assert shards == [f"{split}_{i:05d}.bin" for i in range(3)]  # 400 stories, 150 per shard
        got = [s for n in shards for s in decode_shard(out / n, tok)]
        assert got == want
        m = meta["splits"][split]
        assert m["n_stories"] == len(want)
        assert m["n_bytes"] == sum(len(s.encode("utf-8")) for s in want)
        assert m["n_tokens"] == sum(len(tok.encode(s)) for s in want)
    assert not list(out.glob("*.tmp"))


def test_pretokenize_rerun_skips_and_is_identical(corpus, tmp_path):
    d, _ = corpus
    out = pretok(d, tmp_path / "a")
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    time.sleep(0.01)
    (out / "train_00001.bin").unlink()  # as if the run had died there
    pretok(d, out)
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())} == digest
    assert (out / "train_00000.bin").stat().st_mtime_ns == stamps["train_00000.bin"]  # skipped
    assert (out / "train_00001.bin").stat().st_mtime_ns != stamps["train_00001.bin"]  # redone
    # one worker, another directory: the same bytes
    out2 = pretok(d, tmp_path / "b", workers=1)
    assert all((out2 / n).read_bytes() == (out / n).read_bytes() for n in digest if n != "meta.json")
    with pytest.raises(ValueError, match="val_frac"):
        pretok(d, out, val_frac=0.5)


def test_pretokenize_wide_tokens_for_big_vocab(tmp_path):
    assert ts.token_dtype(65536) == np.uint16 and ts.token_dtype(65537) == np.uint32
    p = tmp_path / "w.bin"
    w = ts.ShardWriter(p, 100_000, "ab" * 32)
    w.write(np.array([1, 99_999, 70_000], dtype=np.uint32), 1, 5)
    w.close()
    assert ts.read_header(p)["width"] == 4 and ts.open_shard(p).tolist() == [1, 99_999, 70_000]


# ---------------------------------------------------------------- refused shards

@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
    return pretok(corpus[0], tmp_path_factory.mktemp("shards"), val_frac=0.1)


def test_bad_shards_are_refused(shards, tmp_path):
    src = shards / "train_00000.bin"
    good = src.read_bytes()
    # a llama2.c shard: raw uint16 with no header
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.frombuffer(good[64:], dtype=np.uint16).tobytes())
    with pytest.raises(ValueError, match="bad magic"):
        ts.open_shard(raw)
    # a cut-off tail, by a whole token or half of one
    for cut in (1, 2, 1000):
        p = tmp_path / f"cut{cut}.bin"
        p.write_bytes(good[:-cut])
        with pytest.raises(ValueError, match="truncated"):
            ts.open_shard(p)
    # a shard of another tokenizer (same vocab size, other sha256) and of another vocab size
    h = ts.read_header(src)
    other = tmp_path / "other.bin"
    other.write_bytes(ts.pack_header(4096, h["n_tokens"], 1, 1, "00" * 32) + good[64:])
    with pytest.raises(ValueError, match="another tokenizer"):
        ts.open_shard(other, 4096, ts.load_meta(shards)["tokenizer"]["sha256"])
    with pytest.raises(ValueError, match="512-piece|expected 512"):
        ts.open_shard(src, vocab_size=512)
    # a header from a future version
    future = tmp_path / "future.bin"
    future.write_bytes(good[:8] + (3).to_bytes(4, "little") + good[12:])
    with pytest.raises(ValueError, match="version 3"):
        ts.open_shard(future)


def test_reader_refuses_mixed_or_mismatched(shards, tmp_path):
    import shutil
    d = tmp_path / "mixed"
    shutil.copytree(shards, d)
    with pytest.raises(ValueError, match="vocab mismatch.*32000.*4096"):
        ts.iter_batches("train", 2, 8, d, vocab_size=32000)
    good = (d / "train_00001.bin").read_bytes()
    (d / "train_00001.bin").write_bytes(ts.pack_header(4096, (len(good) - 64) // 2, 1, 1, "11" * 32) + good[64:])
    with pytest.raises(ValueError, match="train_00001.bin: made with another tokenizer"):
        ts.iter_batches("train", 2, 8, d)
    (d / "train_00001.bin").write_bytes(good[:-2])
    with pytest.raises(ValueError, match="train_00001.bin.*truncated"):
        ts.iter_batches("train", 2, 8, d)
    with pytest.raises(FileNotFoundError, match="pretokenize"):
        ts.iter_batches("train", 2, 8, tmp_path)


# ---------------------------------------------------------------- the training reader

def take(it, n):
    return [next(it) for _ in range(n)]


def test_reader_batches(shards):
    x, y = next(ts.iter_batches("train", 4, 32, shards, seed=1, vocab_size=4096))
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # each window is a real stretch of the split: find it in the concatenated shards
    flat = np.concatenate([ts.open_shard(shards / n) for n in ts.load_meta(shards)["splits"]["train"]["shards"]])
    hay = flat.tobytes()
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        needle = np.concatenate([row_x, row_y[-1:]]).astype(np.uint16).tobytes()
        at = hay.find(needle)
        while at >= 0 and at % 2:  # only token-aligned matches count
            at = hay.find(needle, at + 1)
        assert at >= 0


def test_reader_windows_cross_shards(shards):
    stream = ts.TokenStream(shards, "train")
    flat = np.concatenate(stream.shards)
    edge = int(stream.offsets[1])
    assert np.array_equal(stream.window(edge - 5, 12), flat[edge - 5: edge + 7])


def test_reader_determinism_and_resume(shards):
    kw = dict(batch_size=3, seq_len=16, bin_dir=shards)
    a = take(ts.iter_batches("train", seed=5, **kw), 6)
    b = take(ts.iter_batches("train", seed=5, **kw), 6)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    resumed = take(ts.iter_batches("train", seed=5, start_batch=4, **kw), 2)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a[4:], resumed))
    other_rank = take(ts.iter_batches("train", seed=5, rank=1, world_size=2, **kw), 6)
    assert not any(torch.equal(p[0], q[0]) for p, q in zip(a, other_rank))
    other_seed = take(ts.iter_batches("train", seed=6, **kw), 6)
    assert not any(torch.equal(p[0], q[0]) for p, q in zip(a, other_seed))
    val = take(ts.iter_batches("val", seed=5, **kw), 2)
    assert not torch.equal(val[0][0], a[0][0])
    with pytest.raises(ValueError, match="rank"):
        ts.iter_batches("train", rank=2, world_size=2, **kw)


def test_reader_workers_keep_order(shards):
    kw = dict(batch_size=2, seq_len=16, bin_dir=shards, seed=3, start_batch=1)
    plain = take(ts.iter_batches("train", **kw), 5)
    workers = take(ts.iter_batches("train", num_workers=2, **kw), 5)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(plain, workers))


# ---------------------------------------------------------------- CLI

def run_cli(*args, env=None, timeout=60):
    return subprocess.run([PY, str(ROOT / "tinystories.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT)


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_download_offline_fails_fast_with_one_line(env):
    t = time.time()
    r = run_cli("download", env=env, timeout=30)
    assert time.time() - t < 20
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--data_dir" in lines[0] and "TINYSTORIES_DIR" in lines[0]


def test_cli_errors_are_one_line(tmp_path, corpus):
    r = run_cli("pretokenize", "--data_dir", str(tmp_path / "missing"))
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [r.stderr.strip()] and "missing" in r.stderr
    r = run_cli("pretokenize", "--vocab_size", "777", "--data_dir", str(corpus[0]))
    assert r.returncode == 1 and "train_vocab --vocab_size 777" in r.stderr
    r = run_cli("pretokenize", "--tokenizer", str(tmp_path / "x.model"), "--data_dir", str(corpus[0]))
    assert r.returncode == 1 and "x.model" in r.stderr.strip().splitlines()[-1]


def test_cli_pretokenize(tmp_path, corpus):
    r = run_cli("pretokenize", "--data_dir", str(corpus[0]), "--out_dir", str(tmp_path / "o"),
                "--shard_stories", "1000")
    assert r.returncode == 0, r.stderr
    meta = ts.load_meta(tmp_path / "o")
    assert meta["splits"]["train"]["n_stories"] + meta["splits"]["val"]["n_stories"] == 400


def test_unpack_all_data_tarball(corpus, tmp_path):
    """The tarball step of `download`, offline: data*.json members land flat in the folder,
    other members (a path escaping the folder included) are ignored, and the result reads."""
    import tarfile
    d, stories = corpus
    tar_path = tmp_path / "TinyStories_all_data.tar.gz"
    (tmp_path / "evil.json").write_text("[]")
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(d / "data00.json", arcname="TinyStories_all_data/data00.json")
        tar.add(d / "data01.json", arcname="data01.json")
        tar.add(tmp_path / "evil.json", arcname="../evil.json")
    dest = tmp_path / "out"
    dest.mkdir()
    ts.unpack_json_shards(tar_path, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["data00.json", "data01.json"]
    assert list(ts.iter_stories(ts.find_inputs(dest))) == stories[:160]


def test_train_vocab_too_big_is_one_clear_error(corpus, tmp_path):
    with pytest.raises(ValueError, match="Vocabulary size too high"):
        ts.train_vocab(60000, ts.find_inputs(corpus[0]), tmp_path / "x.model", verbose=False)
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(ValueError, match="too small"):
        ts.train_vocab(100, ts.find_inputs(corpus[0]), tmp_path / "x.model", verbose=False)


def test_pretokenize_stops_cleanly_and_resumes(corpus, tmp_path):
    """A bad byte late in the input: the run fails naming the file, leaves finished shards and no
    .tmp; once the input is fixed, the re-run keeps those shards and completes."""
    d, stories = corpus
    good = (d / "stories.txt").read_bytes()
    src = tmp_path / "in"
    src.mkdir()
    (src / "stories.txt").write_bytes(good + b"a bad \xff byte\n<|endoftext|>\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="stories.txt: line"):
        ts.pretokenize(ts.find_inputs(src), None, out, shard_stories=100, progress=False)
    assert not list(out.glob("*.tmp")) and not ts.load_meta(out)["complete"]
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.bin")}
    assert sorted(done) == ["train_00000.bin", "train_00001.bin", "val_00000.bin", "val_00001.bin"]
    with pytest.raises(ValueError, match="did not finish"):
        ts.iter_batches("train", 1, 8, out)
    (src / "stories.txt").write_bytes(good + b"a good byte\n<|endoftext|>\n")
    ts.pretokenize(ts.find_inputs(src), None, out, shard_stories=100, progress=False)
    assert all((out / n).stat().st_mtime_ns == t for n, t in done.items())
    meta = ts.load_meta(out)
    assert meta["complete"] and meta["splits"]["train"]["n_stories"] + meta["splits"]["val"]["n_stories"] == 241


def test_project_tokenizer_is_what_train_vocab_makes(tmp_path):
    """tokenizer.model is reproducible: `train_vocab --vocab_size 4096 --data_dir <shared text>`
    (default sample and seed) gives the same pieces and scores."""
    out = ts.train_vocab(4096, ts.find_inputs(need(TINYSTORIES)), tmp_path / "tok4096.model", verbose=False)
    made, ours = Tokenizer(out).sp, Tokenizer(ROOT / "tokenizer.model").sp
    assert [(made.id_to_piece(i), made.get_score(i)) for i in range(4096)] == \
           [(ours.id_to_piece(i), ours.get_score(i)) for i in range(4096)]


def test_batch_dataset_pickles_small(shards):
    """What a spawn-started DataLoader worker receives: arguments, not the memory maps."""
    import pickle
    ds = ts.BatchDataset(shards, "train", 2, 16, 3, 0, 4096)
    x, y = ds[7]
    back = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 2000 and back.stream is None
    assert torch.equal(back[7][0], x) and torch.equal(back[7][1], y)


def test_plain_shards_are_pinned(tmp_path):
    """Plain shards of the shared text are byte for byte those of the first shard format (before
    the conditional formats were added): sha256 of each file, recorded then."""
    out = ts.pretokenize(ts.find_inputs(need(TINYSTORIES)), out_dir=tmp_path / "o", progress=False, workers=2)
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in out.glob("*.bin")}
    assert got == {"train_00000.bin": "86a60e1dad2e127d", "val_00000.bin": "0978607579742252"}
