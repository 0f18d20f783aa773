"""
The Python bindings under abuse, each scenario in a child interpreter so that a crash (a segfault in
C, an abort) fails the test instead of killing pytest: every method of a closed model, wrong
argument types and values for every entry point, a model closed while other threads generate,
stream, batch, encode and compute logits (many times, at random moments), and a 4-thread stress run
of 30 seconds whose resident memory must stay bounded (no leak per call).
What it does not check: results (tests/test_bindings.py does).
"""
import subprocess
import sys
import textwrap

from conftest import AIDREAMS, ROOT

PY = sys.executable
SEED_MODEL = ROOT / "tests" / "fuzz" / "corpus" / "checkpoint" / "v1_shared.bin"  # vocab 8, context 4
SEED_TOK = ROOT / "tests" / "fuzz" / "corpus" / "tokenizer" / "tok8.bin"


def model_files():
    """The 260K aidreams model (context 256) when ../shared has it, else a tiny committed one."""
    if (AIDREAMS / "aidreams260K.bin").exists():
        return AIDREAMS / "aidreams260K.bin", AIDREAMS / "tok512.bin"
    return SEED_MODEL, SEED_TOK


def run_child(body, timeout=180):
    ckpt, tok = model_files()
    code = textwrap.dedent("""
        import faulthandler, gc, os, random, sys, threading, time
        import numpy as np
        faulthandler.enable()
        sys.path.insert(0, {root!r})
        import babyllama
        CKPT, TOK = {ckpt!r}, {tok!r}
        def open_model():
            return babyllama.Model(CKPT, TOK, threads=1)
    """).format(root=str(ROOT), ckpt=str(ckpt), tok=str(tok)) + textwrap.dedent(body)
    p = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"child exited {p.returncode} (negative: killed by a signal)\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p.stdout


def test_closed_model_raises_everywhere():
    out = run_child("""
        m = open_model()
        stream = m.generate("a", max_new_tokens=50, temperature=0.0, stream=True)
        m.close()
        calls = {
            "encode": lambda: m.encode("hello"), "decode": lambda: m.decode([3, 4]),
            "decode_bytes": lambda: m.decode_bytes([3]), "logits": lambda: m.logits([1, 3]),
            "generate": lambda: m.generate("a", max_new_tokens=3),
            "generate stream": lambda: list(m.generate("a", max_new_tokens=3, stream=True)),
            "generate_batch": lambda: m.generate_batch(["a", "b"], max_new_tokens=3),
            "stream made before close": lambda: next(stream),
        }
        for name, call in calls.items():
            try:
                call()
                print("NO ERROR", name)
            except babyllama.Error as e:
                assert "closed" in str(e), (name, e)
        m.close(); m.close()  # closing again is fine
        repr(m); m.config; assert m.closed
        with open_model() as m2:
            pass
        assert m2.closed
        print("done")
    """)
    assert "NO ERROR" not in out and "done" in out, out


def test_wrong_types_and_values_raise():
    out = run_child("""
        m = open_model()
        V = m.config.vocab_size
        bad = {
            "Model(None)": lambda: babyllama.Model(None),
            "Model(123)": lambda: babyllama.Model(123),
            "Model(b'path')": lambda: babyllama.Model(CKPT.encode()),
            "Model(tokenizer=1.5)": lambda: babyllama.Model(CKPT, 1.5),
            "Model(threads=-1)": lambda: babyllama.Model(CKPT, TOK, threads=-1),
            "Model(threads=2**40)": lambda: babyllama.Model(CKPT, TOK, threads=2**40),
            "Model(dir)": lambda: babyllama.Model(os.path.dirname(CKPT)),
            "encode(None)": lambda: m.encode(None), "encode(b'x')": lambda: m.encode(b"x"),
            "encode(123)": lambda: m.encode(123), "encode('a\\\\0b')": lambda: m.encode("a\\0b"),
            "encode(surrogate)": lambda: m.encode("\\udcff"),
            "decode('x')": lambda: m.decode("x"), "decode([1.5])": lambda: m.decode([1.5]),
            "decode([None])": lambda: m.decode([None]), "decode([-1])": lambda: m.decode([-1]),
            "decode([V])": lambda: m.decode([V]), "decode([2**40])": lambda: m.decode([2**40]),
            "decode(float array)": lambda: m.decode(np.zeros(3)),
            "decode(2-d array)": lambda: m.decode(np.zeros((2, 2), dtype=np.int32)),
            "decode(5)": lambda: m.decode(5),
            "logits([])": lambda: m.logits([]), "logits(None)": lambda: m.logits(None),
            "logits([[1]])": lambda: m.logits([[1]]), "logits([-1])": lambda: m.logits([-1]),
            "logits(too long)": lambda: m.logits([1] * (m.config.seq_len + 1)),
            "logits([2**63])": lambda: m.logits([2**63]),
            "generate(None)": lambda: m.generate(None),
            "generate(max_new_tokens='5')": lambda: m.generate("a", max_new_tokens="5"),
            "generate(max_new_tokens=-1)": lambda: m.generate("a", max_new_tokens=-1),
            "generate(temperature='hot')": lambda: m.generate("a", temperature="hot"),
            "generate(temperature=-1)": lambda: m.generate("a", temperature=-1),
            "generate(temperature=nan)": lambda: m.generate("a", temperature=float("nan")),
            "generate(temperature=1e300)": lambda: m.generate("a", temperature=1e300, max_new_tokens=2),
            "generate(top_p=None)": lambda: m.generate("a", top_p=None),
            "generate(top_p=2)": lambda: m.generate("a", top_p=2.0),
            "generate(top_k=1.5)": lambda: m.generate("a", top_k=1.5),
            "generate(top_k=-3)": lambda: m.generate("a", top_k=-3),
            "generate(top_k=2**40)": lambda: m.generate("a", top_k=2**40, max_new_tokens=2),
            "generate(seed=0)": lambda: m.generate("a", seed=0), "generate(seed=-5)": lambda: m.generate("a", seed=-5),
            "generate(seed=2**70)": lambda: m.generate("a", seed=2**70),
            "generate(seed='x')": lambda: m.generate("a", seed="x"),
            "generate(stop=5)": lambda: m.generate("a", stop=5), "generate(stop=[''])": lambda: m.generate("a", stop=[""]),
            "generate(huge prompt)": lambda: m.generate("a " * 5000, max_new_tokens=2),
            "generate_batch('str')": lambda: m.generate_batch("abc"),
            "generate_batch([1, 2])": lambda: m.generate_batch([1, 2]),
            "generate_batch(seed=[1,2] for 1)": lambda: m.generate_batch(["a"], seed=[1, 2]),
            "generate_batch(threads=0)": lambda: m.generate_batch(["a"], threads=0),
        }
        for name, call in bad.items():
            try:
                call()
                print("NO ERROR", name)
            except (TypeError, ValueError, OverflowError, babyllama.Error) as e:
                print("ok", name, type(e).__name__)
        m.close()
        print("done")
    """)
    assert "NO ERROR" not in out and "done" in out, out


def test_close_while_other_threads_work():
    out = run_child("""
        rnd = random.Random()
        outcomes = {}
        def worker(m, kind, k):
            try:
                for _ in range(1000):
                    if kind == "stream":
                        for _ in m.generate("a", max_new_tokens=40, seed=k + 1, stream=True):
                            pass
                    elif kind == "generate":
                        m.generate("b", max_new_tokens=40, seed=k + 1)
                    elif kind == "batch":
                        m.generate_batch(["a", "b", "c"], max_new_tokens=20, seed=k + 1, threads=3)
                    elif kind == "encode":
                        m.decode(m.encode("hello world " * 20))
                    else:
                        m.logits([1] + [3] * (m.config.seq_len - 1))
                outcomes[k] = "finished"
            except babyllama.Error as e:
                outcomes[k] = "closed" if "closed" in str(e) else repr(e)
        kinds = ["stream", "generate", "batch", "encode", "logits"]
        for rep in range(40):
            m = open_model()
            paused = m.generate("a", max_new_tokens=30, stream=True, seed=3)
            next(paused, None)
            ts = [threading.Thread(target=worker, args=(m, kinds[(rep + i) % 5], rep * 10 + i)) for i in range(4)]
            for t in ts:
                t.start()
            time.sleep(rnd.uniform(0, 0.02))
            m.close()
            for t in ts:
                t.join(60)
                assert not t.is_alive(), "a worker hangs after close"
            try:
                next(paused)
                print("NO ERROR paused stream")
            except (babyllama.Error, StopIteration):
                pass
            del m, paused
            gc.collect()
        bad = {k: v for k, v in outcomes.items() if v not in ("closed", "finished")}
        assert not bad, bad
        print("done", len(outcomes), sorted(set(outcomes.values())))
    """)
    assert "NO ERROR" not in out and "done" in out, out


def test_four_threads_30s_bounded_memory():
    out = run_child("""
        def rss_mb():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        m = open_model()
        stop = threading.Event()
        counts = [0] * 4
        errors = []
        def work(k):
            rnd = random.Random(k)
            try:
                while not stop.is_set():
                    r = rnd.random()
                    if r < 0.4:
                        m.generate("Once upon a time", max_new_tokens=rnd.randint(1, 60), seed=rnd.randint(1, 1 << 40),
                                   top_k=rnd.choice([0, 5]), stop=rnd.choice([None, "."]))
                    elif r < 0.6:
                        for _ in m.generate("The", max_new_tokens=30, stream=True, seed=k + 1):
                            pass
                    elif r < 0.8:
                        m.logits(m.encode("a story " * rnd.randint(1, 10))[: m.config.seq_len])
                    else:
                        m.decode(m.encode("hello there, little one " * rnd.randint(1, 30)))
                    counts[k] += 1
            except Exception as e:
                errors.append(repr(e))
        ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        t0 = time.time()
        for t in ts:
            t.start()
        time.sleep(5)
        base, peak = rss_mb(), 0
        while time.time() - t0 < 30:
            time.sleep(0.5)
            peak = max(peak, rss_mb())
        stop.set()
        for t in ts:
            t.join(60)
        m.close()
        print(f"calls {sum(counts)} per thread {counts}; RSS after 5 s {base:.1f} MB, peak {peak:.1f} MB")
        assert not errors, errors[:3]
        assert all(c > 0 for c in counts), counts
        assert peak - base < 30, f"RSS grew {peak - base:.1f} MB in 25 s"
        print("done")
    """, timeout=240)
    print(out)
    assert "done" in out
