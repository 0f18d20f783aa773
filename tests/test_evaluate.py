"""evaluate.py: held-out nats / bits per byte through the C engine against an independent PyTorch
computation (short stories, context windows, prompts that are not counted), the judges against
their base rates on tests/fixtures/eval_labelled.txt, the written report and plots, bad input.

Fixtures: tests/fixtures/eval_labelled.txt is 200 short labelled stories in TinyStoriesInstruct's
text layout (FORMATS.md §1: metadata lines `Features:` / `Words:` / `Summary:` / `Random sentence:`
in any order, `Story:` with the story on the same line or the lines after, `<|endoftext|>`). Each
tag is carried by sentences of its own kind (quotes for Dialogue, a lesson for MoralValue, a sad or
happy last event for the ending), so a judge can learn it from 150 of them. The models are tiny
random ones (the repository's 4096-piece tokenizer) exported by export.py.
"""
import dataclasses
import json
import math

import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F

import conditions
import evaluate
import export
from conftest import ROOT
from model import ModelArgs, Transformer

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

LABELLED = ROOT / "tests" / "fixtures" / "eval_labelled.txt"
SP_MODEL = ROOT / "tokenizer.model"


def tiny_model(seq_len, seed=0):
    """A random model whose next-token distributions are far from uniform (scaled-up weights)."""
    torch.manual_seed(seed)
    m = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64,
                              vocab_size=4096, max_seq_len=seq_len)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(8.0) if p.dim() == 2 else p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def stories():
    """Six labelled fixture stories."""
    return [ex["story"] for ex in conditions.read_examples(LABELLED)][:6]


def write_txt(path, texts):
    """TinyStories .txt layout: each story, then a line <|endoftext|>."""
    path.write_text("".join(t + "\n<|endoftext|>\n" for t in texts), encoding="utf-8")
    return path


def bin_model(tmp_path, seq_len):
    m = tiny_model(seq_len)
    export.export_v1(m, tmp_path / f"tiny{seq_len}.bin")
    return m, tmp_path / f"tiny{seq_len}.bin"


def torch_nats(model, ids):
    """-log p of ids[1:] from one forward pass over ids[:-1] (the sequence fits the context)."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]))
    return F.cross_entropy(logits[0].double(), torch.tensor(ids[1:]), reduction="none").numpy()


def test_bits_per_byte_matches_pytorch(tmp_path, stories):
    model, path = bin_model(tmp_path, 512)  # every story fits: one window
    lm, enc = evaluate.open_model(path, SP_MODEL, threads=1)
    assert isinstance(lm, evaluate.BinLM)  # scored by the C engine
    pairs = evaluate.held_out(write_txt(tmp_path / "s.txt", stories), "plain", 1.0)
    assert [s for _, s in pairs] == stories
    m = evaluate.evaluate_stories(lm, enc, pairs, progress=False)

    sp = spm.SentencePieceProcessor(model_file=str(SP_MODEL))
    nats, toks, nbytes = [], 0, 0
    for s in stories:
        ids = [1] + sp.encode(s) + [1]  # BOS, the story, the BOS that ends it
        assert len(ids) <= 512
        nats.append(torch_nats(model, ids).sum())
        toks += len(ids) - 1
        nbytes += len(s.encode("utf-8"))
    total = sum(nats)
    assert m["n_tokens"] == toks and m["n_bytes"] == nbytes and m["n_stories"] == len(stories)
    assert m["stories"]["nats"] == pytest.approx(nats, rel=1e-4)
    assert m["loss"] == pytest.approx(total / toks, rel=1e-4)
    assert m["perplexity"] == pytest.approx(math.exp(total / toks), rel=1e-4)
    assert m["bits_per_byte"] == pytest.approx(total / math.log(2) / nbytes, rel=1e-4)
    assert m["nats_per_story"] == pytest.approx(total / len(stories), rel=1e-4)
    assert 1.0 < m["loss"] < 2 * math.log(4096)  # far from uniform: the check has teeth


def test_long_stories_in_windows(tmp_path, stories):
    """Context 16: target t (ids[t]) is predicted from ids[end - 16:t], where the window's end is
    16 for t <= 16, else 16 + 8 * ceil((t - 16) / 8) (each later window moves by half the context)
    but at most the last target. C engine and model.py agree, and both match that rule computed
    here one target at a time."""
    model, path = bin_model(tmp_path, 16)
    ckpt = tmp_path / "tiny16.pt"
    torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(model.params)}, ckpt)
    lm_c, enc = evaluate.open_model(path, SP_MODEL, threads=1)
    lm_t, _ = evaluate.open_model(ckpt, SP_MODEL)
    assert isinstance(lm_t, evaluate.TorchLM)
    sp = spm.SentencePieceProcessor(model_file=str(SP_MODEL))
    ids = [1] + sp.encode(" ".join(stories[:2])) + [1]
    assert len(ids) > 60
    want = []
    with torch.no_grad():
        for t in range(1, len(ids)):
            end = 16 if t <= 16 else min(len(ids) - 1, 16 + 8 * math.ceil((t - 16) / 8))
            begin = max(0, end - 16)
            logits, _ = model(torch.tensor([ids[begin:t]]))
            want.append(F.cross_entropy(logits[0, -1:].double(), torch.tensor([ids[t]])).item())
    assert evaluate.token_nats(lm_c, ids) == pytest.approx(want, rel=1e-4)
    assert evaluate.token_nats(lm_t, ids) == pytest.approx(want, rel=1e-4)


def test_prompt_is_context_not_counted(tmp_path):
    """--format instruct: only the story tokens and the closing BOS are counted, each predicted
    with the prompt before it."""
    model, path = bin_model(tmp_path, 512)
    lm, enc = evaluate.open_model(path, SP_MODEL, threads=1)
    pairs = evaluate.held_out(LABELLED, "instruct", 1.0, max_stories=3)
    assert all(p.startswith("Write a story about: ") and p.endswith("### Story:\n") for p, _ in pairs)
    m = evaluate.evaluate_stories(lm, enc, pairs, progress=False)
    plain = evaluate.evaluate_stories(lm, enc, [("", s) for _, s in pairs], progress=False)
    sp = spm.SentencePieceProcessor(model_file=str(SP_MODEL))
    want, toks = [], 0
    for prompt, story in pairs:
        p = [1] + sp.encode(prompt)
        full = [1] + sp.encode(prompt + story) + [1]
        assert full[:len(p)] == p
        want.append(torch_nats(model, full)[len(p) - 1:].sum())  # targets after the prompt
        toks += len(full) - len(p)
    assert m["n_tokens"] == toks
    assert m["stories"]["nats"] == pytest.approx(want, rel=1e-4)
    assert m["n_bytes"] == plain["n_bytes"]  # bytes of the stories only
    assert m["stories"]["nats"] != pytest.approx(plain["stories"]["nats"], rel=1e-3)


def test_judges_beat_their_base_rate():
    examples = evaluate.read_labelled(LABELLED, 1000)
    judges = evaluate.Judges(examples, val_frac=0.25, seed=1337)
    assert len(judges.train) + len(judges.val) == 200 and 30 <= len(judges.val) <= 70
    assert set(judges.models) == {"ending"} | set(evaluate.TAGS)
    for name, s in judges.scores.items():
        assert s["accuracy"] > s["base_rate"] + 0.1, (name, s)
        assert s["balanced_accuracy"] > 0.75, (name, s)
    # the ending judge reads the ending: a story turned sad at its last sentence flips its verdict
    story = [ex for ex in judges.val if ex["ending"] == "happy"][0]["story"]
    sad = story + " Then the toy broke into pieces, and everyone cried, because it was gone forever."
    assert judges("ending", [story, sad]).tolist() == [False, True]
    again = evaluate.Judges(examples, val_frac=0.25, seed=1337)  # reproducible
    assert again.scores == judges.scores


def test_requests():
    reqs = evaluate.make_requests(6, ["a dog", "a cat"], "instruct_tags", evaluate.TAGS, seed=3)
    assert [r["ending"] for r in reqs] == ["happy", "sad"] * 3
    assert reqs == evaluate.make_requests(6, ["a dog", "a cat"], "instruct_tags", evaluate.TAGS, 3)
    for r in reqs:
        assert r["prompt"] == conditions.build_prompt(r["topic"], r["ending"], r["tags"])
    tags = evaluate.make_requests(2, ["x"], "tags", evaluate.TAGS, seed=3)
    assert tags[1]["prompt"] == conditions.build_prompt(tags=tags[1]["tags"] + ["BadEnding"])
    assert all(r["tags"] == [] for r in evaluate.make_requests(4, ["x"], "instruct", evaluate.TAGS, 3))


def test_cli_writes_report_and_plots(tmp_path, stories, capsys):
    _, path = bin_model(tmp_path, 512)
    out = tmp_path / "eval"
    rc = evaluate.main(["--model", str(path), "--tokenizer", str(SP_MODEL),
                        "--data", str(write_txt(tmp_path / "s.txt", stories)), "--val_frac", "1",
                        "--labelled", str(LABELLED), "--requests", "4", "--max_new_tokens", "24",
                        "--threads", "1", "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "nats_per_story.png",
                                                     "obedience.png", "report.md"]
    for png in ("nats_per_story.png", "obedience.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    for part in ("## Held-out metrics", "bits per byte", "## Judges", "base rate", "## Obedience",
                 "## Sample stories", "Write a story about: "):
        assert part in report
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["metrics"]["n_stories"] == len(stories)
    assert len(summary["requests"]) == 4 and all("story" in r for r in summary["requests"])
    assert f"{summary['metrics']['bits_per_byte']:.4f}" in report
    assert "bits/byte" in capsys.readouterr().out


def test_torch_checkpoint_generates(tmp_path):
    model = tiny_model(64)
    ckpt = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(model.params)}, ckpt)
    lm, _ = evaluate.open_model(ckpt, SP_MODEL)
    reqs = evaluate.make_requests(2, ["a dog"], "instruct", evaluate.TAGS, seed=1)
    a = evaluate.generate(lm, reqs, 12, 1.0, 0.9, seed=5, progress=False)
    assert len(a) == 2 and all(isinstance(s, str) for s in a)
    assert a == evaluate.generate(lm, reqs, 12, 1.0, 0.9, seed=5, batch=1, progress=False)


def run_cli(args, capsys):
    """(exit status, stderr) of evaluate.main, including argparse's own exits."""
    try:
        rc = evaluate.main(args)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def test_bad_input(tmp_path, stories, capsys):
    _, path = bin_model(tmp_path, 64)
    good = ["--model", str(path), "--tokenizer", str(SP_MODEL), "--out", str(tmp_path / "o")]
    data = ["--data", str(write_txt(tmp_path / "s.txt", stories))]
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("x")
    cases = [
        (["--model", str(tmp_path / "nope.bin")] + good[2:] + data, "--model"),
        (good[:2] + ["--tokenizer", str(tmp_path / "nope.model")] + good[4:] + data, "--tokenizer"),
        (good[:2] + ["--tokenizer", str(tmp_path / "bad.csv")] + good[4:] + data, "--tokenizer"),
        (good + ["--data", str(tmp_path / "missing")], "--data"),
        (good + ["--data", str(tmp_path / "empty")], "no TinyStories files"),
        (good + data + ["--val_frac", "0"], "--val_frac"),
        (good + data + ["--val_frac", "1e-12"], "no held-out stories"),
        (good + data + ["--labelled", str(tmp_path / "missing.txt")], "--labelled"),
        (good + data + ["--labelled", str(tmp_path / "bad.csv")], "unknown kind of file"),
        (good + data + ["--labelled", str(ROOT / "tests" / "fixtures" / "all_data")],
         "both parts need some"),  # 3 stories: none held out to score the judges
        (good + data + ["--requests", "-1"], "--requests"),
        (good + data + ["--format", "instruct"], "format instruct"),
        (good + data + ["--bogus"], "unrecognized arguments"),
        (["--model", str(tmp_path / "s.txt")] + good[2:] + data, "--model"),
    ]
    for args, needle in cases:
        rc, err = run_cli(args, capsys)
        assert rc == 1, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, (args, err)
    assert not (tmp_path / "o").exists()  # nothing half written
