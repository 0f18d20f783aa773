"""conditions.py: the labelled-data readers on fixtures in the documented layouts, the prompt rule
and seed 002's exact template, the curated data set (schema, splits, balance, errors), and the
masked training examples (prompt and padding targets contribute nothing to the loss)."""
import os
import subprocess
import sys

import pytest

import conditions as c
from conftest import META_TOKENIZER, ROOT, need

FIX = ROOT / "tests" / "fixtures"
INSTRUCT = FIX / "instruct_sample.txt"


# ---- readers ----------------------------------------------------------------------------------

def test_instruct_parser_fixture():
    exs = list(c.read_instruct(INSTRUCT))
    # the Mia story (no Summary), the ball example (no Story) and the frog block (no final
    # <|endoftext|>) are left out
    assert [ex["summary"].split()[0] for ex in exs] == ["Tom", "A", "Ben", "Lily"]
    kite, duck, key, seed = exs
    # fields in the usual order; the story on the lines after "Story:", blank line kept inside
    assert kite["features"] == ["Dialogue"] and kite["ending"] == "happy"
    assert kite["words"] == ["kite", "windy", "climb"]
    assert kite["story"].startswith("Tom had a red kite. One windy day")
    assert "up and up.\n\nThen the wind" in kite["story"]
    assert kite["story"].endswith("until the sun went down.")
    # fields in another order, Random sentence, the story starting on the Story: line, BadEnding
    assert duck["ending"] == "sad" and duck["features"] == ["Dialogue", "BadEnding"]
    assert duck["random_sentence"] == "The water was cold and dark."
    assert duck["story"].startswith('Daisy the duck saw a big pond. "I want to swim there,"')
    assert duck["story"].count("\n") == 3 and duck["story"].endswith("lost all night.")
    # Summary after the story ends the story; two features
    assert key["features"] == ["Foreshadowing", "MoralValue"] and key["ending"] == "happy"
    assert key["summary"].startswith("Ben finds a key on the beach")
    assert key["story"].endswith("old things can hold happy surprises.")
    assert "Summary" not in key["story"]
    # no Features line at all: happy, no features
    assert seed["features"] == [] and seed["ending"] == "happy"


def test_instruct_hub_rows_layout():
    """The hub's layout (one line per row of a `text` column, no newline) parses the same as the
    local file; `datasets`' text loader streams the fixture in exactly that layout."""
    import datasets
    rows = datasets.load_dataset("text", data_files=str(INSTRUCT), split="train", streaming=True)
    assert list(c.parse_instruct_lines(r["text"] for r in rows)) == list(c.read_instruct(INSTRUCT))


def test_instruct_parser_edge_cases():
    lines = ["", "Summary: a  dog\n", "Story: Woof.<|endoftext|>", "Features: badending\r\n",
             "Summary: a cat", "Story:", "", "Meow.", "", "Purr.", "<|endoftext|>",
             "Summary: unfinished", "Story: cut"]
    exs = list(c.parse_instruct_lines(lines))
    assert [(e["summary"], e["story"], e["ending"]) for e in exs] == [
        ("a dog", "Woof.", "happy"), ("a cat", "Meow.\n\nPurr.", "sad")]


def test_all_data_shards():
    exs = list(c.read_all_data(FIX / "all_data"))
    assert len(exs) == 3
    hat, paint, cookie = exs
    # data00.json spells the key `prompt:`, data01.json `prompt`
    assert hat["prompt"].startswith("Write a short story") and cookie["prompt"].startswith("Write")
    assert hat["features"] == ["Dialogue", "BadEnding"] and hat["ending"] == "sad"
    assert paint["features"] == ["Twist"] and paint["ending"] == "happy"
    assert cookie["features"] == ["Conflict", "MoralValue"] and cookie["ending"] == "happy"
    assert hat["words"] == ["hop", "pond", "green"] and hat["source"] == "GPT-4"
    assert hat["summary"] == "Sam loses his green hat in the pond when the wind blows it away."
    assert "\n\nOne day the wind" in hat["story"]
    assert list(c.read_examples(FIX / "all_data" / "data01.json")) == [cookie]


def test_gpt4_rows_parquet_and_dicts():
    exs = list(c.read_gpt4(c.gpt4_rows(FIX / "gpt4_sample.parquet")))
    assert [e["ending"] for e in exs] == ["happy", "sad", "happy"]
    assert [e["features"] for e in exs] == [["Dialogue"], ["BadEnding", "Twist"], ["Foreshadowing"]]
    assert exs[1]["words"] == ["build", "tower", "tall"] and exs[1]["story"].startswith("Ted built")
    assert list(c.read_examples(FIX / "gpt4_sample.parquet")) == exs
    rows = [{"story": " A story. ", "summary": "s", "features": ["Twist"], "words": ["a"],
             "prompt": "p", "source": "GPT-4"}]
    assert list(c.read_gpt4(rows))[0]["story"] == "A story."
    with pytest.raises(ValueError, match="row 0 has no `story`"):
        list(c.read_gpt4([{"summary": "no story"}]))


def test_read_examples_rejects_unknown_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="not one of the hub data sets"):
        c.read_examples(tmp_path / "missing.txt")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unknown kind of file"):
        c.read_examples(tmp_path / "x.csv")


# ---- prompts ----------------------------------------------------------------------------------

def test_instruction_template_exact():
    want = "Write a story about: a kite\nWith: sad ending\n\n### Story:\nOnce upon a time."
    assert c.instruction_example("a kite", "sad", "Once upon a time.") == want
    assert c.TEMPLATE.format(summary="a kite", ending="sad", story="Once upon a time.") == want
    assert c.instruction_prompt("a kite", "sad") == want[:want.index("Once")]
    assert c.build_prompt("a kite", "sad") == c.instruction_prompt("a kite", "sad")


def test_prompt_rule_tags_and_errors():
    assert c.build_prompt() == "" and c.build_prompt(tags=[]) == ""
    assert c.build_prompt(tags=["twist", "Dialogue", "TWIST", "badending"]) == (
        "Features: BadEnding, Dialogue, Twist\n\n### Story:\n")
    assert c.build_prompt(" a  red\nkite ", "happy", ["MoralValue", "conflict"]) == (
        "Write a story about: a red kite\nWith: happy ending\n"
        "Features: Conflict, MoralValue\n\n### Story:\n")
    # only ASCII whitespace is collapsed (C's isspace agrees); other characters stay as they are
    assert c.build_prompt("\t a\u00a0cat\r\n\v\fé ", "sad").startswith(
        "Write a story about: a\u00a0cat é\nWith: sad ending\n")
    assert c.build_prompt("é" * 500, "sad")  # 500 code points is the limit, not 500 bytes
    for kwargs, msg in [({"tags": ["Sadness"]}, "unknown tag"), ({"topic": "  "}, "topic is empty"),
                        ({"topic": "x", "ending": "ok"}, "ending must be"),
                        ({"ending": "sad"}, "needs a topic"),
                        ({"topic": "x", "ending": "sad", "tags": ["BadEnding"]}, "BadEnding"),
                        ({"topic": "x" * 501, "ending": "sad"}, "more than 500")]:
        with pytest.raises(ValueError, match=msg):
            c.build_prompt(**kwargs)


def test_format_example():
    duck = list(c.read_instruct(INSTRUCT))[1]
    assert c.format_example(duck, "plain") == ("", duck["story"])
    assert c.format_example(duck, "tags")[0] == "Features: BadEnding, Dialogue\n\n### Story:\n"
    prompt, story = c.format_example(duck, "instruct")
    assert prompt + story == c.TEMPLATE.format(summary=duck["summary"], ending="sad", story=story)
    assert c.format_example(duck, "instruct_tags")[0].endswith(
        "With: sad ending\nFeatures: Dialogue\n\n### Story:\n")
    with pytest.raises(ValueError, match="unknown format"):
        c.format_example(duck, "chat")


# ---- the curated data set ---------------------------------------------------------------------

def test_balanced_stream():
    endings = ["happy"] * 5 + ["sad"] + ["happy"] * 4 + ["sad", "sad"] + ["happy"] * 3
    kept = [e["ending"] for e in c.balanced({"ending": e} for e in endings)]
    assert kept == ["sad", "happy", "sad", "sad", "happy", "happy"]


def test_build_instruct_schema_splits(tmp_path):
    from datasets import ClassLabel, Value
    out = tmp_path / "instruct"
    dd = c.build_instruct(INSTRUCT, out, test_size=0.25, val_size=0.25, seed=7)
    assert [(k, len(v)) for k, v in dd.items()] == [("train", 2), ("validation", 1), ("test", 1)]
    f = dd["train"].features
    assert f["instruction"] == Value("string") and f["response"] == Value("string")
    assert isinstance(f["ending"], ClassLabel) and f["ending"].names == ["happy", "sad"]
    rows = [r for split in dd.values() for r in split]
    parsed = {ex["story"]: ex for ex in c.read_instruct(INSTRUCT)}
    assert sorted(r["response"] for r in rows) == sorted(parsed)
    for r in rows:
        ex = parsed[r["response"]]
        assert r["instruction"] + r["response"] == c.instruction_example(
            ex["summary"], ex["ending"], ex["story"])
        assert r["ending"] == c.ENDINGS.index(ex["ending"])
    assert "| validation | 1 |" in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["instruct"]  # no .tmp / .old left
    again = c.build_instruct(INSTRUCT, out, test_size=0.25, val_size=0.25, seed=7)  # replaces
    assert {k: list(v) for k, v in again.items()} == {k: list(v) for k, v in dd.items()}
    bal = c.build_instruct(FIX / "all_data", tmp_path / "bal", test_size=0.5, val_size=0,
                           balance=True)
    assert set(bal) == {"train", "test"}
    endings = [e for s in bal.values() for e in s["ending"]]
    assert sorted(endings) == [0, 1]  # hat (sad) and paint (happy); cookie dropped


def _cli(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "conditions.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


def test_build_instruct_cli_errors(tmp_path):
    r = _cli("build_instruct", "--source", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error: ") and "nope.txt" in r.stderr
    (tmp_path / "bad.json").write_text('[{"summary": "no story"}]')
    r = _cli("build_instruct", "--source", str(tmp_path / "bad.json"), "--out", str(tmp_path / "o"))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("error: ") and "bad.json" in last
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.tmp").exists()
    r = _cli("build_instruct", "--source", str(INSTRUCT), "--test_size", "1.5")
    assert r.returncode == 1 and "--test_size" in r.stderr
    r = _cli("build_instruct", "--source", str(INSTRUCT), "--val_size", "0.95")
    assert r.returncode == 1 and "--val_size" in r.stderr
    # --push_to_hub without a token: one line, exit 1, after the local copy is saved
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    r = _cli("build_instruct", "--source", str(INSTRUCT), "--out", str(tmp_path / "o"),
             "--push_to_hub", "someone/tinystories-instruct", env=env)
    assert r.returncode == 1 and "needs a Hugging Face token" in r.stderr.strip().splitlines()[-1]
    assert (tmp_path / "o" / "dataset_dict.json").is_file()
    env["HF_TOKEN"] = "hf_not_a_real_token"
    r = _cli("build_instruct", "--source", str(INSTRUCT), "--out", str(tmp_path / "o"),
             "--push_to_hub", "someone/tinystories-instruct", env=env)
    assert r.returncode == 1 and "cannot be reached" in r.stderr.strip().splitlines()[-1]
    # the hub sources, offline: one line at once, not minutes of retries
    for hub in (c.INSTRUCT_HUB, c.GPT4_HUB):
        r = _cli("build_instruct", "--source", hub, "--out", str(tmp_path / "h"), env=env)
        assert r.returncode == 1 and r.stderr.strip().count("\n") == 0
        assert r.stderr.startswith(f"error: reading {hub} needs the Hugging Face hub")
    assert not (tmp_path / "h").exists()


# ---- masked training examples -----------------------------------------------------------------

def _tokenizers():
    from tokenizer import Tokenizer
    out = []
    if (ROOT / "tokenizer.model").is_file():
        out.append(Tokenizer(ROOT / "tokenizer.model"))
    if META_TOKENIZER.is_file():
        out.append(Tokenizer(META_TOKENIZER))
    if not out:
        need(ROOT / "tokenizer.model")  # skips, naming the file
    return out


def test_masked_pair_layout():
    x, y = c.masked_pair([1, 10, 11, 12], [20, 21], bos=1)
    assert x == [1, 10, 11, 12, 20, 21] and y == [-100, -100, -100, 20, 21, 1]
    x, y = c.masked_pair([1, 10], [20, 21, 22], bos=1, seq_len=7, pad_id=0)
    assert x == [1, 10, 20, 21, 22, 0, 0] and y == [-100, 20, 21, 22, 1, -100, -100]
    x, y = c.masked_pair([1], [20, 21, 22], bos=1, seq_len=2)  # plain story, cut
    assert x == [1, 20] and y == [20, 21]


def test_masked_example_targets():
    exs = list(c.read_instruct(INSTRUCT)) + list(c.read_all_data(FIX / "all_data"))
    for tok in _tokenizers():
        for ex in exs:
            for fmt in c.FORMATS:
                prompt, story = c.format_example(ex, fmt)
                x, y = c.masked_example(tok, prompt, story)
                p = tok.encode(prompt, bos=True) if prompt else [tok.bos_id]
                assert x[:len(p)] == p and len(x) == len(y)
                assert y[:len(p) - 1] == [-100] * (len(p) - 1)  # targets that are prompt tokens
                counted = y[len(p) - 1:]
                assert -100 not in counted and counted[-1] == tok.bos_id  # learns to stop
                assert tok.decode(counted[:-1]) == story
                assert all(t == x[i + 1] for i, t in enumerate(y[:-1]) if t != -100)  # shift
        x, y = c.masked_example(tok, c.instruction_prompt("a cat", "sad"), "Once.", seq_len=64)
        assert len(x) == len(y) == 64 and x[-1] == 0 and y[-1] == -100
        x2, y2 = c.masked_example(tok, c.instruction_prompt("a cat", "sad"), "Once. " * 50,
                                  seq_len=16)
        assert len(x2) == len(y2) == 16


def test_masked_loss_ignores_prompt_and_padding():
    import torch
    import torch.nn.functional as F
    tok = _tokenizers()[0]
    x, y = c.masked_example(tok, c.instruction_prompt("a kite on a windy day", "happy"),
                            "Tom had a red kite. It flew up high.", seq_len=64)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(len(y), tok.n_words, generator=g, requires_grad=True)
    loss = F.cross_entropy(logits, y, ignore_index=-100)
    loss.backward()
    ignored = y == -100
    assert ignored.sum() > 0 and (~ignored).sum() > 0
    assert torch.all(logits.grad[ignored] == 0)  # prompt and padding positions get no gradient
    assert torch.all(logits.grad[~ignored].abs().sum(-1) > 0)
    with torch.no_grad():
        changed = logits.detach().clone()
        changed[ignored] = torch.randn(int(ignored.sum()), tok.n_words, generator=g) * 10
        assert torch.equal(F.cross_entropy(changed, y, ignore_index=-100), loss.detach())
        first_story = int((~ignored).nonzero()[0])
        changed[first_story] += torch.randn(tok.n_words, generator=g)
        assert not torch.equal(F.cross_entropy(changed, y, ignore_index=-100), loss.detach())
