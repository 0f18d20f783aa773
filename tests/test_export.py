"""export.py: llama2.c .bin v0/v1/v2 and Hugging Face round trips, transformers parity, bad input."""
import json
import os
import struct
import subprocess
import sys
import warnings

import pytest
import torch

import export
from conftest import AIDREAMS, META_TOKENIZER, ROOT, TINYSTORIES, need
from export import (choose_group_size, export_hf, export_v0, export_v1, export_v2, load_bin,
                    load_checkpoint, load_hf)
from model import ModelArgs, Transformer

# (shared classifier, n_kv_heads, hidden_dim): tied MHA, untied GQA with an odd hidden_dim, tied GQA
CASES = [(True, 8, None), (False, 2, 75), (True, 4, 96)]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def tiny(shared=True, n_kv_heads=8, hidden_dim=None, vocab_size=97, seed=0):
    torch.manual_seed(seed)
    m = Transformer(ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=n_kv_heads, hidden_dim=hidden_dim,
                              vocab_size=vocab_size, max_seq_len=32, shared_classifier=shared)).eval()
    with torch.no_grad():  # non-trivial norm gains, so a swapped norm would show
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return m


def tokens(vocab=97):
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(1))


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("shared,n_kv,hidden", CASES)
@pytest.mark.parametrize("version", [0, 1])
def test_fp32_round_trip_is_exact(tmp_path, version, shared, n_kv, hidden):
    m = tiny(shared, n_kv, hidden)
    path = tmp_path / "m.bin"
    (export_v0 if version == 0 else export_v1)(m, path)
    back = load_bin(path)
    assert back.params.shared_classifier == shared and back.params.n_kv_heads == n_kv
    assert (back.output.weight is back.tok_embeddings.weight) == shared
    assert same_weights(m, back)
    x = tokens()
    assert torch.equal(back(x)[0], m(x)[0])
    # re-exporting what was read gives the same bytes
    (export_v0 if version == 0 else export_v1)(back, tmp_path / "again.bin")
    assert (tmp_path / "again.bin").read_bytes() == path.read_bytes()


def test_v0_header_and_rope_tables(tmp_path):
    m = tiny(False, 2, 75)
    export_v0(m, tmp_path / "m.bin")
    data = (tmp_path / "m.bin").read_bytes()
    assert struct.unpack_from("<7i", data) == (64, 75, 2, 8, 2, -97, 32)  # negative vocab: unshared
    # the two tables llama2.c writes: cos and sin of pos * 10000^(-2i/head_size), pos < seq_len
    n_before = 97 * 64 + 2 * (64 + 64 * 64 + 2 * 16 * 64 + 64 * 64 + 64 + 3 * 75 * 64) + 64
    off = 28 + 4 * n_before
    tables = torch.frombuffer(bytearray(data[off:off + 2 * 32 * 4 * 4]), dtype=torch.float32).view(2, 32, 4)
    i = torch.arange(4, dtype=torch.float64)
    angle = torch.arange(32, dtype=torch.float64)[:, None] / 10000 ** (2 * i / 8)
    assert torch.allclose(tables[0].double(), angle.cos(), atol=1e-6)
    assert torch.allclose(tables[1].double(), angle.sin(), atol=1e-6)


def test_aidreams_v0_rewrites_byte_for_byte(tmp_path):
    """A real llama2.c v0 file (GQA-free, shared classifier) read and written again is unchanged."""
    src = need(AIDREAMS / "aidreams260K.bin")
    export_v0(load_bin(src), tmp_path / "a.bin")
    assert (tmp_path / "a.bin").read_bytes() == src.read_bytes()


def test_v1_header_layout(tmp_path):
    export_v1(tiny(False, 2, 75), tmp_path / "m.bin")
    data = (tmp_path / "m.bin").read_bytes()
    assert struct.unpack_from("<Ii7iB", data) == (0x616B3432, 1, 64, 75, 2, 8, 2, 97, 32, 0)
    assert data[37:256] == bytes(219)


@pytest.mark.parametrize("shared,n_kv,hidden", CASES)
def test_v2_within_quantization_tolerance(tmp_path, shared, n_kv, hidden):
    m = tiny(shared, n_kv, hidden)
    gs = export_v2(m, tmp_path / "q.bin", group_size=16)
    data = (tmp_path / "q.bin").read_bytes()
    assert struct.unpack_from("<Ii", data) == (0x616B3432, 2) and data[36] == shared
    assert struct.unpack_from("<i", data, 37)[0] == gs
    q = load_bin(tmp_path / "q.bin")
    # weights: symmetric rounding to a grid of step scale = max|group| / 127 errs by at most scale / 2
    for (name, w), wq in zip(m.state_dict().items(), q.state_dict().values()):
        if w.dim() == 1:
            assert torch.equal(w, wq), name  # norms stay fp32
            continue
        g = w.reshape(-1, gs)
        half_step = g.abs().amax(1, keepdim=True) / 127 / 2
        assert ((wq.reshape(-1, gs) - g).abs() <= half_step * (1 + 1e-5) + 1e-12).all(), name
    # logits: to first order each quantized matrix on the path (7 per layer, plus the embedding and the
    # classifier) moves the output by at most 1/254 of its own scale, so the worst case, all errors
    # aligned, is (7 * n_layers + 2) / 254 of the logits' magnitude. Observed errors are ~30x smaller.
    x = tokens()
    ref, got = m(x)[0], q(x)[0]
    tol = (7 * m.params.n_layers + 2) / 254 * ref.abs().max()
    assert (got - ref).abs().max() <= tol
    # quantizing the dequantized model again is lossless: same bytes
    export_v2(q, tmp_path / "q2.bin", group_size=16)
    assert (tmp_path / "q2.bin").read_bytes() == data


def test_v2_group_size_backs_off_to_divide_every_row(tmp_path):
    assert choose_group_size(64, 64, 96) == 32       # hidden_dim 96: 64 -> 32
    assert choose_group_size(64, 64, 75) == 1        # odd hidden_dim: down to 1
    assert choose_group_size(64, 64, 192) == 64
    with pytest.raises(ValueError, match="group_size"):
        choose_group_size(0, 64, 96)
    model = load_bin(need(AIDREAMS / "aidreams260K.bin"))  # dim 64, hidden_dim 172 = 4 * 43
    assert export_v2(model, tmp_path / "a.bin", group_size=64) == 4
    q = load_bin(tmp_path / "a.bin")
    x = torch.tensor([[1, 40, 300, 22, 7, 99]])
    ref, got = model(x)[0], q(x)[0]
    assert (got - ref).abs().max() <= (7 * 4 + 1) / 254 * ref.abs().max()  # shared: embedding counted once
    assert torch.equal(got.argmax(-1), ref.argmax(-1))


@pytest.mark.parametrize("shared,n_kv,hidden", CASES)
def test_hf_export_matches_transformers_and_round_trips(tmp_path, shared, n_kv, hidden):
    transformers = pytest.importorskip("transformers")
    m = tiny(shared, n_kv, hidden)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vocab 97 has no tokenizer: the warning is expected here
        export_hf(m, tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (cfg["num_key_value_heads"], cfg["tie_word_embeddings"], cfg["intermediate_size"]) == (n_kv, shared, m.params.hidden_dim)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = tokens()
    with torch.no_grad():
        assert (hf(x).logits - m(x)[0]).abs().max() <= 1e-4
    back = load_hf(tmp_path / "hf")
    assert back.params.shared_classifier == shared and same_weights(m, back)


@pytest.mark.parametrize("tied", [True, False])
def test_load_hf_reads_a_folder_saved_by_transformers(tmp_path, tied):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=40,
                                   rms_norm_eps=1e-5, tie_word_embeddings=tied)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ours = load_hf(tmp_path / "hf")
    assert ours.params.n_kv_heads == 2 and ours.params.shared_classifier == tied
    x = torch.randint(0, 101, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(x).logits - ours(x)[0]).abs().max() <= 1e-4


def test_hf_folder_tokenizer_and_card(tmp_path):
    """With a real checkpoint-like source: tokenizer files load in transformers, the card has our numbers."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf", reason="transformers needs protobuf to read tokenizer.model")
    from tokenizer import Tokenizer
    text = need(TINYSTORIES / "TinyStories-train.head.txt").read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split("<|endoftext|>")[:10]]
    for tok_path in (need(ROOT / "tokenizer.model"), need(META_TOKENIZER)):
        sp = Tokenizer(tok_path)
        m = tiny(True, 4, None, vocab_size=sp.n_words)
        config = {"batch_size": 32, "gradient_accumulation_steps": 4, "learning_rate": 1e-3, "warmup_iters": 50,
                  "max_iters": 2000, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0,
                  "dtype": "bfloat16"}
        out = export_hf(m, tmp_path / "hf", tok_path, config, {"iter_num": 2000, "best_val_loss": 1.5})
        ht = transformers.AutoTokenizer.from_pretrained(out)
        for s in stories:
            assert ht(s)["input_ids"] == sp.encode(s)
        card = (out / "README.md").read_text()
        assert f"**Vocabulary Size:** {sp.n_words:,}" in card
        for line in ("**Dimension:** 64", "**Number of KV Heads:** 4", "**FFN Hidden Dimension:** 192",
                     "**Maximum Sequence Length:** 32 tokens", f"**Total Parameters:** {m.num_params():,}",
                     "**Effective Batch Size:** 128", "**Tokens per Iteration:** 4,096", "**Warmup Iterations:** 50",
                     "**Precision:** bfloat16", "**Iterations trained:** 2,000"):
            assert line in card, line
    assert not (tmp_path / "hf.tmp").exists() and not (tmp_path / "hf.old").exists()


def test_checkpoint_with_compile_and_ddp_prefixes(tmp_path):
    m = tiny(False, 2, 75)
    sd = {f"_orig_mod.module.{k}": v for k, v in m.state_dict().items()}
    torch.save({"model": sd, "model_args": m.params.__dict__, "iter_num": 5, "config": {}}, tmp_path / "ckpt.pt")
    assert same_weights(load_checkpoint(tmp_path / "ckpt.pt"), m)


# ---- bad input ------------------------------------------------------------------------------

@pytest.fixture
def good_files(tmp_path):
    m = tiny(False, 2, 75)
    export_v0(m, tmp_path / "v0.bin")
    export_v1(m, tmp_path / "v1.bin")
    export_v2(m, tmp_path / "v2.bin", 64)
    return tmp_path


@pytest.mark.parametrize("name", ["v0.bin", "v1.bin", "v2.bin"])
@pytest.mark.parametrize("cut", [1, 1000, "header"])
def test_truncated_files_are_refused(good_files, name, cut):
    data = (good_files / name).read_bytes()
    bad = good_files / f"cut_{name}"
    bad.write_bytes(data[:20] if cut == "header" else data[:-cut])
    with pytest.raises(ValueError, match=str(bad).replace("\\", "\\\\") + ".*(truncated|too short|size)"):
        load_bin(bad)


def test_corrupt_files_are_refused(good_files):
    d = good_files
    cases = {
        "text.bin": b"this is not a model at all, just some text that is long enough\n" * 4,
        "extra.bin": (d / "v1.bin").read_bytes() + b"\0\0\0\0",            # header/size mismatch
        "version.bin": (d / "v1.bin").read_bytes()[:4] + struct.pack("<i", 7) + (d / "v1.bin").read_bytes()[8:],
        "heads.bin": struct.pack("<7i", 64, 75, 2, 8, 3, 97, 32) + (d / "v0.bin").read_bytes()[28:],
        "shared.bin": (d / "v1.bin").read_bytes()[:36] + b"\x05" + (d / "v1.bin").read_bytes()[37:],
        "gs.bin": (d / "v2.bin").read_bytes()[:37] + struct.pack("<i", 48) + (d / "v2.bin").read_bytes()[41:],
    }
    for name, data in cases.items():
        (d / name).write_bytes(data)
        with pytest.raises(ValueError, match=str(d / name)) as e:
            load_bin(d / name)
        assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        load_bin(d / "nope.bin")
    (d / "ckpt.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="ckpt.pt"):
        load_checkpoint(d / "ckpt.pt")
    (d / "hf").mkdir()
    (d / "hf" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type"):
        load_hf(d / "hf")


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    m = tiny()
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("an earlier export")
    calls = {"n": 0}
    real = export._f32

    def failing(t):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError("disk full (simulated)")
        return real(t)

    monkeypatch.setattr(export, "_f32", failing)
    for write in (export_v0, export_v1):
        calls["n"] = 0
        with pytest.raises(OSError):
            write(m, tmp_path / "m.bin")
    monkeypatch.setattr(export, "hf_state_dict", lambda model: (_ for _ in ()).throw(OSError("simulated")))
    with pytest.raises(OSError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_hf(m, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["keep.txt"]  # the earlier export is intact


def cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "export.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_converts_and_reports_back_off(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    m = tiny(False, 2, 96)
    torch.save({"model": m.state_dict(), "model_args": m.params.__dict__, "config": {}}, tmp_path / "ckpt.pt")
    export.main(["q.bin", "--checkpoint", "ckpt.pt", "--version", "2", "--group_size", "64"])
    assert "backed off to 32" in capsys.readouterr().out
    q = load_bin(tmp_path / "q.bin")
    assert q.params.n_kv_heads == 2 and not q.params.shared_classifier
    export.main(["back.bin", "--bin", "q.bin", "--version", "1"])  # v2 -> v1
    assert same_weights(load_bin("back.bin"), q)


def test_cli_hf_ships_only_the_checkpoints_own_tokenizer(tmp_path, monkeypatch, capsys):
    """A checkpoint records its tokenizer's sha256: a different file of the same size is never shipped."""
    from tokenizer import Tokenizer
    monkeypatch.chdir(tmp_path)
    sp = Tokenizer(need(ROOT / "tokenizer.model"))
    m = tiny(True, 4, None, vocab_size=sp.n_words)
    ckpt = {"model": m.state_dict(), "model_args": m.params.__dict__, "config": {"batch_size": 4},
            "tokenizer": sp.identity(), "iter_num": 3}
    torch.save(ckpt, "ckpt.pt")
    export.main(["hf", "--checkpoint", "ckpt.pt", "--hf"])
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == sp.model_path.read_bytes()
    ckpt["tokenizer"] = {**sp.identity(), "path": "gone/tok.model", "sha256": "0" * 64}
    torch.save(ckpt, "ckpt.pt")
    export.main(["hf", "--checkpoint", "ckpt.pt", "--hf"])
    assert "was not found; pass --tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "hf" / "tokenizer.model").exists()
    assert same_weights(load_hf("hf"), m)


def test_cli_bad_input_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "bad.bin").write_bytes(b"\x01\x02\x03" * 100)
    r = cli("out.bin", "--bin", "bad.bin", cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad.bin: ")
    with pytest.raises(SystemExit, match="^error: missing.bin: no such file$"):  # the same path in-process
        export.main([str(tmp_path / "out.bin"), "--bin", "missing.bin", "--version", "1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bin"]  # no output, no .tmp
