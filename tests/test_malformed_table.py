"""
tests/MALFORMED.md is generated here: every malformed input in it is run for real through ./run (exit
status and the one stderr line) and through the bindings (the exception type), and the test fails if
the table on disk differs from what the code does now, so the table cannot go stale. After a
deliberate change of a message:  BABYLLAMA_UPDATE_TABLE=1 .venv/bin/python -m pytest tests/test_malformed_table.py

The inputs: a tiny model (dim 24, hidden 64, 1 layer, 2 heads, 1 KV head, context 32) exported by
export.py as versions 0, 1 and 2 with the repository's 4096-piece tokenizer.bin, then cut at every
section boundary, with header fields set negative, zero, huge or inconsistent (products overflowing
32 bits included), v2 group sizes that do not divide the rows; tokenizers with lengths past the end;
prompts that are empty, not UTF-8 or longer than the context; -n of 0 or beyond the context; every
unknown or incomplete flag. What it does not check: the golden outputs (tests/test_run_cli.py).
"""
import difflib
import os
import string
import struct
import subprocess
import sys

import pytest

from conftest import ROOT

TABLE = ROOT / "tests" / "MALFORMED.md"
D, H, L, NH, KVH, V, S, GS = 24, 64, 1, 2, 1, 4096, 32, 8
HS = D // NH
KV = KVH * HS
TOK = ROOT / "tokenizer.bin"


def make_models(tmp):
    import torch

    import export
    from model import ModelArgs, Transformer
    torch.manual_seed(0)
    args = ModelArgs(dim=D, n_layers=L, n_heads=NH, n_kv_heads=KVH, vocab_size=V, hidden_dim=H, max_seq_len=S)
    model = Transformer(args)
    export.export_v0(model, tmp / "v0.bin")
    export.export_v1(model, tmp / "v1.bin")
    assert export.export_v2(model, tmp / "v2.bin", group_size=GS) == GS
    tiny = ModelArgs(dim=8, n_layers=1, n_heads=2, vocab_size=2, hidden_dim=16, max_seq_len=8)
    export.export_v1(Transformer(tiny), tmp / "vocab2.bin")  # fuzz finding: EOS (id 2) out of range
    return {v: (tmp / f"v{v}.bin").read_bytes() for v in (0, 1, 2)}


def sections(version):
    """(name, byte offset where it starts) for each section, from FORMATS.md, and the file size."""
    mats = [("tok_emb", V * D), ("wq", D * D), ("wk", KV * D), ("wv", KV * D), ("wo", D * D),
            ("w1", H * D), ("w2", D * H), ("w3", H * D)]
    if version == 0:
        parts = [("tok_emb", 4 * V * D), ("rms_att", 4 * D)] + [(n, 4 * k) for n, k in mats[1:5]]
        parts += [("rms_ffn", 4 * D)] + [(n, 4 * k) for n, k in mats[5:]]
        parts += [("rms_final", 4 * D), ("rope_cos", 4 * S * HS // 2), ("rope_sin", 4 * S * HS // 2)]
        off = 28
    else:
        parts = [("rms_att", 4 * D), ("rms_ffn", 4 * D), ("rms_final", 4 * D)]
        for n, k in mats:
            parts += [(n, 4 * k)] if version == 1 else [(n + " int8", k), (n + " scales", 4 * k // GS)]
        off = 256
    out = []
    for name, size in parts:
        out.append((name, off))
        off += size
    return out, off


def patched(data, offset, fmt, *values):
    data = bytearray(data)
    struct.pack_into(fmt, data, offset, *values)
    return bytes(data)


def tokenizer_variants(tok):
    # tok: uint32 max_len, then per piece float score, int32 len, bytes
    first_len_at, n_first = 8, struct.unpack_from("<i", tok, 8)[0]
    second_at = 12 + n_first
    return [
        ("tokenizer: empty file", b""),
        ("tokenizer: only max_len (4 bytes)", tok[:4]),
        ("tokenizer: cut inside a piece's score/length", tok[:4 + 6]),
        ("tokenizer: cut inside a piece's bytes", tok[:second_at + 8 + 1]),
        ("tokenizer: cut in half (fewer pieces than vocab_size)", tok[:len(tok) // 2]),
        ("tokenizer: last byte missing", tok[:-1]),
        ("tokenizer: piece 0 length 10^6 (past the end)", patched(tok, first_len_at, "<i", 10**6)),
        ("tokenizer: piece 0 length -1", patched(tok, first_len_at, "<i", -1)),
        ("tokenizer: piece 0 length 2^31-1", patched(tok, first_len_at, "<i", 2**31 - 1)),
        ("tokenizer: piece 1 length past the end", patched(tok, second_at + 4, "<i", len(tok))),
    ]


def file_cases(tmp):
    """(description, checkpoint bytes or None for the good one, tokenizer bytes or None)"""
    good = make_models(tmp)
    tok = TOK.read_bytes()
    cases = []
    for v in (0, 1, 2):
        secs, end = sections(v)
        assert end == len(good[v]), f"v{v}: FORMATS.md layout says {end} bytes, export.py wrote {len(good[v])}"
        hdr = 28 if v == 0 else 256
        cases.append((f"v{v}: empty file", b"", None))
        cases.append((f"v{v}: header cut at {hdr // 2} bytes", good[v][:hdr // 2], None))
        for name, off in secs:
            cases.append((f"v{v}: cut before {name} (byte {off})", good[v][:off], None))
        cases.append((f"v{v}: last byte missing", good[v][:-1], None))
        cases.append((f"v{v}: one byte appended", good[v] + b"\0", None))
    names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"]
    for v in (0, 1):
        at = 0 if v == 0 else 8
        for i, name in enumerate(names):
            for val in (0, -1, -(2**31), 2**24 + 1, 2**31 - 1):
                if v == 0 and name == "vocab_size" and val == -1:
                    continue  # a negative v0 vocab_size means an unshared classifier: below
                cases.append((f"v{v}: {name} = {val}", patched(good[v], at + 4 * i, "<i", val), None))
        fields = lambda **kw: [kw.get(n, x) for n, x in zip(names, (D, H, L, NH, KVH, V, S))]  # noqa: E731
        for desc, vals in [
            ("dim + 2 (file size disagrees)", fields(dim=D + 2)),
            ("dim not divisible by n_heads", fields(dim=25)),
            ("odd head size (dim 30, 10 heads)", fields(dim=30, n_heads=10, n_kv_heads=10)),
            ("n_kv_heads > n_heads", fields(n_kv_heads=4)),
            ("n_layers 2 (file too short)", fields(n_layers=2)),
            ("seq_len 2^24 (v0: the RoPE tables are missing; v1: allowed)", fields(seq_len=2**24)),
            ("vocab_size x dim = 2^32 (overflows 32 bits)", fields(dim=2**16, vocab_size=2**16, n_heads=2**15, n_kv_heads=2**15)),
            ("hidden_dim x dim x n_layers > 2^63", fields(dim=2**24, hidden_dim=2**24, n_layers=2**24, n_heads=2**23, n_kv_heads=2**23)),
        ]:
            cases.append((f"v{v}: {desc}", patched(good[v], at, "<7i", *vals), None))
    cases.append(("v0: vocab_size -4096 (unshared classifier, but no wcls in the file)",
                  patched(good[0], 20, "<i", -V), None))
    cases += [
        ("v1: version 3", patched(good[1], 4, "<i", 3), None),
        ("v1: version 0 after the magic", patched(good[1], 4, "<i", 0), None),
        ("v1: version -1", patched(good[1], 4, "<i", -1), None),
        ("v1: shared_classifier byte 2", patched(good[1], 36, "<B", 2), None),
        ("v1: shared_classifier 0 (wcls missing)", patched(good[1], 36, "<B", 0), None),
        ("v1: file of 255 bytes (header cut)", good[1][:255], None),
    ]
    for gs in (0, -8, 5, 7, 48, 12, 16, 2**31 - 1):
        note = {12: " (divides dim 24, not hidden 64)", 16: " (divides hidden 64, not dim 24)"}.get(gs, "")
        cases.append((f"v2: group_size {gs}{note}", patched(good[2], 37, "<i", gs), None))
    cases.append(("v2: group_size 4 (divides the rows; the file size disagrees)", patched(good[2], 37, "<i", 4), None))
    for desc, data in tokenizer_variants(tok):
        cases.append((desc, None, data))
    return good, cases


def cli(args, cwd):
    out = subprocess.run([os.environ.get("BABYLLAMA_RUN", str(ROOT / "run")), *args], capture_output=True, timeout=60, cwd=cwd)
    lines = out.stderr.decode("utf-8", "replace").splitlines()
    lines = [ln for ln in lines if not ln.startswith("achieved tok/s")]
    return out.returncode, lines


def py_open(babyllama, ckpt, tok):
    try:
        babyllama.Model(str(ckpt), tokenizer=str(tok)).close()
        return "opens"
    except Exception as e:  # the table records whatever is raised
        return f"{type(e).__module__}.{type(e).__qualname__}"


def py_generate(babyllama, model, prompt, **kw):
    kw.setdefault("seed", 1)
    try:
        text = model.generate(prompt, **kw)
        return "ok (returns text)" if text else "ok (returns '')"
    except Exception as e:
        return f"{type(e).__module__}.{type(e).__qualname__}"


def cell(s):
    return s.replace("|", "\\|").replace("\n", "\\n")


def build_table(tmp):
    import babyllama
    good, cases = file_cases(tmp)
    rows, problems = [], []

    def norm(line):
        return line.replace(str(tmp) + "/", "").replace(str(ROOT) + "/", "")

    def add(section, desc, args, py):
        rc, lines = cli(args, tmp)
        msg = norm(lines[0]) if lines else ""
        if rc not in (0, 1) or len(lines) > 1 or (rc == 1 and not msg.startswith("error: ")):
            problems.append(f"{desc}: exit {rc}, stderr {lines[:3]}")
        rows.append((section, desc, str(rc), msg if rc else "(runs)", py))

    (tmp / "tok.bin").write_bytes(TOK.read_bytes())
    for v in (0, 1, 2):
        (tmp / f"good_v{v}.bin").write_bytes(good[v])
    for i, (desc, ckpt, tok) in enumerate(file_cases_only(cases)):
        c = tmp / f"case{i:03d}.bin" if ckpt is not None else tmp / "good_v1.bin"
        t = tmp / f"tok{i:03d}.bin" if tok is not None else tmp / "tok.bin"
        if ckpt is not None:
            c.write_bytes(ckpt)
        if tok is not None:
            t.write_bytes(tok)
        section = "tokenizer" if desc.startswith("tokenizer") else "checkpoint"
        add(section, desc, [c.name, "-z", t.name, "-n", "4", "-s", "1"], py_open(babyllama, c, t))
    add("checkpoint", "missing checkpoint file", ["nope.bin", "-z", "tok.bin"], py_open(babyllama, tmp / "nope.bin", tmp / "tok.bin"))
    add("checkpoint", "checkpoint is a directory", [".", "-z", "tok.bin"], py_open(babyllama, tmp, tmp / "tok.bin"))
    add("tokenizer", "missing tokenizer file", ["good_v1.bin", "-z", "nope.bin"], py_open(babyllama, tmp / "good_v1.bin", tmp / "nope.bin"))
    add("tokenizer", "a model with vocab_size 2 (BOS and EOS need ids 1 and 2)", ["vocab2.bin", "-z", "tok.bin"],
        py_open(babyllama, tmp / "vocab2.bin", tmp / "tok.bin"))
    add("tokenizer", "tokenizer is a directory", ["good_v1.bin", "-z", "."], py_open(babyllama, tmp / "good_v1.bin", tmp))

    m = ["good_v1.bin", "-z", "tok.bin"]
    model = babyllama.Model(str(tmp / "good_v1.bin"), tokenizer=str(tmp / "tok.bin"), threads=1)
    long_prompt = "Once upon a time " * 20  # about 80 tokens: beyond the 32 positions
    prompts = [
        ("empty prompt", "", {}),
        ("prompt that is only spaces", "   ", {}),
        ("prompt not UTF-8 (bytes ff fe 80)", b"\xff\xfe\x80", {}),
        ("prompt with a lone surrogate / invalid UTF-8 from Python", "\udcff", {}),
        ("prompt with a NUL (Python only; argv cannot hold one)", None, {}),
        ("prompt of 31 tokens with BOS (fits the 32 positions)", "a" * 30, {}),
        ("prompt longer than the context (~80 tokens > 32)", long_prompt, {}),
        ("prompt of 100 KB (argv holds at most 128 KB)", "x" * 100_000, {}),
    ]
    for desc, p, kw in prompts:
        if p is None:
            py = py_generate(babyllama, model, "a\0b", max_new_tokens=4)
            rows.append(("prompt", desc, "—", "(cannot be passed)", py))
            continue
        arg = os.fsdecode(p) if isinstance(p, bytes) else p
        py = py_generate(babyllama, model, p.decode("utf-8", "surrogateescape") if isinstance(p, bytes) else p,
                         max_new_tokens=4)
        if desc.startswith("prompt with a lone surrogate"):
            add("prompt", desc, m + ["-n", "8", "-s", "1", "-i", os.fsdecode(b"\xed\xb3\xbf")], py)
        else:
            add("prompt", desc, m + ["-n", "32", "-s", "1", "-i", arg], py)
    for desc, n, py_kw in [
        ("-n 0 (the whole context)", "0", None),
        ("-n 1 with an empty prompt", "1", None),
        ("-n 1 with a 2-token prompt", "1", None),
        ("-n 32 (= the context)", "32", None),
        ("-n 33 (beyond the context)", "33", {"max_new_tokens": 33}),
        ("-n -1", "-1", {"max_new_tokens": -1}),
        ("-n 2^31 (beyond int32)", str(2**31), {"max_new_tokens": 2**31}),
        ("-n 1e3 (not an integer)", "1e3", {"max_new_tokens": 1e3}),
        ("-n 0 from Python: max_new_tokens=0", None, {"max_new_tokens": 0}),
    ]:
        prompt = "Once" if "2-token" in desc else ""
        py = py_generate(babyllama, model, prompt, **py_kw) if py_kw else "—"
        if n is None:
            rows.append(("-n", desc, "—", "—", py))
        else:
            add("-n", desc, m + ["-n", n, "-s", "1", "-i", prompt], py)
    # flags: every letter that is not a flag is refused with the same message
    usage = subprocess.run([os.environ.get("BABYLLAMA_RUN", str(ROOT / "run")), "-h"], capture_output=True, text=True).stdout
    known = {ln.split()[0][1] for ln in usage.splitlines() if ln.strip().startswith("-")}  # from ./run -h
    unknown = [c for c in string.ascii_letters if c not in known]
    msgs = set()
    for c in unknown:
        rc, lines = cli(m + [f"-{c}", "1"], tmp)
        msgs.add((rc, lines[0].replace(f"-{c}", "-X") if lines else "", len(lines)))
    if len(msgs) != 1:
        problems.append(f"unknown flags disagree: {sorted(msgs)}")
    rc, msg, _ = sorted(msgs)[0]
    rows.append(("flags", f"each of the {len(unknown)} unknown one-letter flags -X (all but -{' -'.join(sorted(known))}) with a value",
                 str(rc), msg, "—"))
    for f in sorted(known - {"h"}, key=lambda c: (c.lower(), c.isupper())):  # -t before -T, whatever the set order
        add("flags", f"-{f} as the last argument (no value)", m + [f"-{f}"], "—")
    py_kw = {"t": {"temperature": float("nan")}, "p": {"top_p": 1.5}, "k": {"top_k": -1}}
    for desc, args, py in [
        ("-t hot", ["-t", "hot"], py_generate(babyllama, model, "", temperature="hot")),
        ("-t -1", ["-t", "-1"], py_generate(babyllama, model, "", temperature=-1)),
        ("-t nan", ["-t", "nan"], py_generate(babyllama, model, "", **py_kw["t"])),
        ("-t inf", ["-t", "inf"], py_generate(babyllama, model, "", temperature=float("inf"))),
        ("-t 1e39 (beyond float)", ["-t", "1e39"], "—"),
        ("-p 1.5", ["-p", "1.5"], py_generate(babyllama, model, "", **py_kw["p"])),
        ("-p -0.1", ["-p", "-0.1"], py_generate(babyllama, model, "", top_p=-0.1)),
        ("-k -1", ["-k", "-1"], py_generate(babyllama, model, "", **py_kw["k"])),
        ("-k 2^31", ["-k", str(2**31)], "—"),
        ("-k 5000 (more than the vocabulary: all of it)", ["-k", "5000", "-n", "4", "-s", "1"],
         py_generate(babyllama, model, "", top_k=5000, max_new_tokens=4)),
        ("-s abc", ["-s", "abc"], py_generate(babyllama, model, "", seed="abc")),
        ("-s 2^63 (beyond int64)", ["-s", str(2**63)], py_generate(babyllama, model, "", seed=2**64)),
        ("-T 0", ["-T", "0"], "—"),
        ("-T 5000", ["-T", "5000"], "—"),
        ("-b 0", ["-b", "0"], "—"),
        ("-b 5000", ["-b", "5000"], "—"),
        ("-m poem", ["-m", "poem"], "—"),
        ("-y without -m chat", ["-y", "be brief"], "—"),
        ("--temp 1 (long flag)", ["--temp", "1"], "—"),
        ("-tt 1 (two letters)", ["-tt", "1"], "—"),
        ("- (a lone dash)", ["-", "1"], "—"),
        ("stray positional argument", ["extra"], "—"),
    ]:
        add("flags", desc, m + args, py)
    add("flags", "no arguments at all", [], "—")
    add("flags", "checkpoint path missing (first argument is a flag)", ["-n", "4"], "—")
    for desc, kw in [("Model(path=42)", {"path": 42}), ("Model(path, tokenizer=3.5)", {"tokenizer": 3.5}),
                     ("Model(path, threads=0)", {"threads": 0}), ("Model(path, threads='2')", {"threads": "2"})]:
        try:
            args = dict(path=str(tmp / "good_v1.bin"), tokenizer=str(tmp / "tok.bin"))
            args.update(kw)
            babyllama.Model(**args).close()
            py = "opens"
        except Exception as e:
            py = f"{type(e).__module__}.{type(e).__qualname__}"
        rows.append(("python", desc, "—", "—", py))
    model.close()
    return rows, problems


def file_cases_only(cases):
    return cases


def render(rows):
    out = ["# Malformed inputs and the error each one gets", "",
           "Generated by `tests/test_malformed_table.py` from real runs of `./run` and of the Python bindings",
           "(`babyllama.Model(...)` for files, `Model.generate(...)` for prompts and settings); the test fails when",
           "this file differs from what the code does. File names are those of the test's temporary folder.",
           "The model: dim 24, hidden 64, 1 layer, 2 heads, 1 KV head, vocab 4096 (the repository's tokenizer.bin),",
           "context 32; `./run CKPT -z TOK -n 4 -s 1` for file cases. Exit 1 is always exactly one stderr line.",
           "Python: `babyllama.Error` subclasses: `FileError` (also FileNotFoundError), `ArgumentError` (also",
           "ValueError), `OutOfMemory` (also MemoryError); `—`: not applicable.", ""]
    order = ["checkpoint", "tokenizer", "prompt", "-n", "flags", "python"]
    section = None
    for sec, desc, rc, msg, py in sorted(rows, key=lambda r: order.index(r[0])):  # stable: case order kept
        if sec != section:
            out += ["", f"## {sec}", "", "| input | exit | ./run's message (stderr) | Python |", "|---|---|---|---|"]
            section = sec
        out.append(f"| {cell(desc)} | {rc} | {cell(msg)} | {cell(py)} |")
    return "\n".join(out) + "\n"


def test_malformed_table_is_current(tmp_path):
    if "BABYLLAMA_RUN" not in os.environ:
        subprocess.run(["make", "-s", "run"], cwd=ROOT, check=True)
    rows, problems = build_table(tmp_path)
    assert not problems, "\n".join(problems)
    text = render(rows)
    if os.environ.get("BABYLLAMA_UPDATE_TABLE"):
        TABLE.write_text(text)
    old = TABLE.read_text() if TABLE.exists() else ""
    diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True), "on disk", "now", n=0))
    assert not diff, ("tests/MALFORMED.md differs from what the code does; rerun with "
                      "BABYLLAMA_UPDATE_TABLE=1 after checking the change:\n" + diff[:6000])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
