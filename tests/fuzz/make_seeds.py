"""
make_seeds.py: write the fuzz targets' seed corpora under tests/fuzz/corpus/ (committed): tiny valid
checkpoints of every version (written by export.py from a random model, v0 with a shared and an
unshared classifier, v2 with two group sizes), tiny tokenizer.bin files, prompts and CLI argument
lists. Run it again only when a format changes:  .venv/bin/python tests/fuzz/make_seeds.py
"""
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import torch  # noqa: E402

import export  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402


def tokenizer_bin(pieces):
    out = struct.pack("<I", max(len(p) for p in pieces))
    for i, p in enumerate(pieces):
        out += struct.pack("<fi", -float(i), len(p)) + p
    return out


def main():
    corpus = HERE / "corpus"
    for d in ("checkpoint", "tokenizer", "encode", "cli"):
        (corpus / d).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for shared in (True, False):
        args = ModelArgs(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=8, hidden_dim=32,
                         max_seq_len=4, shared_classifier=shared)
        model = Transformer(args)
        tag = "shared" if shared else "unshared"
        export.export_v0(model, corpus / "checkpoint" / f"v0_{tag}.bin")
        export.export_v1(model, corpus / "checkpoint" / f"v1_{tag}.bin")
        export.export_v2(model, corpus / "checkpoint" / f"v2_{tag}_g16.bin", group_size=16)
    export.export_v2(model, corpus / "checkpoint" / "v2_g8.bin", group_size=8)
    # vocabulary sizes are the fuzz target's 1 + size % 300: these seeds load as they are
    pieces = [b"<unk>", b"<s>", b"</s>", b"<0x41>", b"<0xE2>", b" ", b"a", b" a", b"ab", b"\xe2\x96\x81"]
    pieces += [b"b", b" ab", b"Once", b" upon", b"\xc3\xa9", b""]
    for k in (3, 8, len(pieces)):
        data = tokenizer_bin(pieces[:k])
        while 1 + len(data) % 300 != k:  # trailing bytes are allowed and ignored
            data += b"\0"
        (corpus / "tokenizer" / f"tok{k}.bin").write_bytes(data)
    prompts = {"once": "Once upon a time", "empty": "", "meta": "\u2581a\u2581b", "emoji": "a \U0001F600 b",
               "cjk": "\u4e2d\u6587", "spaces": "  two  spaces "}
    for name, text in prompts.items():
        (corpus / "encode" / name).write_bytes(text.encode())
    (corpus / "encode" / "bad_utf8").write_bytes(b"\xff\xfe\x80abc\xc3")
    argvs = {"greedy": ["-t", "0", "-n", "8", "-i", "Once upon"], "sample": ["-t", "1", "-p", "0.9", "-s", "3"],
             "topk": ["-k", "2", "-s", "1", "-n", "0"], "chat": ["-m", "chat", "-y", "sys", "-i", "hi"],
             "bad": ["-n", "99"], "help": ["-h"], "batch": ["-b", "2", "-s", "3", "-n", "8", "-i", "Once"],
             "threads": ["-T", "2", "-t", "0"],
             "request": ["-t", "0", "-a", "a  dog\t", "-e", "sad", "-g", "twist, Dialogue", "-i", "Once"],
             "tags": ["-g", "MoralValue,twist", "-E", "100", "-S", "1", "-s", "2"],
             "request_bad": ["-a", "x", "-e", "sad", "-g", "BadEnding,Foo,"],
             "bias": ["-t", "0", "-E", "100", "-S", "2", "-i", "Once"],
             "request_long": ["-a", " \U0001F600\t" * 200 + "\u00e9" * 100, "-e", "happy"],  # 500 characters
             "batch_bias": ["-b", "2", "-E", "0.5", "-S", "0", "-s", "4", "-i", "Once"]}
    for name, argv in argvs.items():
        (corpus / "cli" / name).write_bytes(b"\0".join(a.encode() for a in argv))


if __name__ == "__main__":
    main()
