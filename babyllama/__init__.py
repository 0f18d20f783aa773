"""
babyllama: the C inference engine (run.c) from Python, through cffi.

    import babyllama
    with babyllama.Model("models/tinystories-cpu.bin") as m:
        print(m.generate("Once upon a time", max_new_tokens=100, seed=42))
        for piece in m.generate("Lily saw", stream=True):
            print(piece, end="", flush=True)
        # a story on request (conditions.py's prompt, built by the engine) that ends on its own
        print(m.generate(topic="a dog finds a ball", ending="happy", tags=["Dialogue"],
                         end_bias=0.05, end_bias_after=200, max_new_tokens=350))

What it does: opens a llama2.c checkpoint (.bin versions 0, 1, 2) and its tokenizer.bin, and offers
encode / decode / logits / generate / generate_batch / build_prompt on top of the C API in babyllama.h. The
generation loop here follows run.c's CLI exactly (same encoder, sampler, random generator, stop
rules and printing rules), so `generate` reproduces `./run`'s stories for the same seed.
generate_batch tells several stories in one batched pass per step (the engine's
bl_generate_stories). Both accept a request (topic + ending, and/or tags: the prompt is the engine's
bl_build_prompt, byte for byte conditions.build_prompt, as ./run -a/-e/-g) and seed 001's
end-of-story bias (end_bias, end_bias_after: ./run -E/-S). What it does not do: train or export
models (train.py, export.py).

Errors: every C error becomes an exception carrying the C message (which names the file or the
argument): `babyllama.Error` (a RuntimeError) for all of them; missing files are also
FileNotFoundError, bad arguments also ValueError, failed allocations also MemoryError. Wrong
argument types raise TypeError.

Threads: one Model may be used from any number of threads at once. The weights are read-only and
every call runs on its own C state (activations + KV cache) and its own sampler; the GIL is
released during every C call (cffi API mode does this for all calls). close() waits for C calls in
flight, then frees everything; a call (or a paused stream) that continues after close raises Error.
"""
import codecs
import os
import secrets
import threading
from contextlib import closing
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np

try:
    from ._babyllama import ffi, lib
except ImportError as e:  # a checkout used without installing: say how to build it
    raise ImportError(f"babyllama's C extension is not built ({e}); run `pip install -e .` "
                      f"(or `make venv`) in the repository") from None

__all__ = ["Model", "Config", "Error", "BOS", "EOS", "build_prompt"]

BOS, EOS = 1, 2  # llama2.c's (and sentencepiece's) ids
_REPO_TOKENIZER = Path(__file__).resolve().parent.parent / "tokenizer.bin"


# ---------------------------------------------------------------------------------------------
# errors

class Error(RuntimeError):
    """Any error from the babyllama engine; the message is the C engine's one-line message."""


class FileError(Error, FileNotFoundError):
    """A model or tokenizer file is missing or unreadable."""


class ArgumentError(Error, ValueError):
    """A bad argument (token id or position out of range, prompt longer than the context, ...)."""


class OutOfMemory(Error, MemoryError):
    """The engine could not allocate memory."""


_ERRORS = {lib.BL_ERR_IO: FileError, lib.BL_ERR_FORMAT: Error, lib.BL_ERR_ARG: ArgumentError,
           lib.BL_ERR_NOMEM: OutOfMemory}


def _check(rc, err):
    if rc != lib.BL_OK:
        msg = ffi.string(err).decode("utf-8", "replace") or f"babyllama error code {rc}"
        raise _ERRORS.get(rc, Error)(msg)


def _errbuf():
    return ffi.new("char[]", lib.BL_ERRLEN)


# ---------------------------------------------------------------------------------------------
# argument checks: wrong types are TypeError, wrong values ValueError

def _path(x, what):
    if not isinstance(x, (str, os.PathLike)):
        raise TypeError(f"{what} must be a str or os.PathLike, not {type(x).__name__}")
    return os.fspath(x)


def _int(x, what, lo=None):
    if isinstance(x, bool) or not isinstance(x, Integral):
        raise TypeError(f"{what} must be an int, not {type(x).__name__}")
    if lo is not None and x < lo:
        raise ArgumentError(f"{what} must be >= {lo}, got {x}")
    return int(x)


def _float(x, what):
    if isinstance(x, bool) or not isinstance(x, Real):
        raise TypeError(f"{what} must be a number, not {type(x).__name__}")
    return float(x)


def _str(x, what):
    if not isinstance(x, str):
        raise TypeError(f"{what} must be a str, not {type(x).__name__}")
    if "\0" in x:
        raise ArgumentError(f"{what} contains a NUL character")
    try:
        x.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate (e.g. from surrogateescape): not text
        raise ArgumentError(f"{what} is not valid UTF-8 text ({e.reason} at character {e.start})") from None
    return x


def _stops(stop):
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise TypeError("stop must be a str, a list of str, or None")
    if any(s == "" for s in stop):
        raise ArgumentError("stop strings must not be empty")
    return tuple(stop)


def _first_stop(text, stops):
    """Index of the earliest stop string in text, or -1."""
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)


def _text_pieces(byte_pieces, stops):
    """Text from the bytes each token prints: whole UTF-8 characters only (a character spelled
    by several byte tokens waits until it is complete; invalid bytes become U+FFFD), cut before
    the first stop string seen. Generation stops when this generator is closed."""
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    hold = max((len(s) for s in stops), default=1) - 1  # chars that may begin a stop string
    pending = ""
    for piece in byte_pieces:
        pending += utf8.decode(piece)
        cut = _first_stop(pending, stops)
        if cut >= 0:
            if cut:
                yield pending[:cut]
            return
        if len(pending) > hold:
            yield pending[:len(pending) - hold]
            pending = pending[len(pending) - hold:]
    pending += utf8.decode(b"", final=True)
    cut = _first_stop(pending, stops)
    pending = pending[:cut] if cut >= 0 else pending
    if pending:
        yield pending


def _sampling(max_new_tokens, temperature, top_p, top_k):
    """Checked (max_new_tokens, temperature, top_p, top_k), with the CLI's ranges."""
    max_new_tokens = _int(max_new_tokens, "max_new_tokens", lo=0)
    temperature, top_p = _float(temperature, "temperature"), _float(top_p, "top_p")
    top_k = _int(top_k, "top_k", lo=0)
    if not 0 <= temperature < float("inf"):
        raise ArgumentError(f"temperature must be a finite number >= 0, got {temperature}")
    if not 0 <= top_p <= 1:
        raise ArgumentError(f"top_p must be in [0, 1] (0 or 1: off), got {top_p}")
    return max_new_tokens, temperature, top_p, top_k


def _end_bias(end_bias, end_bias_after):
    """Checked (end_bias, end_bias_after), with the CLI's ranges (-E >= 0, -S >= 0)."""
    end_bias, end_bias_after = _float(end_bias, "end_bias"), _int(end_bias_after, "end_bias_after", lo=0)
    if not 0 <= end_bias < float("inf"):
        raise ArgumentError(f"end_bias must be a finite number >= 0, got {end_bias}")
    if end_bias_after > 2**31 - 1:
        raise ArgumentError(f"end_bias_after must be below 2**31, got {end_bias_after}")
    return end_bias, end_bias_after


def _tags(tags):
    if tags is None:
        return []
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
        raise TypeError(f"tags must be a list of str (e.g. ['Dialogue', 'Twist']), not {type(tags).__name__}")
    return [_str(t, "tag") for t in tags]


def build_prompt(topic=None, ending=None, tags=None):
    """The prompt that asks for a story, built by the engine (bl_build_prompt): byte for byte
    conditions.build_prompt, e.g. "Write a story about: {topic}\\nWith: {ending} ending\\n\\n### Story:\\n".
    topic: str with ending "happy" or "sad"; tags: a list of the six features (any case, each
    once). "" when nothing is asked. Bad requests raise ArgumentError (a ValueError) with
    conditions.py's message; wrong types raise TypeError."""
    topic = None if topic is None else _str(topic, "topic")
    ending = None if ending is None else _str(ending, "ending")
    tags = [ffi.new("char[]", t.encode("utf-8")) for t in _tags(tags)]
    out, err = ffi.new("char[]", lib.BL_PROMPTLEN), _errbuf()
    _check(lib.bl_build_prompt(ffi.NULL if topic is None else topic.encode("utf-8"),
                               ffi.NULL if ending is None else ending.encode("utf-8"),
                               ffi.new("char *[]", tags) if tags else ffi.NULL, len(tags),
                               out, lib.BL_PROMPTLEN, err, lib.BL_ERRLEN), err)
    return ffi.string(out).decode("utf-8")


def _requested(prompt, topic, ending, tags):
    """The prompt text to continue: the request (when one is made), then `prompt` as the story's start."""
    prompt = _str(prompt, "prompt")
    if topic is None and ending is None and tags is None:
        return prompt
    return build_prompt(topic, ending, tags) + prompt


def _seed(seed):
    if seed is None:  # like the CLI's default (the clock), but from the OS; never 0
        return secrets.randbits(63) | 1
    seed = _int(seed, "seed", lo=1)  # the xorshift generator is stuck at 0
    if seed >= 1 << 64:
        raise ArgumentError(f"seed must be below 2**64, got {seed}")
    return seed


@dataclass(frozen=True)
class Config:
    """The model's hyperparameters, as read from the checkpoint header."""
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool
    version: int      # checkpoint format: 0 (legacy), 1 (fp32), 2 (int8 groups)
    group_size: int   # int8 group size (version 2), else 0


# ---------------------------------------------------------------------------------------------
# the model

class Model:
    """A llama2.c checkpoint opened by the C engine.

    path: the checkpoint (.bin, version 0, 1 or 2; memory-mapped).
    tokenizer: a llama2.c tokenizer.bin. Default: `tokenizer.bin` in the model's directory, else
        the repository's top-level `tokenizer.bin` (found next to this package in a checkout);
        when neither exists the model opens without one and only `logits` works.
    threads: OpenMP threads per C call (./run's -T); None: the calling thread's OpenMP setting
        (OMP_NUM_THREADS, else every core). Results do not depend on it.
    """

    def __init__(self, path, tokenizer=None, threads=None):
        path = _path(path, "path")
        self.threads = 0 if threads is None else _int(threads, "threads", lo=1)
        if self.threads > 4096:  # ./run's -T bound; a C int would overflow at the first call
            raise ArgumentError(f"threads must be at most 4096, got {self.threads}")
        if not os.path.isfile(path):
            raise FileError(f"model file not found: {path}")
        defaulted = tokenizer is None
        if defaulted:
            for cand in (Path(path).resolve().parent / "tokenizer.bin", _REPO_TOKENIZER):
                if cand.is_file():
                    tokenizer = str(cand)
                    break
        else:
            tokenizer = _path(tokenizer, "tokenizer")
            if not os.path.isfile(tokenizer):
                raise FileError(f"tokenizer file not found: {tokenizer}")
        self.path, self.tokenizer_path = path, tokenizer
        # close() vs calls in flight: a call counts itself in _busy under _cond; close waits for 0
        self._cond = threading.Condition()
        self._busy = 0
        self._states = set()   # every bl_state made (freed at close)
        self._idle = []        # states not in use, for reuse (a state is one KV cache)
        self._m = None
        out, err = ffi.new("bl_model **"), _errbuf()
        tok = os.fsencode(tokenizer) if tokenizer is not None else ffi.NULL
        try:
            _check(lib.bl_model_open(os.fsencode(path), tok, out, err, lib.BL_ERRLEN), err)
        except Error as e:
            if defaulted and tokenizer and tokenizer in str(e):
                raise type(e)(f"{e} (the default tokenizer; pass tokenizer=)") from None
            raise
        self._m = out[0]
        c = lib.bl_model_config(self._m)
        self.config = Config(c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                             c.vocab_size, c.seq_len, bool(c.shared_classifier), c.version,
                             c.group_size)

    def __repr__(self):
        state = "closed" if self._m is None else f"{self.config}"
        return f"babyllama.Model({self.path!r}, {state})"

    # -- lifetime --------------------------------------------------------------------------------

    def close(self):
        """Free the weights and every state. Waits for C calls in flight; later calls raise."""
        with self._cond:
            if self._m is None:
                return
            m, self._m = self._m, None  # from here on _enter refuses
            while self._busy:
                self._cond.wait()
            for s in self._states:
                lib.bl_state_free(s)
            self._states.clear()
            self._idle.clear()
            lib.bl_model_close(m)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if getattr(self, "_m", None) is not None:
                self.close()
        except Exception:  # at interpreter exit the module may be half torn down
            pass

    @property
    def closed(self):
        return self._m is None

    def _enter(self):
        with self._cond:
            if self._m is None:
                raise Error(f"model {self.path} is closed")
            self._busy += 1
            return self._m

    def _exit(self):
        with self._cond:
            self._busy -= 1
            if not self._busy:
                self._cond.notify_all()

    def _threads_on(self):
        """Set this model's OpenMP thread count in the calling thread; returns what to restore."""
        return lib.blpy_set_threads(self.threads) if self.threads else 0

    @staticmethod
    def _threads_off(prev):
        if prev:
            lib.blpy_set_threads(prev)

    def _take_state(self):
        """A state for one call (reused: positions are always written before they are read)."""
        m = self._enter()
        try:
            with self._cond:
                if self._idle:
                    return self._idle.pop()
            out, err = ffi.new("bl_state **"), _errbuf()
            _check(lib.bl_state_new(m, out, err, lib.BL_ERRLEN), err)
            with self._cond:
                self._states.add(out[0])
            return out[0]
        finally:
            self._exit()

    def _give_state(self, s):
        with self._cond:
            if s in self._states:  # not freed by close() meanwhile
                self._idle.append(s)

    # -- tokens ----------------------------------------------------------------------------------

    def encode(self, text, bos=True, eos=False):
        """Token ids of `text` (llama2.c's / sentencepiece's encoding), BOS first by default."""
        data = _str(text, "text").encode("utf-8")
        self._need_tokenizer()
        cap = len(data) + 3
        ids, n, err = ffi.new("int[]", cap), ffi.new("int *"), _errbuf()
        m = self._enter()
        try:
            _check(lib.bl_encode(m, data, bool(bos), bool(eos), ids, cap, n, err, lib.BL_ERRLEN), err)
        finally:
            self._exit()
        return list(ffi.unpack(ids, n[0]))

    def _need_tokenizer(self):
        if self.tokenizer_path is None:
            raise Error(f"model {self.path} has no tokenizer (no tokenizer.bin next to it or in the "
                        f"repository; pass tokenizer=)")

    def _piece(self, m, prev, token):
        """The bytes the CLI prints for `token` after `prev`."""
        out = ffi.new("const char **")
        n = lib.bl_decode(m, prev, token, out)
        if n < 0:
            self._need_tokenizer()
            raise ArgumentError(f"token id {token} is out of range [0, {self.config.vocab_size})")
        return ffi.buffer(out[0], n)[:]

    def decode_bytes(self, ids):
        """The bytes the CLI would print for `ids` after a BOS (BOS itself prints nothing)."""
        ids = self._ids(ids)
        self._need_tokenizer()
        out, prev = [], BOS
        m = self._enter()
        try:
            for t in ids:
                if t != BOS:
                    out.append(self._piece(m, prev, t))
                prev = t
        finally:
            self._exit()
        return b"".join(out)

    def decode(self, ids):
        """Text of `ids`: decode(encode(s)) == s for text the vocabulary covers."""
        return self.decode_bytes(ids).decode("utf-8", "replace")

    def _ids(self, ids):
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise TypeError(f"ids must be a sequence of ints, not {type(ids).__name__}")
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise TypeError(f"ids must be a 1-d integer array, got {ids.dtype} with shape {ids.shape}")
            ids = ids.tolist()
        ids = [_int(t, "token id") for t in ids]
        V = self.config.vocab_size
        for t in ids:
            if not 0 <= t < V:
                raise ArgumentError(f"token id {t} is out of range [0, {V})")
        return ids

    # -- forward ---------------------------------------------------------------------------------

    def logits(self, ids):
        """float32 array [len(ids), vocab_size]: row i holds the logits after ids[0..i]."""
        ids = self._ids(ids)
        n, V = len(ids), self.config.vocab_size
        if not 1 <= n <= self.config.seq_len:
            raise ArgumentError(f"logits needs 1 to seq_len={self.config.seq_len} ids, got {n}")
        out = np.empty((n, V), dtype=np.float32)
        cids, err = ffi.new("int[]", ids), _errbuf()
        s = self._take_state()
        try:
            m = self._enter()
            try:
                prev = self._threads_on()
                rc = lib.bl_logits(s, cids, n, ffi.from_buffer("float[]", out), err, lib.BL_ERRLEN)
                self._threads_off(prev)
                _check(rc, err)
            finally:
                self._exit()
        finally:
            self._give_state(s)
        return out

    # -- generation ------------------------------------------------------------------------------

    def generate(self, prompt="", max_new_tokens=256, temperature=1.0, top_p=0.9, top_k=0,
                 seed=None, stop=None, stream=False, topic=None, ending=None, tags=None,
                 end_bias=0.0, end_bias_after=200):
        """Continue `prompt` and return the new text (without the prompt).

        A story on request (./run -a/-e/-g): with topic (and ending "happy" or "sad") and/or tags
        (a list of BadEnding, Conflict, Dialogue, Foreshadowing, MoralValue, Twist), the text
        continued is build_prompt(topic, ending, tags) + prompt (conditions.build_prompt's rule;
        `prompt` is then the story's start). Seed 001's end-of-story bias (./run -E/-S): before
        the n-th new token, BOS's logit gets end_bias * (n - end_bias_after) when n >
        end_bias_after, so the story ends on its own; 0 (the default) changes nothing.
        max_new_tokens is the hard maximum (seed 001: 350).

        Same loop as `./run`: the prompt is encoded with BOS first, forced token by token, then
        tokens are sampled (temperature 0 = argmax; else softmax(logits/temperature), top_k
        (0: off) then top_p (<=0 or >=1: off), llama2.c's xorshift* generator seeded with `seed`,
        a positive int; None = random). Generation stops at BOS (the story separator, not
        printed), at EOS (printed as the CLI does), after `max_new_tokens` tokens, when the
        context (seq_len positions) is full, or at the first of the `stop` strings (str or list;
        the returned text ends just before it).

        CLI equivalence: `./run model.bin -i PROMPT -n N` equals
        `prompt + generate(PROMPT, max_new_tokens=N - len(encode(PROMPT, bos=False)))`, and the
        CLI prints a final newline. (-n counts positions: BOS, the prompt and the new tokens but
        the last one, which is never fed back.) Bytes are decoded as UTF-8 (invalid bytes become
        U+FFFD). With stream=True, returns an iterator of text pieces, each a whole number of
        characters (a character split over several tokens is held back until complete).
        """
        ids = self._prompt_ids(_requested(prompt, topic, ending, tags))
        sampling = _sampling(max_new_tokens, temperature, top_p, top_k)
        bias = _end_bias(end_bias, end_bias_after)
        pieces = self._stream(ids, *sampling, _seed(seed), _stops(stop), bias)
        return pieces if stream else "".join(pieces)

    def _prompt_ids(self, prompt):
        ids = self.encode(_str(prompt, "prompt"), bos=True)
        if len(ids) > self.config.seq_len:
            raise ArgumentError(f"prompt is {len(ids)} tokens (with BOS), longer than the "
                                f"context of {self.config.seq_len}")
        return ids

    def _tokens(self, ids, max_new_tokens, temperature, top_p, top_k, seed, bias=(0.0, 0)):
        """Yield (token, bytes printed) for each new token: the CLI's loop. The prompt runs in
        one pass (bl_prefill: the same KV cache and logits as one position at a time); the sampler
        is first used after its last token."""
        if max_new_tokens == 0:
            return
        sampler, err = ffi.new("bl_sampler **"), _errbuf()
        _check(lib.bl_sampler_new(self.config.vocab_size, temperature, top_p, top_k, seed,
                                  sampler, err, lib.BL_ERRLEN), err)
        s, cids, n_new = None, ffi.new("int[]", ids), 0
        token, pos = ids[-1], len(ids) - 1  # the last position run so far, and its token
        try:
            s = self._take_state()
            while True:
                m = self._enter()  # one step per entry: close() may come between steps
                try:
                    prev = self._threads_on()
                    if n_new == 0:
                        logits = lib.bl_prefill(s, cids, len(ids), 0)
                    else:
                        logits = lib.bl_forward(s, token, pos)
                    self._threads_off(prev)
                    if logits == ffi.NULL:
                        raise ArgumentError(f"a token or position is out of range at position {pos}")
                    lib.bl_end_bias(logits, bias[0], bias[1], n_new + 1)  # as ./run's loop
                    nxt = lib.bl_sample(sampler[0], logits)
                    if nxt == BOS:  # another story would begin
                        return
                    piece = self._piece(m, token, nxt)
                finally:
                    self._exit()
                yield nxt, piece
                n_new += 1
                if nxt == EOS or n_new >= max_new_tokens or pos + 1 >= self.config.seq_len:
                    return
                token, pos = nxt, pos + 1
        finally:
            lib.bl_sampler_free(sampler[0])
            if s is not None:
                self._give_state(s)

    def _stream(self, ids, max_new_tokens, temperature, top_p, top_k, seed, stops, bias=(0.0, 0)):
        with closing(self._tokens(ids, max_new_tokens, temperature, top_p, top_k, seed, bias)) as tokens:
            yield from _text_pieces((piece for _, piece in tokens), stops)

    def generate_batch(self, prompts, max_new_tokens=256, temperature=1.0, top_p=0.9, top_k=0,
                       seed=None, stop=None, topic=None, ending=None, tags=None, end_bias=0.0,
                       end_bias_after=200):
        """generate() for several prompts at once; returns the texts in order.

        Story i equals generate(prompts[i], ..., seed=seeds[i]) exactly, where seed is None
        (random), an int (story i uses seed + i) or one seed per prompt. topic, ending and tags
        are generate()'s, the same for every story, or a list with one per prompt (for tags: a
        list of lists). The stories run together in the engine (bl_generate_stories: one forward
        pass per step carries every story still going, so the weights are read once per step),
        in one C call without the GIL.
        """
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise TypeError("prompts must be a list of str")
        n = len(prompts)
        if seed is None or isinstance(seed, Integral) and not isinstance(seed, bool):
            seeds = [None if seed is None else seed + i for i in range(n)]
        elif isinstance(seed, (list, tuple)) and len(seed) == n:
            seeds = list(seed)
        else:
            raise TypeError("seed must be None, an int, or a list with one int per prompt")
        seeds = [_seed(x) for x in seeds]
        max_new, temperature, top_p, top_k = _sampling(max_new_tokens, temperature, top_p, top_k)
        end_bias, end_bias_after = _end_bias(end_bias, end_bias_after)
        stops = _stops(stop)
        each = lambda x: isinstance(x, list) and len(x) == n  # noqa: E731
        topics = topic if each(topic) else [topic] * n
        endings = ending if each(ending) else [ending] * n
        per_tags = each(tags) and all(t is None or isinstance(t, (list, tuple)) for t in tags) and n > 0
        tag_lists = tags if per_tags else [tags] * n
        ids = [self._prompt_ids(_requested(p, a, e, g))
               for p, a, e, g in zip(prompts, topics, endings, tag_lists)]
        if n == 0 or max_new == 0:
            return [""] * n
        max_new = min(max_new, self.config.seq_len)  # no story has room for more
        rows = [ffi.new("int[]", x) for x in ids]
        tokens, counts, err = ffi.new("int[]", n * max_new), ffi.new("int[]", n), _errbuf()
        m = self._enter()
        try:
            prev = self._threads_on()
            rc = lib.bl_generate_stories(m, n, ffi.new("int *[]", rows), ffi.new("int[]", [len(x) for x in ids]),
                                         max_new, temperature, top_p, top_k, end_bias, end_bias_after,
                                         ffi.new("unsigned long long[]", seeds), tokens, counts, err, lib.BL_ERRLEN)
            self._threads_off(prev)
            _check(rc, err)
            texts = []
            for i in range(n):
                new = ffi.unpack(tokens + i * max_new, counts[i])
                prevs = [ids[i][-1]] + new[:-1]
                pieces = (self._piece(m, a, b) for a, b in zip(prevs, new))
                texts.append("".join(_text_pieces(pieces, stops)))
        finally:
            self._exit()
        return texts
