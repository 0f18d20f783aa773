"""
TinyStories data pipeline: download, read, train a tokenizer, pretokenize into shards, and the
training-time batch reader.

    python tinystories.py download                      # HF hub -> data/ (needs the network)
    python tinystories.py train_vocab --vocab_size 4096 --data_dir ../shared/data/tinystories
    python tinystories.py pretokenize --data_dir ../shared/data/tinystories   # project tokenizer
    python tinystories.py pretokenize --vocab_size 4096 # with data/tok4096.model
    python tinystories.py pretokenize --tokenizer ../shared/tokenizers/llama2/tokenizer.model

Input (any command): --data_dir DIR or explicit files (default: $TINYSTORIES_DIR, else data/),
in the data set's native layouts (../shared/docs/FORMATS.md §1): `.txt` with a `<|endoftext|>` line
after each story, and the all_data JSON shards `data*.json` (lists of objects with `story` and an
`instruction` whose prompt key is `prompt` or `prompt:`).

Output of pretokenize: a directory of shards in our own format (docs/SHARDS.md): a 64-byte header
(magic, version, vocab size, token width, token/story/byte counts, tokenizer sha256 prefix), then the
ids as uint16 (vocab <= 65536) or uint32; every story starts with BOS. A story goes to the validation
split when a hash of its text says so (the split depends on the text only: the same stories are held
out whatever the tokenizer or the file order). `meta.json` sums the shards up.

What it does not do: the instruction/tag-conditioned formats (only the `story` text is used), or
any tokenizer other than sentencepiece.
"""
import argparse
import hashlib
import json
import os
import random
import socket
import struct
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DATA_DIR = ROOT / "data"
DEFAULT_TOKENIZER = ROOT / "tokenizer.model"
EOT = "<|endoftext|>"
HF_REPO = "roneneldan/TinyStories"

# ----------------------------------------------------------------------------------------------
# Reading the native layouts


def find_inputs(data_dir=None, files=None):
    """The input files, in a fixed order: explicit files, else every .txt / data*.json under the
    directory (--data_dir, else $TINYSTORIES_DIR, else data/)."""
    if files:
        paths = [Path(f) for f in files]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"input file not found: {p}")
        return paths
    d = Path(data_dir or os.environ.get("TINYSTORIES_DIR") or DATA_DIR)
    if not d.is_dir():
        raise FileNotFoundError(f"data directory not found: {d} (pass --data_dir DIR, set "
                                f"TINYSTORIES_DIR, or run `python tinystories.py download`)")
    paths = sorted(p for p in d.rglob("*") if p.is_file() and
                   (p.suffix == ".txt" or (p.suffix == ".json" and p.name.startswith("data"))))
    if not paths:
        raise FileNotFoundError(f"{d}: no TinyStories files (*.txt with {EOT} lines, or data*.json)")
    return paths


def iter_txt(path):
    """Stories of a .txt release: lines up to a line `<|endoftext|>`; streamed, stripped."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip() == EOT:
                story = "".join(lines).strip()
                if story:
                    yield story
                lines = []
            else:
                lines.append(line)
    story = "".join(lines).strip()  # a last story without its separator line
    if story:
        yield story


def iter_json_examples(path):
    """Examples of an all_data shard, as flat dicts: story, prompt (from `prompt` or `prompt:`),
    words, features, summary, source. One shard is one JSON list (~30 MB), loaded whole."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a TinyStories JSON shard ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of stories, got {type(data).__name__}")
    for i, ex in enumerate(data):
        if not isinstance(ex, dict) or not isinstance(ex.get("story"), str):
            raise ValueError(f"{path}: item {i} has no `story` string")
        ins = ex.get("instruction") or {}
        yield {"story": ex["story"].strip(),
               "prompt": ins.get("prompt", ins.get("prompt:", "")),
               "words": ins.get("words", []), "features": ins.get("features", []),
               "summary": ex.get("summary", ""), "source": ex.get("source", "")}


def iter_stories(paths):
    """Every non-empty stripped story of every file, in order."""
    for p in paths:
        if p.suffix == ".json":
            for ex in iter_json_examples(p):
                if ex["story"]:
                    yield ex["story"]
        else:
            yield from iter_txt(p)


def is_val(story, val_frac):
    """The fixed validation split: the first 8 bytes of blake2b(story) as a fraction of 2**64."""
    h = int.from_bytes(hashlib.blake2b(story.encode("utf-8"), digest_size=8).digest(), "little")
    return h < val_frac * 2**64


# ----------------------------------------------------------------------------------------------
# train_vocab


def sample_stories(paths, n, seed, val_frac):
    """A seeded uniform sample (reservoir) of at most n training-split stories, kept in file order."""
    rng = random.Random(seed)
    keep = []  # (position, story)
    seen = 0
    for story in iter_stories(paths):
        if is_val(story, val_frac):
            continue  # the tokenizer never sees held-out text
        if len(keep) < n:
            keep.append((seen, story))
        else:
            j = rng.randrange(seen + 1)
            if j < n:
                keep[j] = (seen, story)
        seen += 1
    keep.sort()
    return [s for _, s in keep], seen


def train_vocab(vocab_size, paths, out_path=None, sample=100_000, seed=1337, val_frac=0.02,
                threads=None):
    """Train a sentencepiece BPE tokenizer (llama2.c's options) and export its tokenizer.bin.
    The options keep sentencepiece's encoding equal to run.c's greedy best-score merges: BPE
    scores are merge ranks, and no piece holds a space except at its start (or only spaces)."""
    import io
    import sentencepiece as spm
    from tokenizer import Tokenizer

    if vocab_size < 259 + 16:
        raise ValueError(f"--vocab_size {vocab_size} is too small (259 ids are special and byte pieces)")
    out_path = Path(out_path) if out_path else DATA_DIR / f"tok{vocab_size}.model"
    stories, total = sample_stories(paths, sample, seed, val_frac)
    if not stories:
        raise ValueError("no training stories found in the input")
    print(f"training a {vocab_size}-piece BPE on {len(stories):,} of {total:,} training stories")
    # one sentence per line of a story: sentencepiece skips sentences over max_sentence_length
    lines = [ln for s in stories for ln in s.split("\n") if ln.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe",
        vocab_size=vocab_size, self_test_sample_size=0, character_coverage=1.0,
        num_threads=threads or os.cpu_count(), split_digits=True, allow_whitespace_only_pieces=True,
        byte_fallback=True, unk_surface=r" \342\201\207 ", normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, max_sentence_length=1 << 16,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, out_path)
    bin_path = Tokenizer(out_path).export()
    print(f"wrote {out_path} and {bin_path}")
    return out_path


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def inputs(p):
        p.add_argument("files", nargs="*", help="input files (.txt or data*.json); default: --data_dir")
        p.add_argument("--data_dir", default=None,
                       help="directory of TinyStories files (default: $TINYSTORIES_DIR, else data/)")
        p.add_argument("--val_frac", type=float, default=0.02,
                       help="fraction of stories held out for validation, chosen by a hash of the text")

    p = sub.add_parser("train_vocab", help="train a sentencepiece BPE tokenizer -> data/tokN.model")
    inputs(p)
    p.add_argument("--vocab_size", type=int, required=True)
    p.add_argument("--sample", type=int, default=100_000, help="stories sampled for training")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", default=None, help="output .model (default data/tok{N}.model)")

    args = ap.parse_args(argv)
    try:
        if args.cmd == "train_vocab":
            paths = find_inputs(args.data_dir, args.files)
            train_vocab(args.vocab_size, paths, args.out, args.sample, args.seed, args.val_frac)
    except (FileNotFoundError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
