"""
The `run` CLI: llama2.c's golden outputs byte for byte on the real aidreams260K model (greedy,
prompted, sampled with a seed), both from ./run and from ./run_debug (address + undefined-behaviour
sanitizers); and a table of malformed inputs, each of which must end with exit status 1 and exactly
one line on stderr naming the file or argument at fault (never a signal, never a sanitizer report).
"""
import struct
import subprocess

import pytest

from conftest import AIDREAMS, ROOT, need

BINARIES = ["run", "run_ref", "run_debug"]  # fast kernels, reference kernels, sanitizers
GOLDEN = [
    ("expected_greedy_n128.txt", ["-t", "0", "-n", "128"]),
    ("expected_greedy_n64_prompt_I_dreamed.txt", ["-t", "0", "-n", "64", "-i", "I dreamed"]),
    ("expected_t1_p0.9_s42_n128.txt", ["-t", "1.0", "-p", "0.9", "-s", "42", "-n", "128"]),
]


@pytest.fixture(scope="module", autouse=True)
def built():
    subprocess.run(["make", "-s", "run", "run_ref", "run_debug"], cwd=ROOT, check=True)


def run(binary, *args, stdin=subprocess.DEVNULL):
    return subprocess.run([str(ROOT / binary), *map(str, args)], capture_output=True, timeout=120, stdin=stdin)


def model_args():
    return [need(AIDREAMS / "aidreams260K.bin"), "-z", need(AIDREAMS / "tok512.bin")]


@pytest.mark.parametrize("binary", BINARIES)
@pytest.mark.parametrize("expected,args", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_output(binary, expected, args):
    out = run(binary, *model_args(), *args)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == (AIDREAMS / expected).read_bytes()
    assert b"achieved tok/s: " in out.stderr


@pytest.mark.parametrize("binary", BINARIES)
def test_top_k_1_is_greedy(binary):
    out = run(binary, *model_args(), "-t", "1", "-k", "1", "-s", "5", "-n", "128")
    assert out.stdout == (AIDREAMS / "expected_greedy_n128.txt").read_bytes()


def test_seed_changes_the_story():
    a = run("run", *model_args(), "-s", "1", "-n", "64").stdout
    b = run("run", *model_args(), "-s", "2", "-n", "64").stdout
    assert a != b and a == run("run", *model_args(), "-s", "1", "-n", "64").stdout


def test_help():
    out = run("run", "-h")
    assert out.returncode == 0 and b"Usage" in out.stdout and b"-k <int>" in out.stdout


@pytest.mark.parametrize("binary", BINARIES)
def test_chat_mode(binary):
    """Chat with the turns on stdin: the template and its bounded buffers run clean to the end of input."""
    out = run(binary, *model_args(), "-m", "chat", "-t", "0", "-n", "128", "-y", "Be brief.",
              "-i", "Tell me a dream.", stdin=None)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.startswith(b"Assistant: ")


def patched(data, offset, fmt, *values):
    data = bytearray(data)
    struct.pack_into(fmt, data, offset, *values)
    return bytes(data)


def malformed_cases(tmp):
    """(name, args, text the one error line must contain) for every bad input."""
    model = (AIDREAMS / "aidreams260K.bin").read_bytes()
    tok = (AIDREAMS / "tok512.bin").read_bytes()
    files = {}
    for cut in [0, 3, 27, 28, 1000, len(model) // 2, len(model) - 1]:
        files[f"cut{cut}.bin"] = model[:cut]
    files["extra_byte.bin"] = model + b"\0"
    files["magic_v7.bin"] = struct.pack("<Ii", 0x616B3432, 7) + bytes(248) + model[28:]
    files["magic_v0.bin"] = struct.pack("<Ii", 0x616B3432, 0) + bytes(248)
    files["v1_short.bin"] = struct.pack("<Ii7i", 0x616B3432, 1, 64, 172, 4, 4, 4, 512, 128) + bytes(220)
    # header fields: (index, value): overflowing, zero, negative, inconsistent, not matching the size
    for i, v in [(0, 2**31 - 1), (0, 0), (0, -64), (1, 2**31 - 1), (2, 2**24), (2, 5), (3, 3), (3, 0),
                 (4, 3), (4, 8), (5, -(2**31)), (5, 513), (5, 2**30), (6, -1), (6, 2**31 - 1)]:
        files[f"hdr{i}_{v}.bin"] = patched(model, 4 * i, "<i", v)
    files["tok_half.bin"] = tok[: len(tok) // 2]
    files["tok_empty.bin"] = b""
    files["tok_longlen.bin"] = patched(tok, 4 + 4, "<i", 10**6)  # the first piece's length
    files["tok_neglen.bin"] = patched(tok, 4 + 4, "<i", -7)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    good_model, good_tok = AIDREAMS / "aidreams260K.bin", AIDREAMS / "tok512.bin"
    cases = [("missing model", [tmp / "nope.bin", "-z", good_tok], "nope.bin"),
             ("missing tokenizer", [good_model, "-z", tmp / "nope_tok.bin"], "nope_tok.bin"),
             ("a directory", [tmp, "-z", good_tok], str(tmp))]
    for name in files:
        if name.startswith("tok_"):
            cases.append((name, [good_model, "-z", tmp / name], name))
        else:
            cases.append((name, [tmp / name, "-z", good_tok], name))
    m = [good_model, "-z", good_tok]
    cases += [
        ("prompt longer than the context", m + ["-i", "dreams of vectors " * 100], "-i"),
        ("prompt longer than -n", m + ["-n", "5", "-i", "I dreamed of a gentle hum"], "-n"),
        ("-n beyond the context", m + ["-n", "129"], "-n 129"),
        ("-n negative", m + ["-n", "-3"], "-n"),
        ("-n not a number", m + ["-n", "ten"], "-n"),
        ("unknown flag", m + ["-q", "1"], "-q"),
        ("long flag", m + ["--temp", "1"], "--temp"),
        ("flag without value", m + ["-t"], "-t"),
        ("bad temperature", m + ["-t", "hot"], "-t"),
        ("negative temperature", m + ["-t", "-1"], "-t"),
        ("top-p above 1", m + ["-p", "1.5"], "-p"),
        ("bad mode", m + ["-m", "poem"], "-m"),
        ("stray argument", m + ["extra"], "extra"),
        ("no checkpoint", [], "checkpoint"),
        ("huge chat system prompt", m + ["-m", "chat", "-y", "sys " * 5000, "-i", "hi"], "-i"),
    ]
    return cases


@pytest.mark.parametrize("binary", BINARIES)
def test_malformed_inputs(binary, tmp_path):
    need(AIDREAMS / "aidreams260K.bin")
    problems = []
    for name, args, must_name in malformed_cases(tmp_path):
        out = run(binary, *args)
        err = out.stderr.decode(errors="replace")
        lines = err.splitlines()
        if out.returncode != 1:  # a negative code is a signal: a crash
            problems.append(f"{name}: exit status {out.returncode}, stderr {err[:300]!r}")
        elif len(lines) != 1 or not lines[0].startswith("error: ") or must_name not in lines[0]:
            problems.append(f"{name}: want one 'error: ...' line naming {must_name!r}, got {err[:300]!r}")
        elif out.stdout:
            problems.append(f"{name}: printed to stdout: {out.stdout[:100]!r}")
    assert not problems, "\n".join(problems)
