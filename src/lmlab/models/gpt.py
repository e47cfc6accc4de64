"""A decoder-only Transformer covering GPT-2 and Llama styles with one config.

Top-down: norms and rotary embeddings, the KV cache, attention, MLP, the block,
then the model. Parameter names follow GPT-2's checkpoints (``transformer.h.0.
attn.c_attn``...) so the GPT-2 converter is a key copy; Llama-style models use
the same names with a fused QKV projection.

Shapes: B batch, T tokens in this call, L tokens attended (cache + new),
C = n_embd, nh = n_head, nkv = n_kv_head, hs = head size.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.config import GPTConfig
from lmlab.models.linear import Linear


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            # One fused kernel: decoding small models is dominated by op count.
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)
        # Normalize in float32 as Llama does: bf16 squares lose too much precision.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def make_norm(config: GPTConfig, dim: int | None = None) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(dim or config.n_embd, config.norm_eps)
    return nn.LayerNorm(dim or config.n_embd, eps=config.norm_eps, bias=config.bias)


def rope_cache(config: GPTConfig, base: float | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of rotary embeddings (Su et al. 2021), each (block_size, hs),
    for ``base`` (default ``config.rope_base``)."""
    return _rope_tables(config.head_dim, config.block_size, base or config.rope_base)


@functools.lru_cache(maxsize=4)
def _rope_tables(hs: int, block_size: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached: a model is built twice when loaded (on meta, then with its weights) and
    # Gemma 3's tables (32k positions, two bases) take a while. Nothing writes to them:
    # ``model.to`` makes new tensors.
    # Always computed on the CPU, even inside a meta-device block (a model built to
    # receive loaded weights): torch's first meta arange imports torch._dynamo (~2 s).
    inv_freq = 1.0 / (base ** (torch.arange(0, hs, 2, dtype=torch.float32, device="cpu") / hs))
    t = torch.arange(block_size, dtype=torch.float32, device="cpu")
    freqs = torch.outer(t, inv_freq)  # (block_size, hs/2)
    # (block_size, hs): the "rotate half" layout of HF Llama, not interleaved pairs
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + hs/2) of x (B, n, T, hs) by the angles in cos/sin.

    cos/sin are (T, hs), or (B, 1, T, hs) when rows sit at different positions.
    """
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).type_as(x)


# Cache buffers ``GPT.setup_cache(reuse=True)`` keeps per model: one set per
# (batch size, length), for the shapes most recently decoded.
KEPT_CACHES = 8


class KVCache(nn.Module):
    """Preallocated keys and values of one layer for incremental decoding.

    Two ways to use it. With an int ``start`` (eager decoding, beam search,
    the server's batcher) ``update`` returns the ``start + T`` columns written
    so far, a length that grows every step. With a tensor ``start`` (the
    *static* cache that a compiled decode step needs) the new columns are
    written with ``index_copy_`` and the whole (B, nkv, max_len, hs) buffers
    are returned every step: fixed shapes, so ``torch.compile`` builds one
    graph per batch size and cache length; the model masks the columns not
    yet written.
    """

    def __init__(self, batch_size: int, max_len: int, n_kv_head: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.length = 0  # positions written so far

    @classmethod
    def holding(cls, k: torch.Tensor, v: torch.Tensor, length: int) -> KVCache:
        """A cache over given buffers (B, nkv, L, hs) whose first ``length`` columns are
        written: for a scheduler that reshapes caches itself (``batching.py``)."""
        cache = cls.__new__(cls)
        nn.Module.__init__(cache)
        cache.register_buffer("k", k, persistent=False)
        cache.register_buffer("v", v, persistent=False)
        cache.length = length
        return cache

    def update(self, start: int | torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nkv, T, hs) at positions start..start+T; return all L = start+T
        columns, or with a tensor ``start`` (0-d) the whole buffers (L = max_len)."""
        if isinstance(start, torch.Tensor):
            cols = start + torch.arange(k.size(2), device=k.device)  # (T,)
            self.k.index_copy_(2, cols, k)
            self.v.index_copy_(2, cols, v)
            return self.k, self.v
        end = start + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, rows: torch.Tensor, order: list[int] | None = None) -> None:
        """Keep rows ``rows`` (B',), in that order. Only the positions written move: the
        buffer's unused tail is as long as all the tokens still to come. Given ``order``
        (``rows`` as a list: a CPU's, where reading it costs no device sync), only the
        rows that move are copied, in place (``move_rows``). Another number of rows (a
        beam search's step 0, a row per prompt becoming one per beam, or finished
        inputs leaving) makes new buffers; a beam search sets up its own caches, so
        none kept for reuse (``setup_cache(reuse=True)``) is ever resized."""
        if rows.numel() != self.k.size(0):
            self.k = self.k.index_select(0, rows)
            self.v = self.v.index_select(0, rows)
            return
        n = self.length
        for buf in (self.k, self.v):
            if order is None or not move_rows(buf[:, :, :n], order):
                buf[:, :, :n] = buf[:, :, :n].index_select(0, rows)

    def repeat(self, n: int) -> None:
        """One cached row becomes ``n`` copies (B = 1 -> n): continuations of one prompt."""
        self.k = self.k.expand(n, -1, -1, -1).clone()
        self.v = self.v.expand(n, -1, -1, -1).clone()


MOVE_ROWS_MAX = 64  # past this many rows moved, one index_select beats a copy per row


def move_rows(t: torch.Tensor, rows: list[int], dim: int = 0) -> bool:
    """``t.index_select(dim, rows)`` written into ``t`` itself, copying only the rows that
    move: a beam search's reorder, where most beams keep their row (57% of the rows of
    a random-weight search's steps moved; more at the first steps). A row is overwritten
    once every row that reads it has been copied; rows that read each other in a cycle
    (beams that swap) set one of them aside. Against an index_select into a second
    buffer and a copy back (``KVCache.reorder``'s way before), a copy of the moved rows
    only: on the seq2seq beam cache before it became a tree, its reorders took 9
    against 11 ms of a search (AMD EPYC, 2 threads; a one-off measurement). False
    (nothing done) when more than ``MOVE_ROWS_MAX`` rows move: a call per row would
    cost more than the bytes it spares."""
    readers = [0] * len(rows)  # the rows still to read each row
    todo = []
    for r, s in enumerate(rows):
        if s != r:
            readers[s] += 1
            todo.append(r)
    if len(todo) > MOVE_ROWS_MAX:
        return False
    aside: dict[int, torch.Tensor] = {}
    while todo:
        waiting = []
        for r in todo:
            if readers[r] > 0:  # another row still reads this one
                waiting.append(r)
                continue
            s = rows[r]
            if s in aside:
                t.select(dim, r).copy_(aside[s])
            else:
                t.select(dim, r).copy_(t.select(dim, s))
                readers[s] -= 1
        if waiting and len(waiting) == len(todo):  # a cycle: one of its rows aside
            r = waiting[0]
            aside[r] = t.select(dim, r).clone()
            readers[r] = 0
        todo = waiting
    return True


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mask: torch.Tensor | None, is_causal: bool, scale: float | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``F.scaled_dot_product_attention`` computes (without dropout), step by step so
    that the weights exist: softmax(q k^T * scale + mask), (B, nh, T, L), and the output
    weights @ v, (B, nh, T, hs). The fused kernel never materializes the weights; this is
    the path ``lmlab inspect`` switches on (see the attention modules' ``kept``).

    k, v (B, nkv, L, hs) with nkv < nh are shared by nh / nkv query heads each, as
    ``enable_gqa`` does; ``mask`` is boolean (True: may attend) or additive.
    """
    nh, nkv = q.size(1), k.size(1)
    if nkv != nh:
        k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, L, hs)
        v = v.repeat_interleave(nh // nkv, dim=1)
    T, L = q.size(2), k.size(2)
    scores = (q @ k.transpose(-2, -1)) * (scale or q.size(-1) ** -0.5)  # (B, nh, T, L)
    if is_causal:  # SDPA's is_causal: the top-left aligned lower triangle
        mask = torch.ones(T, L, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = (scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
                  else scores + mask)
    weights = scores.float().softmax(dim=-1).to(q.dtype)  # (B, nh, T, L)
    return weights @ v, weights


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None, scale: float | None) -> torch.Tensor:
    """Attention of one new query per row, q (B, nh, 1, hs), over k, v (B, nkv, L, hs), as
    sums of elementwise products: the decode step's attention inside torch.compile.

    Inductor turns each sum into one fused loop (no product is materialized), with
    the grouped heads read straight from the nkv cached ones; the fused SDPA kernel
    is an opaque call with a fixed cost that dominates at one query. Timed once on an
    AMD EPYC, 2 threads: 30 layers of SmolLM2's shape (9 heads over 3, 128 cached
    columns) took 0.21 ms against SDPA's 0.88 ms. ``mask`` as for SDPA (boolean,
    True: may attend; or additive), broadcastable to (B, 1, 1, L).
    """
    B, nh, _, hs = q.shape
    nkv, L = k.size(1), k.size(2)
    qg = q.view(B, nkv, nh // nkv, 1, hs)  # query heads grouped by the key head they share
    scores = (qg * k[:, :, None]).sum(-1) * (scale or hs ** -0.5)  # (B, nkv, g, L)
    if mask is not None:
        mask = mask.reshape(mask.size(0), 1, 1, L)
        scores = (scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
                  else scores + mask)
    weights = scores.float().softmax(dim=-1).to(q.dtype)  # (B, nkv, g, L)
    y = (weights[..., None] * v[:, :, None]).sum(-2)  # (B, nkv, g, hs)
    return y.reshape(B, nh, 1, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        qkv_dim = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.c_attn = Linear(config.n_embd, qkv_dim, bias=config.bias)
        self.c_proj = Linear(config.n_head * config.head_dim, config.n_embd, bias=config.bias)
        if config.qk_norm:
            # Gemma 3 normalizes each head's queries and keys (Dehghani et al. 2023):
            # bounded attention logits without Gemma 2's soft-capping.
            self.q_norm = make_norm(config, config.head_dim)
            self.k_norm = make_norm(config, config.head_dim)
        self.qk_norm = config.qk_norm
        self.scale = (config.query_pre_attn_scalar ** -0.5
                      if config.query_pre_attn_scalar is not None else None)
        self.local = config.is_local(layer)  # a sliding-window layer
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.kv_cache: KVCache | None = None
        # A list while ``lmlab inspect`` looks (``inspect_model.keep_attention``): each call
        # then appends its (weights (B, nh, T, L), values (B, nkv, L, hs)).
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                start_pos: int | torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        hs, nh, nkv = self.head_dim, self.n_head, self.n_kv_head
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            # Queries and keys rotated in one call: half the small ops per layer.
            qk = apply_rope(torch.cat([q, k], dim=1), *rope)  # (B, nh + nkv, T, hs)
            q, k = qk.split([nh, nkv], dim=1)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(start_pos, k, v)  # (B, nkv, L, hs)
        L = k.size(2)
        is_causal = False
        if mask is not None:
            pass  # (B, 1, T, L) from GPT.forward: left-padded rows, or a static cache
        elif T == L:
            is_causal = T > 1  # plain training / prefill from position 0
        elif T > 1:
            # Chunked prefill after cached tokens: query i sees keys 0..start_pos+i.
            mask = torch.ones(T, L, dtype=torch.bool, device=x.device).tril(diagonal=L - T)
        # T == 1 with a cache: the new token may attend to everything cached, no mask.
        if self.kept is not None:
            y, weights = explicit_attention(q, k, v, mask, is_causal, self.scale)
            self.kept.append((weights, v))
        elif T == 1 and torch.compiler.is_compiling() and not self.training:
            y = one_query_attention(q, k, v, mask, self.scale)  # (B, nh, 1, hs)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=nkv != nh, scale=self.scale,
            )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, nh * hs)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """GPT-2's GELU MLP, or a gated one (c_fc = gate, c_fc2 = up, c_proj = down):
    Llama's SwiGLU, or Gemma's GeGLU with the tanh GELU on the gate."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        hidden = config.intermediate_size
        self.c_fc = Linear(config.n_embd, hidden, bias=config.bias)
        if self.kind != "gelu":
            self.c_fc2 = Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.c_fc(x)) * self.c_fc2(x)
        elif self.kind == "geglu":
            h = F.gelu(self.c_fc(x), approximate="tanh") * self.c_fc2(x)
        else:
            # GPT-2 used the tanh approximation of GELU; match it for checkpoint parity.
            h = F.gelu(self.c_fc(x), approximate="tanh")
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)); with
    ``post_norms`` (Gemma 2/3) each sublayer's output is normalized too before the sum."""

    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)
        self.post_norms = config.post_norms
        if config.post_norms:
            self.ln_attn_out = make_norm(config)
            self.ln_mlp_out = make_norm(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                start_pos: int | torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.post_norms:
            x = x + self.ln_attn_out(self.attn(self.ln_1(x), rope, start_pos, mask))
            return x + self.ln_mlp_out(self.mlp(self.ln_2(x)))
        x = x + self.attn(self.ln_1(x), rope, start_pos, mask)
        return x + self.mlp(self.ln_2(x))


def init_weights(module: nn.Module) -> None:
    """GPT-2's (and BERT's) initialisation: N(0, 0.02) for matrices and embeddings,
    zero biases; norms keep their ones/zeros."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        if config.pos == "learned":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        else:
            cos, sin = rope_cache(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
            if config.rope_local_base is not None:
                cos, sin = rope_cache(config, config.rope_local_base)
                self.register_buffer("rope_local_cos", cos, persistent=False)
                self.register_buffer("rope_local_sin", sin, persistent=False)
        if config.embed_scale:
            # Kept as a tensor so that it rounds to the model's dtype as Gemma's does.
            scale = torch.tensor(config.n_embd ** 0.5, device="cpu")
            self.register_buffer("embed_scale", scale, persistent=False)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # Press & Wolf 2017: sharing input and output embeddings saves V*C parameters.
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the
        # residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def rebuild_buffers(self, device: torch.device | str = "cpu") -> None:
        """Recompute the buffers that are not saved (RoPE tables): after a model built on
        the meta device has had its weights loaded, they are still meta."""
        c = self.config
        if c.pos == "rope":
            cos, sin = rope_cache(c)
            self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)
            if c.rope_local_base is not None:
                cos, sin = rope_cache(c, c.rope_local_base)
                self.rope_local_cos, self.rope_local_sin = cos.to(device), sin.to(device)
        if c.embed_scale:
            self.embed_scale = torch.tensor(c.n_embd ** 0.5, device=device)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted once (tied weights are shared)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
        return n

    def setup_cache(self, batch_size: int, max_len: int | None = None,
                    dtype: torch.dtype | None = None, reuse: bool = False) -> None:
        """Allocate a KV cache in every layer for incremental decoding.

        ``reuse`` keeps the buffers for the next call of the same shape (the last
        ``KEPT_CACHES`` shapes), as long as no weight was replaced or written in
        place since: a decode step compiled with frozen weights
        (``generate.compiled_decode``) guards on the identity of every buffer it
        reads, and new cache buffers would make it compile again, which is also
        what it must do when the weights changed. A reused buffer's old columns
        need no clearing: the static cache masks the columns not yet written in
        this call, and the prompt overwrites the others.
        """
        c = self.config
        max_len = min(max_len or c.block_size, c.block_size)
        p = self.transformer.wte.weight
        dtype = dtype or p.dtype
        shape = (batch_size, max_len, dtype, p.device)
        kept: dict = self.__dict__.setdefault("_kept_caches", {})
        version = self._weights_version() if reuse else None
        if version is not None and shape in kept and kept[shape][0] == version:
            caches = kept[shape][1]
        else:
            caches = [KVCache(batch_size, max_len, c.n_kv_head, c.head_dim, dtype, p.device)
                      for _ in self.transformer.h]
            if version is not None:
                kept.pop(shape, None)
                kept[shape] = (version, caches)
                while len(kept) > KEPT_CACHES:
                    del kept[next(iter(kept))]  # the shape kept longest ago
        for block, cache in zip(self.transformer.h, caches, strict=True):
            block.attn.kv_cache = cache

    def _weights_version(self) -> tuple[tuple[int, int], ...] | None:
        """The identity and in-place write count of every weight (None when a weight is
        an inference-mode tensor, which keeps no count)."""
        try:
            return tuple((id(t), t._version) for name, t in
                         itertools.chain(self.named_parameters(), self.named_buffers())
                         if ".kv_cache." not in name)
        except RuntimeError:
            return None

    def reorder_cache(self, rows: torch.Tensor) -> None:
        """Keep cached rows ``rows`` (B',), in that order: a beam search's surviving beams
        (each prompt's row repeated for its beams after step 0; fewer rows once inputs
        are done)."""
        # Moved in place on a CPU (read once for every layer); on a GPU, reading the rows
        # would wait for the device at every layer, and a call per row costs more there.
        order = rows.tolist() if rows.device.type == "cpu" else None
        for block in self.transformer.h:
            if block.attn.kv_cache is not None:
                block.attn.kv_cache.reorder(rows, order)

    def repeat_cache(self, n: int) -> None:
        """Copy the one cached row ``n`` times: every choice of a multiple-choice question
        continues one read of its prompt (``multiple_choice.loglikelihoods``)."""
        for block in self.transformer.h:
            block.attn.kv_cache.repeat(n)

    def clear_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def forward(self, idx: torch.Tensor, start_pos: int | torch.Tensor = 0,
                last_only: bool = False, pad: torch.Tensor | None = None, hidden: bool = False,
                select: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for token ids ``idx`` (B, T) sitting at columns start_pos..start_pos+T.

        With a cache (``setup_cache``), keys and values of earlier columns are
        reused. A 0-d tensor ``start_pos`` uses the cache as a static one (see
        ``KVCache``): every column of the buffers is attended, those past
        ``start_pos + T`` masked, so the shapes do not change from step to step.
        ``last_only`` computes logits of the last position only, which is all
        that decoding needs (the lm_head is the largest matmul).
        ``pad`` (B,) says how many columns on the left of each row are padding:
        those are masked out and each row's positions start at 0 on its first
        real token, so a row gets the same logits as it would alone.
        ``hidden`` returns the final hidden states (B, T, C) instead of logits,
        for callers that apply ``lm_head`` in chunks to bound memory. ``select``
        (B, T) bool gives the logits (N, V) of the marked positions only: a loss
        on some tokens (a translation's target) need not pay for the others.
        """
        B, T = idx.shape
        static = isinstance(start_pos, torch.Tensor)
        # A static step's position is data, not checked here (that would sync a graph).
        if not static and start_pos + T > self.config.block_size:
            raise ValueError(
                f"positions {start_pos}..{start_pos + T} exceed the context of "
                f"{self.config.block_size} tokens")
        c = self.config
        x = self.transformer.wte(idx)  # (B, T, C)
        if c.embed_scale:
            x = x * self.embed_scale.to(x.dtype)
        cols = start_pos + torch.arange(T, device=idx.device)  # (T,)
        mask = None
        pos = cols
        cache = self.transformer.h[0].attn.kv_cache
        # Columns attended: all of a static cache's buffers, else the start_pos + T
        # written (a cache), else this call's T.
        L = cache.k.size(2) if static else start_pos + T if cache is not None else T
        keys = torch.arange(L, device=idx.device) + (0 if static else start_pos + T - L)
        if pad is not None or static:
            mask = keys[None, :] <= cols[:, None]  # (T, L) causal
            if pad is not None:
                pos = (cols[None, :] - pad[:, None]).clamp(min=0)  # (B, T)
                real = keys[None, :] >= pad[:, None]  # (B, L)
                # A query on a padding column sees itself, so no softmax row is empty.
                mask = (mask[None] & real[:, None, :]) | (keys[None, :] == cols[:, None])[None]
            else:
                mask = mask[None]  # (1, T, L): the same for every row
            mask = mask[:, None]  # (B or 1, 1, T, L)
        local_mask = mask
        if c.sliding_window is not None and c.sliding_window < L:
            # Local layers see key columns within the window: i - j < sliding_window.
            near = keys[None, :] > cols[:, None] - c.sliding_window  # (T, L)
            if mask is None:
                near = near & (keys[None, :] <= cols[:, None])  # and causal
            local_mask = near[None, None] if mask is None else mask & near
        rope = local_rope = None
        if c.pos == "learned":
            x = x + self.transformer.wpe(pos)
        else:
            rope = self._rope(self.rope_cos, self.rope_sin, pos, pad is not None)
            local_rope = rope
            if c.rope_local_base is not None:
                local_rope = self._rope(self.rope_local_cos, self.rope_local_sin, pos,
                                        pad is not None)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            if block.attn.local:
                x = block(x, local_rope, start_pos, local_mask)
            else:
                x = block(x, rope, start_pos, mask)
        x = self.transformer.ln_f(x)
        if hidden:
            return x
        if last_only:
            x = x[:, -1:, :]
        elif select is not None:
            x = x[select]  # (N, C)
        return self.lm_head(x)  # (B, T, vocab_size), or (N, vocab_size)

    @staticmethod
    def _rope(cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
              per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of the cos/sin tables at positions ``pos`` (T,) or (B, T): (T, hs),
        or (B, 1, T, hs) when rows sit at different positions."""
        cos, sin = cos[pos], sin[pos]
        if per_row:
            return cos[:, None], sin[:, None]
        return cos, sin
