"""
train.py: train a baby Llama 2 on pretokenized TinyStories shards (nanoGPT / llama2.c style).

    python train.py --preset cpu                                 # a small model, 10 minutes on a CPU
    python train.py --data_dir data/tok4096 --dim 288 --n_layers 6  # any setting is a --flag
    python train.py --config my.json --learning_rate 1e-3        # config file (.json or .py); CLI wins
    python train.py --init_from resume                           # continue out_dir/ckpt.pt exactly
    python train.py --preset finetune --init_from out/cpu/ckpt.pt --data_dir data/tok4096_d2ab7b81_instruct
    torchrun --standalone --nproc_per_node 4 train.py ...        # DDP (NCCL on GPU, gloo on CPU)

Settings: the module-level defaults below (they reproduce the seed model card: 15M parameters, lr
5e-4, cosine schedule with 1000 warmup iterations over 100k), then `--preset` (llama2.c's published
shapes and a tuned CPU model), then `--config FILE`, then the command line. `--help` lists them all.

What it does: device auto-detection (CUDA, MPS, CPU), bf16 autocast (fp16 + GradScaler on GPUs
without bf16; bf16 on CPUs that support it), fused AdamW, optional torch.compile (falls back with a
warning), on the CPU our attention kernel for narrow heads (attention.py) and glibc told to keep
freed memory (keep_freed_memory), gradient accumulation (spread across DDP ranks), periodic
validation loss and bits per byte, atomic checkpoints that resume bit-exactly, a log line with
tokens/s, MFU and ETA, `metrics.jsonl` and `loss.png` in out_dir, and a time budget `--max_minutes`.

Time budget: with --max_minutes the run stops when the budget (minus the time the last evaluation
took, so that the final evaluation fits) is used up, and the cosine schedule is time-based: its
progress is max(iterations done / max_iters, elapsed / budget), so the learning rate reaches
min_lr when time runs out however fast or noisy the machine is. A resumed run keeps counting from the
checkpoint's elapsed time. Without a budget the schedule depends on iterations only (and resumes
exactly).

Fine-tuning: `--init_from PATH` starts from the weights (and model shape) of one of our ckpt.pt files
or of a llama2.c .bin (export.py reads it), with a fresh optimizer and iteration count. Shards of a
conditional format (`tinystories.py pretokenize --format instruct`) are read as whole examples, one
per row (`--data_mode examples`, chosen by itself for such shards): the loss counts the story tokens
only (targets -100 on the prompt and on padding), `--epochs` sets the length, and evaluations report
perplexity; the last one also the test split's loss. `--preset finetune` is seed 002's recipe: AdamW
at a constant 5e-5, weight decay 0.1, batch 8, 2 epochs, eval every 200 iterations.

What it does not do: build the data (tinystories.py), define the model (model.py), or export it
(export.py).
"""
import argparse
import json
import math
import os
import random
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from model import ModelArgs, Transformer
from tinystories import batches_per_epoch, default_out_dir, iter_batches, iter_examples, load_meta

# -----------------------------------------------------------------------------------------------
# Defaults. Every name here is a command-line flag; the comment after it is its --help text.
_before = set(globals())
# I/O
out_dir = "out"  # checkpoint, metrics.jsonl and loss.png go here
data_dir = ""  # pretokenized shards + meta.json ("": where `tinystories.py pretokenize` puts the project tokenizer's)
data_mode = "auto"  # auto | windows (random token windows) | examples (whole examples, prompt masked; conditional-format shards)
init_from = "scratch"  # scratch | resume (out_dir/ckpt.pt, exactly) | PATH to a ckpt.pt or llama2.c .bin (its weights, fresh iterations)
eval_interval = 2000  # iterations between evaluations (and checkpoints)
eval_iters = 100  # batches per split per evaluation
log_interval = 1  # iterations between log lines
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # save at every evaluation, not only when val loss improves
# model
dim = 288
n_layers = 6
n_heads = 6
n_kv_heads = 6  # 0: same as n_heads
vocab_size = 0  # 0: the data's (meta.json); otherwise must match it
multiple_of = 32  # SwiGLU hidden size rounds up to this
hidden_dim = 0  # 0: llama2.c's rule from dim and multiple_of
max_seq_len = 256  # training sequence length (0: the --init_from checkpoint's)
dropout = 0.0  # any dropout makes CPU attention fall back to a slow kernel
shared_classifier = True  # tie output.weight to tok_embeddings.weight
# optimization
batch_size = 128  # micro-batch per process
gradient_accumulation_steps = 4  # micro-batches per iteration over ALL processes
learning_rate = 5e-4  # peak learning rate
max_iters = 100000  # iterations (the cosine schedule ends here)
epochs = 0.0  # examples mode: passes over the train split (sets max_iters; 0: max_iters decides)
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip the gradient norm to this (0: off)
decay_lr = True  # cosine decay after warmup (else constant)
warmup_iters = 1000  # linear warmup iterations
min_lr = 0.0  # learning rate at the end of the schedule
max_minutes = 0.0  # time budget in minutes (0: none); makes the schedule time-based
# system
device = "auto"  # auto | cpu | cuda | cuda:N | mps
dtype = "bfloat16"  # bfloat16 | float16 | float32 (autocast; float16 on CUDA only)
compile = False  # torch.compile the model (falls back with a warning)
threads = 0  # CPU threads for torch (0: its default)
num_workers = 0  # data-loader worker processes
adamw = "auto"  # auto (fused where available) | fused | foreach | loop
attention = "auto"  # auto (babyllama on the CPU for short, narrow heads, else sdpa) | sdpa | babyllama
keep_memory = True  # CPU, glibc: freed memory stays with the process, so big tensors reuse mapped pages
seed = 1337
peak_tflops = 0.0  # peak for MFU (0: guess; A100 bf16 312 on CUDA, from the cores on CPU)
preset = ""  # 260K | 15M | 42M | 110M | cpu
config = ""  # a .json or .py file of settings
DEFAULTS = {k: v for k, v in dict(globals()).items() if k not in _before and not k.startswith("_")}
# -----------------------------------------------------------------------------------------------

# llama2.c's published shapes (FORMATS.md §2) and our CPU model. A preset sets only what it lists.
PRESETS = {
    "260K": dict(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, max_seq_len=512,
                 multiple_of=4),
    "15M": dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, max_seq_len=256),
    "42M": dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=8, vocab_size=32000, max_seq_len=1024),
    "110M": dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, vocab_size=32000, max_seq_len=1024),
    # 10 minutes on 2 CPU cores on the shared TinyStories text, tuned by measurement (models/README.md):
    # bf16 autocast + torch.compile + our attention for speed, a high peak lr that a time-based
    # cosine brings down, strong weight decay against overfitting (the text is seen ~12 times)
    "cpu": dict(out_dir="out/cpu", vocab_size=0, dim=160, n_layers=4, n_heads=5, n_kv_heads=5,
                multiple_of=32, max_seq_len=256, batch_size=16, gradient_accumulation_steps=1,
                learning_rate=2e-3, weight_decay=0.6, warmup_iters=50, min_lr=1e-4, max_iters=100000,
                max_minutes=10.0, eval_interval=250, eval_iters=16, log_interval=25,
                dtype="bfloat16", compile=True),
    # seed 002's instruction fine-tuning: start from --init_from, constant AdamW 5e-5, weight decay
    # 0.1, batch 8, 2 epochs of the masked instruction examples, the sequence length of the checkpoint
    "finetune": dict(out_dir="out/finetune", data_mode="examples", max_seq_len=0, batch_size=8,
                     gradient_accumulation_steps=1, learning_rate=5e-5, weight_decay=0.1, decay_lr=False,
                     warmup_iters=0, epochs=2.0, eval_interval=200, eval_iters=50, log_interval=10,
                     dropout=0.0, compile=False),
}


class ConfigError(Exception):
    """A setting or input that makes training impossible; reported as one line, exit status 1."""


# -----------------------------------------------------------------------------------------------
# Configuration


def _help_texts():
    """The comment after each default above, as its --help text (one place to document a setting)."""
    src = Path(__file__).read_text(encoding="utf-8")
    return dict(re.findall(r"^(\w+) = [^#\n]*#\s*(.+)$", src, flags=re.M))


def _cast(default):
    """Parse a command-line string into the type of the default."""
    if isinstance(default, bool):
        def to_bool(s):
            if s.lower() in ("1", "true", "yes", "on"):
                return True
            if s.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
        return to_bool
    return type(default)


def read_config_file(path):
    """Settings from a .json object or a .py file of plain assignments."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        if p.suffix == ".json":
            d = json.loads(p.read_text(encoding="utf-8"))
        elif p.suffix == ".py":
            d = {}
            exec(p.read_text(encoding="utf-8"), {}, d)
            d = {k: v for k, v in d.items() if not k.startswith("_")}
        else:
            raise ConfigError(f"{p}: config file must be .json or .py")
    except (json.JSONDecodeError, SyntaxError) as e:
        raise ConfigError(f"{p}: cannot parse config file ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: config file must hold an object of settings")
    for k, v in d.items():
        if k not in DEFAULTS:
            raise ConfigError(f"{p}: unknown setting {k!r}")
        want = type(DEFAULTS[k])
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            d[k] = float(v)
        elif not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise ConfigError(f"{p}: setting {k!r} must be {want.__name__}, got {v!r}")
    return d


def parse_config(argv=None):
    """defaults < preset < config file < command line; returns a plain dict."""
    helps = _help_texts()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="presets: " + "; ".join(
                                     f"{k}: " + " ".join(f"{a}={b}" for a, b in v.items())
                                     for k, v in PRESETS.items()))
    for k, v in DEFAULTS.items():
        kw = dict(nargs="?", const=True) if isinstance(v, bool) else {}
        ap.add_argument(f"--{k}", type=_cast(v), default=argparse.SUPPRESS, metavar=type(v).__name__.upper(),
                        help=f"{helps.get(k, '')} (default: {v!r})".strip(), **kw)
    given = vars(ap.parse_args(argv))
    from_file = read_config_file(given["config"]) if given.get("config") else {}
    name = given.get("preset", from_file.get("preset", ""))
    if name and name not in PRESETS:
        raise ConfigError(f"--preset {name!r}: choose one of {', '.join(PRESETS)}")
    cfg = dict(DEFAULTS)
    cfg.update(PRESETS.get(name, {}))
    cfg.update(from_file)
    cfg.update(given)
    return cfg


def check_config(cfg, world_size):
    """Fail early, in one line, on settings that cannot work."""
    if cfg["dim"] <= 0 or cfg["n_heads"] <= 0 or cfg["n_layers"] <= 0:
        raise ConfigError(f"dim, n_heads and n_layers must be positive (got {cfg['dim']}, "
                          f"{cfg['n_heads']}, {cfg['n_layers']})")
    if cfg["dim"] % cfg["n_heads"]:
        raise ConfigError(f"--n_heads {cfg['n_heads']} does not divide --dim {cfg['dim']}")
    if (cfg["dim"] // cfg["n_heads"]) % 2:
        raise ConfigError(f"head size dim/n_heads = {cfg['dim'] // cfg['n_heads']} must be even (rotary)")
    kv = cfg["n_kv_heads"] or cfg["n_heads"]
    if kv < 0 or cfg["n_heads"] % kv:
        raise ConfigError(f"--n_kv_heads {cfg['n_kv_heads']} does not divide --n_heads {cfg['n_heads']}")
    for k in ("batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters",
              "log_interval", "max_iters"):
        if cfg[k] <= 0:
            raise ConfigError(f"--{k} must be positive, got {cfg[k]}")
    if cfg["max_seq_len"] < 0 or (cfg["max_seq_len"] == 0 and cfg["init_from"] == "scratch"):
        raise ConfigError(f"--max_seq_len must be positive (0 only with --init_from), got {cfg['max_seq_len']}")
    if cfg["epochs"] < 0:
        raise ConfigError(f"--epochs must be 0 or more, got {cfg['epochs']}")
    if cfg["data_mode"] not in ("auto", "windows", "examples"):
        raise ConfigError(f"--data_mode {cfg['data_mode']!r}: choose auto, windows or examples")
    if cfg["gradient_accumulation_steps"] % world_size:
        raise ConfigError(f"--gradient_accumulation_steps {cfg['gradient_accumulation_steps']} is not "
                          f"divisible by the number of processes ({world_size})")
    if cfg["dtype"] not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype {cfg['dtype']!r}: choose float32, bfloat16 or float16")
    if cfg["adamw"] not in ("auto", "fused", "foreach", "loop"):
        raise ConfigError(f"--adamw {cfg['adamw']!r}: choose auto, fused, foreach or loop")
    if cfg["attention"] not in ("auto", "sdpa", "babyllama"):
        raise ConfigError(f"--attention {cfg['attention']!r}: choose auto, sdpa or babyllama")
    if not 0.0 <= cfg["dropout"] < 1.0:
        raise ConfigError(f"--dropout must be in [0, 1), got {cfg['dropout']}")


def default_data_dir(data_mode="auto"):
    """Where `tinystories.py pretokenize` (no --out_dir) writes shards of the project tokenizer:
    plain ones, or --format instruct ones (with or without --balance) for --data_mode examples."""
    from tokenizer import Tokenizer
    try:
        ident = Tokenizer().identity()
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"no --data_dir given and {e}") from None
    if data_mode != "examples":
        return str(default_out_dir(None, ident["sha256"], ident["vocab_size"]))
    dirs = [default_out_dir(None, ident["sha256"], ident["vocab_size"], "instruct", bal) for bal in (False, True)]
    return str(next((d for d in dirs if d.is_dir()), dirs[0]))  # balanced or not, whichever was made


def data_mode_of(meta, data_mode, data_dir):
    """windows or examples: what --data_mode asks, or (auto) what the shards allow."""
    fmt = (meta.get("settings") or {}).get("format", "plain")
    if data_mode == "auto":
        return "windows" if fmt == "plain" else "examples"
    if data_mode == "examples" and fmt == "plain":
        raise ConfigError(f"--data_mode examples: the shards in {data_dir} have no example boundaries "
                          f"(--format plain); make them with `python tinystories.py pretokenize --format instruct`")
    return data_mode


def read_meta(data_dir, vocab, data_mode="auto"):
    """The data directory's meta.json, checked against the model's vocabulary. Returns
    (meta, vocab_size, val_bytes_per_token, mode): bytes per token the loss counts (examples mode:
    the story tokens and the BOS after each, not the prompt); mode: windows or examples."""
    d = Path(data_dir)
    if not d.is_dir():
        raise ConfigError(f"data directory not found: {d} (make it with `python tinystories.py pretokenize`)")
    try:
        meta = load_meta(d)
        if not meta.get("complete"):
            raise ValueError(f"{d}: pretokenize did not finish (meta.json says incomplete); run it again")
        data_vocab = int(meta["vocab_size"])
        mode = data_mode_of(meta, data_mode, d)
        val = meta["splits"]["val"]
        counted = val["n_target_tokens"] if mode == "examples" else val["n_tokens"]
        if not counted:
            raise ValueError(f"the val split of {d} is empty: pretokenize it with a larger --val_frac")
        bytes_per_token = val["n_bytes"] / counted
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    except (KeyError, TypeError, ZeroDivisionError) as e:
        raise ConfigError(f"{d / 'meta.json'}: unreadable meta.json ({type(e).__name__}: {e})") from None
    if vocab and vocab != data_vocab:
        raise ConfigError(f"--vocab_size {vocab} does not match the data in {d} (vocab {data_vocab}, "
                          f"tokenizer {meta.get('tokenizer', {}).get('path', '?')})")
    return meta, data_vocab, bytes_per_token, mode


# -----------------------------------------------------------------------------------------------
# Devices, precision and speed


def pick_device(name, local_rank, ddp):
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda" and ddp:
        name = f"cuda:{local_rank}"
    return name


def cpu_has_bf16():
    """AVX512_BF16 / AMX (or another bf16 path oneDNN knows)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_dtype(requested, device_type):
    """The autocast dtype actually used (float32: no autocast), with a warning when we fall back."""
    if device_type == "cuda":
        if requested == "bfloat16" and not torch.cuda.is_bf16_supported():
            warn("this GPU has no bfloat16; using float16 with a gradient scaler")
            return "float16"
        return requested
    if requested == "float16":
        raise ConfigError(f"--dtype float16 needs CUDA (device is {device_type}); use bfloat16 or float32")
    if device_type == "cpu" and requested == "bfloat16" and not cpu_has_bf16():
        warn("this CPU has no bfloat16 support; training in float32")
        return "float32"
    if device_type == "mps" and requested == "bfloat16":
        return "float32"  # autocast on MPS is still partial; full precision is the safe choice
    return requested


def peak_flops(cfg, device_type, dtype):
    """FLOP/s that MFU is measured against: the flag, else an A100's bf16 peak on CUDA (as nanoGPT),
    else on CPU threads x FLOP/cycle (AMX bf16 1024, AVX-512 fp32 64) x clock."""
    if cfg["peak_tflops"] > 0:
        return cfg["peak_tflops"] * 1e12
    if device_type != "cpu":
        return 312e12
    flags, ghz = "", 2.5
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = re.search(r"^flags\s*:(.*)$", info, re.M).group(1)
        ghz = float(re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M).group(1)) / 1000
    except (OSError, AttributeError, ValueError):
        pass
    per_cycle = 1024 if (dtype == "bfloat16" and "amx_bf16" in flags) else 64 if "avx512f" in flags else 32
    return torch.get_num_threads() * per_cycle * ghz * 1e9


def warn(msg):
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def try_compile(model, X, Y, ctx):
    """torch.compile, proven on one forward/backward now (compile errors surface at the first call);
    on failure, warn and return the eager model. Gradients and the RNG are left as they were."""
    rng = torch.get_rng_state()
    try:
        cmodel = torch.compile(model)
        with ctx:
            _, loss = cmodel(X, Y)
        loss.backward()
        return cmodel
    except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
        first = (str(e).strip().splitlines() or [""])[0][:200]
        warn(f"torch.compile failed ({type(e).__name__}: {first}); continuing without it")
        torch._dynamo.reset()
        return model
    finally:
        model.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)


def attention_kernel(cfg, device_type, head_size, seq_len):
    """--attention resolved. auto: babyllama's kernel (attention.py) on the CPU where one head's keys,
    values and their gradients fit in L2 (head_size x seq_len <= 16384: 260K, 15M, our cpu preset)
    and it is compiled; there it measured 1.6-3.3x PyTorch's per layer, beyond it (42M: 64 x 1024)
    0.65x (bench/attention_speed.py). Else PyTorch's scaled_dot_product_attention. (Asked for where
    it is not compiled, Transformer.use_kernel refuses it.)"""
    import attention  # here: at module level the name would clash with the setting `attention`
    want = cfg["attention"]
    if want == "auto":
        fits = head_size * seq_len <= 16384
        return "babyllama" if device_type == "cpu" and fits and attention.available() else "sdpa"
    if want == "babyllama" and device_type != "cpu":
        raise ConfigError(f"--attention babyllama runs on the CPU only (device: {device_type})")
    return want


def keep_freed_memory():
    """glibc only: serve every allocation from the heap instead of a fresh mmap, and never hand freed
    memory back to the OS. Otherwise every tensor over 32 MB (logits, their gradients, the embedding's
    gradient) is mapped anew each iteration and each of its pages faults on first touch: 18% of a
    15M iteration on 2 cores (bench/README.md). The price: the process keeps its peak memory, which is
    what a caching allocator does anyway. Returns whether it applied."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def make_optimizer(model, cfg, device_type):
    """model.configure_optimizers (decay on >=2-D weights, fused where available), or the same
    parameter groups with the implementation --adamw names."""
    betas = (cfg["beta1"], cfg["beta2"])
    opt = model.configure_optimizers(cfg["weight_decay"], cfg["learning_rate"], betas, device_type)
    if cfg["adamw"] == "auto":
        return opt
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
    return torch.optim.AdamW(groups, lr=cfg["learning_rate"], betas=betas,
                             fused=cfg["adamw"] == "fused", foreach=cfg["adamw"] == "foreach")


# -----------------------------------------------------------------------------------------------
# Checkpoints


def rng_state(device_type):
    np_state = np.random.get_state()
    return {"python": random.getstate(),
            # numpy's state as plain lists, so the checkpoint loads with torch.load(weights_only=True)
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device_type == "cuda" else None}


def set_rng_state(s):
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    np.random.set_state((s["numpy"][0], np.array(s["numpy"][1], dtype=np.uint32), *s["numpy"][2:]))
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


class _SlowFile:
    """A file whose every write pauses (BABYLLAMA_SLOW_CKPT_WRITE seconds): lets the crash-safety
    test kill a run in the middle of a checkpoint write."""

    def __init__(self, f, pause):
        self.f, self.pause = f, pause

    def write(self, b):
        time.sleep(self.pause)
        return self.f.write(b)

    def flush(self):
        self.f.flush()


def save_checkpoint(path, **ckpt):
    """torch.save to path.tmp, fsync, then rename: a kill (or a power cut) mid-write never leaves a
    broken ckpt.pt, only the previous one; a full disk is one error line and no .tmp left."""
    tmp = Path(str(path) + ".tmp")
    pause = float(os.environ.get("BABYLLAMA_SLOW_CKPT_WRITE", 0))
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, _SlowFile(f, pause) if pause > 0 else f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports a failed write as a RuntimeError
        tmp.unlink(missing_ok=True)
        why = e.strerror if isinstance(e, OSError) and e.strerror else "a write failed (is the disk full?)"
        raise ConfigError(f"cannot write checkpoint {path}: {why}") from None


def load_checkpoint(path):
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"checkpoint not found: {p}")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise ConfigError(f"{p}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not {"model", "model_args"} <= set(ckpt):
        raise ConfigError(f"{p}: not a train.py checkpoint (no model / model_args)")
    return ckpt


def load_init(path):
    """Starting weights for --init_from PATH: a ckpt.pt of ours, or a llama2.c .bin (version 0, 1
    or 2, read by export.py; it records no tokenizer, so only the vocabulary size is checked)."""
    p = Path(path)
    if p.suffix != ".bin":
        return load_checkpoint(p)
    from export import load_bin
    try:
        model = load_bin(p)
    except (OSError, ValueError, RuntimeError) as e:  # missing, cut short, or shapes that do not fit
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"--init_from {p}: not a readable llama2.c model ({first})") from None
    return {"model": model.state_dict(), "model_args": asdict(model.params)}


# -----------------------------------------------------------------------------------------------
# Schedule, evaluation, logging


def get_lr(it, progress, warm_progress, cfg):
    """Linear warmup for warmup_iters, then cosine from learning_rate down to min_lr over the rest of
    the run; `progress` in [0, 1] is the fraction of the run done (iterations or time budget) and
    warm_progress what it was when warmup ended, so the cosine always starts at its peak."""
    if it < cfg["warmup_iters"]:
        return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
    if not cfg["decay_lr"]:
        return cfg["learning_rate"]
    ratio = (progress - warm_progress) / max(1e-9, 1.0 - warm_progress)
    coeff = 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, ratio))))
    return cfg["min_lr"] + coeff * (cfg["learning_rate"] - cfg["min_lr"])


def make_batches(mode, split, cfg, device, rank, world_size, vocab, seed, start_batch=0, num_workers=0,
                 n_batches=None):
    """The batch stream of a split: random token windows (tinystories.iter_batches) or whole
    examples with the prompt masked (tinystories.iter_examples)."""
    B, T = cfg["batch_size"], cfg["max_seq_len"]
    if mode == "examples":
        return iter_examples(split, B, T, cfg["data_dir"], device, seed=seed, rank=rank, world_size=world_size,
                             num_workers=num_workers, start_batch=start_batch, vocab_size=vocab,
                             n_batches=n_batches, fixed_len=cfg["compile"])
    return iter_batches(split, B, T, cfg["data_dir"], device, seed=seed, rank=rank, world_size=world_size,
                        num_workers=num_workers, start_batch=start_batch, vocab_size=vocab)


@torch.no_grad()
def estimate_loss(model, cfg, ctx, device, vocab, rank, world_size, mode="windows", splits=("train", "val")):
    """Mean loss over eval_iters fixed batches per split (the same batches at every evaluation),
    shared out across the DDP ranks. Examples mode: at most one pass over the split, and the mean
    is over the counted (story) tokens, not over batches, whose counts differ."""
    model.eval()
    out = {}
    n = max(1, cfg["eval_iters"] // world_size)
    for split in splits:
        if mode == "examples":
            n_split = min(n, batches_per_epoch(cfg["data_dir"], split, cfg["batch_size"], cfg["max_seq_len"],
                                               world_size, vocab))
        else:
            n_split = n
        batches = make_batches(mode, split, cfg, device, rank, world_size, vocab, cfg["seed"] + 1)
        total = torch.zeros((), device=device)
        count = torch.zeros((), device=device)
        for _ in range(n_split):
            X, Y = next(batches)
            with ctx:
                _, loss = model(X, Y)
            w = (Y != -100).sum() if mode == "examples" else 1
            total += loss.float() * w
            count += w
        if world_size > 1:
            dist.all_reduce(total)
            dist.all_reduce(count)
        out[split] = total.item() / count.item()
    model.train()
    return out


def log_metrics(path, **event):
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
    except OSError as e:  # a full disk: one line naming the file
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None


def plot_losses(metrics_path, png_path):
    """loss.png from metrics.jsonl (a resumed run's later events replace the killed run's)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, ev = {}, {}
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        e = json.loads(line)
        if e["event"] == "train":
            train[e["iter"]] = e["loss"]
        elif e["event"] == "eval":
            ev[e["iter"]] = e
    fig, ax = plt.subplots(figsize=(8, 5))
    if train:
        ax.plot(sorted(train), [train[i] for i in sorted(train)], lw=0.8, alpha=0.6, label="train (batch)")
    if ev:
        its = sorted(ev)
        ax.plot(its, [ev[i]["train_loss"] for i in its], "o-", label="train (eval)")
        ax.plot(its, [ev[i]["val_loss"] for i in its], "o-", label="val")
        last = ev[its[-1]]
        ax.set_title(f"iter {last['iter']}: val loss {last['val_loss']:.4f}, {last['val_bpb']:.4f} bits/byte")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    tmp = str(png_path) + ".tmp"
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, png_path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"cannot write {png_path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def fmt_time(s):
    s = int(max(0, s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# -----------------------------------------------------------------------------------------------
# Training


def train(cfg):
    # --- processes and devices (check everything that can be checked before starting processes) ---
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    master = rank == 0
    check_config(cfg, world_size)
    cfg["data_dir"] = cfg["data_dir"] or default_data_dir(cfg["data_mode"])
    meta, vocab, val_bytes_per_token, mode = read_meta(cfg["data_dir"], cfg["vocab_size"], cfg["data_mode"])
    dev = pick_device(cfg["device"], local_rank, ddp)
    device_type = "cuda" if dev.startswith("cuda") else dev
    if device_type == "cpu" and cfg["keep_memory"]:
        keep_freed_memory()
    amp = pick_dtype(cfg["dtype"], device_type)
    ckpt = None
    if cfg["init_from"] == "resume":
        ckpt = load_checkpoint(Path(cfg["out_dir"]) / "ckpt.pt")
    elif cfg["init_from"] != "scratch":
        ckpt = load_init(cfg["init_from"])
    if ckpt is not None:
        ck_tok, data_tok = ckpt.get("tokenizer") or {}, meta.get("tokenizer") or {}
        if ck_tok.get("sha256") and data_tok.get("sha256") and ck_tok["sha256"] != data_tok["sha256"]:
            raise ConfigError(f"the checkpoint's tokenizer ({ck_tok.get('path')}) is not the data's "
                              f"({data_tok.get('path')}) in {cfg['data_dir']}")
        if ckpt["model_args"]["vocab_size"] != vocab:
            raise ConfigError(f"the checkpoint's vocab_size {ckpt['model_args']['vocab_size']} does not "
                              f"match the data in {cfg['data_dir']} ({vocab})")

    if ddp:
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        if device_type == "cuda":
            torch.cuda.set_device(dev)
    if cfg["threads"] > 0:
        torch.set_num_threads(cfg["threads"])
    accum = cfg["gradient_accumulation_steps"] // world_size  # micro-steps per rank per iteration
    B, T = cfg["batch_size"], cfg["max_seq_len"] or ckpt["model_args"]["max_seq_len"]
    cfg["max_seq_len"] = T
    tokens_per_iter = accum * world_size * B * T
    out_dir = Path(cfg["out_dir"])
    metrics_path, png_path = out_dir / "metrics.jsonl", out_dir / "loss.png"
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[amp]
    ctx = nullcontext() if amp == "float32" else torch.autocast(device_type=device_type, dtype=ptdtype)

    # --- model ---
    torch.manual_seed(cfg["seed"])  # the same initial weights on every rank
    if ckpt is not None:
        margs = ModelArgs(**ckpt["model_args"])
        margs.dropout = cfg["dropout"]  # a training choice, not part of the shape
    else:
        margs = ModelArgs(dim=cfg["dim"], n_layers=cfg["n_layers"], n_heads=cfg["n_heads"],
                          n_kv_heads=cfg["n_kv_heads"] or None, vocab_size=vocab,
                          hidden_dim=cfg["hidden_dim"] or None, multiple_of=cfg["multiple_of"],
                          max_seq_len=T, dropout=cfg["dropout"],
                          shared_classifier=cfg["shared_classifier"])
    if T > margs.max_seq_len:
        raise ConfigError(f"--max_seq_len {T} exceeds the checkpoint's max_seq_len {margs.max_seq_len}")
    if mode == "examples" and cfg["epochs"] > 0:  # the length of the run, in passes over train
        try:
            bpe = batches_per_epoch(cfg["data_dir"], "train", B, T, world_size, vocab)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from None
        cfg["max_iters"] = max(1, math.ceil(cfg["epochs"] * bpe / accum))
        if master:
            print(f"{cfg['epochs']:g} epoch(s) of {bpe} batches per process = {cfg['max_iters']} "
                  f"iterations", flush=True)
    raw_model = Transformer(margs)
    iter_num, best_val_loss, elapsed_before = 0, float("inf"), 0.0
    # progress at the end of warmup: known in advance by iterations, measured under a time budget
    warm_progress = None if cfg["max_minutes"] > 0 else min(1.0, cfg["warmup_iters"] / cfg["max_iters"])
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
    raw_model.to(dev)
    try:
        kernel = raw_model.use_kernel(attention_kernel(cfg, device_type, margs.dim // margs.n_heads, T))
    except ValueError as e:
        raise ConfigError(f"--attention: {e}") from None
    optimizer = make_optimizer(raw_model, cfg, device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=(amp == "float16"))
    if cfg["init_from"] == "resume":
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        elapsed_before = ckpt.get("elapsed_s", 0.0)
        if cfg["max_minutes"] > 0:
            warm_progress = ckpt.get("warm_progress")
        if master:
            set_rng_state(ckpt["rng"])
        else:  # only rank 0's RNG is saved; the others restart from a seed that depends on the iteration
            torch.manual_seed(cfg["seed"] + rank + 1000003 * iter_num)
    elif rank:
        torch.manual_seed(cfg["seed"] + rank)  # per-rank dropout masks
    start_iter = iter_num
    ckpt = None  # free it

    # --- data: batch k of this rank is a pure function of (seed, rank, k), so resuming is exact ---
    try:
        train_batches = make_batches(mode, "train", cfg, dev, rank, world_size, vocab, cfg["seed"],
                                     start_batch=iter_num * accum, num_workers=cfg["num_workers"])
        X, Y = next(train_batches)
        if mode == "examples":  # a split the evaluations need must be readable now, not at iter 0
            for split in ("val",) + (("test",) if "test" in meta["splits"] else ()):
                batches_per_epoch(cfg["data_dir"], split, B, T, world_size, vocab)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None

    model = raw_model
    if cfg["compile"]:
        model = try_compile(raw_model, X, Y, ctx)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
    peak = peak_flops(cfg, device_type, amp)

    if master:
        n_params = raw_model.num_params()
        print(f"model: {n_params / 1e6:.2f}M parameters, dim {margs.dim}, {margs.n_layers} layers, "
              f"{margs.n_heads} heads ({margs.n_kv_heads} kv), hidden {margs.hidden_dim}, vocab {vocab}, "
              f"seq {T}", flush=True)
        print(f"training: {dev}, autocast {amp}, {world_size} process(es), {tokens_per_iter:,} tokens/iter "
              f"= {accum} x {world_size} x {B} x {T}, {torch.get_num_threads()} threads, "
              f"attention {kernel}"
              f"{', compiled' if model is not raw_model and cfg['compile'] else ''}", flush=True)
        log_metrics(metrics_path, event="start", iter=iter_num, n_params=n_params, config=cfg,
                    model_args=asdict(margs), device=dev, autocast=amp, world_size=world_size)

    # --- the loop ---
    budget = cfg["max_minutes"] * 60.0
    eval_reserve = 0.0  # how long the last evaluation took: the final one must fit in the budget
    t_start = time.time() - elapsed_before
    t_log, iters_since_log, loss_sum, tokens_since_log = time.time(), 0, None, 0
    running_mfu = -1.0
    while True:
        elapsed = time.time() - t_start
        progress = iter_num / cfg["max_iters"]
        if budget > 0:
            progress = max(progress, elapsed / max(1e-9, budget - eval_reserve))
        last = iter_num >= cfg["max_iters"] or progress >= 1.0
        if ddp and budget > 0:  # ranks see different clocks: stop together on rank 0's say
            flag = torch.tensor([float(last), progress], device=dev)
            dist.broadcast(flag, 0)
            last, progress = bool(flag[0].item()), float(flag[1].item())
        if warm_progress is None and iter_num >= cfg["warmup_iters"]:
            warm_progress = min(progress, 0.999)  # time-based: where the clock stood when warmup ended
        lr = get_lr(iter_num, progress, warm_progress, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr

        resumed_here = cfg["init_from"] == "resume" and iter_num == start_iter and not last
        if (iter_num % cfg["eval_interval"] == 0 and not resumed_here) or last or cfg["eval_only"]:
            t_eval = time.time()
            splits = ("train", "val")
            if mode == "examples" and (last or cfg["eval_only"]) and "test" in meta["splits"]:
                splits += ("test",)  # the held-out test split, once, at the end
            losses = estimate_loss(model, cfg, ctx, dev, vocab, rank, world_size, mode, splits)
            val_bpb = losses["val"] / math.log(2) / val_bytes_per_token
            val_ppl = math.exp(min(losses["val"], 700.0))
            eval_reserve = time.time() - t_eval
            if master:
                test = f", test loss {losses['test']:.4f} (perplexity {math.exp(losses['test']):.2f})" \
                    if "test" in losses else ""
                print(f"eval iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                      f"val perplexity {val_ppl:.2f}, val {val_bpb:.4f} bits/byte{test} ({eval_reserve:.1f}s)",
                      flush=True)
                extra = {"test_loss": losses["test"]} if "test" in losses else {}
                log_metrics(metrics_path, event="eval", iter=iter_num, train_loss=losses["train"],
                            val_loss=losses["val"], val_ppl=val_ppl, val_bpb=val_bpb, lr=lr,
                            elapsed_s=time.time() - t_start, **extra)
                improved = losses["val"] < best_val_loss
                best_val_loss = min(best_val_loss, losses["val"])
                if not cfg["eval_only"] and (improved or cfg["always_save_checkpoint"] or last) and iter_num > 0:
                    save_checkpoint(out_dir / "ckpt.pt", model=raw_model.state_dict(), model_args=asdict(margs),
                                    optimizer=optimizer.state_dict(),
                                    scaler=scaler.state_dict() if scaler.is_enabled() else None,
                                    iter_num=iter_num, best_val_loss=best_val_loss, config=cfg,
                                    rng=rng_state(device_type), tokenizer=meta.get("tokenizer"),
                                    elapsed_s=time.time() - t_start, warm_progress=warm_progress,
                                    val_bpb=val_bpb)
                plot_losses(metrics_path, png_path)
            t_log = time.time()  # evaluation time is not training speed
        if last or cfg["eval_only"]:
            break

        # one iteration: accum micro-batches, gradients synchronised across ranks on the last only
        for micro in range(accum):
            sync = micro == accum - 1
            with (model.no_sync() if ddp and not sync else nullcontext()):
                tokens_since_log += X.numel() * world_size  # examples: rows are as long as the batch needs
                with ctx:
                    _, loss = model(X, Y)
                    loss = loss / accum
                X, Y = next(train_batches)  # fetch the next batch before backward (overlaps on GPU)
                scaler.scale(loss).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        if cfg["grad_clip"] > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg["grad_clip"])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1
        iters_since_log += 1

        if iter_num % cfg["log_interval"] == 0 and master:
            dt = (time.time() - t_log) / iters_since_log
            lossf = loss_sum.item() / iters_since_log
            tok_iter = tokens_since_log / iters_since_log  # = tokens_per_iter for windows
            if iter_num - start_iter >= 5:  # let the first iterations (warm-up, compile) pass
                mfu = raw_model.estimate_mfu(tok_iter / T, dt, peak)
                running_mfu = mfu if running_mfu < 0 else 0.9 * running_mfu + 0.1 * mfu
            left = (cfg["max_iters"] - iter_num) * dt
            if budget > 0:
                left = min(left, budget - (time.time() - t_start))
            print(f"iter {iter_num} | loss {lossf:.4f} | lr {lr:.2e} | {dt * 1000:.1f} ms | "
                  f"{tok_iter / dt:,.0f} tok/s | mfu {max(running_mfu, 0) * 100:.2f}% | "
                  f"{100 * progress:.1f}% | eta {fmt_time(left)}", flush=True)
            log_metrics(metrics_path, event="train", iter=iter_num, loss=lossf, lr=lr, ms=dt * 1000,
                        tok_s=tok_iter / dt, mfu=running_mfu, elapsed_s=time.time() - t_start)
        if iter_num % cfg["log_interval"] == 0:
            t_log, iters_since_log, loss_sum, tokens_since_log = time.time(), 0, None, 0

    if ddp:
        dist.barrier()  # rank 0 may still be writing the last checkpoint: tear down together
        dist.destroy_process_group()


def main(argv=None):
    try:
        cfg = parse_config(argv)
        train(cfg)
    except (ConfigError, OSError) as e:  # OSError: e.g. out_dir cannot be made (read-only, full)
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
