"""The fine-tuning model: a pretrained (or preset) backbone and one task head.

``load_backbone`` reads any model source through ``loading.load_model`` and keeps
the body the task head reads (``registry.backbone_of``); ``TaskModel`` puts a
classification, tagging or span head on its final hidden states.

Shapes: B batch, T tokens, C width, K labels.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from lmlab.config import BERT_PRESETS, PRESETS, RNN_PRESETS
from lmlab.data.tasks import Task
from lmlab.errors import LmlabError
from lmlab.models.bert import Bert, ClassificationHead, Pooling, SpanHead, TokenClassificationHead
from lmlab.models.gpt import GPT
from lmlab.models.registry import (
    backbone_for,
    backbone_of,
    family_of_preset,
    hidden_width,
    reader_of,
    strip_for_task,
)
from lmlab.models.rnn import RNNEncoder
from lmlab.models.weights import TOKENIZER_FILE
from lmlab.tokenizer import Tokenizer

# ---------------------------------------------------------------- backbone + head
Backbone = Bert | GPT | RNNEncoder
# Recurrent presets that can encode a text (the feed-forward LM cannot).
_RNN_ENCODER_PRESETS = [n for n, p in RNN_PRESETS.items() if p["model_type"] != "ffnn"]


def _default_pooling_of_folder(folder: Path) -> Pooling | None:
    """The pooling a sentence-transformers folder was trained with (1_Pooling/config.json)."""
    cfg = folder / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return None
    try:
        d = json.loads(cfg.read_text())
    except json.JSONDecodeError:
        return None
    if d.get("pooling_mode_mean_tokens"):
        return "mean"
    if d.get("pooling_mode_cls_token"):
        return "cls"
    return None


def vector_embeddings(path: Path, tokenizer: str | None, max_words: int | None,
                      seed: int) -> tuple[Tokenizer, torch.Tensor]:
    """A tokenizer and its (vocab_size, dim) initial embeddings from a word-vector file.

    Without ``tokenizer``, a word-level one over the file's (first ``max_words``)
    words, so every word has its vector. Tokens without a vector (the special
    tokens, words missing from the file) start as random rows of the vectors'
    own scale, so they neither dominate nor vanish next to the copied ones.
    """
    from lmlab.models.embeddings import WordVectors, init_embedding, load_vectors, word_tokenizer

    vectors = load_vectors(path)
    if max_words is not None:
        vectors = WordVectors(vectors.words[:max_words], vectors.vectors[:max_words], path)
    tok = Tokenizer.from_file(tokenizer) if tokenizer else word_tokenizer(vectors)
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(tok.vocab_size, vectors.dim, generator=g) * float(vectors.vectors.std())
    hits, total = init_embedding(weight, tok, vectors)
    if hits == 0:
        raise LmlabError(f"{path}: none of the tokenizer's {total:,} tokens has a vector")
    print(f"vectors: {hits:,} of {total:,} tokens start from {path} ({vectors.dim}-dim)",
          file=sys.stderr, flush=True)
    return tok, weight


def load_backbone(source: str | Path, tokenizer: str | Path | Tokenizer | None = None,
                  embedding_init: torch.Tensor | None = None
                  ) -> tuple[Backbone, Tokenizer, Path | None, Pooling | None]:
    """A backbone, its tokenizer, the folder it came from, and the folder's own pooling.

    ``source`` is a Hugging Face BERT/GPT-2/Llama folder, an lmlab checkpoint
    or run folder (BERT, GPT, or a recurrent LM), or a preset name
    (BERT_PRESETS, GPT PRESETS, or a recurrent one of RNN_PRESETS such as
    ``gru-classifier``) for a randomly initialised backbone sized to
    ``tokenizer``. A masked-LM model (``BertForPreTraining``) gives its
    encoder (its MLM head is dropped), and a recurrent LM its ``RNNEncoder``
    (its output layer is dropped).

    ``embedding_init`` (vocab_size, dim), e.g. word vectors looked up for each
    token of ``tokenizer``, initialises a recurrent preset's token embeddings
    (its width becomes ``dim``); it applies to recurrent presets only.
    """
    from lmlab.loading import eos_token_of_folder, load_model, model_folder
    from lmlab.train.tasks.checkpoint import TASK_FILE, read_task_info

    name = str(source)
    path = Path(source)
    if embedding_init is not None and (path.exists() or name not in RNN_PRESETS):
        raise LmlabError(f"--model {name}: initial embeddings apply to a recurrent preset "
                         f"(random initialisation: {', '.join(_RNN_ENCODER_PRESETS)}) only")
    if not path.exists():
        family = family_of_preset(name)
        if family is None:
            raise LmlabError(
                f"--model {name}: unknown backbone source: not a folder nor a preset (BERT "
                f"presets: {', '.join(BERT_PRESETS)}; GPT presets: {', '.join(PRESETS)}; "
                f"recurrent presets: {', '.join(_RNN_ENCODER_PRESETS)})")
        if family.reader is None:
            try:
                family.backbone(None)  # raises, saying why
            except LmlabError as e:
                raise LmlabError(f"--model {name}: {e}") from None
        if tokenizer is None:
            raise LmlabError(f"--model {name} is a preset (random initialisation); it needs "
                             "--tokenizer (a tokenizer.json; for BERT a WordPiece one)")
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.from_file(tokenizer)
        overrides: dict[str, Any] = {"vocab_size": tok.vocab_size}
        if family.kind == "encoder":
            overrides["pad_token_id"] = tok.pad_id
        if embedding_init is not None:  # its width becomes the vectors'
            overrides["n_embd"] = embedding_init.shape[1]
        config = family.config_cls.from_name(name, **overrides)
        return backbone_for(config, embedding_init=embedding_init), tok, None, None
    folder = model_folder(path)
    if (folder / TASK_FILE).exists():
        raise LmlabError(f"{folder}: is already a fine-tuned {read_task_info(folder)['task']}"
                         " model; fine-tune from its pretrained backbone instead")
    try:
        model = backbone_of(load_model(folder))  # MLM / NSP heads, an LM's output layer: gone
    except LmlabError as e:
        raise LmlabError(f"{source}: {e}") from None
    if tokenizer is None and not ((folder / TOKENIZER_FILE).exists()
                                  or (folder / "vocab.txt").exists()
                                  or (folder / "vocab.json").exists()):
        raise LmlabError(f"{folder}: no tokenizer beside the model; pass --tokenizer")
    tok = Tokenizer.from_file(tokenizer or folder, eos_token=eos_token_of_folder(folder))
    return model.float(), tok, folder, _default_pooling_of_folder(folder)


class TaskModel(nn.Module):
    """A backbone (``Bert``, ``GPT`` or ``RNNEncoder``) and one task head over its final
    hidden states.

    ``forward`` gives classify logits (B, K), tag logits (B, T, K) or QA
    start/end logits (B, T, 2).
    """

    def __init__(self, backbone: Backbone, task: Task, n_labels: int, pooling: Pooling,
                 dropout: float) -> None:
        super().__init__()
        self.task = task
        self.kind = reader_of(backbone)
        self.pooling = pooling
        self.config = backbone.config
        C = hidden_width(backbone)
        pooler = strip_for_task(backbone, keep_pooler=task == "classify" and pooling == "cls")
        self.backbone = backbone
        head: nn.Module
        if task == "classify":
            head = ClassificationHead(C, n_labels, dropout, pooling, pooler)
        elif task == "tag":
            head = TokenClassificationHead(C, n_labels, dropout)
        else:
            head = SpanHead(C)
        self.head = head

    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor,
                      types: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) of right-padded rows."""
        if self.kind == "bert":
            return self.backbone(ids, mask, types)
        if self.kind == "rnn":
            return self.backbone(ids, lengths=mask.sum(1))[0]  # (B, T, H * directions)
        # Causal attention: a real token only sees earlier (real) tokens, never
        # the padding on its right, so no mask is needed.
        return self.backbone(ids, hidden=True)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor,
                types: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.hidden_states(ids, mask, types), mask)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


