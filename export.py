"""
export.py: move a model between train.py checkpoints, llama2.c `.bin` files and Hugging Face folders.

What it does:
- writes llama2.c's checkpoint versions (../shared/docs/FORMATS.md §2): version 0 (legacy, what the
  reference `run` reads; a negative vocab_size marks an unshared classifier), version 1 (fp32, 256-byte
  header) and version 2 (int8 "Q8_0", one fp32 scale per group of group_size values; the group size is
  halved until it divides every quantized row, i.e. dim and hidden_dim);
- writes a Hugging Face `LlamaForCausalLM` folder: config.json, model.safetensors (q/k rows permuted from
  llama2.c's interleaved rotary pairs to HF's half-split ones, per kv head for wk), the sentencepiece
  tokenizer files and a model card README.md with the model's real hyperparameters;
- reads all of these back into a `model.Transformer`: `load_bin` (any version, told apart by its header),
  `load_hf`, `load_checkpoint` (train.py's ckpt.pt). Grouped-query attention is kept in every direction.
Every output is written to a temporary name and renamed, so a failure never leaves a partial file.
What it does not do: train (train.py), run models fast (run.c), make tokenizer.bin (tokenizer.py).

    python export.py out/model.bin --checkpoint out/ckpt.pt --version 2 --group_size 64
    python export.py out/hf --checkpoint out/ckpt.pt --hf
    python export.py stories15M_q8.bin --bin stories15M.bin --version 2
    python export.py out/hf15M --bin stories15M.bin --hf --tokenizer ../shared/tokenizers/llama2/tokenizer.model
    python export.py model.bin --from_hf out/hf
"""
import argparse
import hashlib
import json
import os
import shutil
import struct
import sys
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from model import ModelArgs, Transformer, precompute_freqs_cis

MAGIC = 0x616B3432  # "ak42"
HEADER_V1 = 256
DEFAULT_TOKENIZER = Path(__file__).resolve().parent / "tokenizer.model"


# ---------------------------------------------------------------------------------------------
# small helpers

def _atomic_write(path, write):
    """Call write(f) on path.tmp, then rename it over path; remove the temporary file on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:  # disk full, read-only: one line naming the file
        tmp.unlink(missing_ok=True)
        raise OSError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _f32(t):
    return t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()


def _is_shared(model):
    return torch.equal(model.tok_embeddings.weight, model.output.weight)


def _layers(model, name):
    """The tensors of one kind for every layer, in order (name like 'attention.wq')."""
    return [layer.get_submodule(name).weight for layer in model.layers]


def _header_params(model, vocab_sign=1):
    p = model.params
    return (p.dim, p.hidden_dim, p.n_layers, p.n_heads, p.n_kv_heads, vocab_sign * p.vocab_size, p.max_seq_len)


def _matrices(model):
    """Every 2-D weight in the order llama2.c's version 1/2 bodies store them (wcls excluded)."""
    out = [model.tok_embeddings.weight]
    for name in ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                 "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"):
        out += _layers(model, name)
    return out


def _norms(model):
    return _layers(model, "attention_norm") + _layers(model, "ffn_norm") + [model.norm.weight]


# ---------------------------------------------------------------------------------------------
# llama2.c .bin writers

def export_v0(model, path):
    """llama2.c legacy format: 7 int32 header, fp32 weights layer-major, the RoPE tables, wcls if unshared."""
    shared = _is_shared(model)
    p = model.params
    cos, sin = precompute_freqs_cis(p.dim // p.n_heads, p.max_seq_len)  # llama2.c writes these; run.c skips them

    def write(f):
        f.write(struct.pack("<7i", *_header_params(model, 1 if shared else -1)))
        f.write(_f32(model.tok_embeddings.weight))
        for name in ("attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo",
                     "ffn_norm", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"):
            for w in _layers(model, name):
                f.write(_f32(w))
        f.write(_f32(model.norm.weight))
        f.write(_f32(cos))
        f.write(_f32(sin))
        if not shared:
            f.write(_f32(model.output.weight))

    return _atomic_write(path, write)


def _v12_header(model, version, shared, group_size=None):
    h = struct.pack("<Ii", MAGIC, version) + struct.pack("<7i", *_header_params(model)) + struct.pack("<B", shared)
    if version == 2:
        h += struct.pack("<i", group_size)
    return h + b"\0" * (HEADER_V1 - len(h))


def export_v1(model, path):
    """llama2.c version 1: 256-byte header, all norms, then every matrix in fp32, wcls last if unshared."""
    shared = _is_shared(model)

    def write(f):
        f.write(_v12_header(model, 1, shared))
        for w in _norms(model) + _matrices(model):
            f.write(_f32(w))
        if not shared:
            f.write(_f32(model.output.weight))

    return _atomic_write(path, write)


def choose_group_size(group_size, dim, hidden_dim):
    """Halve group_size until it divides both row lengths that quantized matmuls see (dim, hidden_dim)."""
    if group_size < 1:
        raise ValueError(f"--group_size must be at least 1, got {group_size}")
    while dim % group_size or hidden_dim % group_size:
        group_size //= 2
    return group_size


def quantize_q80(w, group_size):
    """Symmetric int8 per group of group_size consecutive values: (int8 values, fp32 scales, max error)."""
    w = w.detach().to("cpu", torch.float32).reshape(-1, group_size)
    scale = w.abs().amax(dim=1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group stays zero
    q = torch.round(w / safe[:, None]).clamp(-127, 127).to(torch.int8)
    err = (q.float() * scale[:, None] - w).abs().max().item()
    return q.flatten(), scale, err


def export_v2(model, path, group_size=64):
    """llama2.c version 2 (Q8_0). Returns the group size actually used (backed off to divide every row)."""
    shared = _is_shared(model)
    gs = choose_group_size(group_size, model.params.dim, model.params.hidden_dim)
    mats = _matrices(model) + ([] if shared else [model.output.weight])

    def write(f):
        f.write(_v12_header(model, 2, shared, gs))
        for w in _norms(model):
            f.write(_f32(w))
        for w in mats:
            q, s, _ = quantize_q80(w, gs)
            f.write(q.numpy().tobytes())
            f.write(_f32(s))

    _atomic_write(path, write)
    return gs


# ---------------------------------------------------------------------------------------------
# llama2.c .bin reader

def _header_args(path, params, shared):
    """ModelArgs from the 7 header ints, or ValueError naming the file when they cannot be a model."""
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = params
    ok = (dim > 0 and hidden > 0 and n_layers > 0 and n_heads > 0 and vocab > 0 and seq_len > 0
          and 0 < n_kv_heads <= n_heads and n_heads % n_kv_heads == 0 and dim % n_heads == 0
          and (dim // n_heads) % 2 == 0)
    if not ok:
        raise ValueError(f"{path}: not a llama2.c model (implausible header: dim={dim} hidden_dim={hidden} "
                         f"n_layers={n_layers} n_heads={n_heads} n_kv_heads={n_kv_heads} "
                         f"vocab_size={vocab} seq_len={seq_len})")
    return ModelArgs(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                     vocab_size=vocab, max_seq_len=seq_len, shared_classifier=shared)


def _shapes(a: ModelArgs):
    """(name, shape) of every tensor in llama2.c's layer-major order, shared by v0 and v1."""
    D, H, L, KV = a.dim, a.hidden_dim, a.n_layers, a.n_kv_heads * (a.dim // a.n_heads)
    return {"tok": (a.vocab_size, D), "rms_att": (L, D), "wq": (L, D, D), "wk": (L, KV, D),
            "wv": (L, KV, D), "wo": (L, D, D), "rms_ffn": (L, D), "w1": (L, H, D), "w2": (L, D, H),
            "w3": (L, H, D), "rms_final": (D,), "wcls": (a.vocab_size, D)}


def _build(args, t):
    """A Transformer from tensors named as in _shapes (each [L, ...] tensor split per layer)."""
    model = Transformer(args)
    sd = {"tok_embeddings.weight": t["tok"], "norm.weight": t["rms_final"],
          "output.weight": t["tok"] if args.shared_classifier else t["wcls"]}
    per_layer = {"attention_norm": "rms_att", "attention.wq": "wq", "attention.wk": "wk", "attention.wv": "wv",
                 "attention.wo": "wo", "ffn_norm": "rms_ffn", "feed_forward.w1": "w1",
                 "feed_forward.w2": "w2", "feed_forward.w3": "w3"}
    for i in range(args.n_layers):
        for ours, theirs in per_layer.items():
            sd[f"layers.{i}.{ours}.weight"] = t[theirs][i]
    model.load_state_dict(sd, strict=True)
    return model.eval()


def load_bin(path) -> Transformer:
    """Read a llama2.c checkpoint of version 0, 1 or 2 (told apart by the magic number) into a Transformer."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    if len(data) < 28:
        raise ValueError(f"{path}: too short ({len(data)} bytes) to be a llama2.c model")
    (magic,) = struct.unpack_from("<I", data, 0)
    if magic == MAGIC:
        return _load_v12(path, data)
    return _load_v0(path, data)


def _take(path, data, off, shape, dtype="<f4"):
    n = int(np.prod(shape))
    itemsize = np.dtype(dtype).itemsize
    if off + n * itemsize > len(data):
        raise ValueError(f"{path}: truncated ({len(data)} bytes, the header's shapes need more)")
    arr = np.frombuffer(data, dtype=dtype, count=n, offset=off).reshape(shape)
    return torch.from_numpy(arr.astype(np.float32 if dtype == "<f4" else arr.dtype)), off + n * itemsize


def _load_v0(path, data):
    params = list(struct.unpack_from("<7i", data, 0))
    shared = params[5] > 0  # a negative vocab_size marks an unshared classifier
    params[5] = abs(params[5])
    args = _header_args(path, params, shared)
    dim, vocab, seq_len = args.dim, args.vocab_size, args.max_seq_len
    shapes = _shapes(args)
    order = ["tok", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final"]
    rope = seq_len * (dim // args.n_heads)  # two tables of seq_len * head_size / 2
    total = 28 + 4 * (sum(int(np.prod(shapes[k])) for k in order) + rope
                      + (0 if shared else vocab * dim))
    if len(data) != total:
        raise ValueError(f"{path}: size {len(data)} bytes does not match its version 0 header "
                         f"(expected {total}; truncated, or not a llama2.c model)")
    t, off = {}, 28
    for k in order:
        t[k], off = _take(path, data, off, shapes[k])
    off += 4 * rope
    if not shared:
        t["wcls"], off = _take(path, data, off, shapes["wcls"])
    return _build(args, t)


def _load_v12(path, data):
    if len(data) < HEADER_V1:
        raise ValueError(f"{path}: truncated header ({len(data)} bytes, need {HEADER_V1})")
    (version,) = struct.unpack_from("<i", data, 4)
    if version not in (1, 2):
        raise ValueError(f"{path}: unsupported llama2.c checkpoint version {version} (this reads 0, 1, 2)")
    params = struct.unpack_from("<7i", data, 8)
    shared_byte = data[36]
    if shared_byte not in (0, 1):
        raise ValueError(f"{path}: bad shared_classifier byte {shared_byte} in the header")
    shared = bool(shared_byte)
    args = _header_args(path, params, shared)
    dim, hidden, n_layers = args.dim, args.hidden_dim, args.n_layers
    s = _shapes(args)
    norms = ["rms_att", "rms_ffn", "rms_final"]
    mats = ["tok", "wq", "wk", "wv", "wo", "w1", "w2", "w3"] + ([] if shared else ["wcls"])
    n_norm = sum(int(np.prod(s[k])) for k in norms)
    n_mat = sum(int(np.prod(s[k])) for k in mats)
    if version == 1:
        total = HEADER_V1 + 4 * (n_norm + n_mat)
    else:
        (gs,) = struct.unpack_from("<i", data, 37)
        if gs < 1 or dim % gs or hidden % gs:
            raise ValueError(f"{path}: group_size {gs} in the header does not divide dim={dim} and hidden_dim={hidden}")
        total = HEADER_V1 + 4 * n_norm + n_mat + 4 * (n_mat // gs)
    if len(data) != total:
        raise ValueError(f"{path}: size {len(data)} bytes does not match its version {version} header "
                         f"(expected {total}; truncated or corrupt)")
    t, off = {}, HEADER_V1
    for k in norms:
        t[k], off = _take(path, data, off, s[k])
    for k in mats:
        if version == 1:
            t[k], off = _take(path, data, off, s[k])
            continue
        # version 2: per tensor (per layer for [L, ...] shapes), int8 values then their scales
        per = s[k] if k in ("tok", "wcls") else s[k][1:]
        count = 1 if k in ("tok", "wcls") else n_layers
        parts = []
        for _ in range(count):
            q, off = _take(path, data, off, per, dtype="<i1")
            sc, off = _take(path, data, off, (q.numel() // gs,))
            parts.append((q.float().reshape(-1, gs) * sc[:, None]).reshape(per))
        t[k] = parts[0] if count == 1 else torch.stack(parts)
    return _build(args, t)


# ---------------------------------------------------------------------------------------------
# train.py checkpoints

def read_checkpoint(path):
    """(Transformer, checkpoint dict) from train.py's ckpt.pt, with compile/DDP prefixes stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        # weights_only: tensors and plain containers only, no arbitrary code from a pickle
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds here (pickle, zip, EOF)
        msg = f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})"
        raise ValueError(msg.splitlines()[0]) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise ValueError(f"{path}: not a train.py checkpoint (needs 'model' and 'model_args')")
    known = {f.name for f in fields(ModelArgs)}
    try:
        args = ModelArgs(**{k: v for k, v in ckpt["model_args"].items() if k in known})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad model_args ({e})") from None
    sd = {}
    for k, v in ckpt["model"].items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        sd[k] = v
    if args.shared_classifier:  # a tied pair may be saved under one name only
        w = sd.get("output.weight", sd.get("tok_embeddings.weight"))
        sd.setdefault("output.weight", w)
        sd.setdefault("tok_embeddings.weight", w)
    model = Transformer(args)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit model_args ({str(e).splitlines()[0]})") from None
    return model.eval(), ckpt


def load_checkpoint(path) -> Transformer:
    return read_checkpoint(path)[0]


# ---------------------------------------------------------------------------------------------
# Hugging Face

def _permute(w, n_heads):
    """llama2.c's interleaved rotary pairs (x[2i], x[2i+1]) -> HF's halves (x[i], x[i + hs/2]), per head."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _unpermute(w, n_heads):
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


HF_LAYER = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
            "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
            "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
            "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
            "feed_forward.w3": "mlp.up_proj"}


def hf_config(model):
    p = model.params
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": p.vocab_size, "hidden_size": p.dim, "intermediate_size": p.hidden_dim,
        "num_hidden_layers": p.n_layers, "num_attention_heads": p.n_heads,
        "num_key_value_heads": p.n_kv_heads, "head_dim": p.dim // p.n_heads,
        "max_position_embeddings": p.max_seq_len, "rms_norm_eps": p.norm_eps,
        "rope_theta": 10000.0, "rope_scaling": None, "hidden_act": "silu",
        "tie_word_embeddings": _is_shared(model), "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": None, "use_cache": True, "torch_dtype": "float32",
    }


def hf_state_dict(model):
    p = model.params
    sd = {"model.embed_tokens.weight": model.tok_embeddings.weight, "model.norm.weight": model.norm.weight}
    for i, layer in enumerate(model.layers):
        for ours, theirs in HF_LAYER.items():
            w = layer.get_submodule(ours).weight
            if ours == "attention.wq":
                w = _permute(w, p.n_heads)
            elif ours == "attention.wk":
                w = _permute(w, p.n_kv_heads)
            sd[f"model.layers.{i}.{theirs}.weight"] = w
    if not _is_shared(model):
        sd["lm_head.weight"] = model.output.weight  # tied: HF re-ties it from the embedding
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in sd.items()}


def _tokenizer_files(tokenizer_path, vocab_size, seq_len):
    """(tokenizer.model path or None, its tokenizer_config) after checking the vocabulary matches."""
    from sentencepiece import SentencePieceProcessor
    sp = SentencePieceProcessor()
    try:
        sp.Load(str(tokenizer_path))
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{tokenizer_path}: not a sentencepiece model ({e})") from None
    if sp.vocab_size() != vocab_size:
        raise ValueError(f"{tokenizer_path}: tokenizer has {sp.vocab_size()} pieces, the model {vocab_size}")
    special = {"bos_token": sp.id_to_piece(sp.bos_id()), "eos_token": sp.id_to_piece(sp.eos_id()),
               "unk_token": sp.id_to_piece(sp.unk_id())}
    config = {"tokenizer_class": "LlamaTokenizer", **special, "pad_token": None,
              "add_bos_token": True, "add_eos_token": False, "add_prefix_space": True, "legacy": False,
              "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False,
              "model_max_length": seq_len, "sp_model_kwargs": {}}
    return special, config


def export_hf(model, out_dir, tokenizer_path=None, train_config=None, checkpoint_info=None,
              default_tokenizer=True):
    """Write a Hugging Face LlamaForCausalLM folder (built in out_dir.tmp, then renamed into place).

    tokenizer_path: a sentencepiece .model whose vocabulary matches the model; None uses the project's
    tokenizer.model when it matches (and default_tokenizer is true) and otherwise writes no tokenizer
    files (with a warning).
    train_config / checkpoint_info: train.py's `config` dict and e.g. {iter_num, best_val_loss}, for
    the model card."""
    from safetensors.torch import save_file
    out_dir = Path(out_dir)
    p = model.params
    if tokenizer_path is None and default_tokenizer and DEFAULT_TOKENIZER.is_file():
        try:
            tok = _tokenizer_files(DEFAULT_TOKENIZER, p.vocab_size, p.max_seq_len)
            tokenizer_path = DEFAULT_TOKENIZER
        except ValueError:
            tok = None
    elif tokenizer_path is not None:
        if not Path(tokenizer_path).is_file():
            raise FileNotFoundError(f"{tokenizer_path}: no such tokenizer file")
        tok = _tokenizer_files(tokenizer_path, p.vocab_size, p.max_seq_len)
    else:
        tok = None
    if tok is None:
        warnings.warn(f"{out_dir}: no sentencepiece tokenizer with {p.vocab_size} pieces given; "
                      "the folder has no tokenizer files (pass --tokenizer)")

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / "config.json").write_text(json.dumps(hf_config(model), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 0.8, "top_p": 0.9,
             "max_length": p.max_seq_len}, indent=2) + "\n")
        save_file(hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tok is not None:
            special, config = tok
            shutil.copyfile(tokenizer_path, tmp / "tokenizer.model")
            (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
            (tmp / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
        card = model_card(model, train_config, checkpoint_info, tokenizer_path if tok else None)
        (tmp / "README.md").write_text(card)
        if out_dir.exists():  # replace an earlier export as a whole, never merge into it
            old = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_hf(path) -> Transformer:
    """A Hugging Face Llama folder (config.json + safetensors, one file or an index) -> Transformer."""
    from safetensors.torch import load_file
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no such file (not a Hugging Face model folder)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    if cfg.get("model_type") != "llama":
        raise ValueError(f"{cfg_path}: model_type is {cfg.get('model_type')!r}, not 'llama'")
    theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}  # older / newer transformers
    if float(theta) != 10000.0 or scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise ValueError(f"{cfg_path}: rope_theta={theta} / rope_scaling={scaling} not supported "
                         "(llama2.c uses 10000 and no scaling)")
    if cfg.get("hidden_act", "silu") != "silu" or cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError(f"{cfg_path}: only silu activations without biases are supported")
    n_heads = cfg["num_attention_heads"]
    args = ModelArgs(dim=cfg["hidden_size"], hidden_dim=cfg["intermediate_size"], n_layers=cfg["num_hidden_layers"],
                     n_heads=n_heads, n_kv_heads=cfg.get("num_key_value_heads", n_heads),
                     vocab_size=cfg["vocab_size"], max_seq_len=cfg["max_position_embeddings"],
                     norm_eps=cfg.get("rms_norm_eps", 1e-5), shared_classifier=False)

    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif index.is_file():
        files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors (or index) in the folder")
    hf = {}
    for f in files:
        try:
            hf.update(load_file(str(f)))
        except Exception as e:  # safetensors raises its own error type for bad headers
            raise ValueError(f"{f}: not a readable safetensors file ({e})") from None
    hf = {k: v.float() for k, v in hf.items()}
    tied = "lm_head.weight" not in hf or cfg.get("tie_word_embeddings", False)
    args.shared_classifier = bool(tied)
    model = Transformer(args)
    try:
        sd = {"tok_embeddings.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"],
              "output.weight": hf["model.embed_tokens.weight"] if tied else hf["lm_head.weight"]}
        for i in range(args.n_layers):
            for ours, theirs in HF_LAYER.items():
                w = hf[f"model.layers.{i}.{theirs}.weight"]
                if ours == "attention.wq":
                    w = _unpermute(w, args.n_heads)
                elif ours == "attention.wk":
                    w = _unpermute(w, args.n_kv_heads)
                sd[f"layers.{i}.{ours}.weight"] = w
        model.load_state_dict(sd, strict=True)
    except KeyError as e:
        raise ValueError(f"{path}: weight {e} missing from the safetensors") from None
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit config.json ({str(e).splitlines()[0]})") from None
    return model.eval()


# ---------------------------------------------------------------------------------------------
# model card (the form of ../shared/seeds/003_*.txt, with this model's numbers)

def _human(n):
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _sample_story(model, tokenizer_path, prompt):
    """A real sample for the card: temperature 0.8, top-p 0.9, fixed seed."""
    from sentencepiece import SentencePieceProcessor
    sp = SentencePieceProcessor(model_file=str(tokenizer_path))
    ids = torch.tensor([[sp.bos_id()] + sp.encode(prompt)], device=model.output.weight.device)
    g = torch.Generator(device=ids.device).manual_seed(42)
    n = min(200, model.params.max_seq_len - ids.size(1))
    out = model.generate(ids, n, temperature=0.8, top_p=0.9, stop_ids=[sp.bos_id(), sp.eos_id()], generator=g)
    new = [t for t in out[0, ids.size(1):].tolist() if t not in (sp.bos_id(), sp.eos_id())]
    return sp.decode(new)


def model_card(model, train_config=None, checkpoint_info=None, tokenizer_path=None):
    p = model.params
    c = train_config or {}
    shared = _is_shared(model)
    n = model.num_params()
    tok_desc = f"{p.vocab_size:,}"
    if tokenizer_path is not None:
        tok_desc += f" (sentencepiece `{Path(tokenizer_path).name}`, included)"
    trained_here = bool(c)
    lines = ["---", "language:", "- en", "license: mit", "tags:", "- text-generation", "- llama",
             "- llama2.c", "- babyllama"]
    if trained_here:
        lines += ["- tinystories", "- storytelling", "datasets:", "- roneneldan/TinyStories"]
    if tokenizer_path is not None:
        lines += ["widget:", '- text: "Once upon a time, there was a"', '  example_title: "Story Beginning"',
                  '- text: "One day, Lily met a"', '  example_title: "Character Introduction"']
    lines += ["---", "", "# TinyStories Llama Model" if trained_here else "# Llama 2 Model (babyllama export)", "",
              "## Model Description", ""]
    if trained_here:
        lines += ["This is a small Llama-architecture language model trained with babyllama's `train.py` on the "
                  "[TinyStories dataset](https://huggingface.co/datasets/roneneldan/TinyStories): simple "
                  "stories in words a 3-4 year old understands."]
    else:
        lines += ["A small Llama-architecture language model converted by babyllama's `export.py` from a "
                  "llama2.c checkpoint; its training settings were not recorded in the source file."]
    lines += ["", "**Model Architecture:** Llama 2  ", "**Training Framework:** PyTorch  ",
              "**Implementation:** babyllama, after [llama2.c](https://github.com/karpathy/llama2.c)", "",
              "## Model Details", "", "### Architecture Hyperparameters", "",
              f"- **Dimension:** {p.dim}", f"- **Number of Layers:** {p.n_layers}",
              f"- **Number of Attention Heads:** {p.n_heads}", f"- **Number of KV Heads:** {p.n_kv_heads}",
              f"- **Head Size:** {p.dim // p.n_heads}", f"- **FFN Hidden Dimension:** {p.hidden_dim}",
              f"- **Vocabulary Size:** {tok_desc}", f"- **Maximum Sequence Length:** {p.max_seq_len} tokens",
              f"- **Dropout:** {p.dropout}", f"- **Hidden Dimension Multiple:** {p.multiple_of}",
              f"- **RMSNorm epsilon:** {p.norm_eps}", f"- **RoPE theta:** 10000",
              f"- **Tied input/output embeddings:** {'yes' if shared else 'no'}", "",
              f"**Total Parameters:** {n:,} (~{_human(n)})", ""]
    if trained_here:
        g = lambda k, d=None: c.get(k, d)  # noqa: E731
        bs, acc = g("batch_size"), g("gradient_accumulation_steps", 1)
        seq = g("max_seq_len", p.max_seq_len)
        lines += ["### Training Hyperparameters", ""]
        # train.py's gradient_accumulation_steps counts micro-batches over all processes together
        rows = [("Batch Size", f"{bs} (micro-batch)" if bs is not None else None),
                ("Gradient Accumulation Steps", f"{acc} (over all processes)"),
                ("Effective Batch Size", bs * acc if bs is not None else None),
                ("Learning Rate", f"{g('learning_rate')} (max)" if g("learning_rate") is not None else None),
                ("Minimum Learning Rate", g("min_lr")),
                ("Learning Rate Schedule", ("Cosine decay with warmup" if g("decay_lr", True) else "constant")
                 if g("learning_rate") is not None else None),
                ("Warmup Iterations", g("warmup_iters")), ("Total Training Iterations", g("max_iters")),
                ("Time Budget", f"{g('max_minutes')} minutes" if g("max_minutes") else None),
                ("Weight Decay", g("weight_decay")), ("Beta1", g("beta1")), ("Beta2", g("beta2")),
                ("Gradient Clipping", g("grad_clip")), ("Optimizer", "AdamW"), ("Precision", g("dtype")),
                ("Seed", g("seed"))]
        lines += [f"- **{k}:** {v}" for k, v in rows if v is not None]
        if bs is not None:
            lines += ["", f"**Tokens per Iteration:** {bs * acc * seq:,} "
                          f"({acc} micro-batches × {bs} sequences × {seq} tokens)"]
        info = checkpoint_info or {}
        if info.get("iter_num") is not None:
            lines += ["", f"**Iterations trained:** {info['iter_num']:,}  "]
        if info.get("best_val_loss") is not None:
            lines += [f"**Best validation loss:** {float(info['best_val_loss']):.4f}"]
        lines += [""]
    lines += ["## Intended Use", "", "This model is intended for:",
              "- Generating simple stories" if trained_here else "- Generating text like its training data",
              "- Educational demonstrations of small-scale language model training",
              "- Experimentation with efficient inference (e.g. babyllama's pure C engine)", "",
              "## Limitations", "",
              "- **Domain-Specific:** trained on a narrow corpus; it will not do general text generation well",
              f"- **Context Length:** at most {p.max_seq_len} tokens",
              "- **No Instruction Following:** a base model without instruction tuning", ""]
    if trained_here:
        lines += ["## Training Data", "",
                  "The [TinyStories dataset](https://huggingface.co/datasets/roneneldan/TinyStories) "
                  "(Eldan & Li, 2023; CDLA-Sharing-1.0): short stories generated to contain only words that a "
                  "typical 3-4 year old would understand.", ""]
    if tokenizer_path is not None:
        prompt = "Once upon a time, there was a little girl named Lily."
        story = _sample_story(model, tokenizer_path, prompt)
        lines += ["## Example Outputs", "", f'**Prompt:** "{prompt}"', "",
                  "**Generation (temperature=0.8, top_p=0.9, seed 42, this model):**", "```", story.strip(), "```", ""]
    lines += ["## Usage", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
              'tok = AutoTokenizer.from_pretrained("path/to/this/folder")', "```", "",
              "## Citation", "", "```bibtex", "@misc{llama2c,", "  author = {Andrej Karpathy},",
              "  title = {llama2.c: Inference Llama 2 in one file of pure C},", "  year = {2023},",
              "  publisher = {GitHub},", "  url = {https://github.com/karpathy/llama2.c}", "}", "",
              "@article{eldan2023tinystories,",
              "  title={TinyStories: How Small Can Language Models Be and Still Speak Coherent English?},",
              "  author={Eldan, Ronen and Li, Yuanzhi},", "  journal={arXiv preprint arXiv:2305.07759},",
              "  year={2023}", "}", "```", "", "## License", "", "MIT License.", "",
              "## Acknowledgments", "",
              "- Architecture and formats after [llama2.c](https://github.com/karpathy/llama2.c) by Andrej Karpathy",
              "- Llama 2 architecture by Meta AI"]
    if trained_here:
        lines += ["- Trained on [TinyStories](https://huggingface.co/datasets/roneneldan/TinyStories) by Ronen Eldan and Yuanzhi Li"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# CLI

def _find_tokenizer(recorded):
    """The recorded tokenizer path, or the project's tokenizer.model, whichever has the recorded sha256."""
    for cand in (recorded.get("path"), DEFAULT_TOKENIZER):
        if cand and Path(cand).is_file() and hashlib.sha256(Path(cand).read_bytes()).hexdigest() == recorded["sha256"]:
            return str(cand)
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert between train.py checkpoints, llama2.c .bin files "
                                             "(versions 0, 1, 2) and Hugging Face Llama folders.")
    ap.add_argument("out", help="output .bin file, or output folder with --hf")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="train.py checkpoint (ckpt.pt) to read")
    src.add_argument("--bin", help="llama2.c .bin (version 0, 1 or 2) to read")
    src.add_argument("--from_hf", help="Hugging Face Llama folder to read")
    ap.add_argument("--version", type=int, choices=(0, 1, 2), default=0,
                    help="llama2.c format to write: 0 legacy (default, what llama2.c's run reads), 1 fp32, 2 int8")
    ap.add_argument("--group_size", type=int, default=64,
                    help="int8 group size for --version 2 (halved until it divides dim and hidden_dim)")
    ap.add_argument("--hf", action="store_true", help="write a Hugging Face LlamaForCausalLM folder instead")
    ap.add_argument("--tokenizer", default=None,
                    help="sentencepiece .model to ship with --hf (default: the checkpoint's, else ./tokenizer.model)")
    a = ap.parse_args(argv)
    try:
        ckpt = {}
        if a.checkpoint:
            model, ckpt = read_checkpoint(a.checkpoint)
        elif a.bin:
            model = load_bin(a.bin)
        else:
            model = load_hf(a.from_hf)
        if a.hf:
            tok, use_default = a.tokenizer, True
            recorded = ckpt.get("tokenizer") or {}
            if tok is None and recorded.get("sha256"):
                # ship only the very tokenizer the model was trained with: its recorded file, or the
                # project's tokenizer.model if that is the same file
                tok = _find_tokenizer(recorded)
                use_default = False
                if tok is None:
                    print(f"warning: the checkpoint's tokenizer ({recorded.get('path')}, sha256 "
                          f"{recorded['sha256'][:12]}...) was not found; pass --tokenizer", file=sys.stderr)
            info = {k: ckpt.get(k) for k in ("iter_num", "best_val_loss")}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = export_hf(model, a.out, tok, ckpt.get("config"), info, default_tokenizer=use_default)
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
            print(f"wrote Hugging Face folder {out} ({model.num_params():,} parameters)")
            return
        if a.version == 0:
            export_v0(model, a.out)
        elif a.version == 1:
            export_v1(model, a.out)
        else:
            gs = export_v2(model, a.out, a.group_size)
            if gs != a.group_size:
                print(f"note: group size {a.group_size} does not divide dim={model.params.dim} and "
                      f"hidden_dim={model.params.hidden_dim}; backed off to {gs}")
        print(f"wrote {a.out} (llama2.c version {a.version}, {os.path.getsize(a.out):,} bytes)")
    except (FileNotFoundError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
