"""
Conditioning: stories on request. Readers for the labelled TinyStories data, the prompts that ask
for a story (narrative tags, or a topic plus an ending), the masked training examples, and the
command that curates the instruction data set.

    python conditions.py build_instruct --source ../TinyStories-Instruct-valid.txt --out data/instruct
    python conditions.py build_instruct --source roneneldan/TinyStoriesInstruct --balance \\
        --push_to_hub USER/tinystories-instruct-curated            # needs the network and a token

Readers (streaming generators of flat dicts `story, summary, features, words, prompt, source,
ending`; ../shared/docs/FORMATS.md §1): the all_data JSON shards (through tinystories.py), the
`skeskinen/TinyStories-GPT4` rows (hub or local parquet) and TinyStoriesInstruct text (hub or a local
.txt). Features come out in their canonical spelling (`BadEnding`, ...); `BadEnding` means a sad
ending, anything else a happy one.

The prompt (`build_prompt`) is one small rule that run.c, the bindings and PyTorch generation must
all follow to the byte:
  1. a topic comes with an ending, "happy" or "sad"; in the topic every run of ASCII whitespace
     (space, \\t \\n \\r \\v \\f) becomes one space, and the ends are trimmed; it must then be
     1 to 500 characters (Unicode code points);
  2. tags are some of the six features, in any case, kept once each, in the order of FEATURES;
     BadEnding may not be a tag when an ending is given (the ending line already says it);
  3. lines: "Write a story about: {topic}", "With: {ending} ending" (when a topic is given), then
     "Features: {tag}, {tag}" (when there are tags);
  4. prompt = "" when there are no lines, else the lines joined by "\\n", then "\\n\\n### Story:\\n".
With a topic and no tags this is exactly seed 002's template
"Write a story about: {summary}\\nWith: {ending} ending\\n\\n### Story:\\n{story}".

Tags are plain text, not reserved tokens. Plain text keeps every tokenizer (ours, Meta's 32k, any
sentencepiece model) and every .bin file and the C engine unchanged: no new embedding rows, no
tokenizer surgery, no special cases in run.c's encoder, and a prompt typed at the CLI (`-i`) is the
same prompt the trainer saw. The feature names are ordinary words that byte fallback can always
spell, and TinyStoriesInstruct itself writes them as a plain `Features:` line. The cost is a few
tokens per prompt, which the masked loss does not train on anyway.

What it does not do: pretokenize shards (tinystories.py), train (train.py), generate (run.c,
babyllama, model.py), or judge obedience (evaluate.py).
"""
import argparse
import os
import re
import shutil
import sys
from pathlib import Path

FEATURES = ("BadEnding", "Conflict", "Dialogue", "Foreshadowing", "MoralValue", "Twist")
ENDINGS = ("happy", "sad")
TEMPLATE = "Write a story about: {summary}\nWith: {ending} ending\n\n### Story:\n{story}"
STORY_MARK = "\n\n### Story:\n"
FORMATS = ("plain", "tags", "instruct", "instruct_tags")
EOT = "<|endoftext|>"
INSTRUCT_HUB = "roneneldan/TinyStoriesInstruct"
GPT4_HUB = "skeskinen/TinyStories-GPT4"
MAX_TOPIC_CHARS = 500
IGNORE_INDEX = -100  # torch's cross_entropy default ignore_index; model.py uses the same

_CANON = {f.lower(): f for f in FEATURES}
_WS = re.compile(r"[ \t\n\r\v\f]+")  # ASCII whitespace only: C's isspace() agrees

# ----------------------------------------------------------------------------------------------
# Prompts


def canonical_tags(tags):
    """Tags in canonical spelling and order, each once; raises ValueError naming an unknown one."""
    out = set()
    for t in tags or ():
        key = str(t).strip().lower()
        if key not in _CANON:
            raise ValueError(f"unknown tag {t!r} (choose from {', '.join(FEATURES)})")
        out.add(_CANON[key])
    return [f for f in FEATURES if f in out]


def build_prompt(topic=None, ending=None, tags=None):
    """The text the model continues with a story (rules in the module docstring)."""
    lines = []
    if topic is not None:
        topic = _WS.sub(" ", str(topic)).strip(" ")
        if not topic:
            raise ValueError("topic is empty")
        if len(topic) > MAX_TOPIC_CHARS:
            raise ValueError(f"topic is {len(topic)} characters, more than {MAX_TOPIC_CHARS}")
        if ending not in ENDINGS:
            raise ValueError(f"ending must be 'happy' or 'sad', got {ending!r}")
        lines += [f"Write a story about: {topic}", f"With: {ending} ending"]
    elif ending is not None:
        raise ValueError("an ending needs a topic")
    tags = canonical_tags(tags)
    if tags and "BadEnding" in tags and ending is not None:
        raise ValueError("tag BadEnding goes with no ending line: ask for ending='sad' instead")
    if tags:
        lines.append("Features: " + ", ".join(tags))
    return "\n".join(lines) + STORY_MARK if lines else ""


def instruction_prompt(summary, ending):
    """Seed 002's template up to and including '### Story:\\n' (what the model is given)."""
    return build_prompt(topic=summary, ending=ending)


def instruction_example(summary, ending, story):
    """Seed 002's whole template: the prompt, then the story."""
    return instruction_prompt(summary, ending) + story


def ending_of(features):
    """'sad' when BadEnding is among the features (any case), else 'happy'."""
    return "sad" if any(str(f).strip().lower() == "badending" for f in features or ()) else "happy"


def format_example(ex, fmt):
    """(prompt, story) of a reader's example in a training format: plain (no prompt), tags (its
    features), instruct (its summary and ending: seed 002's template), instruct_tags (both)."""
    if fmt == "plain":
        return "", ex["story"]
    if fmt == "tags":
        return build_prompt(tags=ex["features"]), ex["story"]
    if fmt == "instruct":
        return build_prompt(ex["summary"], ex["ending"]), ex["story"]
    if fmt == "instruct_tags":
        tags = [t for t in ex["features"] if t != "BadEnding"]
        return build_prompt(ex["summary"], ex["ending"], tags), ex["story"]
    raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


# ----------------------------------------------------------------------------------------------
# Masked training examples


def encode_example(tokenizer, prompt, story):
    """(prompt ids with BOS first, story ids). The prompt is encoded on its own, as at generation
    time; the story ids are those that follow it in the encoding of prompt + story, so the story
    starts exactly as the model would continue the prompt. `tokenizer`: anything with
    encode(text, bos, eos), e.g. tokenizer.Tokenizer or babyllama.Model."""
    bos = getattr(tokenizer, "bos_id", 1)
    p = tokenizer.encode(prompt, bos=True, eos=False) if prompt else [bos]
    full = tokenizer.encode(prompt + story, bos=True, eos=False)
    if full[:len(p)] == p:
        return p, full[len(p):]
    return p, tokenizer.encode(story, bos=False, eos=False)  # a merge across the boundary


def masked_pair(prompt_ids, story_ids, bos=1, seq_len=None, pad_id=0):
    """(inputs, targets) lists for next-token training where only the story is learned.

    ids = prompt ids (BOS first), story ids, BOS (the story separator: run.c stops when BOS comes
    next, so the model learns to end). inputs = ids[:-1], targets = ids[1:] with -100 wherever the
    target is a prompt token. With seq_len the pair is cut or padded (inputs pad_id, targets -100)
    to exactly seq_len; padding sits after the story, so causal attention keeps it from changing
    any counted position."""
    ids = list(prompt_ids) + list(story_ids) + [bos]
    n = len(prompt_ids)
    x, y = ids[:-1], [IGNORE_INDEX] * (n - 1) + ids[n:]
    if seq_len is not None:
        x, y = x[:seq_len], y[:seq_len]
        pad = seq_len - len(x)
        x, y = x + [pad_id] * pad, y + [IGNORE_INDEX] * pad
    return x, y


def masked_example(tokenizer, prompt, story, seq_len=None, pad_id=0):
    """masked_pair of encode_example: (inputs, targets) of one (prompt, story)."""
    p, s = encode_example(tokenizer, prompt, story)
    return masked_pair(p, s, getattr(tokenizer, "bos_id", 1), seq_len, pad_id)


# ----------------------------------------------------------------------------------------------
# Readers


def _record(story, summary="", features=(), words=(), prompt="", source=""):
    feats = [_CANON[str(f).strip().lower()] for f in features or ()
             if str(f).strip().lower() in _CANON]
    return {"story": (story or "").strip(), "summary": " ".join((summary or "").split()),
            "features": feats, "words": list(words or ()), "prompt": prompt or "",
            "source": source or "", "ending": ending_of(feats)}


def read_all_data(path):
    """Examples of the all_data JSON shards: one data*.json, or a directory of them (in name
    order). Shards are read by tinystories.py (one shard, ~30 MB, is loaded at a time)."""
    from tinystories import iter_json_examples
    path = Path(path)
    shards = sorted(path.glob("data*.json")) if path.is_dir() else [path]
    if not shards or not all(p.is_file() for p in shards):
        raise FileNotFoundError(f"{path}: no all_data JSON shards (data*.json)")
    for shard in shards:
        for ex in iter_json_examples(shard):
            yield _record(ex["story"], ex["summary"], ex["features"], ex["words"], ex["prompt"],
                          ex["source"])


def gpt4_rows(source=GPT4_HUB, split="train"):
    """Raw rows of skeskinen/TinyStories-GPT4: streamed from the hub, or from local parquet file(s)
    or a directory of them (the hub's own files) through the same `datasets` loader."""
    import datasets
    p = Path(source)
    if p.exists():
        files = sorted(str(f) for f in p.glob("*.parquet")) if p.is_dir() else [str(p)]
        if not files:
            raise FileNotFoundError(f"{p}: no .parquet files")
        return datasets.load_dataset("parquet", data_files={split: files}, split=split,
                                     streaming=True)
    return datasets.load_dataset(str(source), split=split, streaming=True)


def read_gpt4(rows):
    """Examples of TinyStories-GPT4 rows (dicts with story, summary, source, prompt, words,
    features), e.g. gpt4_rows(...) or a list of dicts."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("story"), str):
            raise ValueError(f"TinyStories-GPT4 row {i} has no `story` string")
        yield _record(row["story"], row.get("summary"), row.get("features"), row.get("words"),
                      row.get("prompt"), row.get("source"))


_FIELDS = {"Features:": "features", "Words:": "words", "Summary:": "summary",
           "Random sentence:": "random_sentence"}


def _field(line):
    for prefix, name in _FIELDS.items():
        if line.startswith(prefix):
            return name, line[len(prefix):].strip()
    return None, None


def parse_instruct_block(lines):
    """One TinyStoriesInstruct example from its lines (without `<|endoftext|>`), or None when it
    has no Summary or no Story. Metadata lines may come in any order (even after the story);
    `Story:` may carry the story's first line; every other line after it is the story."""
    fields, story = {}, None
    for line in lines:
        name, value = _field(line)
        if name is not None:
            fields[name] = value
        elif line.startswith("Story:"):
            story = [line[len("Story:"):].strip()]
        elif story is not None:
            story.append(line)
        # other lines before the story (blank ones) carry nothing
    summary, text = fields.get("summary", ""), "\n".join(story or []).strip()
    if not summary or not text:
        return None
    features = [f for f in fields.get("features", "").split(",") if f.strip()]
    words = [w.strip() for w in fields.get("words", "").split(",") if w.strip()]
    rec = _record(text, summary, features, words, source="TinyStoriesInstruct")
    rec["random_sentence"] = fields.get("random_sentence", "")
    return rec


def parse_instruct_lines(lines):
    """Examples from TinyStoriesInstruct lines: accumulate until a `<|endoftext|>` line, parse,
    skip incomplete examples. A last block with no `<|endoftext|>` after it is dropped (a file
    cut short ends in a cut story)."""
    block = []
    for line in lines:
        line = line.rstrip("\r\n")
        while EOT in line:  # the marker is a line of its own; tolerate it glued to text
            head, line = line.split(EOT, 1)
            if head.strip():
                block.append(head)
            ex = parse_instruct_block(block)
            block = []
            if ex is not None:
                yield ex
        if line.strip() or block:
            block.append(line)


def instruct_lines(source=INSTRUCT_HUB, split="train"):
    """Lines of TinyStoriesInstruct: from a local .txt (streamed), or streamed from the hub, where
    each row of the `text` column is one line."""
    p = Path(source)
    if p.exists():
        with open(p, encoding="utf-8") as f:
            yield from f
        return
    import datasets
    for row in datasets.load_dataset(str(source), split=split, streaming=True):
        yield row["text"]


def read_instruct(source=INSTRUCT_HUB, split="train"):
    """Examples of TinyStoriesInstruct (a local .txt or the hub data set)."""
    yield from parse_instruct_lines(instruct_lines(source, split))


def _need_hub(what):
    """Fail at once, in one line, when the hub cannot be reached (instead of minutes of retries)."""
    from tinystories import hub_reachable
    if not hub_reachable():
        raise ConnectionError(f"{what} needs the Hugging Face hub, which cannot be reached "
                              f"(offline, or HF_HUB_OFFLINE is set)")


def read_examples(source, split="train"):
    """Examples of any labelled source, told apart by its name: a .txt (Instruct text), data*.json
    or a directory of them (all_data), .parquet or a directory of them (TinyStories-GPT4), or the
    hub names roneneldan/TinyStoriesInstruct and skeskinen/TinyStories-GPT4."""
    p = Path(source)
    if p.is_dir():
        if any(p.glob("data*.json")):
            return read_all_data(p)
        if any(p.glob("*.parquet")):
            return read_gpt4(gpt4_rows(p, split))
        if any(p.glob("*.txt")):
            return (ex for f in sorted(p.glob("*.txt")) for ex in read_instruct(f))
        raise FileNotFoundError(f"{p}: no data*.json, .parquet or .txt files")
    if p.is_file():
        kinds = {".txt": lambda: read_instruct(p), ".json": lambda: read_all_data(p),
                 ".parquet": lambda: read_gpt4(gpt4_rows(p, split))}
        if p.suffix not in kinds:
            raise ValueError(f"{p}: unknown kind of file (expected .txt, .json or .parquet)")
        return kinds[p.suffix]()
    if str(source) in (INSTRUCT_HUB, GPT4_HUB):
        _need_hub(f"reading {source}")
        if str(source) == INSTRUCT_HUB:
            return read_instruct(source, split)
        return read_gpt4(gpt4_rows(source, split))
    raise FileNotFoundError(f"{source}: no such file or directory, and not one of the hub data "
                            f"sets {INSTRUCT_HUB}, {GPT4_HUB}")


# ----------------------------------------------------------------------------------------------
# The curated instruction data set (seed 002 step 2)


def balanced(examples):
    """Keep every sad example, and a happy one only while fewer happy than sad ones are kept:
    streaming, order-preserving, never more happy than sad (sad endings are the rare ~8%)."""
    n = {"happy": 0, "sad": 0}
    for ex in examples:
        if ex["ending"] == "happy" and n["happy"] >= n["sad"]:
            continue
        n[ex["ending"]] += 1
        yield ex


def instruct_rows(source, split="train", balance=False, max_examples=None):
    """The curated rows: instruction (template up to '### Story:\\n'), response (the story), ending."""
    examples = read_examples(source, split)
    if balance:
        examples = balanced(examples)
    for i, ex in enumerate(examples):
        if max_examples is not None and i >= max_examples:
            return
        yield {"instruction": instruction_prompt(ex["summary"], ex["ending"]),
               "response": ex["story"], "ending": ex["ending"]}


def instruct_features():
    from datasets import ClassLabel, Features, Value
    return Features({"instruction": Value("string"), "response": Value("string"),
                     "ending": ClassLabel(names=list(ENDINGS))})


def dataset_card(source, dd, balance):
    """README.md of the curated data set (a Hugging Face data set card)."""
    import numpy as np
    rows = []
    for name, split in dd.items():
        counts = np.bincount(split.with_format("numpy")["ending"], minlength=len(ENDINGS))
        rows.append(f"| {name} | {len(split):,} | {counts[0]:,} | {counts[1]:,} |")
    ex = dd["train"][0] if len(dd["train"]) else None
    sample = "" if ex is None else (
        "## Example row\n\n```\n" + ex["instruction"] + ex["response"][:600] + "\n```\n")
    return f"""---
license: cdla-sharing-1.0
language: [en]
task_categories: [text-generation]
pretty_name: TinyStories instructions (topic + ending)
---
# TinyStories instructions: write a story about a topic, with a happy or sad ending

Curated from `{source}` by babyllama's `conditions.py build_instruct`{' with happy/sad balancing' if balance else ''}.
Each example's `Summary` is the topic; `BadEnding` among its `Features` makes the ending "sad",
anything else "happy". Examples without a summary or a story are left out.

Columns: `instruction` (the template up to and including `### Story:` and its newline),
`response` (the story), `ending` (ClassLabel: 0 happy, 1 sad). `instruction + response` is:

```
Write a story about: {{summary}}
With: {{ending}} ending

### Story:
{{story}}
```

| split | examples | happy | sad |
|---|---|---|---|
{chr(10).join(rows)}

{sample}
Licence: CDLA-Sharing-1.0, as the TinyStories data sets (Eldan & Li, 2023).
"""


def split_two(ds, size, seed):
    """Seeded split into train/test, stratified by ending when both endings allow it."""
    try:  # keep the happy/sad ratio the same in both parts when there are enough of each
        return ds.train_test_split(test_size=size, seed=seed, stratify_by_column="ending")
    except ValueError:
        return ds.train_test_split(test_size=size, seed=seed)


def build_instruct(source, out, split="train", test_size=0.1, val_size=0.05, seed=1337,
                   balance=False, max_examples=None, push_to_hub=None):
    """Parse `source` into the curated DatasetDict, save it to `out` atomically (a temporary
    directory renamed into place, with README.md), and push it when asked. Splits: train,
    validation (val_size of all; none when 0) and test (test_size of all): seed 002's 85/5/10."""
    read_examples(source, split)  # a bad source fails here, before `datasets` wraps the error
    import datasets
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        # rows go to arrow files in a private cache as they come (memory-bounded); a fresh cache
        # also keeps `datasets` from reusing rows parsed from an older version of the source
        ds = datasets.Dataset.from_generator(
            instruct_rows, features=instruct_features(), cache_dir=str(tmp / "cache"),
            gen_kwargs={"source": str(source), "split": split, "balance": balance,
                        "max_examples": max_examples})
        need = 3 if val_size else 2
        if len(ds) < need:
            raise ValueError(f"{source}: only {len(ds)} complete example(s); need at least {need}")
        dd = split_two(ds, test_size, seed)
        if val_size:
            tv = split_two(dd["train"], val_size / (1 - test_size), seed)
            dd = datasets.DatasetDict(train=tv["train"], validation=tv["test"], test=dd["test"])
        dd.save_to_disk(str(tmp / "data"))
        card = dataset_card(source, dd, balance)
        (tmp / "data" / "README.md").write_text(card, encoding="utf-8")
        del ds, dd
        old = out.with_name(out.name + ".old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp / "data", out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    dd = datasets.load_from_disk(str(out))
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v):,}" for k, v in dd.items()))
    if push_to_hub:
        push(dd, push_to_hub, card)
    return dd


def push(dd, repo, card):
    """Upload the data set and its card to the Hugging Face hub (needs the network and a token)."""
    from huggingface_hub import DatasetCard, get_token
    if not get_token():
        raise RuntimeError("--push_to_hub needs a Hugging Face token (set HF_TOKEN or run "
                           "`hf auth login`)")
    _need_hub(f"--push_to_hub {repo}")
    dd.push_to_hub(repo, max_shard_size="500MB")
    DatasetCard(card).push_to_hub(repo, repo_type="dataset")
    print(f"pushed to https://huggingface.co/datasets/{repo}")


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build_instruct", help="the curated instruction data set (seed 002 step 2)")
    p.add_argument("--source", required=True,
                   help=f"TinyStoriesInstruct .txt, all_data data*.json (or their directory), "
                        f"TinyStories-GPT4 .parquet, or {INSTRUCT_HUB} / {GPT4_HUB}")
    p.add_argument("--split", default="train", help="split of a hub source (default train)")
    p.add_argument("--out", default="data/instruct", help="output directory (save_to_disk)")
    p.add_argument("--test_size", type=float, default=0.1, help="fraction held out as `test`")
    p.add_argument("--val_size", type=float, default=0.05,
                   help="fraction held out as `validation` (0: no validation split)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the train/test split")
    p.add_argument("--balance", action="store_true", help="as many happy as sad endings")
    p.add_argument("--max_examples", type=int, default=None, help="stop after this many")
    p.add_argument("--push_to_hub", default=None, metavar="REPO",
                   help="also upload to this hub data set, with its card (network + token)")
    args = ap.parse_args(argv)
    if not 0 < args.test_size < 1:
        sys.exit(f"error: --test_size must be between 0 and 1, got {args.test_size}")
    if not 0 <= args.val_size < 1 - args.test_size:
        sys.exit(f"error: --val_size must be within [0, 1 - test_size), got {args.val_size}")
    if args.max_examples is not None and args.max_examples < 2:
        sys.exit(f"error: --max_examples must be at least 2, got {args.max_examples}")
    try:
        build_instruct(args.source, args.out, args.split, args.test_size, args.val_size,
                       args.seed, args.balance, args.max_examples, args.push_to_hub)
    except Exception as e:  # one line naming what failed (hub and arrow errors have many types)
        while e.__cause__ is not None:  # `datasets` wraps errors raised in the generator
            e = e.__cause__
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.exit(f"error: {msg}")


if __name__ == "__main__":
    main()
