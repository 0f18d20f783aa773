"""
TinyStories data pipeline: download, read, train a tokenizer, pretokenize into shards, and the
training-time batch reader.

    python tinystories.py download                      # HF hub -> data/ (needs the network)
    python tinystories.py train_vocab --vocab_size 4096 --data_dir ../shared/data/tinystories
    python tinystories.py pretokenize --data_dir ../shared/data/tinystories   # project tokenizer
    python tinystories.py pretokenize --vocab_size 4096 # with data/tok4096.model
    python tinystories.py pretokenize --tokenizer ../shared/tokenizers/llama2/tokenizer.model
    python tinystories.py pretokenize --format instruct --balance --data_dir DIR_OF_LABELLED_DATA

Input (any command): --data_dir DIR or explicit files (default: $TINYSTORIES_DIR, else what
`download` fetched: data/TinyStories_all_data/ or data/TinyStories/),
in the data set's native layouts (../shared/docs/FORMATS.md §1): `.txt` with a `<|endoftext|>` line
after each story, and the all_data JSON shards `data*.json` (lists of objects with `story` and an
`instruction` whose prompt key is `prompt` or `prompt:`).

Output of pretokenize: a directory of shards in our own format (docs/SHARDS.md): a 64-byte header
(magic, version, vocab size, token width, token/story/byte counts, tokenizer sha256 prefix), then the
ids as uint16 (vocab <= 65536) or uint32; every story starts with BOS. A story goes to the validation
split when a hash of its text says so (the split depends on the text only: the same stories are held
out whatever the tokenizer or the file order). `meta.json` sums the shards up.

Conditional formats (`--format tags | instruct | instruct_tags`) read the labelled layouts through
conditions.py (TinyStoriesInstruct .txt, all_data data*.json, TinyStories-GPT4 .parquet) and write
each example as its prompt then its story (conditions.encode_example: the prompt ids are exactly
those generation sees). Their shards (version 2) end with a table of (prompt length, total length)
per example, so training can learn the story only (`iter_examples`: one example per row, prompt
targets -100); they have a test split beside train and val (85/5/10 by default, by the same hash).

What it does not do: build the prompts (conditions.py) or any tokenizer other than sentencepiece.
"""
import argparse
import array
import hashlib
import itertools
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
EOT = "<|endoftext|>"
HF_REPO = "roneneldan/TinyStories"

# ----------------------------------------------------------------------------------------------
# download

DOWNLOADS = {  # what -> (files in the hub repo, folder under data/)
    "all_data": (["TinyStories_all_data.tar.gz"], "TinyStories_all_data"),
    "txt": (["TinyStories-train.txt", "TinyStories-valid.txt"], "TinyStories"),
    "gpt4": (["TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"], "TinyStories"),
}
OFFLINE_HELP = ("cannot reach the Hugging Face hub; to use a local copy of TinyStories instead, pass "
                "--data_dir DIR (or set TINYSTORIES_DIR=DIR) to a folder of its .txt or data*.json files")


def hub_reachable(timeout=5.0):
    """Can we open a TCP connection to the hub within timeout seconds (DNS included)?"""
    import threading
    from urllib.parse import urlparse
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname, url.port or (80 if url.scheme == "http" else 443)
    ok = []

    def probe():  # in a thread: getaddrinfo itself has no timeout
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def unpack_json_shards(tar_path, dest):
    """Write the data*.json members of the all_data tarball into dest, flat, each via a .tmp
    (only those names are taken, so a hostile archive cannot write elsewhere)."""
    import shutil
    import tarfile
    from tqdm import tqdm
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and
                   Path(m.name).name.startswith("data") and m.name.endswith(".json")]
        for m in tqdm(members, desc=f"unpacking {Path(tar_path).name}", unit="shard"):
            out = Path(dest) / Path(m.name).name
            with tar.extractfile(m) as src, open(out.with_name(out.name + ".tmp"), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(out.with_name(out.name + ".tmp"), out)


def download(what="all_data", data_dir=DATA_DIR):
    """Fetch TinyStories from the hub into data_dir/<folder> (hf_hub_download resumes partial
    files and shows a progress bar), and unpack the all_data tarball. Returns the folder."""
    if not hub_reachable():
        raise ConnectionError(OFFLINE_HELP)
    from huggingface_hub import hf_hub_download
    files, folder = DOWNLOADS[what]
    dest = Path(data_dir) / folder
    dest.mkdir(parents=True, exist_ok=True)
    for name in files:
        try:
            path = Path(hf_hub_download(HF_REPO, name, repo_type="dataset", local_dir=dest))
        except Exception as e:  # the hub client's HTTP errors are not OSErrors
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConnectionError(f"downloading {name} from {HF_REPO} failed ({first}); run it again "
                                  f"to resume, or use a local copy with --data_dir DIR") from None
        if name.endswith(".tar.gz") and not (dest / "data49.json").is_file():
            unpack_json_shards(path, dest)
    print(f"TinyStories ({what}) is in {dest}")
    return dest


# ----------------------------------------------------------------------------------------------
# Reading the native layouts


def find_inputs(data_dir=None, files=None, labelled=False):
    """The input files, in a fixed order: explicit files, else every .txt / data*.json under the
    directory (--data_dir, else $TINYSTORIES_DIR, else data/); labelled: .parquet files too (the
    TinyStories-GPT4 rows, for the conditional formats)."""
    if files:
        paths = [Path(f) for f in files]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"input file not found: {p}")
        return paths
    default = next((DATA_DIR / f for _, f in DOWNLOADS.values() if (DATA_DIR / f).is_dir()), DATA_DIR)
    d = Path(data_dir or os.environ.get("TINYSTORIES_DIR") or default)
    if not d.is_dir():
        raise FileNotFoundError(f"data directory not found: {d} (pass --data_dir DIR, set "
                                f"TINYSTORIES_DIR, or run `python tinystories.py download`)")
    paths = sorted(p for p in d.rglob("*") if p.is_file() and
                   (p.suffix == ".txt" or (p.suffix == ".json" and p.name.startswith("data"))
                    or (labelled and p.suffix == ".parquet")))
    if not paths:
        raise FileNotFoundError(f"{d}: no TinyStories files (*.txt with {EOT} lines, or data*.json)")
    return paths


def iter_txt(path, with_bytes=False):
    """Stories of a .txt release: lines up to a line `<|endoftext|>`; streamed, stripped.
    with_bytes: yield (story, bytes of the file consumed since the previous story) instead."""
    lines, used = [], 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f):
            used += len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: line {n + 1} is not UTF-8 ({e.reason})") from None
            if line.strip() != EOT:
                lines.append(line)
                continue
            story = "".join(lines).strip()
            if story:
                yield (story, used) if with_bytes else story
                used = 0
            lines = []
    story = "".join(lines).strip()  # a last story without its separator line
    if story:
        yield (story, used) if with_bytes else story


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


def iter_stories(paths, with_bytes=False):
    """Every non-empty stripped story of every file, in order. with_bytes: yield (story, share of
    the file's bytes) pairs instead, for progress bars (the shares of a file add up to its size)."""
    for p in paths:
        if p.suffix != ".json":
            yield from iter_txt(p, with_bytes)
            continue
        stories = [ex["story"] for ex in iter_json_examples(p) if ex["story"]]
        size = p.stat().st_size
        for i, s in enumerate(stories):
            yield (s, size * (i + 1) // len(stories) - size * i // len(stories)) if with_bytes else s


def _story_hash(story):
    b = story.encode("utf-8") if isinstance(story, str) else story
    return int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little")


def is_val(story, val_frac):
    """The fixed validation split: the first 8 bytes of blake2b(story's UTF-8) as a fraction of 2**64."""
    return _story_hash(story) < val_frac * 2**64


def split_of(story, val_frac, test_frac=0.0):
    """'val' for a hash below val_frac (as is_val), 'test' for one in [val_frac, val_frac +
    test_frac), else 'train': the held-out sets are functions of the story text alone."""
    h = _story_hash(story)
    return "val" if h < val_frac * 2**64 else "test" if h < (val_frac + test_frac) * 2**64 else "train"


# ----------------------------------------------------------------------------------------------
# train_vocab


def sample_stories(paths, n, seed, val_frac, progress=True):
    """A seeded uniform sample (reservoir) of at most n training-split stories, kept in file order."""
    from tqdm import tqdm
    rng = random.Random(seed)
    keep = []  # (position, story)
    seen = 0
    bar = tqdm(total=sum(p.stat().st_size for p in paths), unit="B", unit_scale=True,
               desc="sampling stories", disable=not progress)
    for story, nbytes in iter_stories(paths, with_bytes=True):
        bar.update(nbytes)
        if is_val(story, val_frac):
            continue  # the tokenizer never sees held-out text
        if len(keep) < n:
            keep.append((seen, story))
        else:
            j = rng.randrange(seen + 1)
            if j < n:
                keep[j] = (seen, story)
        seen += 1
    bar.close()
    keep.sort()
    return [s for _, s in keep], seen


def train_vocab(vocab_size, paths, out_path=None, sample=100_000, seed=1337, val_frac=0.02,
                threads=None, verbose=True):
    """Train a sentencepiece BPE tokenizer (llama2.c's options) and export its tokenizer.bin.
    The options keep sentencepiece's encoding equal to run.c's greedy best-score merges: BPE
    scores are merge ranks, and no piece holds a space except at its start (or only spaces)."""
    import io
    import sentencepiece as spm
    from tokenizer import Tokenizer

    if vocab_size < 259 + 16:
        raise ValueError(f"--vocab_size {vocab_size} is too small (259 ids are special and byte pieces)")
    out_path = Path(out_path) if out_path else DATA_DIR / f"tok{vocab_size}.model"
    stories, total = sample_stories(paths, sample, seed, val_frac, verbose)
    if not stories:
        raise ValueError("no training stories found in the input")
    if verbose:
        print(f"training a {vocab_size}-piece BPE on {len(stories):,} of {total:,} training stories "
              f"(sentencepiece's log follows)")
    # one sentence per line of a story: sentencepiece skips sentences over max_sentence_length
    lines = [ln for s in stories for ln in s.split("\n") if ln.strip()]
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, model_type="bpe",
            vocab_size=vocab_size, character_coverage=1.0,
            num_threads=threads or os.cpu_count(), split_digits=True, allow_whitespace_only_pieces=True,
            byte_fallback=True, unk_surface=r" \342\201\207 ", normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=True, max_sentence_length=1 << 16,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=0 if verbose else 2)
    except RuntimeError as e:  # e.g. more pieces asked for than the sample can give
        raise ValueError(f"sentencepiece training failed: {str(e).strip().splitlines()[-1]}") from None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, out_path)
    bin_path = Tokenizer(out_path).export()
    print(f"wrote {out_path} and {bin_path}")
    return out_path


# ----------------------------------------------------------------------------------------------
# Encoding stories fast


class StoryEncoder:
    """Story text -> ids, with BOS first, equal to sentencepiece's own encoding but faster.

    A story is cut at its spaces into words; sentencepiece sees each word with the space before it
    (its dummy prefix stands for that space). When no piece holds a space after a non-space
    character (true of llama2.c-style BPE: sentencepiece only lets U+2581 start a piece, or fill
    it), no merge can cross from one word into the next, so each word encodes on its own, and a dict
    caches the ids of words already seen (stories reuse few words) as bytes ready to be written.
    Stories with leading, trailing or repeated spaces or a literal U+2581, and tokenizers without
    that property, are encoded whole."""

    def __init__(self, model_path, max_cache=1 << 18):
        from tokenizer import Tokenizer
        self.tok = Tokenizer(model_path)  # encode(text, bos, eos) for conditions.encode_example
        self.sp = self.tok.sp
        self.bos = self.sp.bos_id()
        self.dtype = token_dtype(self.sp.vocab_size())
        self.bos_bytes = self.to_bytes([self.bos])
        self.max_cache = max_cache
        self.cache = {}
        ws = "\u2581"
        pieces = (self.sp.id_to_piece(i) for i in range(self.sp.vocab_size()))
        self.chunked = all(ws not in p.lstrip(ws) for p in pieces)

    def to_bytes(self, ids):
        a = array.array("H" if self.dtype.itemsize == 2 else "I", ids)  # faster than numpy when small
        if sys.byteorder == "big":
            a.byteswap()  # shards are little-endian
        return a.tobytes()

    def parts(self, story):
        """The story's ids as a list of byte strings of `dtype` ids, BOS first: b"".join them."""
        words = story.split(" ")
        if not self.chunked or "" in words or "\u2581" in story:  # the rare slow path
            return [self.bos_bytes, self.to_bytes(self.sp.encode(story))]
        got = list(map(self.cache.get, words))
        if None in got:
            if len(self.cache) >= self.max_cache:
                self.cache.clear()  # bounded memory on any input
            for i, ids in enumerate(got):
                if ids is None:
                    got[i] = self.cache[words[i]] = self.to_bytes(self.sp.encode(words[i]))
        got.insert(0, self.bos_bytes)
        return got

    def encode(self, story):
        return np.frombuffer(b"".join(self.parts(story)), dtype=self.dtype).tolist()


# ----------------------------------------------------------------------------------------------
# Shards: a 64-byte header of our own, then the ids (see docs/SHARDS.md)

MAGIC = b"BLTOKENS"
VERSION = 1  # ids only (stories)
VERSION_BOUNDS = 2  # ids, then the example table (prompt length, total length) per example
HEADER = struct.Struct("<8sIIIIQQQ16s")  # magic, version, header size, vocab, width, tokens, stories, bytes, sha
assert HEADER.size == 48 + 16
BOUND = np.dtype("<u4")  # an example table entry: 2 of these


def token_dtype(vocab_size):
    """Little-endian uint16 when every id fits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def pack_header(vocab_size, n_tokens, n_stories, n_bytes, sha256_hex, version=VERSION):
    width = token_dtype(vocab_size).itemsize
    return HEADER.pack(MAGIC, version, HEADER.size, vocab_size, width, n_tokens, n_stories, n_bytes,
                       bytes.fromhex(sha256_hex)[:16])


def read_header(path):
    """The header of a shard as a dict, after checking magic, version, width and file size.
    Version 1: ids only; version 2: ids, then n_stories (prompt length, total length) uint32 pairs."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(HEADER.size)
    if len(raw) < HEADER.size or raw[:8] != MAGIC:
        raise ValueError(f"{path}: not a babyllama token shard (bad magic)")
    magic, version, hsize, vocab, width, n_tok, n_st, n_by, sha = HEADER.unpack(raw)
    if version not in (VERSION, VERSION_BOUNDS) or hsize != HEADER.size:
        raise ValueError(f"{path}: shard format version {version} (header {hsize} bytes); "
                         f"this reader knows versions {VERSION} and {VERSION_BOUNDS}")
    if width != token_dtype(vocab).itemsize:
        raise ValueError(f"{path}: token width {width} does not fit vocab size {vocab}")
    table = 2 * BOUND.itemsize * n_st if version == VERSION_BOUNDS else 0
    if size != HEADER.size + n_tok * width + table:
        raise ValueError(f"{path}: {size} bytes on disk but the header promises "
                         f"{HEADER.size + n_tok * width + table} ({n_tok} tokens"
                         f"{f', {n_st} examples' if table else ''}): truncated or corrupt")
    return {"vocab_size": vocab, "width": width, "n_tokens": n_tok, "n_stories": n_st,
            "n_bytes": n_by, "sha256_prefix": sha.hex(), "version": version}


def open_shard(path, vocab_size=None, sha256=None):
    """Memory-map a shard's ids, refusing one made with another tokenizer."""
    h = read_header(path)
    if vocab_size is not None and h["vocab_size"] != vocab_size:
        raise ValueError(f"{path}: made with a {h['vocab_size']}-piece tokenizer, expected {vocab_size}")
    if sha256 is not None and h["sha256_prefix"] != sha256[:32]:
        raise ValueError(f"{path}: made with another tokenizer (sha256 {h['sha256_prefix']}..., "
                         f"expected {sha256[:32]}...)")
    if h["n_tokens"] == 0:
        return np.zeros(0, dtype=token_dtype(h["vocab_size"]))
    return np.memmap(path, dtype=token_dtype(h["vocab_size"]), mode="r", offset=HEADER.size,
                     shape=(h["n_tokens"],))


def read_bounds(path, ids=None, bos=1):
    """The example table of a version-2 shard as int64 arrays (prompt_len, total_len, start),
    checked against its ids: every example starts with BOS, has a prompt of at least that BOS and
    at least one story token, and the examples tile the ids exactly. ids: open_shard(path), if open.
    A shard without a table (version 1, --format plain) is refused in one line."""
    path = Path(path)
    h = read_header(path)
    if h["version"] != VERSION_BOUNDS:
        raise ValueError(f"{path}: no example boundaries (a --format plain shard); make the data "
                         f"with `python tinystories.py pretokenize --format instruct` (or tags)")
    ids = open_shard(path) if ids is None else ids
    n = h["n_stories"]
    off = HEADER.size + h["n_tokens"] * h["width"]
    table = np.fromfile(path, dtype=BOUND, count=2 * n, offset=off).astype(np.int64).reshape(n, 2)
    plen, tlen = table[:, 0], table[:, 1]
    start = np.concatenate([[0], np.cumsum(tlen)[:-1]]).astype(np.int64) if n else np.zeros(0, np.int64)
    bad = (plen < 1) | (tlen <= plen)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{path}: example {i} has prompt length {plen[i]} and total length {tlen[i]}: "
                         f"corrupt example table")
    if int(tlen.sum()) != h["n_tokens"]:
        raise ValueError(f"{path}: the example table covers {int(tlen.sum())} tokens, the shard holds "
                         f"{h['n_tokens']}: corrupt example table")
    if n and not (np.asarray(ids[start]) == bos).all():
        raise ValueError(f"{path}: an example does not start with BOS ({bos}): corrupt example table")
    return plen, tlen, start


def shard_name(split, i):
    return f"{split}_{i:05d}.bin"


def shard_done(path, vocab_size, sha256, bounds=False):
    try:
        ids = open_shard(path, vocab_size, sha256)
        if bounds:
            read_bounds(path, ids)
        return True
    except (OSError, ValueError):
        return False


class ShardWriter:
    """One shard being written: tokens stream to NAME.tmp; close() writes the header and renames."""

    def __init__(self, path, vocab_size, sha256, bounds=False):
        self.path, self.vocab_size, self.sha256 = Path(path), vocab_size, sha256
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.f = open(self.tmp, "wb")
        self.f.write(b"\0" * HEADER.size)  # filled in by close()
        self.width = token_dtype(vocab_size).itemsize
        self.n_tokens = self.n_stories = self.n_bytes = 0
        # the example table (8 bytes an example) waits in memory until the ids are all written
        self.bounds = bytearray() if bounds else None

    def write(self, ids, n_stories, n_bytes, bounds=b""):
        """Append ids (an array of the shard's dtype, or its bytes) and count the stories;
        bounds: their (prompt length, total length) entries, for a shard with a table."""
        data = ids.tobytes() if isinstance(ids, np.ndarray) else bytes(ids)
        self.f.write(data)
        self.n_tokens += len(data) // self.width
        self.n_stories += n_stories
        self.n_bytes += n_bytes
        if self.bounds is not None:
            self.bounds += bounds

    def abort(self):
        """Drop the half-written shard (on an error or an interrupt)."""
        self.f.close()
        self.tmp.unlink(missing_ok=True)

    def close(self):
        version = VERSION
        if self.bounds is not None:
            self.f.write(self.bounds)
            version = VERSION_BOUNDS
        self.f.seek(0)
        self.f.write(pack_header(self.vocab_size, self.n_tokens, self.n_stories, self.n_bytes, self.sha256,
                                 version))
        self.f.close()
        os.replace(self.tmp, self.path)


# ----------------------------------------------------------------------------------------------
# pretokenize

_worker_encoder = None


def _init_worker(model_path):
    global _worker_encoder
    _worker_encoder = StoryEncoder(model_path)


def _splits(test_frac):
    return ("train", "val", "test") if test_frac > 0 else ("train", "val")


def _encode_block(stories, val_frac, test_frac=0.0):
    """({split: ids as bytes}, {split: [n_stories, n_bytes]}) for a block of stories; in a worker."""
    parts = {k: [] for k in _splits(test_frac)}
    stats = {k: [0, 0] for k in parts}
    for s in stories:
        b = s.encode("utf-8")
        split = split_of(b, val_frac, test_frac)
        parts[split] += _worker_encoder.parts(s)
        stats[split][0] += 1
        stats[split][1] += len(b)
    return {k: b"".join(v) for k, v in parts.items()}, stats


def _encode_examples(examples, val_frac, test_frac):
    """As _encode_block for (prompt, story) pairs, plus ({split: example table bytes}): each example
    is conditions.encode_example's prompt ids (BOS first) then story ids; the split follows the
    story text alone, as for plain stories. In a worker."""
    from conditions import encode_example
    tok = _worker_encoder.tok
    parts = {k: [] for k in _splits(test_frac)}
    table = {k: [] for k in parts}
    stats = {k: [0, 0] for k in parts}
    for prompt, story in examples:
        b = story.encode("utf-8")
        split = split_of(b, val_frac, test_frac)
        p, s = encode_example(tok, prompt, story)
        parts[split] += p
        parts[split] += s
        table[split] += (len(p), len(p) + len(s))
        stats[split][0] += 1
        stats[split][1] += len(b)
    ids = {k: _worker_encoder.to_bytes(v) for k, v in parts.items()}
    bounds = {k: np.array(v, dtype=BOUND).tobytes() for k, v in table.items()}
    return ids, stats, bounds


def iter_labelled(paths, fmt, balance=False):
    """(prompt, story) of every labelled example of the files, in order, in a conditional format
    (conditions.format_example); balance: as many happy as sad endings (conditions.balanced)."""
    import conditions
    examples = (ex for p in paths for ex in conditions.read_examples(p) if ex["story"])
    if balance:
        examples = conditions.balanced(examples)
    for ex in examples:
        yield conditions.format_example(ex, fmt)


def _blocks(stories, n):
    block = []
    for s in stories:
        block.append(s)
        if len(block) == n:
            yield block
            block = []
    if block:
        yield block


def _shards(items, shard_stories):
    """(shard index, [(item, progress units)]) for consecutive groups of shard_stories items."""
    it = iter(items)
    i = 0
    while True:
        group = []
        for s in it:
            group.append(s)
            if len(group) == shard_stories:
                break
        if not group:
            return
        yield i, group
        i += 1
        if len(group) < shard_stories:
            return


def default_out_dir(tok_path, sha256, vocab_size, fmt="plain", balance=False):
    """data/tok{V}_{sha8}, with _{fmt} (and _bal) for the conditional formats."""
    suffix = "" if fmt == "plain" else f"_{fmt}" + ("_bal" if balance else "")
    return DATA_DIR / f"tok{vocab_size}_{sha256[:8]}{suffix}"


def load_meta(bin_dir):
    """meta.json of a shard directory (tokenizer identity, vocab size, per-split counts)."""
    p = Path(bin_dir) / "meta.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run `python tinystories.py pretokenize` first "
                                f"(or pass the directory it wrote)")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None


def _write_json(path, obj):
    tmp = Path(str(path) + ".tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:  # a full disk: one line naming the file, no meta.json.tmp left behind
        tmp.unlink(missing_ok=True)
        raise OSError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pretokenize(paths, tokenizer_path=None, out_dir=None, val_frac=0.02, shard_stories=50_000,
                workers=None, block_stories=512, progress=True, fmt="plain", balance=False,
                test_frac=0.0):
    """Encode every story into shards under out_dir (default data/tok{V}_{sha8}); return out_dir.
    Shard i holds input stories [i*shard_stories, (i+1)*shard_stories), split into train_i / val_i
    (and test_i when test_frac > 0). Finished shards are skipped on a re-run, so an interrupted run
    picks up where it stopped. fmt other than "plain": the labelled examples of the inputs, each
    as prompt + story with an example table (version-2 shards); balance: happy = sad endings."""
    from multiprocessing import get_context
    from tqdm import tqdm
    from tokenizer import Tokenizer

    from conditions import FORMATS
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if balance and fmt == "plain":
        raise ValueError("--balance needs a conditional --format (plain stories have no ending label)")
    if not (0 <= test_frac and val_frac + test_frac < 1):
        raise ValueError(f"--test_frac must be in [0, 1 - val_frac), got {test_frac}")
    tok = Tokenizer(tokenizer_path) if tokenizer_path else Tokenizer()
    ident = tok.identity()
    sha, vocab = ident["sha256"], ident["vocab_size"]
    dtype = token_dtype(vocab)
    out_dir = Path(out_dir) if out_dir else default_out_dir(tok.model_path, sha, vocab, fmt, balance)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"tokenizer_sha256": sha, "vocab_size": vocab, "val_frac": val_frac,
                "shard_stories": shard_stories, "inputs": [p.name for p in paths]}
    # only what differs from plain is recorded, so plain meta.json files stay as they were
    labelled = fmt != "plain"
    if labelled:
        settings.update(format=fmt, balance=balance)
    if test_frac > 0:
        settings["test_frac"] = test_frac
    splits_ = _splits(test_frac)
    meta_path = out_dir / "meta.json"
    if meta_path.is_file():
        old = load_meta(out_dir).get("settings") or {}
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            raise ValueError(f"{out_dir} holds shards made with another {', '.join(diff)}; "
                             f"use another --out_dir or delete it")
    meta = {"format": "babyllama token shards", "version": VERSION_BOUNDS if labelled else VERSION,
            "complete": False,
            "settings": settings, "tokenizer": ident, "vocab_size": vocab,
            "token_width": dtype.itemsize}
    _write_json(meta_path, meta)

    workers = workers or os.cpu_count()
    pool = get_context("fork" if sys.platform == "linux" else "spawn").Pool(
        workers, initializer=_init_worker, initargs=(str(tok.model_path),))
    if labelled:  # examples, counted one by one (the readers do not say how far into a file they are)
        items = ((ex, 1) for ex in iter_labelled(paths, fmt, balance))
        bar = tqdm(unit="ex", disable=not progress, smoothing=0.1, desc=f"pretokenize ({fmt}) -> {out_dir}")
        encode = _encode_examples
    else:  # the bar counts input bytes (for an ETA); tokens/s goes alongside
        items = iter_stories(paths, with_bytes=True)
        bar = tqdm(total=sum(p.stat().st_size for p in paths), unit="B", unit_scale=True,
                   disable=not progress, smoothing=0.1, desc=f"pretokenize -> {out_dir}")
        encode = _encode_block
    bar.n_tokens, bar.t0 = 0, time.time()
    names = {k: [] for k in splits_}
    n_skipped = 0
    try:
        for i, group in _shards(items, shard_stories):
            targets = {k: out_dir / shard_name(k, i) for k in splits_}
            for k, p in targets.items():
                names[k].append(p.name)
            if all(shard_done(p, vocab, sha, labelled) for p in targets.values()):
                n_skipped += 1
                bar.update(sum(nb for _, nb in group))
                continue
            writers = {k: ShardWriter(p, vocab, sha, labelled) for k, p in targets.items()}
            try:
                # ordered results, at most 2 blocks in flight per worker: bounded memory
                pending = []
                for block in _blocks(group, block_stories):
                    stories = [s for s, _ in block]
                    job = pool.apply_async(encode, (stories, val_frac, test_frac))
                    pending.append((job, sum(nb for _, nb in block)))
                    if len(pending) >= 2 * workers:
                        _drain(*pending.pop(0), writers, bar)
                while pending:
                    _drain(*pending.pop(0), writers, bar)
            except BaseException as e:
                for w in writers.values():
                    w.abort()
                if isinstance(e, OSError) and e.filename is None:  # a write failed: say which shard
                    raise OSError(f"cannot write {writers['train'].path}: {e.strerror or e}") from None
                raise
            for w in writers.values():
                try:
                    w.close()
                except OSError as e:
                    w.abort()
                    raise OSError(f"cannot write {w.path}: {e.strerror or e}") from None
        pool.close()
    finally:
        pool.terminate()
        bar.close()
    if not names["train"]:
        raise ValueError("no labelled examples (with a Summary and a Story) found in the input files"
                         if labelled else "no stories found in the input files")
    splits = {}
    for k in splits_:
        hs = [read_header(out_dir / n) for n in names[k]]
        splits[k] = {"n_tokens": sum(h["n_tokens"] for h in hs), "n_bytes": sum(h["n_bytes"] for h in hs),
                     "n_stories": sum(h["n_stories"] for h in hs), "shards": names[k]}
        if labelled:  # the tokens the masked loss counts: each story's ids and the BOS that ends it
            tabs = [read_bounds(out_dir / n) for n in names[k]]
            splits[k]["n_target_tokens"] = sum(int((t - p).sum()) + len(t) for p, t, _ in tabs)
    meta.update(complete=True, splits=splits)
    _write_json(meta_path, meta)
    if progress:
        what = "examples" if labelled else "stories"
        print(f"{out_dir}: " + ", ".join(f"{k} {v['n_tokens']:,} tokens ({v['n_stories']:,} {what})"
                                         for k, v in splits.items())
              + f"; {n_skipped} finished shard(s) skipped")
    return out_dir


def _drain(job, n_file_bytes, writers, bar):
    ids, stats, *bounds = job.get()
    for k, w in writers.items():
        w.write(ids[k], *stats[k], *(b[k] for b in bounds))
    bar.n_tokens += sum(len(b) for b in ids.values()) // writers["train"].width
    bar.set_postfix_str(f"{bar.n_tokens / max(time.time() - bar.t0, 1e-9):,.0f} tok/s", refresh=False)
    bar.update(n_file_bytes)


# ----------------------------------------------------------------------------------------------
# The training-time reader

SPLIT_ID = {"train": 0, "val": 1, "test": 2}


def _split_shards(bin_dir, split, vocab_size=None):
    """(meta, [(path, memory-mapped ids)]) of a split, after checking meta.json and each shard."""
    if split not in SPLIT_ID:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    meta = load_meta(bin_dir)
    if not meta.get("complete"):
        raise ValueError(f"{bin_dir}: pretokenize did not finish (meta.json says incomplete); run it again")
    try:
        vocab, sha, tok_path = meta["vocab_size"], meta["tokenizer"]["sha256"], meta["tokenizer"]["path"]
        if split not in meta["splits"]:
            raise ValueError(f"{bin_dir} has no {split} split (splits: {', '.join(meta['splits'])})")
        names = meta["splits"][split]["shards"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{Path(bin_dir) / 'meta.json'}: not a pretokenize meta.json (no {e})") from None
    if vocab_size is not None and vocab != vocab_size:
        raise ValueError(f"vocab mismatch: the model has vocab_size {vocab_size} but the shards in "
                         f"{bin_dir} were made with a {vocab}-piece tokenizer ({tok_path})")
    paths = [Path(bin_dir) / n for n in names]
    return meta, [(p, open_shard(p, vocab, sha)) for p in paths]


class TokenStream:
    """All shards of one split, memory-mapped, seen as one concatenated array of ids."""

    def __init__(self, bin_dir, split, vocab_size=None):
        meta, shards = _split_shards(bin_dir, split, vocab_size)
        self.shards = [ids for _, ids in shards if len(ids)]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.n_tokens = int(self.offsets[-1])
        self.meta = meta

    def window(self, start, n):
        """ids[start:start+n] of the concatenation, across shard boundaries if need be."""
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        lo = start - int(self.offsets[i])
        if lo + n <= len(self.shards[i]):
            return self.shards[i][lo:lo + n]
        parts = []
        while n > 0:
            take = self.shards[i][lo:lo + n]
            parts.append(take)
            n -= len(take)
            i, lo = i + 1, 0
        return np.concatenate(parts)


def get_batch(stream, k, batch_size, seq_len, seed, rank, split):
    """Batch k: a pure function of (seed, rank, split, k) and the data."""
    import torch
    n_starts = stream.n_tokens - seq_len
    if n_starts < 1:
        raise ValueError(f"the {split} split has {stream.n_tokens} tokens, too few for seq_len {seq_len}")
    rng = np.random.default_rng([seed, rank, SPLIT_ID[split], k])
    starts = rng.integers(0, n_starts, size=batch_size)
    xy = np.stack([stream.window(int(s), seq_len + 1) for s in starts]).astype(np.int64)
    xy = torch.from_numpy(xy)
    return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()


class BatchDataset:
    """Batch k of a split as item k, for a torch DataLoader: its sampler hands out k = start_batch,
    start_batch + 1, ... to the workers in turn (worker w of n gets k = start_batch + w (mod n))
    and it returns them in order. Picklable and small (the shards are opened lazily in each
    worker), so it works with the spawn start method too (macOS, Windows)."""

    def __init__(self, bin_dir, split, batch_size, seq_len, seed, rank, vocab_size):
        self.args = (bin_dir, split, batch_size, seq_len, seed, rank, vocab_size)
        self.stream = None

    def __getstate__(self):
        return {"args": self.args, "stream": None}  # never pickle the memory maps

    def __getitem__(self, k):
        bin_dir, split, batch_size, seq_len, seed, rank, vocab_size = self.args
        if self.stream is None:
            self.stream = TokenStream(bin_dir, split, vocab_size)
        return get_batch(self.stream, k, batch_size, seq_len, seed, rank, split)


def iter_batches(split, batch_size, seq_len, bin_dir, device="cpu", seed=1337, rank=0, world_size=1,
                 num_workers=0, start_batch=0, vocab_size=None):
    """Endless (x, y) int64 batches [batch_size, seq_len] of random windows of the split, y = x
    shifted by one. Batch k of a rank is a pure function of (seed, rank, split, k): a resumed run
    passes start_batch = batches already consumed. vocab_size: the model's, checked against the
    shards. Same arguments -> same stream, so the validation stream is the same at every eval."""
    import torch
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    stream = TokenStream(bin_dir, split, vocab_size)  # bad shards fail here, in the caller
    if stream.n_tokens <= seq_len:
        raise ValueError(f"the {split} split of {bin_dir} has {stream.n_tokens} tokens, "
                         f"too few for seq_len {seq_len}")
    device = torch.device(device)
    pin = device.type == "cuda"
    if num_workers > 0:
        ds = BatchDataset(bin_dir, split, batch_size, seq_len, seed, rank, vocab_size)
        source = torch.utils.data.DataLoader(ds, batch_size=None, sampler=itertools.count(start_batch),
                                             num_workers=num_workers, pin_memory=pin)
    else:
        source = (get_batch(stream, k, batch_size, seq_len, seed, rank, split)
                  for k in itertools.count(start_batch))
    return _to_device(source, device, pin)  # a plain function: bad arguments raise at the call


def _to_device(source, device, pin):
    for x, y in source:
        if device.type != "cpu":
            x, y = x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
        yield x, y


# ----------------------------------------------------------------------------------------------
# The aligned reader: whole examples of the conditional formats, the prompt masked


class ExampleStream:
    """All examples of one split of version-2 shards (tables checked), in shard order."""

    def __init__(self, bin_dir, split, vocab_size=None):
        meta, shards = _split_shards(bin_dir, split, vocab_size)
        self.shards, which, plen, tlen, start = [], [], [], [], []
        for path, ids in shards:
            p, t, s0 = read_bounds(path, ids)
            which.append(np.full(len(p), len(self.shards)))
            self.shards.append(ids)
            plen.append(p)
            tlen.append(t)
            start.append(s0)
        cat = lambda a: np.concatenate(a) if a else np.zeros(0, np.int64)  # noqa: E731
        self.shard, self.plen, self.tlen, self.start = cat(which), cat(plen), cat(tlen), cat(start)
        self.split, self.bin_dir, self.meta = split, bin_dir, meta
        self._order = (None, None)  # (key, permutation) of the last epoch asked for

    def __len__(self):
        return len(self.plen)

    def example(self, i):
        """(prompt ids, story ids) of example i."""
        ids = self.shards[self.shard[i]]
        s, p, t = int(self.start[i]), int(self.plen[i]), int(self.tlen[i])
        a = np.asarray(ids[s:s + t], dtype=np.int64).tolist()
        return a[:p], a[p:]

    def usable(self, seq_len):
        """Indices of the examples with at least one story target inside seq_len (a prompt longer
        than seq_len leaves nothing to learn, and an all -100 batch would be a NaN loss)."""
        return np.flatnonzero(self.plen <= seq_len)

    def layout(self, batch_size, seq_len, world_size):
        """(usable indices, examples per rank per epoch, batches per epoch)."""
        use = self.usable(seq_len)
        per_rank = len(use) // world_size  # every rank the same number: DDP steps stay in lockstep
        if per_rank < 1:
            raise ValueError(f"the {self.split} split of {self.bin_dir} has {len(use)} example(s) with a "
                             f"prompt within seq_len {seq_len}: too few for {world_size} process(es)")
        return use, per_rank, -(-per_rank // batch_size)

    def rows(self, k, batch_size, seq_len, seed, rank, world_size, shuffle=True):
        """Example indices of batch k of a rank: epoch e = k // batches_per_epoch is a permutation
        of the usable examples seeded by (seed, split, e), the same on every rank; rank r takes
        every world_size-th of it, in batches of batch_size (the last one of an epoch shorter)."""
        use, per_rank, bpe = self.layout(batch_size, seq_len, world_size)
        epoch, j = divmod(k, bpe)
        key = (seed, epoch, seq_len, shuffle)
        if self._order[0] != key:
            order = np.random.default_rng([seed, SPLIT_ID[self.split], epoch]).permutation(len(use)) \
                if shuffle else np.arange(len(use))
            self._order = (key, use[order])
        mine = self._order[1][rank::world_size][:per_rank]
        return mine[j * batch_size:(j + 1) * batch_size]


def get_example_batch(stream, k, batch_size, seq_len, seed, rank, world_size, shuffle=True,
                      fixed_len=False, pad_id=0):
    """Batch k of whole examples: row i is conditions.masked_pair of one example (inputs from its
    BOS, targets -100 on the prompt and on padding), cut to seq_len; rows are padded to the longest
    in the batch (fixed_len: to seq_len, one shape for torch.compile). int64 (x, y)."""
    import torch
    from conditions import masked_pair
    rows = stream.rows(k, batch_size, seq_len, seed, rank, world_size, shuffle)
    n = seq_len if fixed_len else min(seq_len, int(stream.tlen[rows].max()))
    xs, ys = [], []
    for i in rows:
        x, y = masked_pair(*stream.example(int(i)), bos=1, seq_len=n, pad_id=pad_id)
        xs.append(x)
        ys.append(y)
    return torch.tensor(xs, dtype=torch.int64), torch.tensor(ys, dtype=torch.int64)


class ExampleBatchDataset(BatchDataset):
    """Batch k of whole examples as item k, for a DataLoader (as BatchDataset)."""

    def __init__(self, bin_dir, split, batch_size, seq_len, seed, rank, vocab_size, world_size, shuffle, fixed):
        self.args = (bin_dir, split, batch_size, seq_len, seed, rank, vocab_size, world_size, shuffle, fixed)
        self.stream = None

    def __getitem__(self, k):
        bin_dir, split, batch_size, seq_len, seed, rank, vocab_size, world_size, shuffle, fixed = self.args
        if self.stream is None:
            self.stream = ExampleStream(bin_dir, split, vocab_size)
        return get_example_batch(self.stream, k, batch_size, seq_len, seed, rank, world_size, shuffle, fixed)


def iter_examples(split, batch_size, seq_len, bin_dir, device="cpu", seed=1337, rank=0, world_size=1,
                  num_workers=0, start_batch=0, vocab_size=None, n_batches=None, shuffle=True,
                  fixed_len=False):
    """(x, y) int64 batches of whole examples of a conditional-format split (get_example_batch):
    batch k of a rank is a pure function of (seed, rank, world_size, split, k), so a resumed run
    passes start_batch = batches already consumed. Endless (epoch after epoch) unless n_batches.
    Shards without example tables (--format plain) are refused here, in one line."""
    import torch
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    stream = ExampleStream(bin_dir, split, vocab_size)  # bad shards fail here, in the caller
    stream.layout(batch_size, seq_len, world_size)
    ks = itertools.count(start_batch) if n_batches is None else range(start_batch, start_batch + n_batches)
    device = torch.device(device)
    pin = device.type == "cuda"
    if num_workers > 0:
        ds = ExampleBatchDataset(bin_dir, split, batch_size, seq_len, seed, rank, vocab_size, world_size,
                                 shuffle, fixed_len)
        source = torch.utils.data.DataLoader(ds, batch_size=None, sampler=ks, num_workers=num_workers,
                                             pin_memory=pin)
    else:
        source = (get_example_batch(stream, k, batch_size, seq_len, seed, rank, world_size, shuffle, fixed_len)
                  for k in ks)
    return _to_device(source, device, pin)


def batches_per_epoch(bin_dir, split, batch_size, seq_len, world_size=1, vocab_size=None):
    """Batches of iter_examples in one pass over a split, per rank."""
    return ExampleStream(bin_dir, split, vocab_size).layout(batch_size, seq_len, world_size)[2]


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv=None):
    from conditions import FORMATS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("download", help="fetch TinyStories from the Hugging Face hub into data/")
    p.add_argument("--what", choices=sorted(DOWNLOADS), default="all_data",
                   help="all_data: the 50 JSON shards (1.6 GB tarball); txt / gpt4: the .txt releases")

    def inputs(p, val_help="(default %(default)s)", val_default=0.02):
        p.add_argument("files", nargs="*", help="input files (.txt or data*.json); default: --data_dir")
        p.add_argument("--data_dir", default=None,
                       help="directory of TinyStories files (default: $TINYSTORIES_DIR, else the "
                            "folder `download` filled under data/)")
        p.add_argument("--val_frac", type=float, default=val_default,
                       help="fraction of stories held out for validation, chosen by a hash of the text "
                            + val_help)

    p = sub.add_parser("train_vocab", help="train a sentencepiece BPE tokenizer -> data/tokN.model")
    inputs(p)
    p.add_argument("--vocab_size", type=int, required=True)
    p.add_argument("--sample", type=int, default=100_000,
                   help="training stories sampled for the tokenizer (default %(default)s)")
    p.add_argument("--seed", type=int, default=1337, help="sampling seed (default %(default)s)")
    p.add_argument("--out", default=None, help="output .model (default data/tok{N}.model)")

    p = sub.add_parser("pretokenize", help="stories -> token shards + meta.json")
    inputs(p, "(default 0.02 plain, 0.05 for the conditional formats)", None)
    p.add_argument("--format", default="plain", dest="fmt", choices=FORMATS,
                   help="plain: the stories; tags / instruct / instruct_tags: labelled examples (Instruct "
                        ".txt, all_data data*.json, GPT4 .parquet) as prompt + story with example "
                        "boundaries, for fine-tuning with the prompt masked (default plain)")
    p.add_argument("--balance", action="store_true",
                   help="conditional formats: keep as many happy as sad endings (sad ones are rare)")
    p.add_argument("--test_frac", type=float, default=None,
                   help="fraction held out as a test split, by the same hash (default 0 plain, 0.10 "
                        "for the conditional formats: 85/5/10 with --val_frac 0.05)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--vocab_size", type=int, default=None,
                   help="use data/tok{N}.model made by train_vocab")
    g.add_argument("--tokenizer", default=None,
                   help="sentencepiece .model (default: the project's tokenizer.model)")
    p.add_argument("--out_dir", default=None, help="shard directory (default data/tok{V}_{sha8}, + _{format}[_bal] for the "
                        "conditional formats)")
    p.add_argument("--shard_stories", type=int, default=50_000, help="input stories per shard (default %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="encoding processes (default: every core)")

    args = ap.parse_args(argv)
    try:
        if args.cmd == "pretokenize":  # the held-out fractions depend on the format
            labelled = args.fmt != "plain"
            args.val_frac = (0.05 if labelled else 0.02) if args.val_frac is None else args.val_frac
            args.test_frac = (0.10 if labelled else 0.0) if args.test_frac is None else args.test_frac
            if not 0 <= args.test_frac < 1 - args.val_frac:
                raise ValueError(f"--test_frac must be in [0, 1 - val_frac), got {args.test_frac}")
        if not 0 <= getattr(args, "val_frac", 0) < 1:
            raise ValueError(f"--val_frac must be in [0, 1), got {args.val_frac}")
        if args.cmd == "download":
            download(args.what)
        elif args.cmd == "train_vocab":
            paths = find_inputs(args.data_dir, args.files)
            train_vocab(args.vocab_size, paths, args.out, args.sample, args.seed, args.val_frac)
        elif args.cmd == "pretokenize":
            if args.shard_stories < 1:
                raise ValueError(f"--shard_stories must be positive, got {args.shard_stories}")
            tok = args.tokenizer
            if args.vocab_size is not None:
                tok = DATA_DIR / f"tok{args.vocab_size}.model"
                if not tok.is_file():
                    raise FileNotFoundError(f"{tok} not found: run `python tinystories.py train_vocab "
                                            f"--vocab_size {args.vocab_size}` first")
            paths = find_inputs(args.data_dir, args.files, labelled=args.fmt != "plain")
            pretokenize(paths, tok, args.out_dir, args.val_frac, args.shard_stories, args.workers,
                        fmt=args.fmt, balance=args.balance, test_frac=args.test_frac)
    except (FileNotFoundError, ValueError, OSError) as e:  # ConnectionError is an OSError
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
