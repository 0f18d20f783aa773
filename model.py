"""
model.py: the Llama 2 Transformer in one readable file (in the style of llama2.c's model.py / nanoGPT).

What it does: RMSNorm, rotary position embeddings, grouped-query attention (n_kv_heads <= n_heads)
through PyTorch's scaled_dot_product_attention (or, for training on a CPU, attention.py's kernel:
Transformer.use_kernel), a SwiGLU feed-forward with llama2.c's `multiple_of` rule, token
embeddings tied to the output classifier by default, dropout, and `generate()` with a real KV cache
(the prompt is run once, then one token per step) and temperature / top-k / top-p sampling.
Also: parameter count, a FLOPs-per-token estimate and MFU, and AdamW parameter groups.

Parameter names and the rotary convention are llama2.c's, so a model loaded from one of its `.bin`
files computes the same logits as its `run.c` (rotary embeddings rotate interleaved pairs
(x[2i], x[2i+1]) of each head by pos * 10000^(-2i/head_size)).

What it does not do: training loops (train.py), file formats (export.py), tokenization (tokenizer.py).
"""
import inspect
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import attention


@dataclass
class ModelArgs:
    dim: int = 288
    n_layers: int = 6
    n_heads: int = 6
    n_kv_heads: Optional[int] = None  # None: same as n_heads (no grouped-query attention)
    vocab_size: int = 32000
    hidden_dim: Optional[int] = None  # None: llama2.c's rule, see ffn_hidden_dim()
    multiple_of: int = 32
    norm_eps: float = 1e-5
    max_seq_len: int = 256
    dropout: float = 0.0
    shared_classifier: bool = True  # output.weight is tok_embeddings.weight

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.dim % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide dim={self.dim}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"head size {self.dim // self.n_heads} must be even for rotary embeddings")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}")
        if self.hidden_dim is None:
            self.hidden_dim = ffn_hidden_dim(self.dim, self.multiple_of)


def ffn_hidden_dim(dim, multiple_of):
    """llama2.c's rule: 4*dim, then 2/3 of that (SwiGLU has three matrices), rounded up to multiple_of."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalize in fp32 even under autocast: the mean of squares is where low precision hurts
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def precompute_freqs_cis(head_size, end, theta=10000.0):
    """cos and sin tables [end, head_size/2] for rotating pair i of a head by pos * theta^(-2i/head_size)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_size, 2)[: head_size // 2].float() / head_size))
    angles = torch.outer(torch.arange(end, dtype=torch.float32), freqs)
    return torch.cos(angles), torch.sin(angles)


def apply_rotary_emb(x, cos, sin):
    """x [B, T, H, head_size], cos/sin [T, head_size/2]: rotate each interleaved pair (x0, x1)."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xf.unbind(-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def repeat_kv(x, n_rep):
    """[B, T, KV, hs] -> [B, T, KV*n_rep, hs]: query head h uses kv head h // n_rep (as run.c does)."""
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=2)


class KVCache:
    """Keys and values of every layer for positions [0, max_seq_len), filled as generation proceeds."""

    def __init__(self, args, batch_size, device, dtype):
        hs = args.dim // args.n_heads
        shape = (batch_size, args.max_seq_len, args.n_kv_heads, hs)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.n_layers)]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads = args.n_heads, args.n_kv_heads
        self.n_rep = args.n_heads // args.n_kv_heads
        self.head_size = args.dim // args.n_heads
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_size, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_size, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_size, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_size, args.dim, bias=False)
        self.dropout = args.dropout
        self.resid_dropout = nn.Dropout(args.dropout)
        self.kernel = "sdpa"  # or "babyllama": attention.py's CPU kernel where it applies (use_kernel)

    def forward(self, x, cos, sin, cache=None, layer=0, start_pos=0):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_size)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_size)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_size)
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)

        if self.kernel == "babyllama" and cache is None and T > 1 and \
                attention.supports(q, self.dropout if self.training else 0.0):
            y = attention.causal_attention(q, k, v)  # takes this layout as it is, GQA included
            return self.resid_dropout(self.wo(y.view(B, T, -1)))

        mask, causal = None, True
        if cache is not None:
            # store this chunk's keys/values, then attend over everything up to its last position
            cache.k[layer][:B, start_pos:start_pos + T] = k
            cache.v[layer][:B, start_pos:start_pos + T] = v
            k = cache.k[layer][:B, :start_pos + T]
            v = cache.v[layer][:B, :start_pos + T]
            if start_pos > 0:
                # SDPA's is_causal aligns the mask top-left, wrong when queries start mid-sequence
                causal = False
                if T > 1:
                    qpos = torch.arange(start_pos, start_pos + T, device=x.device)[:, None]
                    mask = torch.arange(start_pos + T, device=x.device)[None, :] <= qpos

        q, k, v = (t.transpose(1, 2) for t in (q, repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and T > 1,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.resid_dropout(self.wo(y))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)  # down (back to the residual)
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)  # up
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, x):
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, layer_id, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, cos, sin, cache=None, start_pos=0):
        h = x + self.attention(self.attention_norm(x), cos, sin, cache, self.layer_id, start_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, params: ModelArgs):
        super().__init__()
        self.params = params
        self.vocab_size, self.n_layers = params.vocab_size, params.n_layers
        self.tok_embeddings = nn.Embedding(params.vocab_size, params.dim)
        self.dropout = nn.Dropout(params.dropout)
        self.layers = nn.ModuleList(TransformerBlock(i, params) for i in range(params.n_layers))
        self.norm = RMSNorm(params.dim, params.norm_eps)
        self.output = nn.Linear(params.dim, params.vocab_size, bias=False)
        if params.shared_classifier:
            self.tok_embeddings.weight = self.output.weight  # weight tying (one tensor, two names)

        cos, sin = precompute_freqs_cis(params.dim // params.n_heads, params.max_seq_len)
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)

        # init as llama2.c: N(0, 0.02) everywhere, and the projections that write into the residual
        # stream (wo, w2) scaled by 1/sqrt(2*n_layers) as in GPT-2. (llama2.c scales w3 instead of w2,
        # but w3 feeds the gate product, not the residual.)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * params.n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, tokens, targets=None, cache=None, start_pos=0):
        """tokens [B, T] -> (logits [B, T, V], loss or None). With a cache, tokens sit at start_pos."""
        B, T = tokens.shape
        if start_pos + T > self.params.max_seq_len:
            raise ValueError(f"sequence of {start_pos + T} tokens exceeds max_seq_len={self.params.max_seq_len}")
        h = self.dropout(self.tok_embeddings(tokens))
        cos = self.freqs_cos[start_pos:start_pos + T]
        sin = self.freqs_sin[start_pos:start_pos + T]
        for layer in self.layers:
            h = layer(h, cos, sin, cache, start_pos)
        logits = self.output(self.norm(h))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-100)
        return logits, loss

    def use_kernel(self, kernel):
        """Which attention kernel the layers use: "sdpa" (PyTorch's scaled_dot_product_attention) or
        "babyllama" (attention.py's, for training on a CPU; calls it cannot run, such as generation
        with a KV cache or dropout, still go to sdpa). Returns the kernel in effect."""
        if kernel not in ("sdpa", "babyllama"):
            raise ValueError(f"attention kernel {kernel!r}: expected sdpa or babyllama")
        if kernel == "babyllama" and not attention.available():
            raise ValueError("attention kernel babyllama: babyllama._attention is not compiled "
                             "(pip install -e . or make build/.bindings)")
        for layer in self.layers:
            layer.attention.kernel = kernel
        return kernel

    # ---- accounting --------------------------------------------------------------------------
    def num_params(self):
        """Number of parameters, a tied embedding/classifier counted once."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward), PaLM appendix B / nanoGPT:
        6 per weight (2 forward, 4 backward) plus the attention scores and the weighted sum over a
        full context of max_seq_len: 12 * n_layers * n_heads * head_size * max_seq_len.
        An untied input embedding is a lookup and costs no multiply-adds, so it is left out of N."""
        p = self.params
        n = self.num_params()
        if not p.shared_classifier:
            n -= self.tok_embeddings.weight.numel()
        return 6 * n + 12 * p.n_layers * p.n_heads * (p.dim // p.n_heads) * p.max_seq_len

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=312e12):
        """Model FLOPs utilization: achieved FLOP/s over peak_flops (default: an A100's bf16 peak).
        fwdbwd_per_iter = sequences of max_seq_len per iteration, dt = seconds per iteration."""
        flops_per_iter = self.flops_per_token() * self.params.max_seq_len * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices and embeddings (>= 2-D) only, not on norm gains.
        Uses the fused kernel when this PyTorch has one for the device, else the default one."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        if "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in ("cuda", "cpu", "mps", "xpu"):
            try:
                return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)
            except (RuntimeError, ValueError, TypeError):
                pass  # no fused kernel for this device/dtype: the default implementation works everywhere
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)

    # ---- inference ---------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_ids=None,
                 generator=None, end_bias=0.0, end_bias_after=200, bos_id=1, topic=None, ending=None,
                 tags=None, tokenizer=None):
        """Extend idx [B, T] by up to max_new_tokens tokens and return [B, T + n].

        The prompt is run through the model once to fill a KV cache; after that each step feeds only
        the newest token. temperature 0 takes the argmax; otherwise logits / temperature, optionally
        cut to the top_k most likely tokens and/or the smallest set with probability mass >= top_p,
        then sampled (with `generator` if given). Generation ends early once every row has produced
        one of stop_ids; the stop token is kept, and a finished row repeats it after that.
        When the context fills up (max_seq_len), the cache is rebuilt from the last half of the
        sequence and generation continues (a sliding window in steps of max_seq_len / 2).

        A story on request, as run.c's -a/-e/-g and the bindings: with topic (and ending) and/or
        tags, the prompt is conditions.build_prompt(topic, ending, tags) followed by idx, which is
        then the story's start as text (a str, or None), encoded with BOS by `tokenizer` (anything
        with encode(text, bos, eos), e.g. tokenizer.Tokenizer) into one row.
        Seed 001's end-of-story bias, exactly as run.c's bl_end_bias: before the n-th new token
        (n = 1, 2, ...) the logit of bos_id gets end_bias * (n - end_bias_after) (in float32) when
        n > end_bias_after, so stories end on their own; 0 (the default) changes nothing."""
        if topic is not None or ending is not None or tags is not None:
            from conditions import build_prompt
            if tokenizer is None:
                raise ValueError("topic/ending/tags need a tokenizer to encode the prompt")
            if idx is not None and not isinstance(idx, str):
                raise TypeError("with topic/ending/tags, idx is the story's start as text (a str) or None")
            ids = tokenizer.encode(build_prompt(topic, ending, tags) + (idx or ""), bos=True, eos=False)
            idx = torch.tensor([ids], dtype=torch.long, device=self.output.weight.device)
        if not end_bias >= 0 or end_bias == float("inf") or end_bias_after < 0:
            raise ValueError(f"end_bias {end_bias} must be finite and >= 0, end_bias_after {end_bias_after} >= 0")
        if max_new_tokens <= 0:
            return idx
        was_training = self.training
        self.eval()  # no dropout while generating
        try:
            return self._generate(idx, max_new_tokens, temperature, top_k, top_p, stop_ids, generator,
                                  (end_bias, end_bias_after, bos_id))
        finally:
            self.train(was_training)

    def _generate(self, idx, max_new_tokens, temperature, top_k, top_p, stop_ids, generator, bias):
        p = self.params
        stop = torch.tensor(sorted(set(stop_ids or [])), device=idx.device, dtype=idx.dtype)
        B = idx.size(0)
        cache = KVCache(p, B, idx.device, self.output.weight.dtype)
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)

        ctx = idx[:, -p.max_seq_len:]
        logits, _ = self(ctx, cache=cache, start_pos=0)
        pos = ctx.size(1)
        for step in range(max_new_tokens):
            last = logits[:, -1, :].float()
            rate, after, bos = bias
            if rate and step + 1 > after:  # float32 product, as C's rate * (float)(n - after)
                push = torch.tensor(rate, dtype=torch.float32) * torch.tensor(step + 1 - after, dtype=torch.float32)
                last = last.clone()
                last[:, bos] += push.to(last.device)
            nxt = self._sample(last, temperature, top_k, top_p, generator)
            if len(stop):
                nxt = torch.where(done, idx[:, -1], nxt)
                done |= torch.isin(nxt, stop)
            idx = torch.cat((idx, nxt[:, None]), dim=1)
            if (len(stop) and bool(done.all())) or step == max_new_tokens - 1:
                break
            if pos == p.max_seq_len:  # context full: re-run the last half, then carry on one by one
                ctx = idx[:, -(p.max_seq_len // 2):]
                logits, _ = self(ctx, cache=cache, start_pos=0)
                pos = ctx.size(1)
            else:
                logits, _ = self(nxt[:, None], cache=cache, start_pos=pos)
                pos += 1
        return idx

    @staticmethod
    def _sample(logits, temperature, top_k, top_p, generator):
        if temperature == 0.0:
            return torch.argmax(logits, dim=-1)
        logits = logits / temperature
        if top_k is not None and top_k > 0:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        if top_p is not None and 0.0 < top_p < 1.0:
            sorted_p, order = torch.sort(probs, dim=-1, descending=True)
            # drop a token when the mass before it already reaches top_p (the first always stays)
            drop = (torch.cumsum(sorted_p, dim=-1) - sorted_p) >= top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
