"""
Stories on request and seed 001's end-of-story bias, the same in C, the bindings and PyTorch.

What they show: run.c's bl_build_prompt (through the bindings' babyllama.build_prompt) builds
conditions.build_prompt's prompt byte for byte, with the same error or none, on hand-picked cases
(unicode, whitespace runs, 500/501 characters, case variants, duplicates, every error) and on
thousands of random ones; ./run -a/-e/-g prints that prompt, then the story, and tells the same
greedy story as the bindings and as model.py's Transformer.generate on the bundled model's weights;
the end-of-story bias stops a story where it should (a large rate: right after `after` new tokens),
agrees across ./run, the bindings' single and batched loops and PyTorch, and changes nothing at 0
(llama2.c's golden stories stay byte exact). Bad flags and arguments give one-line errors.
What they do not test: whether a trained model obeys the request (evaluate.py).
"""
import random
import subprocess

import pytest

import conditions
from conftest import AIDREAMS, ROOT, need

babyllama = pytest.importorskip("babyllama", reason="the bindings are not built (pip install -e .)")

RUN = ROOT / "run"
MODEL = ROOT / "models" / "tinystories-cpu.bin"
TOKENIZER_BIN = ROOT / "tokenizer.bin"


@pytest.fixture(scope="module", autouse=True)
def build_run():
    subprocess.run(["make", "-s", "run"], cwd=ROOT, check=True)


@pytest.fixture(scope="module")
def story():
    with babyllama.Model(need(MODEL), TOKENIZER_BIN, threads=1) as m:
        yield m


def cli(*args, ok=True):
    args = [a if isinstance(a, bytes) else str(a) for a in args]
    r = subprocess.run([str(RUN), args[0], "-T", "1", *args[1:]], capture_output=True, timeout=120)
    if ok:
        assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r


def both(topic, ending, tags):
    """(C's prompt or None, its error or None), (Python's prompt or None, its error or None)."""
    out = []
    for build in (babyllama.build_prompt, conditions.build_prompt):
        try:
            out.append((build(topic, ending, tags), None))
        except ValueError as e:
            out.append((None, str(e)))
    return out


def same(topic, ending, tags):
    (c, c_err), (py, py_err) = both(topic, ending, tags)
    case = (topic, ending, tags)
    assert c == py, case
    assert (c_err is None) == (py_err is None), (case, c_err, py_err)
    if py_err is not None and "\\" not in py_err:  # repr() escapes some characters; C prints them
        assert c_err == py_err, case
    return py_err


# ---------------------------------------------------------------------------------------------
# the prompt: C == conditions.build_prompt, byte for byte

CASES = [
    (None, None, None), (None, None, []), ("a dog", "happy", None), ("a dog", "sad", []),
    ("  a \t dog\n\nand\r\x0b\x0ca  cat  ", "happy", None),  # every ASCII whitespace, runs, ends
    ("\x1c dog \x1f", "sad", None),        # not ASCII whitespace to the regex: kept
    ("\u00a0dog\u3000", "happy", None),    # Unicode spaces: kept in the topic
    ("é 中文 😀 Ünïcödé", "sad", ["Twist"]), ("x" * 500, "happy", None), ("x" * 501, "happy", None),
    ("😀" * 500, "sad", None), ("😀" * 501, "sad", None), ("x" * 500 + " \t ", "happy", None),
    (" " + "ab " * 167, "happy", None),    # 501 characters with inner spaces, 500 after the trim
    ("ab " * 200, "happy", None), (None, None, ["twist", "DIALOGUE", "Twist", "dialogue"]),
    (None, None, list(conditions.FEATURES)[::-1]), (None, None, ["badending"]),
    (None, None, [" Conflict ", "\tMoralValue\n", "\u3000Foreshadowing\u2003", "\x1fTwist\x85"]),
    ("topic", "happy", ["Conflict", "Dialogue", "Foreshadowing", "MoralValue", "Twist"]),
    # errors
    ("", "happy", None), (" \t\n ", "sad", None), ("dog", None, None), ("dog", "Happy", None),
    ("dog", "", None), ("dog", "neutral", None), (None, "happy", None), (None, "", None),
    ("dog", "sad", ["BadEnding"]), ("dog", "happy", ["badending", "Twist"]), (None, None, ["Foo"]),
    (None, None, [""]), (None, None, ["Twi st"]), (None, None, ["Twist,Dialogue"]),
    (None, None, ["\u212awist"]), (None, None, ["twist."]), ("x" * 501, "maybe", ["Foo"]),
]


@pytest.mark.parametrize("topic,ending,tags", CASES)
def test_prompt_identity_cases(topic, ending, tags):
    same(topic, ending, tags)


def test_prompt_identity_random():
    spaces = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2003", "\u3000"]
    chars = spaces + ["a", "Z", "é", "中", "😀", ",", "'", '"', "\\", "%s", "%n"]
    tag_pool = list(conditions.FEATURES) + ["badending", "TWIST", " dialogue\u3000", "\u2002conflict\x1f",
                                            "moral value", "foo", "", "Twist!", "%s"]
    rnd = random.Random(1)
    errors = 0
    for _ in range(3000):
        topic = rnd.choice([None, "".join(rnd.choice(chars) for _ in range(rnd.randint(0, 14))),
                            rnd.choice("xé😀") * rnd.randint(498, 502) + rnd.choice(spaces) * rnd.randint(0, 2)])
        ending = rnd.choice([None, "happy", "sad", "sad", "Sad", "", "happy "])
        tags = rnd.choice([None, [], [rnd.choice(tag_pool) for _ in range(rnd.randint(1, 5))]])
        errors += same(topic, ending, tags) is not None
    assert 300 < errors < 2700  # both outcomes are well represented


def test_bindings_prompt_types():
    with pytest.raises(TypeError, match="tags must be a list"):
        babyllama.build_prompt(tags="Twist")  # a str would be its letters
    with pytest.raises(TypeError, match="topic must be a str"):
        babyllama.build_prompt(topic=5, ending="happy")
    with pytest.raises(ValueError, match="NUL"):
        babyllama.build_prompt(topic="a\0b", ending="happy")
    with pytest.raises(ValueError, match="UTF-8"):
        babyllama.build_prompt(topic="a\udcffb", ending="happy")
    with pytest.raises(TypeError, match="tag must be a str"):
        babyllama.build_prompt(tags=["Twist", 3])


# ---------------------------------------------------------------------------------------------
# the CLI

def test_cli_prints_the_request_then_the_story():
    need(MODEL)
    prompt = conditions.build_prompt("a  little dog\tand a  red ball", "sad", ["twist", "Dialogue"])
    out = cli(MODEL, "-z", TOKENIZER_BIN, "-t", "0", "-n", "120", "-a", "a  little dog\tand a  red ball",
              "-e", "sad", "-g", "twist, Dialogue", "-i", "Once upon a time").stdout.decode()
    assert out.startswith(prompt + "Once upon a time")
    assert len(out) > len(prompt) + 40  # a story follows
    # tags alone, and -b: every story of a batch starts with the request
    prompt = conditions.build_prompt(tags=["MoralValue"])
    out = cli(MODEL, "-z", TOKENIZER_BIN, "-n", "80", "-s", "5", "-b", "2", "-g", "moralvalue").stdout.decode()
    assert out.count(prompt) == 2 and out.startswith(prompt)


@pytest.mark.parametrize("args,message", [
    (["-e", "sad"], "an ending needs a topic"),
    (["-a", "a dog"], "ending must be 'happy' or 'sad'"),
    (["-a", "a dog", "-e", "maybe"], "ending must be 'happy' or 'sad', got 'maybe'"),
    (["-a", " \t ", "-e", "happy"], "topic is empty"),
    (["-a", "x" * 501, "-e", "happy"], "topic is 501 characters, more than 500"),
    (["-a", "a dog", "-e", "sad", "-g", "BadEnding"], "tag BadEnding goes with no ending line"),
    (["-g", "Dialogue,Foo"], "unknown tag 'Foo'"),
    (["-g", ""], "unknown tag ''"),
    (["-g", "Twist,"], "unknown tag ''"),
    (["-a", "\xff", "-e", "sad"], "not valid UTF-8"),
    (["-m", "chat", "-a", "a dog", "-e", "sad"], "need -m generate"),
    (["-E", "-1"], "-E -1: the end-of-story bias must be >= 0"),
    (["-E", "fast"], "-E expects a number"),
    (["-S", "-3"], "-S expects an integer"),
    (["-m", "chat", "-E", "0.5"], "-E (end-of-story bias) needs -m generate"),
    (["-a"], "flag -a needs a value"),
])
def test_cli_errors(args, message):
    need(MODEL)
    args = [a.encode("latin-1") if a == "\xff" else a for a in args]
    r = cli(MODEL, "-z", TOKENIZER_BIN, *args, ok=False)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1 and r.stdout == b""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


# ---------------------------------------------------------------------------------------------
# greedy stories on request: ./run == bindings == PyTorch

REQUEST = dict(topic="a little dog finds a red  ball", ending="happy", tags=["Dialogue"])


@pytest.fixture(scope="module")
def torch_model():
    torch = pytest.importorskip("torch")
    export = pytest.importorskip("export")
    tokenizer = pytest.importorskip("tokenizer")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield export.load_bin(str(need(MODEL))).eval(), tokenizer.Tokenizer(ROOT / "tokenizer.model")
    torch.set_num_threads(n)


def torch_story(torch_model, story_m, max_new, request=REQUEST, **kw):
    """model.py's greedy story on request, as the text the bindings return."""
    model, tok = torch_model
    start = kw.pop("start", None)
    out = model.generate(start, max_new, temperature=0.0, stop_ids=[1, 2], tokenizer=tok, **request, **kw)[0].tolist()
    prompt = tok.encode(conditions.build_prompt(**request) + (start or ""), bos=True, eos=False)
    assert out[:len(prompt)] == prompt  # the same prompt ids as the engine's encoder
    return (story_m.decode_bytes(out)[len(story_m.decode_bytes(prompt)):]).decode("utf-8", "replace")


def cli_story(story_m, max_new, *extra, request=REQUEST):
    prompt = conditions.build_prompt(**request)
    n = len(story_m.encode(prompt)) - 1 + max_new  # -n counts positions: BOS and prompt first
    flags = [("-a", request.get("topic")), ("-e", request.get("ending")), ("-g", ",".join(request.get("tags") or []))]
    out = cli(MODEL, "-z", TOKENIZER_BIN, "-t", "0", "-n", n, *[x for f, v in flags if v for x in (f, v)],
              *extra).stdout.decode()
    assert out.startswith(prompt) and out.endswith("\n")
    return out[len(prompt):-1]


@pytest.mark.parametrize("request_", [REQUEST, dict(topic="the moon", ending="sad"),
                                      dict(tags=["twist", "BadEnding", "Conflict"])])
def test_greedy_story_on_request_agrees(story, torch_model, request_):
    text = story.generate(max_new_tokens=60, temperature=0.0, **request_)
    assert len(text) > 100
    assert text == cli_story(story, 60, request=request_)
    assert text == torch_story(torch_model, story, 60, request=request_)


def test_greedy_story_after_a_start_agrees(story, torch_model):
    # the story's start (-i) after the request
    start = "Once upon a time, Tom"
    text = story.generate(start, max_new_tokens=30, temperature=0.0, **REQUEST)
    assert text == torch_story(torch_model, story, 30, start=start)
    out = cli(MODEL, "-z", TOKENIZER_BIN, "-t", "0", "-n", "0", "-a", REQUEST["topic"], "-e", REQUEST["ending"],
              "-g", "dialogue", "-i", start).stdout.decode()
    assert out.startswith(conditions.build_prompt(**REQUEST) + start + text)


def test_end_bias_stops_the_story(story, torch_model):
    """A huge rate ends the story right after `after` new tokens: the story is then the unbiased
    story cut to `after` tokens, everywhere."""
    cut = story.generate(max_new_tokens=12, temperature=0.0, **REQUEST)
    biased = story.generate(max_new_tokens=200, temperature=0.0, end_bias=1000.0, end_bias_after=12, **REQUEST)
    assert biased == cut and len(cut) > 20
    assert cli_story(story, 200, "-E", "1000", "-S", "12") == cut
    assert torch_story(torch_model, story, 200, end_bias=1000.0, end_bias_after=12) == cut
    streamed = "".join(story.generate(max_new_tokens=200, temperature=0.0, end_bias=1000.0, end_bias_after=12,
                                      stream=True, **REQUEST))
    assert streamed == cut


def test_end_bias_moderate_agrees(story, torch_model):
    """A moderate rate shortens the story; ./run, the bindings and PyTorch stop at the same token."""
    full = story.generate(max_new_tokens=150, temperature=0.0, **REQUEST)
    kw = dict(end_bias=0.25, end_bias_after=40)
    text = story.generate(max_new_tokens=150, temperature=0.0, **REQUEST, **kw)
    assert full.startswith(text) and len(text) < len(full)
    assert cli_story(story, 150, "-E", "0.25", "-S", "40") == text
    assert torch_story(torch_model, story, 150, **kw) == text


def test_end_bias_batch_equals_single(story):
    """bl_generate_stories applies the bias as the single-story loop does (sampled stories, and
    per-prompt requests)."""
    kw = dict(max_new_tokens=120, temperature=1.0, end_bias=0.3, end_bias_after=30)
    topics, tags = ["a cat", "a big tree"], [["Twist"], None]
    batch = story.generate_batch(["", "One day"], seed=11, topic=topics, ending=["sad", "happy"], tags=tags, **kw)
    single = [story.generate(p, seed=11 + i, topic=t, ending=e, tags=g, **kw)
              for i, (p, t, e, g) in enumerate(zip(["", "One day"], topics, ["sad", "happy"], tags))]
    assert batch == single
    unbiased = story.generate_batch(["", "One day"], seed=11, topic=topics, ending=["sad", "happy"], tags=tags,
                                    **dict(kw, end_bias=0.0))
    assert sum(map(len, batch)) < sum(map(len, unbiased))
    # ./run -b with -E: the stories of ./run -s seed, -s seed+1 with -E
    prompt = conditions.build_prompt("a cat", "sad")
    args = [MODEL, "-z", TOKENIZER_BIN, "-n", 0, "-s", 11, "-a", "a cat", "-e", "sad", "-E", 0.3, "-S", 30]
    both_ = cli(*args, "-b", 2).stdout.decode()
    one = cli(*args).stdout.decode() + cli(*args[:6], 12, *args[7:]).stdout.decode()
    assert both_ == one and both_.count(prompt) == 2


def test_end_bias_zero_keeps_golden_stories():
    """Off (-E 0, end_bias=0.0) and a bias that never starts: llama2.c's golden outputs, byte exact."""
    need(AIDREAMS)
    model, tok = AIDREAMS / "aidreams260K.bin", AIDREAMS / "tok512.bin"
    cases = [("expected_greedy_n128.txt", ["-t", "0", "-n", "128"]),
             ("expected_t1_p0.9_s42_n128.txt", ["-t", "1.0", "-p", "0.9", "-s", "42", "-n", "128"])]
    for name, args in cases:
        want = (AIDREAMS / name).read_bytes()
        assert cli(model, "-z", tok, *args, "-E", "0", "-S", "5").stdout == want
        assert cli(model, "-z", tok, *args, "-E", "50", "-S", "200").stdout == want  # 128 < 200
    with babyllama.Model(model, tok, threads=1) as m:
        for kw in (dict(end_bias=0.0, end_bias_after=0), dict(end_bias=9.0, end_bias_after=127)):
            text = m.generate("", max_new_tokens=127, temperature=1.0, top_p=0.9, seed=42, **kw)
            assert (text + "\n").encode() == (AIDREAMS / "expected_t1_p0.9_s42_n128.txt").read_bytes()


def test_bias_and_request_argument_errors(story, torch_model):
    for kw, exc in [(dict(end_bias=-0.1), ValueError), (dict(end_bias=float("nan")), ValueError),
                    (dict(end_bias=float("inf")), ValueError), (dict(end_bias_after=-1), ValueError),
                    (dict(end_bias="big"), TypeError), (dict(end_bias_after=2.5), TypeError),
                    (dict(topic="a dog"), ValueError), (dict(ending="sad"), ValueError),
                    (dict(tags="Twist"), TypeError), (dict(tags=["Foo"]), ValueError)]:
        with pytest.raises(exc):
            story.generate(max_new_tokens=3, **kw)
        with pytest.raises(exc):
            story.generate_batch(["a"], max_new_tokens=3, **kw)
    model, tok = torch_model
    with pytest.raises(ValueError, match="tokenizer"):
        model.generate(None, 3, topic="a dog", ending="sad")
    with pytest.raises(ValueError, match="an ending needs a topic"):
        model.generate(None, 3, ending="sad", tokenizer=tok)
    with pytest.raises(ValueError, match="end_bias"):
        model.generate(None, 3, end_bias=-1.0, tags=["Twist"], tokenizer=tok)
