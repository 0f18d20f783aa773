"""
attention.py: causal self-attention on the CPU through attention.c, as a PyTorch operator with its
own backward, for training (model.py uses it when asked; train.py's --attention).

    from attention import causal_attention, available
    y = causal_attention(q, k, v)   # q [B, T, H, D], k and v [B, T, KV, D] -> [B, T, H, D]

Why: PyTorch's CPU flash attention is slow for narrow heads (attention.c's header says why and how
this is faster; bench/train_speed.py measures it). The operator is registered with
torch.library, so torch.compile treats it as one opaque call, and autograd saves only the output
and each row's log-sum-exp (the backward recomputes the probabilities, as flash attention does).
It computes in fp32 whatever the input dtype (bf16 under autocast comes back as bf16).

What it does not do: dropout, masks other than causal, KV caches, or devices other than the CPU;
`supports()` says whether a call qualifies, and model.py falls back to scaled_dot_product_attention
otherwise. The C code is compiled with the bindings (`pip install .`, `make build/.bindings`) into
babyllama._attention; `available()` is False where that did not happen.
"""
import torch

try:
    from babyllama._attention import ffi, lib
except ImportError:  # not compiled (a checkout without `pip install -e .` or `make build/.bindings`)
    ffi = lib = None
_AVAILABLE = lib is not None  # a plain bool: torch.compile cannot guard on cffi's objects
MAX_HEAD_SIZE = 256  # attention.c's MAX_D


def available():
    """Whether the compiled kernel can be used."""
    return _AVAILABLE


def supports(q, dropout_p=0.0):
    """Whether causal_attention can run this call (else use PyTorch's kernel)."""
    return (_AVAILABLE and q.device.type == "cpu" and dropout_p == 0.0 and q.shape[1] > 0
            and q.shape[3] <= MAX_HEAD_SIZE)


def _ptr(t):
    return ffi.cast("float *", t.data_ptr())


def _check(rc, what):
    if rc != 0:
        raise RuntimeError(f"attention.c: {what} failed (bad shape or out of memory)")


@torch.library.custom_op("babyllama::attention", mutates_args=(), device_types="cpu")
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, H, D = q.shape
    out, lse = torch.empty_like(q), q.new_empty(B, H, T)
    rc = lib.bl_attention_forward(_ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(lse), B, T, H, k.shape[2], D,
                                  D ** -0.5, torch.get_num_threads())
    _check(rc, "forward")
    return out, lse


@_forward.register_fake
def _(q, k, v):
    B, T, H, _ = q.shape
    return torch.empty_like(q), q.new_empty(B, H, T)


@torch.library.custom_op("babyllama::attention_backward", mutates_args=(), device_types="cpu")
def _backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
              lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, T, H, D = q.shape
    dout = dout.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    rc = lib.bl_attention_backward(_ptr(dout), _ptr(q), _ptr(k), _ptr(v), _ptr(out), _ptr(lse), _ptr(dq),
                                   _ptr(dk), _ptr(dv), B, T, H, k.shape[2], D, D ** -0.5, torch.get_num_threads())
    _check(rc, "backward")
    return dq, dk, dv


@_backward.register_fake
def _(dout, q, k, v, out, lse):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output)


def _autograd_backward(ctx, dout, dlse):  # lse is not used downstream: dlse is ignored
    q, k, v, out, lse = ctx.saved_tensors
    return _backward(dout, q, k, v, out, lse)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def causal_attention(q, k, v):
    """softmax(q k^T / sqrt(D), causal) v for q [B, T, H, D] and k, v [B, T, KV, D] (KV divides H:
    query head h reads kv head h // (H // KV)); returns [B, T, H, D] in q's dtype."""
    B, T, H, D = q.shape
    if k.shape != v.shape or k.shape[:2] != (B, T) or k.shape[3] != D or H % k.shape[2]:
        raise ValueError(f"causal_attention: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    f32 = [t.float().contiguous() for t in (q, k, v)]
    return _forward(*f32)[0].to(q.dtype)
