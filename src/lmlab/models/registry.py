"""The model families: one record each, and the one place that asks which class a model is.

A family record says what the rest of lmlab needs to know about a family
without looking at its classes: its config class and presets, how to build
it, its kind, and its context.

* ``causal``: a Transformer decoder (GPT-2 / Llama shapes); reads at most
  ``block_size`` tokens.
* ``stateful``: a classic LM (Bengio's feed-forward LM, RNN, LSTM, GRU) that
  carries a state from call to call (``logits, state = model(idx, state)``);
  it has no context limit, its ``block_size`` being a training length only.
* ``encoder``: a bidirectional encoder (BERT); it neither generates nor scores
  text left to right.
* ``seq2seq``: an encoder-decoder (the original Transformer, Marian, BART);
  it writes a target text for a source text, reading at most ``block_size``
  tokens of each.

To add a family: write its module under ``models/`` (its config dataclass in
``config.py``), then one ``register(Family(...))`` below. Commands, training,
evaluation, generation, fine-tuning and conversion go through these functions,
never through ``isinstance`` on a model or config class (``tests/test_registry.py``
checks that with ``ast``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch.nn as nn

from lmlab.config import (
    BERT_PRESETS,
    PRESETS,
    RNN_PRESETS,
    SEQ2SEQ_PRESETS,
    BertConfig,
    GPTConfig,
    RNNConfig,
    Seq2SeqConfig,
)
from lmlab.errors import LmlabError
from lmlab.models.bert import Bert, BertForPreTraining
from lmlab.models.gpt import GPT
from lmlab.models.rnn import FeedForwardLM, RecurrentLM, RNNEncoder
from lmlab.models.seq2seq import Seq2Seq

Kind = Literal["causal", "stateful", "encoder", "seq2seq"]
# How a fine-tuning backbone reads its input: BERT as [CLS] text [SEP], the others the text.
Reader = Literal["bert", "gpt", "rnn"]
# How pretraining draws a batch: random windows (GPT), windows with the context - 1
# tokens before them (feed-forward), parallel streams in order (truncated BPTT), or
# masked windows (BERT), or (source, target) pairs (encoder-decoder).
Batches = Literal["windows", "windows+past", "streams", "masked", "pairs"]


@dataclass(frozen=True)
class Family:
    """One model family: how lmlab builds, loads and drives it."""

    name: str  # "gpt", "bert", "ffnn", "rnn", "lstm", "gru"
    kind: Kind
    config_cls: type
    presets: Mapping[str, Mapping[str, Any]]
    batches: Batches
    reader: Reader | None  # None: cannot be a fine-tuning backbone
    # config -> randomly initialised pretraining model (``nsp`` for BERT's second head)
    build: Callable[..., nn.Module]
    # config, names of the saved tensors -> the model class those tensors fill (built
    # on whatever device is current, e.g. meta), and the tensors' names for it
    for_weights: Callable[[Any, Collection[str]], tuple[nn.Module, Callable[[str], str]]]
    # config -> the fine-tuning backbone (hidden states, no LM / MLM head); a recurrent
    # one takes ``embedding_init`` (vocab_size, dim) to start from word vectors
    backbone: Callable[..., nn.Module]

    def context(self, config: Any) -> int | None:
        """Tokens the model can read at once; None when a state carries any length."""
        return None if self.kind == "stateful" else config.block_size


def _same(key: str) -> str:
    return key


def _gpt_weights(config: GPTConfig, keys: Collection[str]) -> tuple[nn.Module, Callable]:
    return GPT(config), _same


def _bert_weights(config: BertConfig, keys: Collection[str]) -> tuple[nn.Module, Callable]:
    # The masked-LM head's bias marks a pretraining model; without it, the bare encoder.
    if "mlm.bias" in keys:
        return BertForPreTraining(config, nsp="nsp.weight" in keys), _same
    return Bert(config), lambda k: k.removeprefix("bert.")


def _rnn_build(config: RNNConfig, **_: Any) -> nn.Module:
    return FeedForwardLM(config) if config.model_type == "ffnn" else RecurrentLM(config)


def _rnn_weights(config: RNNConfig, keys: Collection[str]) -> tuple[nn.Module, Callable]:
    return _rnn_build(config), _same


def _no_backbone(config: RNNConfig, **_: Any) -> nn.Module:
    raise LmlabError("a feed-forward LM reads a fixed window, not a whole text; fine-tune a "
                     "recurrent, BERT or GPT model")


def _no_seq2seq_backbone(config: Seq2SeqConfig, **_: Any) -> nn.Module:
    raise LmlabError("an encoder-decoder writes a text for a text (translation, "
                     "summarization); classify, tag and qa fine-tune an encoder (BERT), a "
                     "decoder (GPT) or a recurrent model")


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is registered twice")
    FAMILIES[family.name] = family
    return family


register(Family("gpt", "causal", GPTConfig, PRESETS, "windows", "gpt",
                build=lambda config, **_: GPT(config), for_weights=_gpt_weights,
                backbone=lambda config, **_: GPT(config)))
register(Family("bert", "encoder", BertConfig, BERT_PRESETS, "masked", "bert",
                build=lambda config, nsp=False, **_: BertForPreTraining(config, nsp=nsp),
                for_weights=_bert_weights, backbone=lambda config, **_: Bert(config)))
register(Family("ffnn", "stateful", RNNConfig,
                {k: v for k, v in RNN_PRESETS.items() if v["model_type"] == "ffnn"},
                "windows+past", None, build=_rnn_build, for_weights=_rnn_weights,
                backbone=_no_backbone))
for _cell in ("rnn", "lstm", "gru"):
    register(Family(_cell, "stateful", RNNConfig,
                    {k: v for k, v in RNN_PRESETS.items() if v["model_type"] == _cell},
                    "streams", "rnn", build=_rnn_build, for_weights=_rnn_weights,
                    backbone=RNNEncoder))
register(Family("seq2seq", "seq2seq", Seq2SeqConfig, SEQ2SEQ_PRESETS, "pairs", None,
                build=lambda config, **_: Seq2Seq(config),
                for_weights=lambda config, keys: (Seq2Seq(config), _same),
                backbone=_no_seq2seq_backbone))


def family_of(obj: Any) -> Family:
    """The family of a config, or of a model (anything with a ``.config``)."""
    config = getattr(obj, "config", obj)
    if isinstance(config, RNNConfig):
        return FAMILIES[config.model_type]
    for family in FAMILIES.values():
        if isinstance(config, family.config_cls):
            return family
    raise LmlabError(f"not a model lmlab knows: {type(obj).__name__}")


def kind_of(obj: Any) -> Kind:
    return family_of(obj).kind


def is_stateful(obj: Any) -> bool:
    """A feed-forward or recurrent LM: ``logits, state = model(idx, state)``, any length."""
    return kind_of(obj) == "stateful"


def context_of(obj: Any) -> int | None:
    """Tokens a model (or config) reads at once; None for a stateful model (no limit)."""
    config = getattr(obj, "config", obj)
    return family_of(config).context(config)


def family_of_preset(name: str, objective: str = "clm") -> Family | None:
    """The family whose presets hold ``name`` (None when none does). The masked-LM
    objective looks among the encoders first, so a name in both means BERT."""
    order = sorted(FAMILIES.values(), key=lambda f: (f.kind == "encoder") != (objective == "mlm"))
    return next((f for f in order if name in f.presets), None)


def preset_names(kind: Kind | None = None) -> list[str]:
    """Every preset name, or those of one kind, in registry order."""
    return [name for f in FAMILIES.values() if kind in (None, f.kind) for name in f.presets]


def config_from_preset(name: str, objective: str = "clm", **overrides: Any) -> Any:
    """The config of a named preset, with any non-None field overridden."""
    family = family_of_preset(name, objective)
    if family is None:
        raise LmlabError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return family.config_cls.from_name(name, **overrides)


def build_model(config: Any, **options: Any) -> nn.Module:
    """A randomly initialised model of ``config``'s family, as pretraining trains it."""
    return family_of(config).build(config, **options)


def model_for_weights(config: Any, keys: Collection[str]) -> tuple[nn.Module, Callable[[str], str]]:
    """The model that saved tensors named ``keys`` fill (built on the current device), and
    how to rename the keys for it (a bare BERT encoder's drop their ``bert.`` prefix)."""
    return family_of(config).for_weights(config, keys)


def backbone_of(model: nn.Module) -> nn.Module:
    """A loaded model's fine-tuning backbone: BERT without its pretraining heads, a recurrent
    LM's encoder without its output layer, a GPT as it is. A feed-forward LM has none."""
    family = family_of(model)
    if family.reader is None:
        family.backbone(model.config)  # raises, saying why
    if isinstance(model, BertForPreTraining):
        return model.bert
    if isinstance(model, RecurrentLM):
        return model.encoder
    return model


def backbone_for(config: Any, embedding_init: Any = None) -> nn.Module:
    """A fine-tuning backbone for ``config`` (random init; built on the current device);
    ``embedding_init`` (vocab_size, dim) starts a recurrent one's embedding from vectors."""
    if embedding_init is None:
        return family_of(config).backbone(config)
    return family_of(config).backbone(config, embedding_init=embedding_init)


def reader_of(backbone: nn.Module) -> Reader:
    """How a backbone reads its input: "bert" ([CLS] ... [SEP]), "gpt" or "rnn" (the text)."""
    reader = family_of(backbone).reader
    assert reader is not None
    return reader


def hidden_width(backbone: nn.Module) -> int:
    """The width of a backbone's final hidden states (a bidirectional RNN's are both
    directions side by side)."""
    if isinstance(backbone, RNNEncoder):
        return backbone.out_dim
    return backbone.config.n_embd


def strip_for_task(backbone: nn.Module, keep_pooler: bool) -> nn.Module | None:
    """Drop what a task head does not use; returns BERT's pooler when ``keep_pooler``.

    BERT's pooler moves into the classification head when it is used ("cls"
    pooling, as ``BertForSequenceClassification``), else it goes: one owner per
    tensor, so the checkpoint needs no de-duplication. A GPT's LM head is used by
    no task head (a tied one is wte, which stays); dropping it saves V x C
    parameters for an untied model.
    """
    pooler = None
    if isinstance(backbone, Bert):
        pooler = backbone.pooler if keep_pooler else None
        backbone.pooler = None
    elif isinstance(backbone, GPT):
        backbone.lm_head = nn.Identity()
    return pooler
