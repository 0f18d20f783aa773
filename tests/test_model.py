"""model.py: llama2.c's golden outputs reproduced in PyTorch, KV cache == full forward, GQA, loss, optimizer."""
import math

import pytest
import torch

from conftest import AIDREAMS, ROOT, TINYSTORIES, need
from model import KVCache, ModelArgs, Transformer, ffn_hidden_dim


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def tiny(**kw):
    torch.manual_seed(kw.pop("seed", 0))
    args = dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=97, max_seq_len=48)
    args.update(kw)
    return Transformer(ModelArgs(**args)).eval()


def run_like_llama2c(model, tok, prompt, steps):
    """What llama2.c's `run -t 0 -n steps -i prompt` prints (FORMATS.md §4): BOS + prompt, steps counts
    positions including the prompt (0 or > seq_len: seq_len), stop before BOS, a final newline."""
    ids = tok.encode(prompt, bos=True)
    if steps <= 0 or steps > model.params.max_seq_len:
        steps = model.params.max_seq_len
    # positions 0..steps-1 each produce one next token; the first len(ids)-1 are the prompt's own
    n_new = steps - len(ids) + 1
    out = model.generate(torch.tensor([ids]), n_new, temperature=0.0, stop_ids=[tok.bos_id])[0].tolist()
    if len(out) > len(ids) and out[-1] == tok.bos_id:
        out = out[:-1]
    return tok.decode(out) + b"\n"


@pytest.fixture(scope="module")
def aidreams():
    from export import load_bin
    from tokenizer import BinTokenizer
    model = load_bin(need(AIDREAMS / "aidreams260K.bin"))
    return model, BinTokenizer(need(AIDREAMS / "tok512.bin"), model.params.vocab_size)


@pytest.mark.parametrize("prompt,steps,golden", [
    ("", 128, "expected_greedy_n128.txt"),
    ("I dreamed", 64, "expected_greedy_n64_prompt_I_dreamed.txt"),
])
def test_aidreams_greedy_matches_llama2c_run(aidreams, prompt, steps, golden):
    model, tok = aidreams
    assert model.params.n_kv_heads == 4 and model.params.max_seq_len == 128
    expected = need(AIDREAMS / golden).read_bytes()
    assert run_like_llama2c(model, tok, prompt, steps) == expected


def test_bin_tokenizer_encodes_like_sentencepiece():
    """BinTokenizer (tokenizer.bin alone) against sentencepiece on the same vocabulary."""
    from tokenizer import BinTokenizer, Tokenizer
    sp = Tokenizer(need(ROOT / "tokenizer.model"))
    bt = BinTokenizer(need(ROOT / "tokenizer.bin"), sp.n_words)
    text = need(TINYSTORIES / "TinyStories-train.head.txt").read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split("<|endoftext|>")[:12] if s.strip()]
    stories += ["Tom said: \"1234 apples!\"", "Zoë went to the café."]  # digits, non-ASCII
    for s in stories:
        ids = bt.encode(s)
        assert ids == sp.encode(s), s[:60]
    for s in stories[:-1]:
        assert bt.decode(bt.encode(s)).decode("utf-8") == s
    # "ë" is not in this vocabulary: it is encoded as two byte tokens, and run.c prints neither
    ids = bt.encode("Zoë")
    assert [i - 3 for i in ids[-2:]] == list("ë".encode("utf-8"))
    assert bt.decode(ids) == b"Zo"


def test_kv_cache_gives_full_forward_logits():
    model = tiny()
    x = torch.randint(0, 97, (2, 40))
    full, _ = model(x)
    cache = KVCache(model.params, 2, "cpu", torch.float32)
    parts = [model(x[:, :9], cache=cache, start_pos=0)[0],     # prefill
             model(x[:, 9:20], cache=cache, start_pos=9)[0]]   # a chunk mid-sequence (needs its own mask)
    parts += [model(x[:, t:t + 1], cache=cache, start_pos=t)[0] for t in range(20, 40)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)


def test_generate_greedy_equals_uncached_loop():
    model = tiny(seed=1)
    idx = torch.randint(0, 97, (2, 5))
    ref = idx
    for _ in range(30):  # the plain way: re-run the whole prefix every step
        ref = torch.cat((ref, model(ref)[0][:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(model.generate(idx, 30, temperature=0.0), ref)


def test_generate_samples_stop_ids_and_long_runs():
    model = tiny(seed=2)
    idx = torch.randint(0, 97, (1, 4))
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a = model.generate(idx, 20, temperature=0.8, top_k=10, top_p=0.9, generator=g())
    b = model.generate(idx, 20, temperature=0.8, top_k=10, top_p=0.9, generator=g())
    assert torch.equal(a, b) and a.shape == (1, 24)
    # top_k=1 is greedy whatever the temperature
    assert torch.equal(model.generate(idx, 20, temperature=5.0, top_k=1), model.generate(idx, 20, temperature=0.0))
    # stop at the first stop id, keeping it
    greedy = model.generate(idx, 20, temperature=0.0)[0, 4:].tolist()
    stop = greedy[5]
    out = model.generate(idx, 20, temperature=0.0, stop_ids=[stop])[0, 4:].tolist()
    assert out == greedy[:greedy.index(stop) + 1]
    # past max_seq_len (48) the context slides instead of failing
    assert model.generate(idx, 100, temperature=0.0).shape == (1, 104)


def test_top_p_keeps_the_nucleus_only():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {Transformer._sample(logits, 1.0, None, 0.7, None).item() for _ in range(300)}
    assert seen == {0, 1}  # 0.5 < 0.7 needs the second token; 0.8 >= 0.7 stops there


def test_gqa_shapes_and_head_sharing():
    model = tiny()
    att = model.layers[0].attention
    assert att.wq.weight.shape == (64, 64) and att.wk.weight.shape == (16, 64) and att.wv.weight.shape == (16, 64)
    x = torch.randint(0, 97, (3, 11))
    logits, loss = model(x)
    assert logits.shape == (3, 11, 97) and logits.dtype == torch.float32 and loss is None
    # GQA == multi-head attention whose kv heads are copies: query head h reads kv head h // (8/2)
    mha = Transformer(ModelArgs(**{**model.params.__dict__, "n_kv_heads": 8})).eval()
    sd = model.state_dict()
    for i in range(2):
        for w in ("wk", "wv"):
            k = f"layers.{i}.attention.{w}.weight"
            sd[k] = sd[k].view(2, 8, 64).repeat_interleave(4, dim=0).reshape(64, 64)
    mha.load_state_dict(sd)
    assert torch.allclose(mha(x)[0], logits, atol=1e-5, rtol=0)


def test_loss_ignores_minus_100():
    model = tiny()
    x = torch.randint(0, 97, (2, 16))
    y = torch.randint(0, 97, (2, 16))
    y[0, :5] = -100
    y[1, 10:] = -100
    logits, loss = model(x, y)
    keep = y != -100
    manual = torch.nn.functional.cross_entropy(logits[keep], y[keep])
    assert torch.allclose(loss, manual)
    assert torch.isfinite(loss) and abs(loss.item() - math.log(97)) < 0.5  # fresh init: near uniform


def test_tied_and_untied_classifier():
    shared, untied = tiny(), tiny(shared_classifier=False)
    assert shared.output.weight is shared.tok_embeddings.weight
    assert untied.output.weight is not untied.tok_embeddings.weight
    assert untied.num_params() - shared.num_params() == 97 * 64


def test_hidden_dim_rule_and_published_shapes():
    assert [ffn_hidden_dim(d, 32) for d in (288, 512, 768)] == [768, 1376, 2048]  # stories15M/42M/110M
    m = Transformer(ModelArgs())  # the seed model card's shape: stories15M
    assert m.num_params() == 15_191_712
    n, L, T = 15_191_712, 6, 256
    assert m.flops_per_token() == 6 * n + 12 * L * 6 * 48 * T
    # 100 sequences per iteration in 1 s on a 1 TFLOP/s machine
    assert m.estimate_mfu(100, 1.0, 1e12) == pytest.approx(m.flops_per_token() * T * 100 / 1e12)


@pytest.mark.parametrize("kw", [dict(dim=60, n_heads=8), dict(n_kv_heads=3), dict(dim=40, n_heads=8)])  # head size 5: odd
def test_bad_shapes_fail_at_construction(kw):
    with pytest.raises(ValueError):
        ModelArgs(**{**dict(dim=64, n_heads=8, n_kv_heads=2), **kw})


def test_configure_optimizers_trains_on_cpu():
    model = tiny(dropout=0.1).train()
    opt = model.configure_optimizers(0.1, 3e-3, (0.9, 0.95), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    x = torch.randint(0, 97, (4, 32))
    losses = []
    for _ in range(30):  # memorize one batch
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
