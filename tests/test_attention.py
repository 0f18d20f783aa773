"""attention.py / attention.c, the CPU attention kernel for training: the output and all three
gradients against PyTorch's scaled_dot_product_attention computed in float64, over shapes that
reach every path (head widths the kernel specializes and others, T that is and is not a multiple of
16, T = 1, grouped-query attention down to one kv head); a whole model's loss and gradients with
either kernel; torch.compile over it; the fallbacks; bad arguments."""
import pytest
import torch
import torch.nn.functional as F

import attention
from model import ModelArgs, Transformer

pytestmark = pytest.mark.skipif(not attention.available(),
                                reason="babyllama._attention is not compiled (pip install -e . or make build/.bindings)")


def reference(q, k, v):
    """SDPA on [B, T, H, D] with kv heads repeated as model.py does."""
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return y.transpose(1, 2)


def run(fn, q, k, v, g, dtype):
    """Output and input gradients of sum(fn(q, k, v) * g), all as float64."""
    leaves = [t.to(dtype).clone().requires_grad_() for t in (q, k, v)]
    y = fn(*leaves)
    (y.double() * g).sum().backward()
    return [y.double()] + [t.grad.double() for t in leaves]


@pytest.mark.parametrize("B,T,H,KV,D", [
    (2, 17, 4, 2, 8),     # 260K's head width, a partial last block, GQA
    (2, 64, 6, 6, 48),    # 15M's head width
    (1, 40, 5, 5, 32),    # the cpu preset's
    (2, 33, 2, 2, 64),
    (1, 1, 2, 1, 5),      # one position
    (2, 100, 8, 1, 13),   # an unspecialized width, one kv head for eight query heads
    (1, 20, 2, 2, 80),    # wider than the specialized ones
])
def test_matches_sdpa_in_float64(B, T, H, KV, D):
    gen = torch.Generator().manual_seed(B * 1000 + T * 10 + D)
    q, k = (torch.randn(B, T, n, D, generator=gen, dtype=torch.float64) * 2 for n in (H, KV))
    v = torch.randn(B, T, KV, D, generator=gen, dtype=torch.float64)
    g = torch.randn(B, T, H, D, generator=gen, dtype=torch.float64)
    want = run(reference, q, k, v, g, torch.float64)
    got = run(attention.causal_attention, q, k, v, g, torch.float32)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        err = (a - b).abs().max().item() / max(b.abs().max().item(), 1e-6)
        assert err < 2e-5, f"{name}: relative error {err:.2e}"


def test_bf16_inputs_come_back_bf16_and_close():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 50, 4, 8, generator=gen).bfloat16()
    k, v = (torch.randn(2, 50, 2, 8, generator=gen).bfloat16() for _ in range(2))
    y = attention.causal_attention(q, k, v)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference(q.float(), k.float(), v.float()), atol=2e-2, rtol=2e-2)


def test_causal_rows_see_no_later_position():
    """Changing the keys and values of the last position changes only the last row."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 40, 2, 8, generator=gen) for _ in range(3))
    k2, v2 = k.clone(), v.clone()
    k2[:, -1], v2[:, -1] = 5.0, -5.0
    a, b = attention.causal_attention(q, k, v), attention.causal_attention(q, k2, v2)
    assert torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1])


def tiny_model(**kw):
    torch.manual_seed(0)
    args = dict(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=64, max_seq_len=40, multiple_of=16)
    args.update(kw)
    return Transformer(ModelArgs(**args))


def loss_and_grads(model, X, Y):
    model.zero_grad(set_to_none=True)
    _, loss = model(X, Y)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def assert_same_training_step(a, b):
    """Two (loss, gradients) of loss_and_grads agree to fp32 rounding."""
    assert abs(a[0] - b[0]) < 1e-5
    for x, y in zip(a[1], b[1]):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_whole_model_same_loss_and_gradients():
    model = tiny_model()
    X, Y = torch.randint(0, 64, (3, 40)), torch.randint(0, 64, (3, 40))
    assert model.use_kernel("sdpa") == "sdpa"
    want = loss_and_grads(model, X, Y)
    assert model.use_kernel("babyllama") == "babyllama"
    assert_same_training_step(loss_and_grads(model, X, Y), want)


def test_generation_and_dropout_fall_back_to_sdpa():
    """A KV cache (generation) and dropout go to PyTorch's kernel: the same tokens either way."""
    model = tiny_model()
    idx = torch.tensor([[1, 5, 9]])
    want = model.generate(idx, 8, temperature=0.0)
    model.use_kernel("babyllama")
    assert torch.equal(model.generate(idx, 8, temperature=0.0), want)
    assert not attention.supports(torch.zeros(1, 4, 2, 8), dropout_p=0.1)
    dmodel = tiny_model(dropout=0.2)
    dmodel.use_kernel("babyllama")
    dmodel.train()
    _, loss = dmodel(idx, idx)
    loss.backward()  # runs (through sdpa's dropout)


def test_torch_compile_runs_it():
    model = tiny_model()
    model.use_kernel("babyllama")
    X, Y = torch.randint(0, 64, (2, 40)), torch.randint(0, 64, (2, 40))
    want = loss_and_grads(model, X, Y)
    assert_same_training_step(loss_and_grads(torch.compile(model), X, Y), want)


def test_bad_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="sdpa or babyllama"):
        model.use_kernel("flash")
    with pytest.raises(ValueError, match="shapes"):
        attention.causal_attention(torch.zeros(1, 4, 3, 8), torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 2, 8))
