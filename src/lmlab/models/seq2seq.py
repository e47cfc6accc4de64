"""The encoder-decoder Transformer (Vaswani et al. 2017), for translation and summarization.

One config (``Seq2SeqConfig``) covers the original design and its descendants:

* the original: post-LN blocks (``x = norm(x + sublayer(x))``), sinusoidal
  positions, embeddings scaled by sqrt(C) and shared by source, target and
  output over one joint vocabulary, ReLU;
* Marian (``MarianMTModel``): the same with SiLU ("swish") or GELU and a
  bias on the output logits;
* BART: learned positions (offset by 2 rows), a LayerNorm on the embeddings,
  GELU;
* pre-LN (``norm_first``; Xiong et al. 2020): ``x = x + sublayer(norm(x))``
  with a final norm after each stack, which trains without a long warm-up.

Top-down: positions, attention (self, causal self, cross), the encoder
layer, the caches for decoding, the decoder layer, the two stacks, then the
model. Parameter names follow BART's and Marian's checkpoints without their
``model.`` prefix, so the converters are key copies.

Decoding reuses the work of earlier steps: the decoder's self-attention keys
and values grow by one position per step (``DecoderCache``), and the
cross-attention keys and values of the encoder output are computed once. A
beam search's cache keeps its beams' keys and values as a tree that a reorder
does not copy (``DecoderCache``), and its
beams share their source's encoder output: with G target rows to a row of the
encoder output, the cross-attention keys and values are those of the sources
alone, and the G beams of a source attend to them as G queries of one row (a
quarter of the projections and of the keys and values read, at 4 beams).

Training skips the padding (``Packing``): a batch of right-padded pairs keeps
only its N real tokens in the position-wise layers (the projections, the
feed-forward blocks, the norms: nearly all of the work), and attention alone
sees them in the padded (B, L) layout, where the padding is masked (source
keys) or never looked at (target positions come after every real one). In a
batch of random pairs of 12-24 tokens (the benchmark's) a quarter of every
matrix product would be padding; the trainer's batches of similar lengths hold
less. Under torch.compile (``--compile``) the padded layout stays: the packing's
data-dependent shapes would break the graph.

Shapes: B batch, S source tokens, T target tokens in this call, L target
tokens attended (cache + new), C = n_embd, nh = n_head, hs = head size,
V = vocab_size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.config import Seq2SeqConfig
from lmlab.models.gpt import init_weights
from lmlab.models.linear import Linear, Stacked, bound, linear_then


def sinusoidal_positions(n_pos: int, dim: int) -> torch.Tensor:
    """Vaswani's position table (n_pos, dim): angle p / 10000^(2i/dim) for pair i, its
    sines in the first half of the columns and its cosines in the second (Marian's
    layout; the paper interleaves them, which is the same table with columns permuted)."""
    half = (dim + 1) // 2  # sines take the extra column of an odd width
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]  # (n_pos, 1)
    i = torch.arange(half, dtype=torch.float64)[None, :]  # (1, half)
    angle = pos / torch.pow(10000.0, 2 * i / dim)  # (n_pos, half)
    table = torch.empty(n_pos, dim, dtype=torch.float64)
    table[:, :half] = torch.sin(angle)
    table[:, half:] = torch.cos(angle[:, : dim // 2])
    return table.float()


class Packing:
    """Where the N real tokens of a right-padded (B, L) batch are, to run the
    position-wise layers on them alone: ``pack`` (B, L, ...) -> (N, ...) keeps
    them, ``unpack`` puts N rows back with zeros in the padding (for attention,
    which masks or never reads those rows)."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.shape = mask.shape  # (B, L)
        self.index = mask.reshape(-1).nonzero().squeeze(1)  # (N,) row-major: x[mask]'s order

    @classmethod
    def of(cls, mask: torch.Tensor | None) -> Packing | None:
        """The packing of ``mask`` (B, L) when it is worth one: some padding, each row's
        real tokens first, and not inside torch.compile (whose graph the data-dependent
        shapes would break). None otherwise: the padded layout."""
        if mask is None or torch.compiler.is_compiling() or bool(mask.all()):
            return None
        lengths = mask.sum(dim=1, keepdim=True)  # (B, 1)
        right_padded = torch.arange(mask.size(1), device=mask.device) < lengths
        return cls(mask) if torch.equal(right_padded, mask.bool()) else None

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(0, 1).index_select(0, self.index)  # (N, ...)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        B, L = self.shape
        full = x.new_zeros(B * L, *x.shape[1:]).index_copy_(0, self.index, x)
        return full.view(B, L, *x.shape[1:])  # (B, L, ...)


FEW_QUERIES = 8  # a decoding step's queries a row (a beam search's beams of a source)
# How many more bytes a step's folded cross-attention may read than the plain one, per
# layer (see ``DecoderLayer.folds``). The fold saves two products' calls and about ten
# others; what it costs is reading its tensors. Measured with seq2seq-mini's shape
# (256 wide, 4 heads; AMD EPYC, 2 threads, 10 sources of 4 beams): folding was 6-9%
# faster a search at 16 source tokens, 2-3% at 24, even at 32-40 (1.3-1.8 MB more a
# layer), 2-3% slower at 48 and 15% at 96; at 8 sources of 24 tokens 7% faster, at 16
# 3%, at 32 sources of 12-24 tokens even (2.6-4 MB more: not folded).
FOLD_MAX_EXTRA_BYTES = 3 * 2**19


def few_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) where ``mask`` allows) v for queries q (B, nh, T, hs) and
    keys and values (B, nh, L, hs), as two batched products: what
    ``F.scaled_dot_product_attention`` computes. ``mask`` broadcasts to (B, nh, T, L):
    True where a query may look, or an additive bias (0 or -inf; ``attention_bias``).
    With the few queries of a decoding step the fused kernel's start (it splits the
    work among the threads) costs more than the arithmetic: 116 against 67 us for a
    beam step's cross-attention (8 sources, 4 beams, 21 keys; AMD EPYC, 2 threads),
    and each call here counts too: the scale and the mask go into the first product
    (``baddbmm``), and the keys are read as they lie (a cache laid out for it). The
    scale is rounded once there; with a power-of-two scale (head sizes 16, 64, 256) the
    bits are those of scaling after the product."""
    B, nh, T, hs = q.shape
    L = k.size(2)
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = attention_bias(mask, (B, nh, 1, L), q.dtype)
        elif mask.shape[:-2] != (B, nh):  # an additive mask shared by rows or heads
            mask = mask.expand(B, nh, *mask.shape[-2:])
        mask = mask.reshape(B * nh, -1, L)
    out = attention_products(q.reshape(B * nh, T, hs), k.reshape(B * nh, L, hs),
                             v.reshape(B * nh, L, hs), mask)
    return out.view(B, nh, T, hs)


def attention_products(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) + bias) v for queries q (N, T, hs), keys and values (N,
    L, hs) and an additive ``bias`` (N, T, L) or None: ``few_query_attention``'s two
    batched products, on rows already laid out for them. The keys are read as they lie
    (transposed, not copied)."""
    N, T, hs = q.shape
    kt = k.transpose(1, 2)  # (N, hs, L)
    if bias is None:  # beta=0: the first argument only gives the shape
        bias = q.new_zeros(()).expand(N, T, kt.size(2))
        scores = torch.baddbmm(bias, q, kt, beta=0, alpha=hs ** -0.5)
    else:
        scores = torch.baddbmm(bias, q, kt, alpha=hs ** -0.5)
    return torch.bmm(scores.softmax(dim=-1), v)  # (N, T, hs)


def attention_bias(mask: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype
                   ) -> torch.Tensor:
    """The additive form (0 where True, -inf elsewhere) of a boolean attention mask,
    broadcast to ``shape`` (B, nh, 1, L) or beyond, contiguous: x + bias is
    ``torch.where(mask, x, -inf)`` exactly."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias.masked_fill_(~mask, float("-inf"))
    return bias.expand(torch.broadcast_shapes(mask.shape, shape)).contiguous()


class Attention(nn.Module):
    """Multi-head attention with biased projections: self-attention when ``memory`` is
    None, else cross-attention from ``x`` (queries) to ``memory`` (keys and values)."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.q_proj = Linear(C, C)
        self.k_proj = Linear(C, C)
        self.v_proj = Linear(C, C)
        self.out_proj = Linear(C, C)
        self.dropout = config.attn_dropout
        self._qkv = Stacked()  # the three projections as one product, for inference

    def train(self, mode: bool = True) -> Attention:
        if mode or self.training:  # rebuilt when next needed (see Linear.train)
            self._qkv = Stacked()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 (nn.Module's)
        self._qkv = Stacked()  # moved or cast: the stacked copy is of the old weights
        return super()._apply(fn, recurse)

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, C = t.shape
        return t.view(B, N, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, N, hs)

    def keys_values(self, source: torch.Tensor, packing: Packing | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, nh, N, hs) of a source (B, N, C), or of its real tokens
        (N', C) packed by ``packing``."""
        return self.split_heads(self.k_proj(source), self.v_proj(source), packing)

    def split_heads(self, k: torch.Tensor, v: torch.Tensor, packing: Packing | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected keys and values (B, N, C), or packed (N', C), as (B, nh, N, hs)."""
        if packing is not None:
            k, v = packing.unpack(k), packing.unpack(v)
        return self.heads(k), self.heads(v)

    def projections(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Self-attention's queries, keys and values of x (..., C), each (..., C): at
        inference one product (``Stacked``), in training three, and three when they
        cannot be stacked (``Stacked.fits``)."""
        parts = (self.q_proj, self.k_proj, self.v_proj)
        stacked = self.stacked_qkv()
        if stacked is None:
            return tuple(p(x) for p in parts)
        return stacked(x).split([p.out_features for p in parts], dim=-1)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """``projections`` side by side (..., 3C): one product, not split, at inference."""
        stacked = self.stacked_qkv()
        if stacked is None:
            return torch.cat([p(x) for p in (self.q_proj, self.k_proj, self.v_proj)], dim=-1)
        return stacked(x)

    def stacked_qkv(self) -> Linear | None:
        """The one Linear of the three projections (``Stacked``) as their weights are
        now, where they stack at inference; None otherwise."""
        parts = (self.q_proj, self.k_proj, self.v_proj)
        if self.training or torch.is_grad_enabled() or not Stacked.fits(parts):
            return None
        return self._qkv.linear(parts)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], *,
                mask: torch.Tensor | None = None, is_causal: bool = False,
                packing: Packing | None = None, add: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Attend from x (B, T, C) to keys and values ``kv`` (each (B, nh, L, hs));
        ``mask`` (B, 1, T or 1, L) is True where a query may look. With ``packing``,
        x is the batch's real tokens (N, C) and so is the output. ``add`` (the output's
        shape), a residual, is added in the output projection's pass."""
        return self.attend(self.q_proj(x), kv, mask=mask, is_causal=is_causal,
                           packing=packing, add=add)

    def attend(self, q: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], *,
               mask: torch.Tensor | None = None, is_causal: bool = False,
               packing: Packing | None = None, add: torch.Tensor | None = None
               ) -> torch.Tensor:
        """``forward`` with the queries (B, T, C), or packed (N, C), already projected."""
        if packing is not None:
            q = packing.unpack(q)  # (B, T, C)
        B, T, C = q.shape
        if T <= FEW_QUERIES and not (self.training or is_causal):
            y = few_query_attention(self.heads(q), kv[0], kv[1], mask)
        else:
            y = F.scaled_dot_product_attention(self.heads(q), kv[0], kv[1], attn_mask=mask,
                                               is_causal=is_causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        if packing is not None:
            y = packing.pack(y)  # (N, C)
        return linear_then(self.out_proj, y, add=add)


class EncoderLayer(nn.Module):
    """Self-attention, then the feed-forward block (fc1 -> activation -> fc2, 4x wide by
    default), each in a residual with its norm (after it, or before with norm_first)."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        C, eps = config.n_embd, config.norm_eps
        self.norm_first = config.norm_first
        self.self_attn = Attention(config)
        self.self_attn_layer_norm = nn.LayerNorm(C, eps=eps)
        self.fc1 = Linear(C, config.intermediate_size)
        self.fc2 = Linear(config.intermediate_size, C)
        self.act = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[config.activation]
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.final_layer_norm = nn.LayerNorm(C, eps=eps)
        self.dropout = nn.Dropout(config.dropout)

    def ffn(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x + the feed-forward block of h (after dropout)."""
        if self.training:
            return x + self.dropout(self.fc2(self.activation_dropout(self.act(self.fc1(h)))))
        # Inference: the activation (ReLU) and the residual inside the products' passes.
        relu = self.act is F.relu
        a = linear_then(self.fc1, h, relu=relu)
        return linear_then(self.fc2, a if relu else self.act(a), add=x)

    def residual_attend(self, attn: Attention, x: torch.Tensor, q: torch.Tensor,
                        kv: tuple[torch.Tensor, torch.Tensor], **kw) -> torch.Tensor:  # noqa: ANN003
        """x + attention of the queries q to kv (after dropout): ``Attention.attend``'s
        keywords. At inference the residual is added in the output projection's pass."""
        if self.training:
            return x + self.dropout(attn.attend(q, kv, **kw))
        return attn.attend(q, kv, add=x, **kw)

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                packing: Packing | None = None) -> torch.Tensor:
        """x (B, S, C), or its real tokens (N, C) packed by ``packing``; mask (B, 1, 1, S)
        True on real source tokens."""
        attn = self.self_attn

        def attend(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # x + attention(h)
            q, k, v = attn.projections(h)
            return self.residual_attend(attn, x, q, attn.split_heads(k, v, packing),
                                        mask=mask, packing=packing)

        if self.norm_first:
            x = attend(self.self_attn_layer_norm(x), x)
            return self.ffn(self.final_layer_norm(x), x)
        x = self.self_attn_layer_norm(attend(x, x))
        return self.final_layer_norm(self.ffn(x, x))


class LayerCache:
    """One decoder layer's keys and values: its own, growing by T each call, and the
    encoder output's, computed once. With a ``capacity`` (the positions decoding will
    reach) its own are written in place into buffers that long; without, or past it,
    each call concatenates, a copy of the whole past per step. In a beam search's
    cache the ``owner`` keeps them as a tree (``DecoderCache``), which holds its
    capacity and no more."""

    def __init__(self, capacity: int | None = None, owner: DecoderCache | None = None,
                 index: int = 0) -> None:
        self.capacity = capacity
        self.owner, self.index = owner, index
        self.self_kv: tuple[torch.Tensor, torch.Tensor] | None = None  # (B, nh, cap, hs)
        self.length = 0  # positions held
        # A beam tree's keys and values instead, in one buffer (2, B, nh, cap*K, hs)
        self.tree_kv: torch.Tensor | None = None
        # A tree's step's calls, resolved for its rows (``StepPlan``)
        self.plan: StepPlan | None = None
        self.cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None
        # The cross-attention folded into its weights (``DecoderLayer.fold_cross``).
        self.cross_folded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store keys and values (B, nh, T, hs) after those held; all of them (B, nh, L,
        hs). A beam tree's are written by ``DecoderCache.tree_append``."""
        if self.owner is not None and self.owner.beams:
            raise ValueError("a beam tree's keys and values go through tree_append")
        n, T = self.length, k.size(2)
        if self.capacity is None or n + T > self.capacity:  # grow by concatenation
            if self.self_kv is not None:
                k = torch.cat([self.self_kv[0][:, :, :n], k], dim=2)
                v = torch.cat([self.self_kv[1][:, :, :n], v], dim=2)
            self.self_kv = (k, v)
        else:
            if self.self_kv is None:
                shape = (*k.shape[:2], self.capacity, k.size(3))
                self.self_kv = (k.new_empty(shape), v.new_empty(shape))
            self.self_kv[0][:, :, n:n + T] = k
            self.self_kv[1][:, :, n:n + T] = v
        self.length = n + T
        return self.self_kv[0][:, :, :n + T], self.self_kv[1][:, :, :n + T]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` of its own keys and values, in that order, in new buffers
        (a gradient through the old ones still reads them). A beam search's cache is a
        tree, which moves no keys or values (``DecoderCache``)."""
        if self.self_kv is not None:
            self.self_kv = tuple(t.index_select(0, rows) for t in self.self_kv)


class DecoderCache:
    """What decoding keeps from step to step, for every decoder layer. The
    cross-attention keys and values hold a row per row of the encoder output, which
    may stand for several consecutive decoder rows (a beam search's beams).

    With ``beams`` = K (a beam search's cache), the decoder's own keys and values are
    kept as a tree, never copied when the beams move. Each source holds K slots a
    position (slot p*K + j: what beam j wrote at position p; a layer's keys and values
    of every source in one buffer, ``LayerCache.tree_kv`` (2, B, nh, capacity*K, hs)),
    and ``history`` (B, K, capacity*K), an
    additive mask, opens to each beam the slots of its history, one a position. A
    reorder moves that mask's rows, not the keys and values (at 4 beams over 8
    sources, 32 positions of 256 wide over 3 layers, up to 6 MB a step; 0.7 against
    9.8 ms a search, AMD EPYC, 2 threads). Each beam attends to every slot of its
    source through that mask (``tree_bias``, made once a step for every head): the
    bytes read are those of each beam reading its own past, and the K beams are K
    queries of one row, as in the cross-attention: a K-th as many batched products,
    each K times larger (most of it masked), which costs less than the small ones it
    replaces. A tree holds its capacity and reads one token a step, after one row per
    source at step 0 (the start token), which the first reorder gives to the
    source's K beams; later reorders must keep each beam among its source's (a beam
    search's do).

    Where several decoder rows read each row of the encoder's output (a beam
    search's beams), the cross-attention may be folded into its weights once
    (``DecoderLayer.fold_cross``), which a reorder that drops sources moves too."""

    def __init__(self, n_layer: int, capacity: int | None = None, beams: int = 0) -> None:
        if beams and not capacity:
            raise ValueError("a beam tree needs the capacity of its buffers")
        self.layers = [LayerCache(capacity, self, i) for i in range(n_layer)]
        self.length = 0  # target positions cached
        self.capacity, self.beams = capacity, beams
        # Whether the beams' cross-attention may be folded (``DecoderLayer.folds``); set
        # to False before the first step, the plain way throughout (to compare the two).
        self.fold = True
        # (B, K, capacity*K): 0 on the slots of each beam's history, -inf elsewhere
        self.history: torch.Tensor | None = None
        self._own: torch.Tensor | None = None  # (K, K): a position's slots, beam by beam
        self.tree_bias: torch.Tensor | None = None  # (B*nh, K, L): this step's mask
        # (src_mask, its version counter, its bias)
        self._bias: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def memory_bias(self, src_mask: torch.Tensor, n_head: int, dtype: torch.dtype
                    ) -> torch.Tensor:
        """The cross-attention's additive mask (B, nh, 1, S) for ``src_mask`` (B, S): made
        once for the steps that pass the same mask (a search's), not at every step; again
        after an in-place change to it (its version counter)."""
        held = self._bias
        # An inference-mode tensor (a beam search's) has no counter: read as -1.
        version = -1 if src_mask.is_inference() else src_mask._version
        if held is None or held[0] is not src_mask or held[1] != version:
            bias = attention_bias(Seq2Seq.key_mask(src_mask), (1, n_head, 1, 1), dtype)
            self._bias = held = (src_mask, version, bias)
        return held[2]

    def tree_append(self, layer: LayerCache, qkv: torch.Tensor, n_head: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A beam tree's step of one layer: the keys and values of ``qkv`` (B*K, 1, 3C),
        the self-attention's projections side by side (B rows, one a source, at step 0),
        into the sources' slots; returns the keys and values of all the slots written,
        (B*nh, L, hs) each, L = K * positions (1 at step 0). The first layer of a step
        also makes the step's ``tree_bias``."""
        K, n = self.beams, layer.length
        R, T, C3 = qkv.shape
        if T != 1:
            raise ValueError(f"a beam tree reads one token a step, not {T}")
        if n >= self.capacity:
            raise ValueError(f"a beam tree holds {self.capacity} positions (its capacity)")
        hs = C3 // 3 // n_head
        if layer.tree_kv is None:  # step 0: a row per source, in its slot 0
            buf = qkv.new_empty(2, R, n_head, self.capacity * K, hs)
            # Position 0's other slots are the only ones read (and masked) before they
            # are written: zeros, not garbage, since a NaN there would survive the mask
            # (NaN * 0). The rest is written before it is read, and never touched past
            # the search's length.
            buf[:, :, :, 1:K] = 0.0
            buf[:, :, :, 0] = qkv.view(R, 3, n_head, hs)[:, 1:].transpose(0, 1)
            layer.tree_kv, layer.length = buf, 1
            k, v = buf.flatten(1, 2)[:, :, :1]
            return k, v
        B = layer.tree_kv.size(1)
        new = slice(n * K, (n + 1) * K)  # position n's slots: beam j's is n*K + j
        # (2, B, nh, K, hs): keys and values in one copy
        layer.tree_kv[:, :, :, new] = qkv.view(B, K, 3, n_head, hs)[:, :, 1:].permute(
            2, 0, 3, 1, 4)
        layer.length = n + 1
        L = (n + 1) * K
        if layer.index == 0 and K > 1:  # this step's mask: each beam sees its own new slot
            self.history[:, :, new] = self._own
            # Made for every head once a step, not expanded by each layer's attention.
            self.tree_bias = self.history[:, None, :, :L].expand(
                B, n_head, K, L).reshape(B * n_head, K, L)
        k, v = layer.tree_kv.flatten(1, 2)[:, :, :L]  # (B*nh, L, hs): the products' rows
        return k, v

    def _move_history(self, rows: torch.Tensor) -> None:
        """A beam tree's reorder: each beam takes the history of the row it came from
        (at the first reorder, each source's one row, whose slot 0 is written)."""
        K, L = self.beams, self.capacity * self.beams
        if self.history is not None:
            self.history = self.history.view(-1, L).index_select(0, rows).view(-1, K, L)
            return
        held = self.layers[0].tree_kv
        if held is None:
            raise ValueError("a beam tree is reordered after its first step (a row per "
                             "source), not before")
        dtype = held.dtype
        self.history = torch.full((rows.numel() // K, K, L), float("-inf"), dtype=dtype,
                                  device=rows.device)
        self.history[:, :, 0] = 0.0
        self._own = torch.full((K, K), float("-inf"), dtype=dtype,
                               device=rows.device).fill_diagonal_(0.0)

    def reorder(self, rows: torch.Tensor, sources: torch.Tensor | None = None) -> None:
        """Keep the decoder's rows ``rows`` (B'*G,), in that order (a beam search's
        surviving beams), and, with ``sources`` (B',), those rows of the encoder
        output's keys and values (the inputs that stay); without, those stay as they
        are (beams move among the rows of their own source). A beam tree moves its
        ``history`` (the first reorder gives each source's row to its beams)."""
        if self.beams:
            self._move_history(rows)
        for layer in self.layers:
            if not self.beams:
                layer.keep(rows)
            elif sources is not None and layer.tree_kv is not None:  # a buffer per source
                layer.tree_kv = layer.tree_kv.index_select(1, sources)
            if layer.cross_kv is not None and sources is not None:
                k, v = layer.cross_kv  # k kept as it lies: transposed (see _cross)
                layer.cross_kv = (k.transpose(-1, -2).index_select(0, sources).transpose(-1, -2),
                                  v.index_select(0, sources))
                if layer.cross_folded is not None:
                    layer.cross_folded = tuple(t.index_select(0, sources)
                                               for t in layer.cross_folded)


@dataclass
class StepPlan:
    """A decoder layer's calls for a beam tree's step of ``rows`` rows at inference
    (``DecoderLayer.tree_step``), resolved once: its products bound to their packed
    weights (``linear.bound``), its norms to their parameters. ``lean`` is False where
    the step goes module by module, as before it had a path of its own: hooks on the
    layer or its modules (which the resolved calls would skip), a layer in training
    mode, gradients on, or autocast. A search's weights hold still, so a plan lasts
    the search (its cache's): a hook added during a search is seen by the next one."""

    rows: int
    lean: bool
    qkv: Callable[[torch.Tensor], torch.Tensor] | None = None  # (R, 1, C) -> (R, 1, 3C)
    out: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # y, then + x
    fc1: Callable[[torch.Tensor], torch.Tensor] | None = None  # ReLU inside, where it is ReLU
    act: Callable[[torch.Tensor], torch.Tensor] | None = None  # the activation, if not inside
    fc2: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # a, then + x
    norms: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = ()  # self, cross, ffn

    @staticmethod
    def of(layer: DecoderLayer, x: torch.Tensor) -> StepPlan:
        """The plan of ``layer`` for steps of inputs like x (R, 1, C): one token a row."""
        rows = x.size(0)
        hooked = (nn.modules.module._global_forward_hooks
                  or nn.modules.module._global_forward_pre_hooks
                  or any(m._forward_hooks or m._forward_pre_hooks for m in layer.modules()))
        if (hooked or layer.training or torch.is_grad_enabled()
                or torch.is_autocast_enabled(x.device.type)):
            return StepPlan(rows, lean=False)
        attn = layer.self_attn
        stacked = attn.stacked_qkv()
        relu = layer.act is F.relu
        return StepPlan(
            rows, lean=True,
            qkv=attn.qkv if stacked is None else bound(stacked, rows, x),
            out=bound(attn.out_proj, rows, x, add=True),
            fc1=bound(layer.fc1, rows, x, relu=relu), act=None if relu else layer.act,
            fc2=bound(layer.fc2, rows, x, add=True),
            norms=tuple(_bound_norm(n) for n in (layer.self_attn_layer_norm,
                                                 layer.encoder_attn_layer_norm,
                                                 layer.final_layer_norm)))


def _bound_norm(norm: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ``nn.LayerNorm``'s function, its parameters bound (the module otherwise)."""
    if type(norm) is not nn.LayerNorm:
        return norm
    shape, w, b, eps = norm.normalized_shape, norm.weight, norm.bias, norm.eps
    return lambda x: F.layer_norm(x, shape, w, b, eps)


class DecoderLayer(EncoderLayer):
    """Causal self-attention, cross-attention to the encoder's output, then the
    feed-forward block, each in a residual with its norm."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__(config)
        self.encoder_attn = Attention(config)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.n_embd, eps=config.norm_eps)

    def _self(self, h: torch.Tensor, x: torch.Tensor, cache: LayerCache | None,
              packing: Packing | None = None) -> torch.Tensor:
        """x + causal self-attention of h."""
        attn = self.self_attn
        if cache is not None and cache.owner is not None and cache.owner.beams:
            return self._tree_self(h, x, cache)
        q, k, v = attn.projections(h)
        k, v = attn.split_heads(k, v, packing)  # (B, nh, T, hs)
        if packing is not None:  # training: all positions at once, real ones first
            return self.residual_attend(attn, x, q, (k, v), is_causal=True, packing=packing)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, L, hs)
        T, L = h.size(1), k.size(2)
        mask = None
        if 1 < T < L:  # several new positions after cached ones: query i sees 0..L-T+i
            mask = torch.ones(T, L, dtype=torch.bool, device=h.device).tril(diagonal=L - T)
        # T == L: plain causal; T == 1: the new position sees everything cached.
        return self.residual_attend(attn, x, q, (k, v), mask=mask, is_causal=T == L and T > 1)

    def _tree_self(self, h: torch.Tensor, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """x + self-attention of h (R, 1, C) in a beam tree, module by module: a search
        of a layer in training mode (no attention dropout), or one that ``StepPlan``
        leaves to the modules (hooks, gradients, autocast); ``tree_step`` has the path
        at inference."""
        attn = self.self_attn
        y = self._tree_attention(attn.qkv(h), cache)
        if self.training:
            return x + self.dropout(linear_then(attn.out_proj, y))
        return linear_then(attn.out_proj, y, add=x)

    def _tree_attention(self, qkv: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """The self-attention's heads (R, 1, C), before the output projection, for its
        projections qkv (R, 1, 3C) side by side, in a beam tree (``DecoderCache``): the
        K beams of a source are K queries of one row, over its slots, each seeing its
        own history through the tree's mask (R = B*K; R = B, a row per source, at step
        0). The rows are laid out for the products as the step goes: a decoding step's
        time is mostly its calls, and this path makes about half as many as the general
        one."""
        R, T, C3 = qkv.shape
        nh, hs = self.self_attn.n_head, self.self_attn.head_dim
        k, v = cache.owner.tree_append(cache, qkv, nh)  # (B*nh, L, hs) each
        B = k.size(0) // nh
        G = R // B  # the queries of a row
        q = qkv.view(B, G, 3, nh, hs)[:, :, 0].transpose(1, 2).reshape(B * nh, G, hs)
        y = attention_products(q, k, v, cache.owner.tree_bias if G > 1 else None)
        return y.view(B, nh, G, hs).transpose(1, 2).reshape(R, T, C3 // 3)  # (R, 1, C)

    def tree_step(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                  cache: LayerCache) -> torch.Tensor:
        """``forward`` for a beam tree's step (``DecoderCache``) at inference, x (R, 1, C):
        the same computation, with the calls the step makes resolved once a search for
        its rows (``StepPlan``): no module calls and their checks, and few method calls.
        At 4 beams over 8 sources of the benchmark's 3-layer, 256-wide model, the search
        took 1/1.039 and 1/1.059 of the time of the module path in two one-off runs of a
        scratch comparison (AMD EPYC, 2 threads; 25 interleaved searches, same ids)."""
        plan = cache.plan
        if plan is None or plan.rows != x.size(0):
            plan = cache.plan = StepPlan.of(self, x)
        if not plan.lean:  # hooks, gradients, training, autocast: module by module
            return self(x, memory, memory_mask, cache)
        norm_self, norm_cross, norm_ffn = plan.norms
        pre = self.norm_first  # each norm before its sublayer, else after the residual
        h = norm_self(x) if pre else x
        x = plan.out(self._tree_attention(plan.qkv(h), cache), x)  # x + self-attention
        if not pre:
            x = norm_self(x)
        h = norm_cross(x) if pre else x
        x = self._cross(h, x, memory, memory_mask, cache)  # x + cross-attention (folded)
        if not pre:
            x = norm_cross(x)
        h = norm_ffn(x) if pre else x
        a = plan.fc1(h)
        x = plan.fc2(a if plan.act is None else plan.act(a), x)  # x + feed-forward
        return x if pre else norm_ffn(x)

    def _cross(self, h: torch.Tensor, x: torch.Tensor, memory: torch.Tensor,
               memory_mask: torch.Tensor, cache: LayerCache | None,
               packing: Packing | None = None,
               memory_packing: Packing | None = None) -> torch.Tensor:
        """x + attention of h to the encoder's output."""
        attn = self.encoder_attn
        if cache is not None and cache.cross_kv is not None:
            kv = cache.cross_kv
        else:
            kv = attn.keys_values(memory, memory_packing)  # (B, nh, S, hs)
            if cache is not None:
                # Laid out for the steps' products, which read k transposed: copied once
                # here, not by every step's matmul.
                kv = (kv[0].transpose(-1, -2).contiguous().transpose(-1, -2),
                      kv[1].contiguous())
                cache.cross_kv = kv
        if packing is None and h.size(0) > kv[0].size(0):
            if cache is not None:
                if cache.cross_folded is None and self.folds(kv, memory_mask, cache):
                    cache.cross_folded = self.fold_cross(kv, memory_mask)
                if cache.cross_folded is not None:
                    return self.folded_cross(h, x, cache.cross_folded)
            return self._grouped(attn, x, attn.q_proj(h), kv, memory_mask)
        q = attn.q_proj(h)
        return self.residual_attend(attn, x, q, kv, mask=memory_mask, packing=packing)

    def folds(self, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
              cache: LayerCache) -> bool:
        """Whether the decoding queries that share the encoder's keys and values kv (each
        (B, nh, S, hs)), several to a row (a beam search's), take the folded
        cross-attention (``fold_cross``): at inference, outside autocast (whose
        low-precision products would take the residual added in the second one down
        with them), through plain Linears (not adapters or quantized layers), with the
        additive form of the source ``mask`` (``DecoderCache.memory_bias``), in a cache
        that folds, where its tensors read at most ``FOLD_MAX_EXTRA_BYTES`` more a step
        than the plain way's (its weights and kv)."""
        attn = self.encoder_attn
        if (self.training or torch.is_grad_enabled() or cache.owner is None
                or not cache.owner.fold or type(attn.q_proj) is not Linear
                or type(attn.out_proj) is not Linear or not mask.is_floating_point()
                or torch.is_autocast_enabled(kv[0].device.type)):
            return False
        B, nh, S, hs = kv[0].shape
        C = nh * hs
        extra = 2 * B * nh * S * C - (2 * B * S * C + 2 * C * C)  # elements
        return extra * kv[0].element_size() <= FOLD_MAX_EXTRA_BYTES

    def fold_cross(self, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cross-attention of a decoding step folded into its weights, for the
        encoder's keys and values kv (each (B, nh, S, hs)) and the additive ``mask``
        (B, nh, 1, S) (``DecoderCache.memory_bias``): made once, read by every step.

        Head h's scores are q_h k_h^T = (x Wq_h^T + bq_h) k_h^T, so with the keys fixed
        (the source's) the query projection folds into them: x (Wq_h^T k_h^T), plus
        bq_h k_h^T, the same for every query. Likewise its output, sum_h P_h v_h Wo_h^T
        + bo, folds the output projection into the values: P_h (v_h Wo_h^T), plus bo,
        shared by the heads as bo / nh each (a head's weights P_h sum to 1). The same
        algebra lets DeepSeek-V2's attention keep its compressed cache (it "absorbs" the
        key's up-projection into the query's). A step is then two batched products a
        source, (G, C) x (C, nh*S) and (G, nh*S) x (nh*S, C), and a softmax, in place of
        two projections and six calls more: fewer calls, no more multiply-adds
        while nh*S < C + S, but nh times the bytes of kv to read (``folds`` weighs it).
        The values are the plain way's up to rounding (the tests allow 1e-5).

        Returns: (Wq k^T scaled (B, C, nh*S), the scores' bias (B, 1, nh*S): the mask
        plus bq k^T scaled, v Wo^T plus bo / nh (B, nh*S, C)), the heads side by side."""
        attn = self.encoder_attn
        k, v = kv
        B, nh, S, hs = k.shape
        C = nh * hs
        scale = hs ** -0.5
        bias = mask.expand(B, nh, 1, S).reshape(B, nh, S)
        wq = attn.q_proj.weight.view(nh, hs, C)
        scores_of = torch.einsum("hdc,bhsd->bchs", wq, k).mul_(scale)  # (B, C, nh, S)
        if attn.q_proj.bias is not None:
            bq = attn.q_proj.bias.view(nh, hs)
            bias = bias + torch.einsum("hd,bhsd->bhs", bq, k).mul_(scale)
        values = torch.einsum("bhsd,chd->bhsc", v, attn.out_proj.weight.view(C, nh, hs))
        if attn.out_proj.bias is not None:
            values = values + attn.out_proj.bias / nh  # (B, nh, S, C)
        return (scores_of.reshape(B, C, nh * S), bias.reshape(B, 1, nh * S),
                values.reshape(B, nh * S, C))

    def folded_cross(self, h: torch.Tensor, x: torch.Tensor,
                     folded: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x + the cross-attention of h (B*G, T, C), read through ``fold_cross``'s tensors
        (B rows, each read by G consecutive rows of h)."""
        scores_of, bias, values = folded
        BG, T, C = h.shape
        B = scores_of.size(0)
        GT = BG // B * T  # the queries of a row
        scores = torch.baddbmm(bias, h.reshape(B, GT, C), scores_of)  # (B, GT, nh*S)
        p = scores.view(B, GT, self.encoder_attn.n_head, -1).softmax(dim=-1)
        out = torch.baddbmm(x.reshape(B, GT, C), p.view(B, GT, -1), values)  # x + attention
        return out.view(BG, T, C)

    def _grouped(self, attn: Attention, x: torch.Tensor, q: torch.Tensor,
                 kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
                 ) -> torch.Tensor:
        """x + attention of queries q (B*G, T, C) to keys and values (B, nh, L, hs) of B
        rows, each read by G consecutive rows of q (a beam search's beams of a source),
        as G*T queries of one row (B, G*T, C)."""
        BG, T, C = q.shape
        grouped = (kv[0].size(0), BG // kv[0].size(0) * T, C)
        return self.residual_attend(attn, x.reshape(grouped), q.reshape(grouped), kv,
                                    mask=mask).view(BG, T, C)

    def forward(self, x: torch.Tensor, memory: torch.Tensor,  # type: ignore[override]
                memory_mask: torch.Tensor, cache: LayerCache | None = None,
                packing: Packing | None = None,
                memory_packing: Packing | None = None) -> torch.Tensor:
        """x (B, T, C) target states, memory (B, S, C) the encoder's output, memory_mask
        (B, 1, 1, S) True on real source tokens (or its additive form, (B, nh, 1, S):
        ``DecoderCache.memory_bias``). With ``packing`` (training), x is the
        real target tokens (N, C); with ``memory_packing``, memory the real source
        tokens (N', C)."""
        def cross(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return self._cross(h, x, memory, memory_mask, cache, packing, memory_packing)

        if self.norm_first:
            x = self._self(self.self_attn_layer_norm(x), x, cache, packing)
            x = cross(self.encoder_attn_layer_norm(x), x)
            return self.ffn(self.final_layer_norm(x), x)
        x = self.self_attn_layer_norm(self._self(x, x, cache, packing))
        x = self.encoder_attn_layer_norm(cross(x, x))
        return self.final_layer_norm(self.ffn(x, x))


class Stack(nn.Module):
    """Embeddings (scaled, plus positions, optionally normed) and layers: the encoder or
    the decoder. ``embed_tokens`` is the model's shared table, not owned here."""

    def __init__(self, config: Seq2SeqConfig, n_layer: int, decoder: bool) -> None:
        super().__init__()
        self.config = config
        C = config.n_embd
        self.embed_scale = math.sqrt(C) if config.scale_embedding else 1.0
        if config.pos == "learned":
            self.embed_positions = nn.Embedding(config.block_size + config.pos_offset, C)
        else:
            self.register_buffer("sinusoids", sinusoidal_positions(config.block_size, C),
                                 persistent=False)
        if config.embed_norm:
            self.layernorm_embedding = nn.LayerNorm(C, eps=config.norm_eps)
        layer = DecoderLayer if decoder else EncoderLayer
        self.layers = nn.ModuleList([layer(config) for _ in range(n_layer)])
        if config.norm_first:
            self.layer_norm = nn.LayerNorm(C, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def embed(self, tokens: torch.Tensor, table: nn.Embedding, start: int = 0) -> torch.Tensor:
        """Token embeddings (B, T, C) of ``tokens`` at positions start..start+T."""
        T = tokens.size(1)
        if start + T > self.config.block_size:
            raise ValueError(f"positions {start}..{start + T} exceed the model's "
                             f"{self.config.block_size} positions")
        x = table(tokens) * self.embed_scale
        if self.config.pos == "learned":
            pos = torch.arange(start, start + T, device=tokens.device)
            x = x + self.embed_positions(pos + self.config.pos_offset)
        else:  # the table's rows as a view: a decoding step's call or two fewer
            x = x + self.sinusoids[start:start + T].to(x.dtype)
        if self.config.embed_norm:
            x = self.layernorm_embedding(x)
        return self.dropout(x) if self.training else x

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x) if self.config.norm_first else x


class Seq2Seq(nn.Module):
    """Encoder, decoder and the shared embedding table (source, target and output)."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.n_embd,
                                   padding_idx=config.pad_token_id)
        self.encoder = Stack(config, config.n_encoder_layer, decoder=False)
        self.decoder = Stack(config, config.n_decoder_layer, decoder=True)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        # Press & Wolf 2017: one table for source, target and output (a joint vocabulary).
        self.lm_head.weight = self.shared.weight
        if config.final_logits_bias:
            # Marian's and BART's bias on the output logits (a buffer there too: not trained).
            self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))
        # N(0, 0.02) everywhere, as Marian and BART start (fairseq's N(0, 1/C) for the
        # shared table made the tied output's first logits large and training slow here).
        self.apply(init_weights)
        with torch.no_grad():
            self.shared.weight[config.pad_token_id].zero_()

    def rebuild_buffers(self, device: torch.device | str = "cpu") -> None:
        """Recompute the buffers that are not saved (the sinusoid tables) after a model
        built on the meta device has had its weights loaded."""
        if self.config.pos == "sinusoidal":
            table = sinusoidal_positions(self.config.block_size, self.config.n_embd)
            self.encoder.sinusoids = table.to(device)
            self.decoder.sinusoids = table.to(device)

    def num_params(self) -> int:
        """Parameters counted once (the shared table once)."""
        return sum(p.numel() for p in self.parameters())

    @staticmethod
    def key_mask(mask: torch.Tensor) -> torch.Tensor:
        """(B, S) 1/True on real tokens -> the (B, 1, 1, S) boolean mask attention takes."""
        return mask.bool()[:, None, None, :]

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
               packing: Packing | None = None) -> torch.Tensor:
        """The encoder's output (B, S, C) for source ids (B, S); ``src_mask`` (B, S) is 1 on
        real tokens (default: all). With ``packing`` (of a right-padded ``src_mask``),
        that of the real tokens only (N, C), the padding skipped throughout."""
        if src_mask is None:
            src_mask = torch.ones_like(src, dtype=torch.bool)
        mask = self.key_mask(src_mask)
        x = self.encoder.embed(src, self.shared)
        if packing is not None:
            x = packing.pack(x)  # (N, C)
        for layer in self.encoder.layers:
            x = layer(x, mask, packing)
        return self.encoder.finish(x)

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None,
               cache: DecoderCache | None = None, hidden: bool = False,
               select: torch.Tensor | None = None,
               memory_packing: Packing | None = None) -> torch.Tensor:
        """Logits (B, T, V) of the next token after each of target ids ``tgt`` (B, T),
        reading the encoder's output ``memory`` (B, S, C). With a ``cache``, ``tgt``
        continues the positions it holds, and it grows by T. ``memory`` and ``src_mask``
        may have B/G rows, each read by G consecutive rows of ``tgt`` (a beam search's
        beams of one source).
        ``hidden`` returns the final hidden states (B, T, C), or (N, C) with ``select``,
        instead; ``select``
        (B, T) bool, the logits (N, V) of the marked positions only (training skips the
        padding's: the output layer is the largest matrix). A right-padded ``select``
        (training's) runs the layers on the marked positions alone (``Packing``; no later
        position is read by an earlier one). ``memory_packing``: ``memory`` is the real
        source tokens (N', C) that ``encode`` packed."""
        start = cache.length if cache is not None else 0
        if src_mask is None:
            src_mask = torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
        if cache is not None and not self.training:
            mask = cache.memory_bias(src_mask, self.config.n_head, memory.dtype)
        else:
            mask = self.key_mask(src_mask)
        x = self.decoder.embed(tgt, self.shared, start)
        packing = Packing.of(select) if cache is None else None
        if packing is not None:
            x = packing.pack(x)  # (N, C)
        tree = cache is not None and cache.beams
        for i, layer in enumerate(self.decoder.layers):
            if tree:  # a beam search's step: its calls resolved once a search (StepPlan)
                x = layer.tree_step(x, memory, mask, cache.layers[i])
            else:
                x = layer(x, memory, mask, cache.layers[i] if cache is not None else None,
                          packing, memory_packing)
        x = self.decoder.finish(x)
        if cache is not None:
            cache.length += tgt.size(1)
        if select is not None and packing is None:
            x = x[select]  # (N, C)
        if hidden:
            return x
        bias = self.final_logits_bias[0] if self.config.final_logits_bias else None
        return linear_then(self.lm_head, x, bias)  # the bias added in the product

    def new_cache(self, capacity: int | None = None, beams: int = 0) -> DecoderCache:
        """An empty cache for decoding; ``capacity``: the target positions it will hold at
        most (its buffers then grow in place); ``beams``: a beam search's number of beams,
        for a cache kept as a tree (see ``DecoderCache``)."""
        return DecoderCache(self.config.n_decoder_layer, capacity, beams)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor,
                src_mask: torch.Tensor | None = None,
                select: torch.Tensor | None = None, hidden: bool = False) -> torch.Tensor:
        """Teacher forcing: logits (B, T, V) for decoder inputs ``tgt`` (B, T) (the target
        shifted right behind the start token) given source ids ``src`` (B, S); with
        ``select`` (B, T), those of the marked positions only (N, V); ``hidden``, the final
        hidden states instead. A right-padded ``src_mask`` skips the source's padding in
        the encoder (``Packing``)."""
        packing = Packing.of(src_mask)
        memory = self.encode(src, src_mask, packing)  # (B, S, C), or (N', C) packed
        return self.decode(tgt, memory, src_mask, select=select, hidden=hidden,
                           memory_packing=packing)
