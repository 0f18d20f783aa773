"""
Tests of the Python bindings (`import babyllama`): the C engine through cffi.

What they show: the bindings reproduce llama2.c's golden stories byte for byte and the CLI's
stories for other sampling settings; logits equal PyTorch's on the same weights; encoding equals
sentencepiece's; streamed pieces are whole UTF-8 characters and join to generate()'s text;
generate_batch and 4 threads on one Model equal sequential runs; bad input raises (missing and
corrupt files name the file, wrong types are TypeError, a closed model raises, closing while
another thread generates is safe). What they do not test: speed (bench/run_speed.py).
"""
import shutil
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import AIDREAMS, META_TOKENIZER, ROOT, need

babyllama = pytest.importorskip("babyllama", reason="the bindings are not built (pip install -e .)")
torch = pytest.importorskip("torch")
import export  # noqa: E402  (the top-level scripts are importable through conftest's sys.path)
from model import ModelArgs, Transformer  # noqa: E402

RUN = ROOT / "run"


@pytest.fixture(scope="module")
def aid():
    need(AIDREAMS)
    # one OpenMP thread: a 260K-parameter model gains nothing from two, and loses a lot on busy cores
    with babyllama.Model(AIDREAMS / "aidreams260K.bin", AIDREAMS / "tok512.bin", threads=1) as m:
        yield m


def cli(*args):
    """stdout of ./run (bytes)."""
    need(RUN)
    r = subprocess.run([str(RUN), *map(str, args), "-T", "1"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout


def random_model(tmp_path, name="m.bin", version=1, seed=0, **kw):
    """A random-weight model exported with export.py; returns (path, torch model)."""
    torch.manual_seed(seed)
    args = dict(dim=64, n_layers=2, n_heads=4, vocab_size=512, max_seq_len=64)
    args.update(kw)
    model = Transformer(ModelArgs(**args)).eval()
    path = tmp_path / name
    {0: export.export_v0, 1: export.export_v1, 2: export.export_v2}[version](model, str(path))
    return path, model


# ---------------------------------------------------------------------------------------------
# stories: golden files and the CLI

def test_golden_stories(aid):
    """The three expected_*.txt outputs of llama2.c's run, through generate()."""
    cases = [("expected_greedy_n128.txt", "", 128, dict(temperature=0.0)),
             ("expected_greedy_n64_prompt_I_dreamed.txt", "I dreamed", 64, dict(temperature=0.0)),
             ("expected_t1_p0.9_s42_n128.txt", "", 128, dict(temperature=1.0, top_p=0.9, seed=42))]
    for name, prompt, n, kw in cases:
        expected = (AIDREAMS / name).read_bytes().decode()
        k = len(aid.encode(prompt, bos=False))  # -n counts the prompt's tokens too
        text = aid.generate(prompt, max_new_tokens=n - k, **kw)
        printed_prompt = aid.decode(aid.encode(prompt))
        assert printed_prompt + text + "\n" == expected, name


@pytest.mark.parametrize("args", [
    dict(t=0.8, p=0.9, s=7, n=100, i="I dreamed of"),
    dict(t=1.0, p=0.0, s=123, n=128, i=""),        # plain multinomial
    dict(t=0.9, p=0.95, s=99, n=80, k=20, i="The"),  # top-k then top-p
])
def test_same_story_as_cli(aid, args):
    cmd = [AIDREAMS / "aidreams260K.bin", "-z", AIDREAMS / "tok512.bin", "-t", args["t"],
           "-p", args["p"], "-s", args["s"], "-n", args["n"]]
    if args["i"]:
        cmd += ["-i", args["i"]]
    if "k" in args:
        cmd += ["-k", args["k"]]
    out = cli(*cmd).decode()
    k = len(aid.encode(args["i"], bos=False))
    text = aid.generate(args["i"], max_new_tokens=args["n"] - k, temperature=args["t"],
                        top_p=args["p"], top_k=args.get("k", 0), seed=args["s"])
    assert aid.decode(aid.encode(args["i"])) + text + "\n" == out


def test_generate_max_new_tokens_and_stop(aid):
    full = aid.generate("I dreamed", max_new_tokens=40, temperature=0.0)
    ids = aid.encode(full, bos=False)
    assert aid.generate("I dreamed", max_new_tokens=0, temperature=0.0) == ""
    short = aid.generate("I dreamed", max_new_tokens=10, temperature=0.0)
    assert full.startswith(short) and len(short) < len(full) and len(ids) > 10
    # one piece per token here (no byte tokens): exactly max_new_tokens of them
    assert len(list(aid.generate("I dreamed", max_new_tokens=10, temperature=0.0, stream=True))) == 10
    word = full.split()[3]
    cut = aid.generate("I dreamed", max_new_tokens=40, temperature=0.0, stop=[word, "zzzz"])
    assert cut == full[:full.find(word)]
    # the context bounds the story: a long request stops at seq_len positions
    pieces = list(aid.generate("", max_new_tokens=10_000, temperature=0.0, stream=True))
    assert len(pieces) == aid.config.seq_len  # = ./run -n 0 (the whole context)
    assert "".join(pieces) + "\n" == (AIDREAMS / "expected_greedy_n128.txt").read_text()


# ---------------------------------------------------------------------------------------------
# logits and encoding

def test_thread_count_changes_nothing(aid):
    with babyllama.Model(AIDREAMS / "aidreams260K.bin", AIDREAMS / "tok512.bin", threads=2) as m2:
        assert m2.generate("I dreamed", max_new_tokens=30, seed=9) == \
            aid.generate("I dreamed", max_new_tokens=30, seed=9)
        ids = aid.encode("I dreamed of vectors")
        assert np.array_equal(m2.logits(ids), aid.logits(ids))
    with pytest.raises(TypeError):
        babyllama.Model(AIDREAMS / "aidreams260K.bin", threads="2")
    with pytest.raises(ValueError):
        babyllama.Model(AIDREAMS / "aidreams260K.bin", threads=0)


def test_config(aid):
    c = aid.config
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len) == \
        (64, 172, 4, 4, 4, 512, 128)
    assert c.shared_classifier and c.version == 0
    with pytest.raises(Exception):
        c.dim = 1  # frozen


def test_logits_equal_pytorch_aidreams(aid):
    ids = aid.encode("I dreamed of a gentle hum of vectors, as I sense the nodes")
    ours = aid.logits(ids)
    assert ours.dtype == np.float32 and ours.shape == (len(ids), 512)
    ref = export.load_bin(str(AIDREAMS / "aidreams260K.bin")).eval()
    with torch.no_grad():
        theirs = ref(torch.tensor([ids]))[0][0].float().numpy()
    assert np.abs(ours - theirs).max() <= 1e-4
    # greedy generation (one position at a time through the KV cache) follows the same argmax
    text = aid.generate("I dreamed", max_new_tokens=20, temperature=0.0)
    seq = aid.encode("I dreamed" + text)
    assert aid.logits(seq[:-1]).argmax(1).tolist()[-20:] == seq[-20:]


def test_logits_equal_the_c_program(aid, tmp_path):
    """The same engine: bindings' logits == tests/c/logits.c's (run.c built by the Makefile)."""
    subprocess.run(["make", "-s", "build/logits"], cwd=ROOT, check=True, capture_output=True)
    models = [(AIDREAMS / "aidreams260K.bin", aid, 512)]
    path, _ = random_model(tmp_path, version=2, dim=128, n_kv_heads=2)
    models.append((path, babyllama.Model(path), 512))
    ids = [1] + list(range(40, 100))
    for path, m, V in models:
        r = subprocess.run([str(ROOT / "build" / "logits"), str(path)], input=" ".join(map(str, ids)).encode(),
                           capture_output=True, timeout=120, check=True)
        theirs = np.frombuffer(r.stdout, dtype="<f4").reshape(len(ids), V)
        # bit for bit with the same flags (babyllama/_build.py mirrors the Makefile's)
        assert np.abs(m.logits(ids) - theirs).max() <= 1e-5
    models[1][1].close()


@pytest.mark.parametrize("version,kw,tol", [
    (1, dict(n_kv_heads=2, shared_classifier=False, hidden_dim=100), 1e-4),  # GQA, odd hidden size
    (0, dict(shared_classifier=False), 1e-4),
    (2, dict(dim=128), 0.05),  # int8 weights and activations: a documented tolerance
])
def test_logits_equal_pytorch_random(tmp_path, version, kw, tol):
    path, model = random_model(tmp_path, version=version, **kw)
    ids = list(np.random.default_rng(1).integers(0, 512, 64))
    with babyllama.Model(path, AIDREAMS / "tok512.bin" if AIDREAMS.exists() else None, threads=1) as m:
        assert m.config.version == version
        ours = m.logits(ids)
    with torch.no_grad():
        theirs = model(torch.tensor([ids]))[0][0].numpy()
    assert np.abs(ours - theirs).max() <= tol


def test_encode_matches_sentencepiece(tmp_path):
    from tokenizer import Tokenizer
    texts = ["", "Once upon a time", "  two  spaces", "digits 1234567890 and 3.14!", "naïve café, 日本語",
             "emoji 🙂 and tab\there", "Lily said, \"Hi!\" — then she left...", "\u00a0nbsp", "a\nb"]
    tokenizers = [ROOT / "tokenizer.model"]
    if META_TOKENIZER.exists():
        tokenizers.append(META_TOKENIZER)
    for tm in tokenizers:
        sp = Tokenizer(tm)
        tok_bin = sp.export(tmp_path / (tm.stem + ".bin"))
        path, _ = random_model(tmp_path, dim=8, n_layers=1, n_heads=2, vocab_size=sp.n_words,
                               max_seq_len=8)
        with babyllama.Model(path, tok_bin, threads=1) as m:
            for t in texts:
                assert m.encode(t) == sp.encode(t), (tm, t)
                assert m.encode(t, bos=False, eos=True) == sp.encode(t, bos=False, eos=True)
                assert m.decode(m.encode(t)) == sp.decode(sp.encode(t)), (tm, t)


# ---------------------------------------------------------------------------------------------
# streaming and UTF-8

def byte_chain_model(tmp_path, text):
    """A model whose greedy continuation of BOS spells `text` through byte tokens (<0xHH> = 3+HH),
    then BOS: layers write nothing (zero wo, w2), and the classifier maps each token's one-hot
    embedding to its successor. Every byte of `text` must be distinct."""
    chain = [1] + [3 + b for b in text.encode()] + [1]
    assert len(set(chain[1:-1])) == len(chain) - 2
    D = 16
    model = Transformer(ModelArgs(dim=D, n_layers=1, n_heads=2, vocab_size=512, max_seq_len=32,
                                  shared_classifier=False))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.norm.weight.fill_(1.0)
        for layer in model.layers:
            layer.attention_norm.weight.fill_(1.0)
            layer.ffn_norm.weight.fill_(1.0)
        for slot, (tok, nxt) in enumerate(zip(chain[:-1], chain[1:])):
            model.tok_embeddings.weight[tok, slot] = 1.0
            model.output.weight[nxt, slot] = 1.0
    path = tmp_path / "chain.bin"
    export.export_v1(model, str(path))
    return path


def test_stream_never_splits_a_character(tmp_path):
    need(AIDREAMS)
    text = "é日😀"  # 2-, 3- and 4-byte characters, one byte token per byte
    with babyllama.Model(byte_chain_model(tmp_path, text), AIDREAMS / "tok512.bin", threads=1) as m:
        pieces = list(m.generate("", max_new_tokens=20, temperature=0.0, stream=True))
        assert pieces == ["é", "日", "😀"]
        assert m.generate("", max_new_tokens=20, temperature=0.0) == text
        # cut inside 日: the incomplete bytes become one U+FFFD at the end, never a split piece
        assert list(m.generate("", max_new_tokens=4, temperature=0.0, stream=True)) == ["é", "\ufffd"]


def test_stream_joins_to_generate(aid):
    for kw in (dict(temperature=0.0), dict(temperature=1.0, top_p=0.9, seed=5),
               dict(temperature=1.0, seed=5, stop=" as")):
        prompt = "Ich träumte von Würfeln, naïve 日本 🙂"
        pieces = list(aid.generate(prompt, max_new_tokens=60, stream=True, **kw))
        assert all(isinstance(p, str) and p for p in pieces)
        for p in pieces:
            p.encode("utf-8")  # strict: no lone surrogates
        assert "".join(pieces) == aid.generate(prompt, max_new_tokens=60, **kw)


# ---------------------------------------------------------------------------------------------
# batches and threads

def test_generate_batch_equals_sequential(aid):
    prompts = ["I dreamed", "", "The nodes", "I dreamed"]
    seeds = [3, 4, 5, 6]
    batch = aid.generate_batch(prompts, max_new_tokens=50, temperature=1.0, seed=seeds)
    assert batch == [aid.generate(p, max_new_tokens=50, seed=s) for p, s in zip(prompts, seeds)]
    assert aid.generate_batch(prompts, max_new_tokens=30, seed=10) == \
        [aid.generate(p, max_new_tokens=30, seed=10 + i) for i, p in enumerate(prompts)]
    assert batch[0] != batch[3]  # different seeds, different stories
    # other settings: greedy, top-k, stop strings, a prompt that nearly fills the context, a
    # request longer than the context
    long = "I dreamed of vectors and nodes " * 8  # 122 of 128 positions
    prompts = ["I dreamed", long, "", "The gentle hum"]
    for kw in (dict(temperature=0.0), dict(temperature=0.9, top_k=12, top_p=0.8),
               dict(temperature=1.0, stop=[" as", "."])):
        want = [aid.generate(p, max_new_tokens=500, seed=20 + i, **kw) for i, p in enumerate(prompts)]
        assert aid.generate_batch(prompts, max_new_tokens=500, seed=20, **kw) == want, kw
    assert aid.generate_batch(prompts, max_new_tokens=0) == [""] * 4
    assert aid.generate_batch([]) == []


def test_four_threads_one_model(aid):
    jobs = [("I dreamed", s) for s in range(1, 9)]
    want = [aid.generate(p, max_new_tokens=80, seed=s) for p, s in jobs]
    got, errors = [None] * len(jobs), []

    def work(k):
        try:
            for i in range(k, len(jobs), 4):
                got[i] = aid.generate(jobs[i][0], max_new_tokens=80, seed=jobs[i][1])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == want


def test_close_while_generating_is_safe():
    need(AIDREAMS)
    m = babyllama.Model(AIDREAMS / "aidreams260K.bin", AIDREAMS / "tok512.bin", threads=1)
    stream = m.generate("I dreamed", max_new_tokens=100, temperature=0.0, stream=True)
    next(stream)
    outcome = []

    def work():
        try:
            for _ in range(50):
                m.generate("", max_new_tokens=120, seed=1)
            outcome.append("finished")
        except babyllama.Error as e:
            outcome.append(str(e))

    t = threading.Thread(target=work)
    t.start()
    m.close()  # waits for the C call in flight; the thread's next call raises
    t.join()
    assert len(outcome) == 1 and ("closed" in outcome[0] or outcome[0] == "finished")
    with pytest.raises(babyllama.Error, match="closed"):
        next(stream)
    for call in (lambda: m.encode("x"), lambda: m.logits([1]), lambda: m.generate("x")):
        with pytest.raises(babyllama.Error, match="closed"):
            call()
    m.close()  # twice is fine


# ---------------------------------------------------------------------------------------------
# errors

def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        babyllama.Model(tmp_path / "nope.bin")
    need(AIDREAMS)
    with pytest.raises(FileNotFoundError, match="nope_tok.bin"):
        babyllama.Model(AIDREAMS / "aidreams260K.bin", tmp_path / "nope_tok.bin")
    data = (AIDREAMS / "aidreams260K.bin").read_bytes()
    bad = {"truncated.bin": data[: len(data) // 2],
           "tiny.bin": data[:10],
           "badmagic.bin": struct.pack("<Ii", 0x12345678, 1) + bytes(248),
           "overflow.bin": struct.pack("<7i", 1 << 30, 1 << 30, 1 << 20, 1, 1, 512, 1 << 30) + data[28:]}
    for name, blob in bad.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(babyllama.Error, match=name.replace(".", r"\.")):
            babyllama.Model(tmp_path / name, AIDREAMS / "tok512.bin")
    # a tokenizer with fewer pieces than the model's vocabulary
    path, _ = random_model(tmp_path, vocab_size=1024)
    with pytest.raises(babyllama.Error, match="tok512"):
        babyllama.Model(path, AIDREAMS / "tok512.bin")


def test_bad_arguments(aid):
    with pytest.raises(TypeError):
        babyllama.Model(123)
    for call in (lambda: aid.encode(b"bytes"), lambda: aid.decode("abc"), lambda: aid.logits("abc"),
                 lambda: aid.logits([1, 2.5]), lambda: aid.generate(5),
                 lambda: aid.generate("x", max_new_tokens="5"), lambda: aid.generate("x", temperature="hot"),
                 lambda: aid.generate("x", seed=1.5), lambda: aid.generate("x", stop=5),
                 lambda: aid.generate_batch("one prompt"), lambda: aid.generate_batch(["a", 1]),
                 lambda: aid.generate_batch(["a", "b"], seed=[1])):
        with pytest.raises(TypeError):
            call()
    for call in (lambda: aid.logits([1, 512]), lambda: aid.logits([]), lambda: aid.logits([1] * 129),
                 lambda: aid.decode([-1]), lambda: aid.generate("x", temperature=-1.0), lambda: aid.generate("x", top_p=1.5),
                 lambda: aid.generate("x", seed=0), lambda: aid.generate("x", max_new_tokens=-1),
                 lambda: aid.generate("word " * 200)):  # prompt longer than the context
        with pytest.raises(ValueError):
            call()
    assert issubclass(babyllama.Error, RuntimeError)


def test_python_cli(aid):
    """python -m babyllama prints what ./run prints for the same story (-n there counts new tokens)."""
    A = AIDREAMS
    r = subprocess.run([sys.executable, "-m", "babyllama", A / "aidreams260K.bin", "-z", A / "tok512.bin",
                        "-i", "I dreamed", "-n", "30", "-t", "0.9", "-s", "11", "-T", "1"], capture_output=True,
                       timeout=60)
    k = len(aid.encode("I dreamed", bos=False))
    assert r.returncode == 0 and r.stdout == cli(A / "aidreams260K.bin", "-z", A / "tok512.bin", "-i", "I dreamed",
                                                  "-n", 30 + k, "-t", 0.9, "-s", 11)
    r = subprocess.run([sys.executable, "-m", "babyllama", "nope.bin"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.strip() == "error: model file not found: nope.bin"


def test_default_tokenizer_is_next_to_the_model(tmp_path):
    need(AIDREAMS)
    shutil.copy(AIDREAMS / "aidreams260K.bin", tmp_path / "m.bin")
    shutil.copy(AIDREAMS / "tok512.bin", tmp_path / "tokenizer.bin")
    with babyllama.Model(tmp_path / "m.bin", threads=1) as m:
        assert m.tokenizer_path == str(tmp_path / "tokenizer.bin")
        assert m.generate("I dreamed", max_new_tokens=10, temperature=0.0)
