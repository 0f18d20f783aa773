"""
run.c's prompt encoder gives exactly sentencepiece's ids, for Meta's Llama 2 tokenizer and for the
project's own tokenizer.model, on hand-picked hard strings (spaces, digits, punctuation, unicode,
characters only reachable through byte fallback, the empty string, newlines) and on real
TinyStories lines. The encoder runs as tests/c/encode.c (run.c compiled with -DBABYLLAMA_NO_MAIN),
on a tokenizer.bin exported by tokenizer.py into a temporary folder.
"""
import subprocess

import pytest

from conftest import META_TOKENIZER, ROOT, TINYSTORIES, need

HARD = [
    "", "a", " ", "  ", "hello", "Hello world", " leading space", "   three leading", "trailing ",
    "multiple   inner    spaces", "\ttab\tseparated", "line one\nline two", "\n", "\n\n\nthree newlines",
    "windows\r\nline", "0", "12345", "3.14159", "1,000,000 and 42nd", "2024-01-01T12:00:00Z",
    "Once upon a time, there was a little girl named Lily.",
    "\"Hello,\" said Tom. 'Don't go!' (really?) [yes] {no} <maybe>",
    "!?.,;:'\"()[]{}<>@#$%^&*-_=+/\\|~`",
    "...", "--", "!!!???", "café", "naïve résumé façade", "Ünïcödé ÅÆØ ß", "Ελληνικά", "Русский текст",
    "你好，世界", "日本語のテキストです", "안녕하세요", "مرحبا بالعالم", "नमस्ते", "emoji 🙂👍🏽🎉",
    "a🙂b", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math", "\u0800\u0fff\uffef", "\U0001F9EA\U0001FAE0", "zero\u200bwidth",
    "non\u00a0breaking", "\x01\x02\x1f control", "\x7f", "<s>", "</s>", "<unk>", "<0x41>", "<0x0A>",
    "▁", "a▁b",
    "The quick brown fox jumps over the lazy dog. " * 4,
    # runs of one character: equal-scoring overlapping pairs, where only the leftmost-first order
    # gives sentencepiece's ids
    "aaaa", "aaaaaaa", "zzzz", "zzzzzz", "oooo", ".....", "!!!!!!!!", "hahahaha", "ee ee eee",
]


def tinystories_lines(n=300):
    """The first n non-empty lines of the shared TinyStories text (skipped entries when absent)."""
    path = TINYSTORIES / "TinyStories-train.head.txt"
    if not path.exists():
        return []
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line and line != "<|endoftext|>":
                lines.append(line)
            if len(lines) == n:
                break
    return lines


def long_text(n=200_000):
    """One text of the first n characters of the shared TinyStories file, newlines and all: tens of
    thousands of merges in one call (the heap order must stay sentencepiece's all the way)."""
    path = TINYSTORIES / "TinyStories-train.head.txt"
    return [path.read_text(encoding="utf-8")[:n]] if path.exists() else []


@pytest.fixture(scope="module")
def encoder():
    subprocess.run(["make", "-s", "build/encode"], cwd=ROOT, check=True)
    return ROOT / "build" / "encode"


def c_encode(encoder, tokenizer_bin, vocab_size, texts, timeout=120):
    lines = "".join(t.encode("utf-8").hex() + "\n" for t in texts)
    out = subprocess.run([str(encoder), str(tokenizer_bin), str(vocab_size)], input=lines,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    rows = out.stdout.split("\n")[:-1]
    assert len(rows) == len(texts)
    return [[int(x) for x in row.split()] for row in rows]


def check_parity(encoder, model_path, tmp_path):
    from tokenizer import Tokenizer
    tok = Tokenizer(model_path)
    bin_path = tok.export(tmp_path / "tokenizer.bin")
    texts = HARD + tinystories_lines() + long_text()
    got = c_encode(encoder, bin_path, tok.n_words, texts)
    bad = [(t, g, tok.encode(t, bos=False)) for t, g in zip(texts, got) if g != tok.encode(t, bos=False)]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ; first: {bad[0]!r}"
    assert len(texts) > 60


def test_meta_tokenizer(encoder, tmp_path):
    check_parity(encoder, need(META_TOKENIZER), tmp_path)


def test_project_tokenizer(encoder, tmp_path):
    model = ROOT / "tokenizer.model"
    if not model.exists():
        pytest.skip("tokenizer.model (the project's tokenizer, made by `tinystories.py train_vocab`) is absent")
    check_parity(encoder, model, tmp_path)


def test_long_text(encoder, tmp_path):
    """20 KB of stories with their newlines in one text: same ids, and no quadratic stall (the
    timeout in c_encode; llama2.c's merge loop takes about a minute on this)."""
    from tokenizer import Tokenizer
    path = need(TINYSTORIES / "TinyStories-train.head.txt")
    text = path.read_text(encoding="utf-8")[:20000]
    tok = Tokenizer(need(META_TOKENIZER))
    got = c_encode(encoder, tok.export(tmp_path / "t.bin"), tok.n_words, [text], timeout=20)
    assert got[0] == tok.encode(text, bos=False)


def test_byte_fallback_is_exercised(encoder, tmp_path):
    """The hard strings really reach the byte-fallback ids 3..258 with Meta's tokenizer."""
    from tokenizer import Tokenizer
    tok = Tokenizer(need(META_TOKENIZER))
    ids = c_encode(encoder, tok.export(tmp_path / "t.bin"), tok.n_words, ["\U0001F9EA", "\n", ""])
    assert ids[0][0] == 29871 and len(ids[0]) == 5  # the dummy-prefix space, then 4 bytes
    assert all(3 <= i <= 258 for i in ids[0][1:])
    assert 3 + 0x0A in ids[1]
    assert ids[2] == []
