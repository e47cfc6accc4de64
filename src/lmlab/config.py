"""Model configs: one flat dataclass for GPT-2-style and Llama-style decoders, one for
BERT-style encoders.

A handful of explicit switches (norm, position encoding, MLP kind, KV heads,
bias, tied output) describe both decoder families, so the model code never
branches on a model's name. Presets are looked up by name with
``GPTConfig.from_name`` and ``BertConfig.from_name``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmlab.errors import LmlabError


@dataclass
class GPTConfig:
    """Hyper-parameters of a decoder-only Transformer (see ``models/gpt.py``)."""

    vocab_size: int = 50257
    block_size: int = 1024  # context length in tokens
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: int | None = None  # < n_head: grouped-query attention (Ainslie et al. 2023)
    intermediate_size: int | None = None  # MLP hidden width; derived when None
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    pos: Literal["learned", "rope"] = "learned"
    rope_base: float = 10000.0
    mlp: Literal["gelu", "swiglu"] = "gelu"
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.intermediate_size is None:
            if self.mlp == "gelu":
                self.intermediate_size = 4 * self.n_embd
            else:
                # SwiGLU has three matrices instead of two: 2/3 of 4*C keeps the
                # parameter count equal (Shazeer 2020); round up to a multiple of 64.
                hidden = int(2 * 4 * self.n_embd / 3)
                self.intermediate_size = 64 * ((hidden + 63) // 64)
        if self.n_embd % self.n_head:
            raise LmlabError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise LmlabError(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        if self.pos == "rope" and self.head_dim % 2:
            raise LmlabError(f"RoPE needs an even head size, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named preset, with any field overridden (None overrides are ignored)."""
        return _from_preset(cls, PRESETS, name, overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        return _from_dict(cls, d)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _from_preset(cls: type, presets: dict[str, dict[str, Any]], name: str,
                 overrides: dict[str, Any]) -> Any:
    if name not in presets:
        raise LmlabError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}")
    fields = dict(presets[name])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**fields)


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise LmlabError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    return cls(**d)


_LLAMA = dict(norm="rmsnorm", pos="rope", mlp="swiglu", bias=False, tie_embeddings=False)

PRESETS: dict[str, dict[str, Any]] = {
    # Sub-million-parameter models for tests and a first look.
    "gpt-nano": dict(n_layer=2, n_head=2, n_embd=64, block_size=128),
    # The benchmark shape of issue #2: 4 layers, 4 heads, 128 wide, context 64.
    "gpt-micro": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    # The demo model: a few minutes of CPU training gives readable samples.
    "gpt-mini": dict(n_layer=4, n_head=4, n_embd=192, block_size=128),
    "gpt-small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257),
    "llama-nano": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, block_size=128, **_LLAMA),
    "llama-mini": dict(n_layer=4, n_head=6, n_kv_head=2, n_embd=192, block_size=128, **_LLAMA),
    "llama-small": dict(n_layer=6, n_head=6, n_kv_head=2, n_embd=384, block_size=256, **_LLAMA),
}


@dataclass
class BertConfig:
    """Hyper-parameters of a BERT-style encoder (see ``models/bert.py``).

    Devlin et al. 2019: post-LayerNorm blocks, learned absolute positions,
    token-type (segment) embeddings, exact (erf) GELU. ``model_type`` marks a
    checkpoint's config.json as an encoder's, so loaders can tell it from a GPT's.
    """

    vocab_size: int = 30522
    block_size: int = 512  # max_position_embeddings: the longest input in tokens
    type_vocab_size: int = 2  # segment A / segment B
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    intermediate_size: int | None = None  # MLP hidden width; 4 * n_embd when None
    norm_eps: float = 1e-12
    dropout: float = 0.1  # embeddings, residual branches and task heads
    attn_dropout: float = 0.1  # on the attention probabilities
    pad_token_id: int = 0
    pooler: bool = True  # tanh(dense) over the [CLS] state, used by NSP and classification
    model_type: Literal["bert"] = "bert"

    def __post_init__(self) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        if self.n_embd % self.n_head:
            raise LmlabError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> BertConfig:
        """A named preset, with any field overridden (None overrides are ignored)."""
        return _from_preset(cls, BERT_PRESETS, name, overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        return _from_dict(cls, d)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def config_from_dict(d: dict[str, Any]) -> GPTConfig | BertConfig:
    """The config a checkpoint's config.json describes: an encoder's or a decoder's."""
    if d.get("model_type") == "bert":
        return BertConfig.from_dict(d)
    return GPTConfig.from_dict(d)


def load_config(path: Path) -> GPTConfig | BertConfig:
    """Read a checkpoint's config.json (either family)."""
    try:
        return config_from_dict(json.loads(Path(path).read_text()))
    except json.JSONDecodeError as e:
        raise LmlabError(f"{path}: not valid JSON ({e})") from None


# Sizes after Turc et al. 2019 ("Well-Read Students Learn Better": BERT-Tiny/Mini/Small/
# Medium) plus all-MiniLM-L6-v2's shape; the context is kept short for CPU training.
BERT_PRESETS: dict[str, dict[str, Any]] = {
    "bert-nano": dict(n_layer=2, n_head=2, n_embd=64, block_size=128),
    "bert-tiny": dict(n_layer=2, n_head=2, n_embd=128, block_size=512),
    "bert-mini": dict(n_layer=4, n_head=4, n_embd=256, block_size=128),
    "bert-small": dict(n_layer=4, n_head=8, n_embd=512, block_size=512),
    "bert-medium": dict(n_layer=8, n_head=8, n_embd=512, block_size=512),
    "bert-base": dict(n_layer=12, n_head=12, n_embd=768, block_size=512),
    "minilm-l6": dict(n_layer=6, n_head=12, n_embd=384, intermediate_size=1536, block_size=512),
}
