"""
Evaluate a story model on held-out text, and how well it obeys requests for an ending and tags.

    python evaluate.py --model models/tinystories-cpu.bin --tokenizer tokenizer.model \\
        --data ../shared/data/tinystories --out out/eval
    python evaluate.py --model out/instruct/ckpt.pt --format instruct_tags \\
        --data ../TinyStories-Instruct-valid.txt --labelled ../TinyStories-Instruct-valid.txt

What it does:
1. Held-out metrics. The model is a llama2.c .bin (scored through the C engine's logits, via the
   babyllama bindings) or a train.py .pt checkpoint (scored by model.py). The stories are the
   held-out split of --data that pretokenize uses (tinystories.is_val with the same --val_frac), read
   as TinyStories text / all_data JSON (--format plain) or, for conditioned models, through
   conditions.read_examples (--format tags / instruct / instruct_tags). Each story is scored as the
   model sees it in training: BOS, the prompt (conditions.format_example; empty when plain), the
   story, then BOS (the next story's start, which is how a story ends). Only the story tokens and
   that last BOS are counted; the prompt is context. Stories longer than the context are scored in
   windows: each later window moves by half the context and counts only its new tokens, so every
   token has at least half a context before it. Reported: loss (mean nats per counted token),
   perplexity exp(loss), bits per byte = total nats / ln 2 / UTF-8 bytes of the stories (the same
   definition as train.py's val bpb; comparable across tokenizers), and nats per story.
2. Obedience (with --labelled). Judges: one binary classifier per narrative tag (Conflict,
   Dialogue, Foreshadowing, MoralValue, Twist) on the whole story, and one for the ending (sad =
   BadEnding) on the story's last LAST_SENTENCES sentences. Each is scikit-learn's TF-IDF of word
   1-2-grams plus character 2-5-grams (within words), then logistic regression with balanced class
   weights, fixed seed. They train on the labelled stories that is_val(story, --clf_val_frac) puts
   in the training part and are scored on the rest: accuracy, the base rate (always answering the
   training majority) and balanced accuracy are reported beside the results. Requests: --requests
   of them, topics from the held-out labelled summaries (else a few built-in ones), endings
   alternating happy/sad, each tag asked with probability 1/2 (seeded); the prompt is
   conditions.build_prompt(topic, ending, tags). The model writes one story per request (top-p
   sampling, seeded); the judges say whether the ending and each asked tag are there. A tag's
   rate when not asked is reported too: obedience is the difference between the two.
3. Output in --out: report.md (tables, classifier accuracies, sample stories with their requests),
   metrics.json, nats_per_story.png and obedience.png; each file is written to a temporary name,
   then renamed.

What it does not do: train or fine-tune (train.py), build data sets (conditions.py, tinystories.py),
or judge anything but the ending and the five tags (no fluency or topic judge: the topic is asked
for but not checked). The judges are only as good as their own held-out accuracy says; on small
labelled data that is little.
"""
import argparse
import json
import math
import os
import random
import re
import sys
from pathlib import Path

import numpy as np

import conditions
from conditions import ENDINGS, FEATURES
from tinystories import find_inputs, is_val, iter_stories

ROOT = Path(__file__).resolve().parent
BOS = 1
TAGS = tuple(f for f in FEATURES if f != "BadEnding")  # the ending has its own judge
LAST_SENTENCES = 3
MODEL_FORMATS = ("plain",) + tuple(f for f in conditions.FORMATS if f != "plain")
REQUEST_FORMATS = ("instruct_tags", "instruct", "tags")
DEFAULT_TOPICS = ("a little dog who finds a red ball", "a girl and her kite on a windy day",
                  "a boy who is afraid of the dark", "two friends who build a sandcastle",
                  "a cat who wants to fly", "a lost toy in the park")


# ----------------------------------------------------------------------------------------------
# Models: one interface (seq_len, logits, generate) over the C engine and model.py


class BinLM:
    """A llama2.c .bin run by the C engine through the babyllama bindings."""

    def __init__(self, path, tokenizer_bin, threads=None):
        import babyllama
        self.m = babyllama.Model(path, tokenizer_bin, threads)
        self.seq_len, self.vocab_size = self.m.config.seq_len, self.m.config.vocab_size

    def logits(self, ids):
        return self.m.logits(ids)

    def generate(self, prompts, max_new_tokens, temperature, top_p, seed):
        # story i gets seed + i, as generate(prompts[i], seed=seed + i) would
        return self.m.generate_batch(list(prompts), max_new_tokens=max_new_tokens,
                                     temperature=temperature, top_p=top_p, seed=seed)


class TorchLM:
    """A train.py checkpoint run by model.py (on the CPU)."""

    def __init__(self, path, tok):
        import export
        self.model, _ = export.read_checkpoint(path)
        self.tok = tok
        self.seq_len, self.vocab_size = self.model.params.max_seq_len, self.model.params.vocab_size

    def logits(self, ids):
        import torch
        with torch.inference_mode():
            out, _ = self.model(torch.tensor([list(ids)], dtype=torch.long))
        return out[0].float().numpy()

    def generate(self, prompts, max_new_tokens, temperature, top_p, seed):
        import torch
        out = []
        for i, p in enumerate(prompts):
            ids = self.tok.encode(p, bos=True, eos=False)
            n = min(max_new_tokens, self.seq_len - len(ids))
            if n <= 0:
                raise ValueError(f"prompt {p!r} leaves no room in the context of {self.seq_len}")
            g = torch.Generator().manual_seed(seed + i)
            x = self.model.generate(torch.tensor([ids]), n, temperature, top_p=top_p,
                                    stop_ids=[BOS], generator=g)[0, len(ids):].tolist()
            x = x[:x.index(BOS)] if BOS in x else x  # BOS: the next story would begin
            out.append(decode(self.tok, ids[-1], x))
        return out


def decode(tok, prev, ids):
    """Text of new ids after `prev`, for a sentencepiece Tokenizer or a BinTokenizer."""
    if hasattr(tok, "sp"):
        return tok.decode(ids)
    return tok.decode([prev] + list(ids)).decode("utf-8", "replace")


def open_model(model_path, tokenizer_path, threads=None):
    """(model, encoder): encoder has encode(text, bos, eos). A sentencepiece .model encodes the
    held-out text exactly as pretokenize did; for a .bin model its tokenizer.bin (given, or the
    .bin beside the .model) is what generation decodes with."""
    model_path, tokenizer_path = Path(model_path), Path(tokenizer_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"--model {model_path}: no such file")
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"--tokenizer {tokenizer_path}: no such file")
    if tokenizer_path.suffix not in (".model", ".bin"):
        raise ValueError(f"--tokenizer {tokenizer_path}: expected a sentencepiece .model or a "
                         f"llama2.c tokenizer .bin")
    sp = None
    if tokenizer_path.suffix == ".model":
        from tokenizer import Tokenizer
        sp = Tokenizer(tokenizer_path)
    if model_path.suffix == ".bin":
        tok_bin = tokenizer_path.with_suffix(".bin")
        if not tok_bin.is_file():
            raise FileNotFoundError(f"--tokenizer {tokenizer_path}: a .bin model needs its "
                                    f"tokenizer.bin too, and {tok_bin} is missing (make it with "
                                    f"`python tokenizer.py -t {tokenizer_path}`)")
        lm = BinLM(model_path, tok_bin, threads)
        enc = sp or lm.m
    elif model_path.suffix in (".pt", ".pth"):
        from tokenizer import BinTokenizer
        lm = TorchLM(model_path, None)
        enc = lm.tok = sp or BinTokenizer(tokenizer_path, lm.vocab_size)
    else:
        raise ValueError(f"--model {model_path}: expected a llama2.c .bin or a train.py .pt")
    n = getattr(enc, "n_words", lm.vocab_size)
    if n != lm.vocab_size:
        raise ValueError(f"--tokenizer {tokenizer_path} has {n} pieces but the model's vocabulary "
                         f"is {lm.vocab_size}")
    return lm, enc


# ----------------------------------------------------------------------------------------------
# Held-out metrics


def log_softmax_nll(rows, targets):
    """-log p(target) for each row of logits, in float64."""
    rows = np.asarray(rows, dtype=np.float64)
    m = rows.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(rows - m).sum(axis=1))
    return lse - rows[np.arange(len(targets)), targets]


def token_nats(lm, ids):
    """Nats of ids[1:], each predicted from what comes before it, in windows of the context:
    the first covers seq_len targets, each later one moves by seq_len // 2 and counts only its
    new targets (so every token sees at least half a context)."""
    n, ctx = len(ids), lm.seq_len
    out = np.empty(n - 1)
    done = 0  # targets ids[1..done] are scored
    while done < n - 1:
        end = min(n - 1, done + (ctx if done == 0 else max(1, ctx // 2)))
        begin = max(0, end - ctx)  # inputs ids[begin:end] predict ids[begin + 1 .. end]
        rows = lm.logits(ids[begin:end])[done - begin:]
        out[done:end] = log_softmax_nll(rows, ids[done + 1:end + 1])
        done = end
    return out


def score_story(lm, enc, prompt, story):
    """(nats of the story's tokens and the closing BOS, token count, UTF-8 bytes of the story)."""
    p, s = conditions.encode_example(enc, prompt, story)
    nats = token_nats(lm, list(p) + list(s) + [BOS])[len(p) - 1:]
    return float(nats.sum()), len(nats), len(story.encode("utf-8"))


def held_out(data, fmt, val_frac, max_stories=None):
    """[(prompt, story)] of the held-out split of `data`: TinyStories text or all_data JSON when
    plain (tinystories.py reads it), else a labelled source (conditions.read_examples)."""
    out = []
    if fmt == "plain":
        p = Path(data) if data else None
        paths = find_inputs(files=[p]) if p is not None and p.is_file() else find_inputs(p)
        examples = ({"story": s} for s in iter_stories(paths))
    else:
        if not data:
            raise ValueError(f"--format {fmt} needs --data: a labelled source")
        examples = conditions.read_examples(data)
    for ex in examples:
        if ex["story"] and is_val(ex["story"], val_frac):
            out.append(conditions.format_example(ex, fmt))
            if max_stories and len(out) >= max_stories:
                break
    if not out:
        raise ValueError(f"--data {data}: no held-out stories (format {fmt}, val_frac {val_frac})")
    return out


def evaluate_stories(lm, enc, pairs, progress=True):
    """Metrics of (prompt, story) pairs; per-story lists under 'stories'."""
    from tqdm import tqdm
    per = [score_story(lm, enc, p, s) for p, s in tqdm(pairs, desc="scoring held-out stories",
                                                        unit="story", disable=not progress)]
    nats = np.array([x[0] for x in per])
    toks = np.array([x[1] for x in per])
    nbytes = np.array([x[2] for x in per])
    loss = nats.sum() / toks.sum()
    return {"n_stories": len(per), "n_tokens": int(toks.sum()), "n_bytes": int(nbytes.sum()),
            "loss": float(loss), "perplexity": float(math.exp(loss)),
            "bits_per_byte": float(nats.sum() / math.log(2) / nbytes.sum()),
            "nats_per_story": float(nats.mean()), "nats_per_story_median": float(np.median(nats)),
            "tokens_per_story": float(toks.mean()),
            "stories": {"nats": nats.tolist(), "tokens": toks.tolist(), "bytes": nbytes.tolist()}}


# ----------------------------------------------------------------------------------------------
# Judges: small classifiers trained on labelled stories


def last_sentences(story, k=LAST_SENTENCES):
    """The story's last k sentences (split after . ! ? and closing quotes)."""
    parts = re.split(r'(?:(?<=[.!?])|(?<=[.!?]["\u201d]))\s+', story.strip())
    return " ".join(parts[-k:])


def make_classifier(seed):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union
    return make_pipeline(
        make_union(TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        LogisticRegression(C=4.0, class_weight="balanced", max_iter=2000, random_state=seed))


def judge_input(name, stories):
    return [last_sentences(s) if name == "ending" else s for s in stories]


def labels(examples, name):
    """1 when the example has the feature (for 'ending': when the ending is sad)."""
    if name == "ending":
        return np.array([ex["ending"] == "sad" for ex in examples], dtype=int)
    return np.array([name in ex["features"] for ex in examples], dtype=int)


class Judges:
    """One classifier per tag and one for the ending, with their held-out scores in `scores`."""

    def __init__(self, examples, val_frac=0.25, seed=1337):
        from sklearn.metrics import balanced_accuracy_score
        self.train = [ex for ex in examples if not is_val(ex["story"], val_frac)]
        self.val = [ex for ex in examples if is_val(ex["story"], val_frac)]
        if not self.train or not self.val:
            raise ValueError(f"labelled data: {len(self.train)} training and {len(self.val)} held-out "
                             f"stories; both parts need some (more stories, or another --clf_val_frac)")
        self.models, self.scores = {}, {}
        for name in ("ending",) + TAGS:
            y, yv = labels(self.train, name), labels(self.val, name)
            if y.min() == y.max():  # one class only: nothing to learn
                self.scores[name] = {"trained": False, "positives": int(y.sum()), "n_train": len(y)}
                continue
            clf = make_classifier(seed).fit(judge_input(name, [ex["story"] for ex in self.train]), y)
            pred = clf.predict(judge_input(name, [ex["story"] for ex in self.val]))
            majority = int(y.mean() >= 0.5)
            self.models[name] = clf
            self.scores[name] = {
                "trained": True, "n_train": len(y), "n_val": len(yv),
                "train_positives": int(y.sum()), "val_positives": int(yv.sum()),
                "accuracy": float((pred == yv).mean()), "base_rate": float((yv == majority).mean()),
                "balanced_accuracy": float(balanced_accuracy_score(yv, pred))
                if yv.min() != yv.max() else None}

    def __call__(self, name, stories):
        return self.models[name].predict(judge_input(name, stories)).astype(bool)


def read_labelled(source, max_examples):
    """The first max_examples labelled examples with a story."""
    out = []
    for ex in conditions.read_examples(source):
        if ex["story"]:
            out.append(ex)
            if len(out) >= max_examples:
                break
    if not out:
        raise ValueError(f"--labelled {source}: no labelled stories")
    return out


# ----------------------------------------------------------------------------------------------
# Obedience


def make_requests(n, topics, fmt, tags, seed):
    """n requests {topic, ending, tags, prompt}: endings alternate (half sad whatever the data's
    ratio), each judged tag is asked with probability 1/2, topics taken in turn."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ending = ENDINGS[i % 2]
        asked = [t for t in tags if rng.random() < 0.5]
        if fmt == "tags":  # no topic line: the ending is asked as the BadEnding tag
            req = {"topic": None, "ending": ending, "tags": asked,
                   "prompt": conditions.build_prompt(tags=asked + (["BadEnding"] if ending == "sad" else []))}
        else:
            asked = asked if fmt == "instruct_tags" else []
            topic = topics[i % len(topics)]
            req = {"topic": topic, "ending": ending, "tags": asked,
                   "prompt": conditions.build_prompt(topic, ending, asked)}
        out.append(req)
    return out


def generate(lm, requests, max_new_tokens, temperature, top_p, seed, batch=8, progress=True):
    """One story per request; request i uses seed + i whatever the batching."""
    from tqdm import tqdm
    stories = []
    with tqdm(total=len(requests), desc="writing stories", unit="story", disable=not progress) as bar:
        for i in range(0, len(requests), batch):
            part = [r["prompt"] for r in requests[i:i + batch]]
            stories += lm.generate(part, max_new_tokens, temperature, top_p, seed + i)
            bar.update(len(part))
    return [s.strip() for s in stories]


def obedience(judges, requests, stories):
    """Rates of what was asked: the ending, and each tag when asked and when not asked."""
    res = {"n": len(requests)}
    if "ending" in judges.models:
        sad = judges("ending", stories)
        got = np.array(["sad" if x else "happy" for x in sad])
        want = np.array([r["ending"] for r in requests])
        res["ending"] = {e: {"asked": int((want == e).sum()),
                             "matched": float((got[want == e] == e).mean()) if (want == e).any() else None}
                         for e in ENDINGS}
        res["ending"]["all"] = float((got == want).mean())
        res["judged_endings"] = got.tolist()
    res["tags"] = {}
    judged = {}
    for t in TAGS:
        if t not in judges.models:
            continue
        has = judges(t, stories)
        judged[t] = has
        asked = np.array([t in r["tags"] for r in requests])
        res["tags"][t] = {"asked": int(asked.sum()), "not_asked": int((~asked).sum()),
                          "present_when_asked": float(has[asked].mean()) if asked.any() else None,
                          "present_when_not_asked": float(has[~asked].mean()) if (~asked).any() else None}
    ok = []
    for i, r in enumerate(requests):
        good = "judged_endings" not in res or res["judged_endings"][i] == r["ending"]
        ok.append(good and all(judged[t][i] for t in r["tags"] if t in judged))
    res["all_obeyed"] = float(np.mean(ok)) if ok else None
    res["judged_tags"] = [[t for t in judged if judged[t][i]] for i in range(len(requests))]
    return res


# ----------------------------------------------------------------------------------------------
# Output


def write_atomic(path, data):
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


def save_figure(fig, path):
    import matplotlib.pyplot as plt
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def plot_nats(metrics, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    nats = metrics["stories"]["nats"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.hist(nats, bins=min(40, max(5, len(nats) // 3)), color="#4c72b0")
    a.axvline(metrics["nats_per_story"], color="k", ls="--", label=f"mean {metrics['nats_per_story']:.0f}")
    a.axvline(350, color="#c44e52", ls=":", label="seed 001's ~350")
    a.set_xlabel("nats per story")
    a.set_ylabel("stories")
    a.legend()
    b.scatter(metrics["stories"]["tokens"], nats, s=8, alpha=0.6)
    b.set_xlabel("tokens per story (with the closing BOS)")
    b.set_ylabel("nats per story")
    fig.suptitle(title)
    save_figure(fig, path)


def plot_obedience(ob, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names, asked, not_asked = [], [], []
    if "ending" in ob:
        for e in ENDINGS:
            names.append(f"{e} ending")
            asked.append(ob["ending"][e]["matched"] or 0.0)
            not_asked.append(np.nan)
    for t, r in ob["tags"].items():
        names.append(t)
        asked.append(r["present_when_asked"] if r["present_when_asked"] is not None else np.nan)
        not_asked.append(r["present_when_not_asked"] if r["present_when_not_asked"] is not None else np.nan)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.8))
    ax.bar(x - 0.2, asked, 0.4, label="asked: judged present / ending matched", color="#55a868")
    ax.bar(x + 0.2, not_asked, 0.4, label="not asked: judged present", color="#8c8c8c")
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of stories")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    ax.set_title(title)
    save_figure(fig, path)


def pct(x):
    return "—" if x is None else f"{100 * x:.1f}%"


def report_md(args, m, judges, labelled_desc, requests, stories, ob):
    L = [f"# Evaluation of `{args.model}`", "",
         f"Tokenizer `{args.tokenizer}`; held-out data `{args.data}` (format `{args.format}`, the "
         f"stories that `tinystories.is_val(story, {args.val_frac})` holds out"
         + (f", the first {args.max_stories}" if args.max_stories else "") + ").", "",
         "## Held-out metrics", "",
         "| stories | tokens counted | UTF-8 bytes | loss (nats/token) | perplexity | bits per byte "
         "| nats per story (mean / median) | tokens per story |",
         "|---|---|---|---|---|---|---|---|",
         f"| {m['n_stories']:,} | {m['n_tokens']:,} | {m['n_bytes']:,} | {m['loss']:.4f} | "
         f"{m['perplexity']:.2f} | {m['bits_per_byte']:.4f} | {m['nats_per_story']:.1f} / "
         f"{m['nats_per_story_median']:.1f} | {m['tokens_per_story']:.1f} |", "",
         "Counted: each story's tokens and the BOS that closes it (the prompt, if any, is context). "
         "Bits per byte = total nats / ln 2 / UTF-8 bytes of the stories. Nats per story is "
         "-log p(story), comparable across tokenizers on the same stories; seed 001's ~350 is its own "
         "model (GPT-2 tokenizer) on other stories (TinyStories-GPT4).", "",
         "![nats per story](nats_per_story.png)", ""]
    if judges is None:
        return "\n".join(L + ["No obedience measured (pass --labelled SOURCE).", ""])
    L += ["## Judges (classifiers)", "", labelled_desc, "",
          f"Method: TF-IDF of word 1-2-grams + character 2-5-grams (within words), logistic regression "
          f"(C=4, balanced class weights, seed {args.seed}); the ending judge reads the last "
          f"{LAST_SENTENCES} sentences. Held-out part: `is_val(story, {args.clf_val_frac})`. Base rate: "
          f"accuracy of always answering the training majority.", "",
          "| judge | train (positives) | held out (positives) | accuracy | base rate | balanced accuracy |",
          "|---|---|---|---|---|---|"]
    for name, s in judges.scores.items():
        label = "ending (sad)" if name == "ending" else name
        if not s["trained"]:
            L.append(f"| {label} | {s['n_train']} ({s['positives']}) | not trained: one class only | — | — | — |")
            continue
        L.append(f"| {label} | {s['n_train']} ({s['train_positives']}) | {s['n_val']} ({s['val_positives']}) | "
                 f"{pct(s['accuracy'])} | {pct(s['base_rate'])} | {pct(s['balanced_accuracy'])} |")
    L.append("")
    if ob is None:
        return "\n".join(L + ["No requests (--requests 0).", ""])
    L += ["## Obedience", "",
          f"{ob['n']} requests (`--request_format {args.request_format}`), one story each: "
          f"temperature {args.temperature}, top-p {args.top_p}, at most {args.max_new_tokens} new "
          f"tokens, seeds {args.seed}..{args.seed + ob['n'] - 1}.", "",
          "| asked | requests | judged as asked | not asked: judged present |", "|---|---|---|---|"]
    if "ending" in ob:
        for e in ENDINGS:
            L.append(f"| {e} ending | {ob['ending'][e]['asked']} | {pct(ob['ending'][e]['matched'])} | — |")
        L.append(f"| ending, all | {ob['n']} | {pct(ob['ending']['all'])} | — |")
    for t, r in ob["tags"].items():
        L.append(f"| {t} | {r['asked']} | {pct(r['present_when_asked'])} | "
                 f"{pct(r['present_when_not_asked'])} ({r['not_asked']}) |")
    L += [f"| everything asked | {ob['n']} | {pct(ob['all_obeyed'])} | — |", "",
          "A tag is obeyed when it is judged present more often when asked than when not asked; "
          "read every rate against its judge's own accuracy above.", "",
          "![obedience](obedience.png)", "", "## Sample stories", ""]
    for i in range(min(args.samples, len(requests))):
        r = requests[i]
        ask = ", ".join(x for x in [f"topic: {r['topic']}" if r["topic"] else "",
                                    f"ending: {r['ending']}",
                                    f"tags: {', '.join(r['tags']) or 'none'}"] if x)
        got = [ob["judged_endings"][i] + " ending"] if "judged_endings" in ob else []
        got += ob["judged_tags"][i]
        L += [f"**Request {i + 1}** ({ask}); judged: {', '.join(got) or 'nothing'}", "",
              "```", r["prompt"] + stories[i], "```", ""]
    return "\n".join(L)


# ----------------------------------------------------------------------------------------------
# CLI


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 1 (argparse's default is usage + exit 2)
        self.exit(1, f"error: {message}\n")


def check_args(a):
    if not 0 < a.val_frac <= 1:
        raise ValueError(f"--val_frac must be in (0, 1], got {a.val_frac}")
    if not 0 < a.clf_val_frac < 1:
        raise ValueError(f"--clf_val_frac must be in (0, 1), got {a.clf_val_frac}")
    for name in ("max_stories", "max_labelled", "max_new_tokens"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name} must be at least 1, got {v}")
    if a.requests < 0 or a.samples < 0:
        raise ValueError("--requests and --samples must not be negative")
    if a.temperature < 0 or not 0 <= a.top_p <= 1:
        raise ValueError(f"--temperature must be >= 0 and --top_p in [0, 1], got {a.temperature}, {a.top_p}")
    if a.labelled is not None and not Path(a.labelled).exists() and a.labelled not in (
            conditions.INSTRUCT_HUB, conditions.GPT4_HUB):
        raise FileNotFoundError(f"--labelled {a.labelled}: no such file or directory")
    if a.data is not None and not Path(a.data).exists() and not (
            a.format != "plain" and a.data in (conditions.INSTRUCT_HUB, conditions.GPT4_HUB)):
        raise FileNotFoundError(f"--data {a.data}: no such file or directory")


def run(a, progress=True):
    check_args(a)
    out = Path(a.out)
    lm, enc = open_model(a.model, a.tokenizer, a.threads)
    pairs = held_out(a.data, a.format, a.val_frac, a.max_stories)
    judges = ob = desc = None
    requests, stories = [], []
    if a.labelled is not None:  # before the held-out scoring, so that bad labelled data fails at once
        examples = read_labelled(a.labelled, a.max_labelled)
        judges = Judges(examples, a.clf_val_frac, a.seed)
        desc = (f"Labelled data: `{a.labelled}`, {len(examples):,} stories (the first "
                f"{a.max_labelled:,} at most): {len(judges.train):,} trained the judges, "
                f"{len(judges.val):,} held out to score them.")
        for name, s in judges.scores.items():
            if s["trained"]:
                print(f"judge {name}: accuracy {s['accuracy']:.3f} (base rate {s['base_rate']:.3f}) "
                      f"on {s['n_val']} held-out labelled stories")
    m = evaluate_stories(lm, enc, pairs, progress)
    print(f"{m['n_stories']} held-out stories, {m['n_tokens']} tokens: loss {m['loss']:.4f} nats/token, "
          f"perplexity {m['perplexity']:.2f}, {m['bits_per_byte']:.4f} bits/byte, "
          f"{m['nats_per_story']:.1f} nats/story")
    if judges is not None:
        if a.requests and not judges.models:
            print("no judge could be trained (every feature has one class only): no requests")
        elif a.requests:
            topics = [ex["summary"] for ex in judges.val if ex["summary"]] or list(DEFAULT_TOPICS)
            requests = make_requests(a.requests, topics, a.request_format,
                                     [t for t in TAGS if t in judges.models], a.seed)
            stories = generate(lm, requests, a.max_new_tokens, a.temperature, a.top_p, a.seed,
                               progress=progress)
            ob = obedience(judges, requests, stories)
            if "ending" in ob:
                print(f"obedience: ending as asked {ob['ending']['all']:.3f}; everything asked "
                      f"{ob['all_obeyed']:.3f} ({ob['n']} requests)")
    out.mkdir(parents=True, exist_ok=True)
    plot_nats(m, out / "nats_per_story.png", f"{Path(a.model).name}: held-out stories")
    if ob is not None:
        plot_obedience(ob, out / "obedience.png", f"{Path(a.model).name}: obedience ({ob['n']} requests)")
    summary = {"model": str(a.model), "tokenizer": str(a.tokenizer), "data": str(a.data),
               "format": a.format, "val_frac": a.val_frac, "metrics": m,
               "judges": judges.scores if judges else None, "obedience": ob,
               "requests": [dict(r, story=s) for r, s in zip(requests, stories)]}
    write_atomic(out / "metrics.json", json.dumps(summary, indent=1))
    write_atomic(out / "report.md", report_md(a, m, judges, desc, requests, stories, ob))
    print(f"wrote {out / 'report.md'}")
    return summary


def parse_args(argv=None):
    ap = Parser(description=__doc__.split("\n\n")[0].strip())
    ap.add_argument("--model", required=True, help="llama2.c .bin (C engine) or train.py .pt")
    ap.add_argument("--tokenizer", default=str(ROOT / "tokenizer.model"),
                    help="sentencepiece .model (its .bin beside it for a .bin model) or a tokenizer .bin")
    ap.add_argument("--data", default=None,
                    help="held-out source: TinyStories .txt / data*.json file or directory (plain; "
                         "default $TINYSTORIES_DIR or data/), else a labelled source")
    ap.add_argument("--format", default="plain", choices=MODEL_FORMATS,
                    help="how the model was trained: plain stories, or prompts of conditions.py")
    ap.add_argument("--val_frac", type=float, default=0.02, help="held-out fraction (pretokenize's)")
    ap.add_argument("--max_stories", type=int, default=None, help="score at most this many")
    ap.add_argument("--out", default="out/eval", help="output directory")
    ap.add_argument("--labelled", default=None, metavar="SOURCE",
                    help="labelled stories for the judges (conditions.read_examples); enables obedience")
    ap.add_argument("--max_labelled", type=int, default=20000, help="read at most this many labelled")
    ap.add_argument("--clf_val_frac", type=float, default=0.25, help="labelled stories held out")
    ap.add_argument("--requests", type=int, default=20, help="stories to request (0: judges only)")
    ap.add_argument("--request_format", default=None, choices=REQUEST_FORMATS,
                    help="what requests ask for (default: --format when conditioned, else instruct_tags)")
    ap.add_argument("--max_new_tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top_p", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--samples", type=int, default=3, help="sample stories in the report")
    ap.add_argument("--threads", type=int, default=None, help="C engine threads (default: all)")
    a = ap.parse_args(argv)
    if a.request_format is None:
        a.request_format = a.format if a.format in REQUEST_FORMATS else "instruct_tags"
    return a


def main(argv=None):
    a = parse_args(argv)
    try:
        run(a)
    except (OSError, ValueError, RuntimeError, ImportError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
