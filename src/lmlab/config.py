"""Model configs: one flat dataclass for GPT-2-style and Llama-style decoders, one for
BERT-style encoders, one for the classic neural LMs (feed-forward, RNN, LSTM, GRU).

A handful of explicit switches (norm, position encoding, MLP kind, KV heads,
bias, tied output) describe both decoder families, so the model code never
branches on a model's name. Presets are looked up by name with
``GPTConfig.from_name``, ``BertConfig.from_name`` and ``RNNConfig.from_name``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmlab.errors import LmlabError
from lmlab.options import Count, Dropout, NonNegative, PositiveFloat, check_fields

# How a fine-tuning head reads a text's hidden states: BERT's [CLS], the mean over real
# tokens, or the last real token (a GPT's, the only one that has read the whole text).
Pooling = Literal["cls", "mean", "last"]

class SavedConfig:
    """What every model config does alike: a dict, a config.json, and back (unknown fields
    refused)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return _from_dict(cls, d)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass
class GPTConfig(SavedConfig):
    """Hyper-parameters of a decoder-only Transformer (see ``models/gpt.py``)."""

    vocab_size: Count = 50257
    block_size: Count = 1024  # context length in tokens
    n_layer: Count = 12
    n_head: Count = 12
    n_embd: Count = 768
    n_kv_head: Count | None = None  # < n_head: grouped-query attention (Ainslie et al. 2023)
    intermediate_size: Count | None = None  # MLP hidden width; derived when None
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: PositiveFloat = 1e-5
    pos: Literal["learned", "rope"] = "learned"
    rope_base: PositiveFloat = 10000.0
    mlp: Literal["gelu", "swiglu", "geglu"] = "gelu"
    bias: bool = True
    tie_embeddings: bool = True
    dropout: Dropout = 0.0
    # Gemma-style switches (all off for GPT-2 and Llama). Gemma 3's heads are wider
    # than n_embd / n_head (256 against 160 for 270M), so the head size can be set.
    head_size: Count | None = None  # None: n_embd // n_head
    qk_norm: bool = False  # RMSNorm over each head's queries and keys before RoPE
    post_norms: bool = False  # a norm on each sublayer's output too (Gemma 2/3)
    embed_scale: bool = False  # token embeddings times sqrt(n_embd)
    # Local attention: every layer but each ``sliding_pattern``-th one sees only the
    # last ``sliding_window`` positions, and rotates with ``rope_local_base``.
    sliding_window: Count | None = None
    sliding_pattern: Count = 6
    rope_local_base: PositiveFloat | None = None
    query_pre_attn_scalar: PositiveFloat | None = None  # softmax scale 1/sqrt(this)

    def __post_init__(self) -> None:
        # A config.json is user input: "n_layer": "two" or "norm": "batchnorm" is an
        # error naming the field, not a TypeError from inside the model.
        check_fields(self, "model config")
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
        if self.head_size is None and self.n_embd % self.n_head:
            raise LmlabError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head} "
                             "(--n-embd, --n-head)")
        if self.n_head % self.n_kv_head:
            raise LmlabError(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        if self.pos == "rope" and self.head_dim % 2:
            raise LmlabError(f"RoPE needs an even head size, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    def is_local(self, layer: int) -> bool:
        """Whether layer ``layer`` attends through a sliding window (Gemma 3: five local
        layers, then one global)."""
        return self.sliding_window is not None and (layer + 1) % self.sliding_pattern != 0

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named preset, with any field overridden (None overrides are ignored)."""
        return _from_preset(cls, PRESETS, name, overrides)


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
_GEMMA = dict(norm="rmsnorm", norm_eps=1e-6, pos="rope", rope_local_base=10000.0,
              rope_base=1e6, mlp="geglu", bias=False, qk_norm=True, post_norms=True,
              embed_scale=True)

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
    # Gemma 3's design in miniature: wide heads, QK-norm, sandwich norms, GeGLU, and a
    # local (sliding-window) layer before each global one.
    "gemma-nano": dict(n_layer=2, n_head=2, n_kv_head=1, n_embd=64, head_size=48,
                       block_size=128, sliding_window=8, sliding_pattern=2, **_GEMMA),
}


@dataclass
class BertConfig(SavedConfig):
    """Hyper-parameters of a BERT-style encoder (see ``models/bert.py``).

    Devlin et al. 2019: post-LayerNorm blocks, learned absolute positions,
    token-type (segment) embeddings, exact (erf) GELU. ``model_type`` marks a
    checkpoint's config.json as an encoder's, so loaders can tell it from a GPT's.
    """

    vocab_size: Count = 30522
    block_size: Count = 512  # max_position_embeddings: the longest input in tokens
    type_vocab_size: Count = 2  # segment A / segment B
    n_layer: Count = 12
    n_head: Count = 12
    n_embd: Count = 768
    intermediate_size: Count | None = None  # MLP hidden width; 4 * n_embd when None
    norm_eps: PositiveFloat = 1e-12
    dropout: Dropout = 0.1  # embeddings, residual branches and task heads
    attn_dropout: Dropout = 0.1  # on the attention probabilities
    pad_token_id: NonNegative = 0
    pooler: bool = True  # tanh(dense) over the [CLS] state, used by NSP and classification
    model_type: Literal["bert"] = "bert"

    def __post_init__(self) -> None:
        check_fields(self, "model config")
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


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """The config a checkpoint's config.json describes: an encoder's, a decoder's, an
    encoder-decoder's or a classic (feed-forward / recurrent) LM's, told apart by
    ``model_type``."""
    if d.get("model_type") == "bert":
        return BertConfig.from_dict(d)
    if d.get("model_type") in RNN_TYPES:
        return RNNConfig.from_dict(d)
    if d.get("model_type") == "seq2seq":
        return Seq2SeqConfig.from_dict(d)
    return GPTConfig.from_dict(d)


def load_config(path: Path) -> ModelConfig:
    """Read a checkpoint's config.json (any family)."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmlabError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise LmlabError(f"{path}: not a model config (a JSON object was expected)")
    try:
        return config_from_dict(d)
    except LmlabError as e:
        raise LmlabError(f"{path}: {e}") from None


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


RNN_TYPES = ("ffnn", "rnn", "lstm", "gru")


@dataclass
class RNNConfig(SavedConfig):
    """Hyper-parameters of the classic neural LMs (see ``models/rnn.py``).

    ``model_type`` picks the family: ``ffnn`` is Bengio et al. (2003)'s
    feed-forward LM over a fixed window of ``context`` tokens; ``rnn`` (tanh),
    ``lstm`` and ``gru`` are recurrent LMs of ``n_layer`` layers of width
    ``n_hidden``. ``block_size`` is the tokens per training row: the truncated
    back-propagation length of a recurrent model (its state is carried across
    rows, so it is not a context limit), or the positions one row of a
    feed-forward model predicts. ``bidirectional`` is for text encoders
    (classification), never for a language model.
    """

    model_type: Literal["ffnn", "rnn", "lstm", "gru"] = "lstm"
    vocab_size: Count = 8192
    block_size: Count = 64
    n_embd: Count = 256  # token embedding width
    n_hidden: Count = 256  # hidden width (tanh layer of the ffnn, state of an RNN)
    n_layer: Count = 2  # hidden layers (ffnn) or stacked recurrent layers
    context: Count = 5  # ffnn: tokens read per prediction (an n-gram of order context + 1)
    direct: bool = False  # ffnn: Bengio's direct connections from the window to the output
    bidirectional: bool = False  # encoders only: read the text both ways
    dropout: Dropout = 0.0
    # Output matrix = input embedding (Press & Wolf 2017, Inan et al. 2017); a hidden
    # width unlike n_embd goes through a linear projection first.
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "model config")

    @property
    def recurrent(self) -> bool:
        return self.model_type != "ffnn"

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> RNNConfig:
        """A named preset, with any field overridden (None overrides are ignored)."""
        return _from_preset(cls, RNN_PRESETS, name, overrides)


# Sized to train in a few minutes on 2 CPU cores: 3-4.5 M parameters at a vocabulary
# of 8k, most of them in the embedding (and the ffnn's untied output layer).
RNN_PRESETS: dict[str, dict[str, Any]] = {
    # Bengio et al. 2003 (their best had a 5-token window and no direct connections
    # at this size); untied, as in the paper.
    "ffnn-small": dict(model_type="ffnn", n_embd=128, n_hidden=384, n_layer=1, context=5,
                       tie_embeddings=False, block_size=64),
    "rnn-small": dict(model_type="rnn", n_embd=256, n_hidden=256, n_layer=2, block_size=64),
    # Zaremba et al. 2014's shape (2 layers, embedding = hidden), scaled down.
    "lstm-small": dict(model_type="lstm", n_embd=256, n_hidden=256, n_layer=2, block_size=64,
                       dropout=0.1),
    "gru-small": dict(model_type="gru", n_embd=256, n_hidden=256, n_layer=2, block_size=64,
                      dropout=0.1),
    # A text classifier's encoder: one bidirectional GRU layer (`lmlab finetune`).
    "gru-classifier": dict(model_type="gru", n_embd=128, n_hidden=128, n_layer=1,
                           bidirectional=True, dropout=0.1, block_size=256),
}


@dataclass
class Seq2SeqConfig(SavedConfig):
    """Hyper-parameters of the encoder-decoder Transformer (see ``models/seq2seq.py``).

    The defaults are Vaswani et al. 2017's design (post-LN, sinusoidal positions,
    embeddings scaled by sqrt(n_embd) and shared by source, target and output,
    ReLU); Marian and BART are the same with the fields their configs set
    (``interop/hf_seq2seq.py``), and ``norm_first`` gives the pre-LN variant.
    """

    vocab_size: Count = 32000  # one joint vocabulary: source, target and output
    block_size: Count = 256  # positions: the longest source, and the longest target
    n_encoder_layer: Count = 6
    n_decoder_layer: Count = 6
    n_head: Count = 8
    n_embd: Count = 512
    intermediate_size: Count | None = None  # feed-forward width; 4 * n_embd when None
    norm_first: bool = False  # pre-LN (Xiong et al. 2020) instead of the original post-LN
    pos: Literal["sinusoidal", "learned"] = "sinusoidal"
    pos_offset: NonNegative = 0  # rows before position 0 of a learned table (BART: 2)
    scale_embedding: bool = True  # token embeddings x sqrt(n_embd), as the paper
    embed_norm: bool = False  # a LayerNorm on the summed embeddings (BART)
    activation: Literal["relu", "gelu", "silu"] = "relu"
    norm_eps: PositiveFloat = 1e-5
    final_logits_bias: bool = False  # Marian's and BART's (untrained) bias on the logits
    dropout: Dropout = 0.1  # embeddings and residual branches
    attn_dropout: Dropout = 0.0  # attention probabilities
    activation_dropout: Dropout = 0.0  # after the feed-forward activation
    pad_token_id: NonNegative = 0
    eos_token_id: NonNegative = 2
    decoder_start_token_id: NonNegative = 2  # the token the decoder starts from
    model_type: Literal["seq2seq"] = "seq2seq"

    def __post_init__(self) -> None:
        check_fields(self, "model config")
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.n_embd
        if self.n_embd % self.n_head:
            raise LmlabError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head} "
                             "(--n-embd, --n-head)")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if getattr(self, name) >= self.vocab_size:
                raise LmlabError(f"{name}={getattr(self, name)} is outside the vocabulary "
                                 f"of {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def tie_embeddings(self) -> bool:
        """Always: one table serves source, target and output (saved once, as shared)."""
        return True

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> Seq2SeqConfig:
        """A named preset, with any field overridden (None overrides are ignored)."""
        return _from_preset(cls, SEQ2SEQ_PRESETS, name, overrides)


SEQ2SEQ_PRESETS: dict[str, dict[str, Any]] = {
    "seq2seq-nano": dict(n_encoder_layer=2, n_decoder_layer=2, n_head=2, n_embd=64,
                         block_size=128),
    # Sized for a CPU: a few million parameters besides the embeddings.
    "seq2seq-mini": dict(n_encoder_layer=3, n_decoder_layer=3, n_head=4, n_embd=256,
                         block_size=128),
    "seq2seq-small": dict(n_encoder_layer=6, n_decoder_layer=6, n_head=8, n_embd=384,
                          block_size=256),
    # Vaswani et al. 2017's base model: 6 + 6 layers, 512 wide, 8 heads, 2048 feed-forward.
    "transformer-base": dict(n_encoder_layer=6, n_decoder_layer=6, n_head=8, n_embd=512,
                             intermediate_size=2048, block_size=512),
    # Their big model: 1024 wide, 16 heads, 4096 feed-forward, dropout 0.3.
    "transformer-big": dict(n_encoder_layer=6, n_decoder_layer=6, n_head=16, n_embd=1024,
                            intermediate_size=4096, block_size=512, dropout=0.3),
}


# Any family's config (``models/registry.py`` says which family a config is).
ModelConfig = GPTConfig | BertConfig | RNNConfig | Seq2SeqConfig
