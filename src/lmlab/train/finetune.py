"""Fine-tuning a pretrained backbone for classification, tagging or extractive QA.

Setup, fit, test, in plain code (``Finetuner``): read the splits
(``data/tasks.py``), load a backbone (a BERT encoder, a GPT decoder, or a
recurrent encoder such as the bidirectional GRU of the ``gru-classifier``
preset), put a task head on it (``TaskModel``), train with AdamW and BERT's
linear warm-up and decay, evaluate on the validation split every epoch (and every
``eval_interval`` steps), keep the best checkpoint, stop early when the
validation metric stops improving, then score the best checkpoint on the
test split.

Inputs (BERT / GPT):

    classify  [CLS] text [SEP]                  text tokens
    tag       [CLS] w1 w2 ... [SEP]             w1 w2 ... (words joined by spaces)
    qa        [CLS] question [SEP] context [SEP] question <eos> context
              segment 0 ....... | segment 1

GPT rows are right-padded: causal attention never looks right, so no real
token ever attends to padding, and ``last`` pooling reads the last real token,
the only one that has read the whole text. A recurrent encoder reads the same
inputs as a GPT; its rows are packed, so neither direction reads padding.

Truncation (``max_length`` tokens, special tokens included):

- classify: ``tail`` cuts the end of a long text (keeps its start), ``head``
  cuts its start (keeps its end). Each split's count of cut texts is reported.
- tag: words whose first token falls beyond ``max_length`` get no prediction
  (``None``); evaluation scores them as ``O`` (so their entities count as
  missed) and the count of such words is reported. Nothing is silently dropped.
- qa: the question is kept (cut to half of ``max_length`` if it alone is
  longer) and the context is cut at its end; there is no sliding window.
  Training examples whose answer was cut off are skipped (counted); validation
  and test examples are still scored, from the part of the context that fits.

The best checkpoint is a folder ``OUT/best/`` written atomically:
``model.safetensors`` (backbone + head, keys ``backbone.*`` and ``head.*``),
``config.json`` (the backbone's config), ``task.json`` (task, labels,
pooling, input policy) and ``tokenizer.json``. ``load_task_model`` reads it back.

The splits the run used are written beside it, as ``OUT/splits/train.jsonl``,
``val.jsonl`` and ``test.jsonl`` (one example per line, the default field
names; an empty split is an empty file): the examples as read from
``--validation`` / ``--test``, or as carved from ``--train``. A baseline
scored on them (``lmlab baseline --train OUT``) sees exactly the same split.
OUT, with ``finetune_config.json``, the splits and the metrics, is made only
when the first checkpoint is saved (the splits folder appears whole); a run
that fails or is stopped before then leaves no OUT behind.

Shapes: B batch, T tokens, C width, K labels.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.atomic import atomic_dir, missing_root, write_text
from lmlab.config import BERT_PRESETS, PRESETS, RNN_PRESETS, load_config
from lmlab.data.tasks import (
    SPLITS_DIR,
    ClassifyExample,
    LabelSet,
    QAExample,
    TagExample,
    Task,
    write_splits,
)
from lmlab.device import autocast
from lmlab.errors import LmlabError
from lmlab.models.bert import (
    Bert,
    ClassificationHead,
    Pooling,
    SpanHead,
    TokenClassificationHead,
)
from lmlab.models.gpt import GPT
from lmlab.models.registry import (
    backbone_for,
    backbone_of,
    context_of,
    family_of_preset,
    hidden_width,
    reader_of,
    strip_for_task,
)
from lmlab.models.rnn import RNNEncoder
from lmlab.models.weights import (
    MODEL_FILE,
    TOKENIZER_FILE,
    TOKENIZER_FILES,
    load_weights,
    read_tensors,
)
from lmlab.tokenizer import Tokenizer
from lmlab.train import distributed
from lmlab.train.loop import StopOnInterrupt, check_range, make_optimizer

Truncation = Literal["tail", "head"]
BackboneKind = Literal["bert", "gpt", "rnn"]
TASK_FILE = "task.json"
FORMAT = "lmlab-finetuned"
DEFAULT_MAX_LENGTH = 256
IGNORE = -100  # cross_entropy's ignore_index: tokens that carry no tag target


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run (saved as OUT/finetune_config.json)."""

    task: Task
    train: str  # labelled training file (see data/tasks.read_task_file)
    model: str  # HF folder, lmlab checkpoint/run folder, or a preset name (random init)
    out: str  # the run folder
    validation: str | None = None  # default: carved from train
    test: str | None = None  # default: carved from train
    tokenizer: str | None = None  # default: the model's own (required for a preset)
    # Word vectors (word2vec/GloVe file) that initialise a recurrent preset's embeddings;
    # without --tokenizer, a word-level tokenizer over the vectors' words is built.
    vectors: str | None = None
    vectors_max_words: int | None = None  # keep only the first (most frequent) words
    text_field: str = "text"
    label_field: str = "label"
    tokens_field: str = "tokens"
    tags_field: str = "tags"
    context_field: str = "context"
    question_field: str = "question"
    answer_field: str = "answer"
    answer_start_field: str = "answer_start"
    encoding: str = "utf-8"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_length: int | None = None  # default min(backbone context, 256)
    truncation: Truncation = "tail"
    pooling: Pooling | None = None  # classify only; default cls (BERT) / last (GPT)
    max_answer_tokens: int = 30  # qa: longest answer span decoded
    epochs: int = 3
    max_steps: int | None = None  # stop after this many steps (a cap on epochs)
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    head_dropout: float = 0.1
    class_weights: bool | None = None  # default: on for classify, off otherwise
    patience: int | None = None  # evaluations without improvement before stopping
    eval_interval: int | None = None  # also evaluate every this many steps
    freeze_backbone: bool = False
    seed: int = 0
    threads: int | None = None
    device: str = "auto"  # auto: cuda when available, else cpu
    # bfloat16 autocast: matmuls in bf16, weights, optimizer and loss in fp32.
    # On CPUs with AMX it measured 1.6x faster here; on CPUs without, slower.
    dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        # Checked before any file is read or folder made: a 0 would otherwise surface
        # later as a misleading error (--max-steps 0: "no such fine-tuned checkpoint").
        for name in ("epochs", "max_steps", "batch_size", "max_length", "max_answer_tokens",
                     "patience", "eval_interval", "threads", "vectors_max_words"):
            check_range(name, getattr(self, name), 1)
        check_range("lr", self.lr, 0)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("grad_clip", self.grad_clip, 0, lo_open=True)
        check_range("warmup_ratio", self.warmup_ratio, 0, 1)
        check_range("head_dropout", self.head_dropout, 0, 1, hi_open=True)
        check_range("val_fraction", self.val_fraction, 0, 1, hi_open=True)
        check_range("test_fraction", self.test_fraction, 0, 1, hi_open=True)
        # A split given as a file carves nothing from --train.
        carved = ((0.0 if self.validation else self.val_fraction)
                  + (0.0 if self.test else self.test_fraction))
        if carved >= 1:
            raise LmlabError(f"--val-fraction {self.val_fraction} and --test-fraction "
                             f"{self.test_fraction} leave no training examples; their sum "
                             "must be below 1")

    def field_names(self) -> dict[str, str]:
        """The ``read_task_file`` keyword arguments naming columns, and the encoding."""
        names = ("text_field", "label_field", "tokens_field", "tags_field", "context_field",
                 "question_field", "answer_field", "answer_start_field", "encoding")
        return {n: getattr(self, n) for n in names}


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
    from lmlab.models.embeddings import (
        WordVectors,
        init_embedding,
        load_vectors,
        word_tokenizer,
    )

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
            raise LmlabError(f"--model {name} is a feed-forward LM, not a text encoder; use a "
                             f"recurrent preset: {', '.join(_RNN_ENCODER_PRESETS)}")
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
        raise LmlabError(f"{folder}: is already a fine-tuned {_read_task_info(folder)['task']}"
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


# ---------------------------------------------------------------- input encoding
@dataclass
class Feature:
    """One example as model input, with what is needed to read the output back."""

    ids: list[int]
    types: list[int] | None = None  # BERT segment ids (QA), else None
    # classify: class index; tag: a tag index per token (IGNORE where no loss);
    # qa: (first, last) token of the answer, None when it was cut off or unknown.
    target: int | list[int] | tuple[int, int] | None = None
    word_tokens: list[int] | None = None  # tag: each word's first token, -1 when cut off
    ctx_start: int = 0  # qa: index of the first context token
    offsets: list[tuple[int, int]] | None = None  # qa: char spans of the kept context tokens
    truncated: bool = False


class TaskEncoder:
    """Turns examples into ``Feature`` s for one backbone kind and input policy."""

    def __init__(self, tok: Tokenizer, task: Task, kind: BackboneKind, max_length: int,
                 truncation: Truncation = "tail", labels: LabelSet | None = None) -> None:
        self.tok, self.task, self.kind = tok, task, kind
        self.max_length, self.truncation, self.labels = max_length, truncation, labels
        if kind == "bert":
            cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
            if cls is None or sep is None:
                where = tok.path or "the tokenizer"
                raise LmlabError(f"{where}: a BERT backbone needs [CLS] and [SEP] tokens, "
                                 "which this tokenizer lacks (use the model's own tokenizer, or "
                                 "train one with `lmlab tokenizer train --kind wordpiece`)")
            self.cls, self.sep = cls, sep
        elif task == "qa" and tok.eos_id is None:
            raise LmlabError(f"{tok.path or 'the tokenizer'}: GPT question answering needs an "
                             "end-of-text token to separate question and context")
        # The fewest tokens any input needs: specials plus one token of text.
        # A recurrent encoder reads the same inputs as a GPT (no special tokens).
        fewest = ({"classify": 3, "tag": 3, "qa": 5} if kind == "bert"
                  else {"classify": 1, "tag": 1, "qa": 3})
        least = fewest[task]
        if max_length < least:
            raise LmlabError(f"--max-length {max_length} is too short for {task} with a "
                             f"{kind.upper()} backbone (at least {least})")

    def encode(self, examples: Sequence[Any], labelled: bool, where: str = "") -> list[Feature]:
        """Features of ``examples``; targets only when ``labelled``."""
        if self.task == "classify":
            return self._classify(examples, labelled)
        from lmlab.tokenizer import warn_unknown

        # classify counts [UNK]s in encode_batch; tag and qa encode piece by piece.
        if self.task == "tag":
            warn_unknown(self.tok, [" ".join(ex.tokens) for ex in examples])
            return [self._tag(ex, labelled, f"{where} example {i + 1}")
                    for i, ex in enumerate(examples)]
        warn_unknown(self.tok, [f"{ex.question} {ex.context}" for ex in examples])
        return [self._qa(ex, labelled) for ex in examples]

    def _classify(self, examples: Sequence[ClassifyExample], labelled: bool) -> list[Feature]:
        budget = self.max_length - (2 if self.kind == "bert" else 0)
        feats = []
        # encode_batch: the Rust side tokenizes on all cores.
        for ex, body in zip(examples, self.tok.encode_batch([e.text for e in examples]),
                            strict=True):
            cut = len(body) > budget
            if cut:
                body = body[:budget] if self.truncation == "tail" else body[len(body) - budget:]
            if self.kind == "bert":
                ids = [self.cls, *body, self.sep]
            else:
                # A text of no tokens (only characters the tokenizer drops) still
                # needs one position to pool: the end-of-text token stands in.
                ids = body or [self.tok.eos_id if self.tok.eos_id is not None else 0]
            target = self.labels.encode(ex.label) if labelled and self.labels else None
            feats.append(Feature(ids, target=target, truncated=cut))
        return feats

    def _tag(self, ex: TagExample, labelled: bool, where: str) -> Feature:
        try:
            body, word_of = self.tok.encode_words(ex.tokens)
        except LmlabError as e:
            raise LmlabError(f"{where.strip()}: {e}") from None
        offset = 1 if self.kind == "bert" else 0
        budget = self.max_length - 2 * offset
        body, word_of = body[:budget], word_of[:budget]
        first = [-1] * len(ex.tokens)  # -1: the word was cut off
        for j, w in enumerate(word_of):
            if first[w] < 0:
                first[w] = j + offset
        ids = [self.cls, *body, self.sep] if self.kind == "bert" else body
        target = None
        if labelled and ex.tags is not None and self.labels is not None:
            # Only the first sub-token of each word carries its tag (BERT's choice);
            # the others are ignored by the loss and by prediction.
            target = [IGNORE] * len(ids)
            for w, j in enumerate(first):
                if j >= 0:
                    target[j] = self.labels.encode(ex.tags[w])
        return Feature(ids, target=target, word_tokens=first, truncated=min(first) < 0)

    def _qa(self, ex: QAExample, labelled: bool) -> Feature:
        q = self.tok.encode(ex.question)
        ctx, offsets = self.tok.encode_with_offsets(ex.context)
        n_special = 3 if self.kind == "bert" else 1
        # The question is kept whole unless it alone would leave the context
        # less than half of the input.
        q = q[: max(1, min(len(q), self.max_length // 2))]
        budget = self.max_length - n_special - len(q)
        cut = len(ctx) > budget
        ctx, offsets = ctx[:budget], offsets[:budget]
        if self.kind == "bert":
            ids = [self.cls, *q, self.sep, *ctx, self.sep]
            types = [0] * (len(q) + 2) + [1] * (len(ctx) + 1)
            ctx_start = len(q) + 2
        else:
            ids, types = [*q, self.tok.eos_id, *ctx], None
            ctx_start = len(q) + 1
        target = None
        if labelled and ex.answer is not None and ex.answer_start is not None:
            span = char_span_to_tokens(offsets, ex.answer_start,
                                       ex.answer_start + len(ex.answer))
            if span is not None:
                target = (span[0] + ctx_start, span[1] + ctx_start)
        return Feature(ids, types, target, ctx_start=ctx_start, offsets=offsets, truncated=cut)


def char_span_to_tokens(offsets: Sequence[tuple[int, int]], start: int,
                        end: int) -> tuple[int, int] | None:
    """(first, last) index of the tokens overlapping characters [start, end), or None.

    None when no kept token overlaps the span: the answer was cut off with
    the end of the context (or it is made only of characters the tokenizer drops).
    """
    first = last = None
    for i, (a, b) in enumerate(offsets):
        if b > a and b > start and a < end:
            if first is None:
                first = i
            last = i
    return None if first is None or last is None else (first, last)


def token_span_to_chars(text: str, offsets: Sequence[tuple[int, int]], first: int,
                        last: int) -> tuple[int, int]:
    """Characters [start, end) of ``text`` covered by tokens first..last, trimmed of spaces.

    Byte-level BPE tokens carry their leading space ("Ġworld"), which is not
    part of an answer.
    """
    a, b = offsets[first][0], offsets[last][1]
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor,
              max_tokens: int) -> tuple[int, int, float]:
    """The (first, last) token pair maximizing start + end logits, first <= last <
    first + max_tokens, and its probability p_start(first) * p_end(last)."""
    n = start_logits.numel()
    scores = start_logits[:, None] + end_logits[None, :]  # (n, n): row = start, column = end
    i = torch.arange(n, device=scores.device)
    length = i[None, :] - i[:, None]
    scores = scores.masked_fill((length < 0) | (length >= max_tokens), float("-inf"))
    s, e = divmod(int(scores.argmax()), n)
    p = start_logits.softmax(-1)[s] * end_logits.softmax(-1)[e]
    return s, e, float(p)


# ---------------------------------------------------------------- batches
def length_bucketed_batches(lengths: Sequence[int], batch_size: int,
                            generator: torch.Generator,
                            bucket_batches: int = 50) -> list[list[int]]:
    """Shuffled batches of similar lengths: less compute spent on padding.

    The examples are shuffled, cut into buckets of ``bucket_batches`` batches,
    sorted by length inside each bucket and cut into batches, and the batch
    order is shuffled again: batches are homogeneous in length but their
    order stays random. Only ``generator`` is drawn from.
    """
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    size = batch_size * bucket_batches
    batches = []
    for start in range(0, len(perm), size):
        bucket = sorted(perm[start: start + size], key=lambda i: lengths[i])
        batches += [bucket[j: j + batch_size] for j in range(0, len(bucket), batch_size)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


@dataclass
class Batch:
    ids: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T), 1 on real tokens
    types: torch.Tensor | None  # (B, T) or None
    # (B,) classify, (B, T) tag, (B, 2) qa; IGNORE where an example has no target
    target: torch.Tensor


def collate(feats: Sequence[Feature], pad_id: int, device: torch.device | str,
            task: Task) -> Batch:
    """Right-pad a batch of features into tensors on ``device``."""
    B, T = len(feats), max(len(f.ids) for f in feats)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    types = torch.zeros(B, T, dtype=torch.long) if feats[0].types is not None else None
    if task == "classify":
        target = torch.full((B,), IGNORE, dtype=torch.long)
    elif task == "tag":
        target = torch.full((B, T), IGNORE, dtype=torch.long)
    else:
        target = torch.full((B, 2), IGNORE, dtype=torch.long)
    for i, f in enumerate(feats):
        ids[i, : len(f.ids)] = torch.tensor(f.ids)
        mask[i, : len(f.ids)] = 1
        if types is not None and f.types is not None:
            types[i, : len(f.types)] = torch.tensor(f.types)
        if f.target is None:
            continue
        if task == "tag":
            target[i, : len(f.target)] = torch.tensor(f.target)  # type: ignore[arg-type]
        else:
            target[i] = torch.tensor(f.target)
    return Batch(ids.to(device), mask.to(device),
                 types.to(device) if types is not None else None, target.to(device))


def task_loss(out: torch.Tensor, target: torch.Tensor, task: Task,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of a batch over texts, tagged tokens or answer boundaries;
    IGNORE targets take no part."""
    if task == "classify":
        return F.cross_entropy(out.float(), target, weight=weight, ignore_index=IGNORE)
    if task == "tag":
        return F.cross_entropy(out.float().flatten(0, 1), target.flatten(), weight=weight,
                               ignore_index=IGNORE)
    start, end = out.float().unbind(-1)  # (B, T) each
    # BERT's QA loss: the mean of the start and end cross-entropies.
    return (F.cross_entropy(start, target[:, 0], ignore_index=IGNORE)
            + F.cross_entropy(end, target[:, 1], ignore_index=IGNORE)) / 2


# ---------------------------------------------------------------- prediction
@dataclass
class Prediction:
    """A model's answer for one example."""

    label: str | None = None  # classify: the predicted class
    probability: float | None = None  # classify: its probability; qa: p_start * p_end
    tags: list[str | None] | None = None  # tag: one per word, None where cut off
    answer: str | None = None  # qa: the answer text
    answer_start: int | None = None  # qa: its character offset in the context
    truncated: bool = False  # the input did not fit max_length

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@torch.no_grad()
def run_model(model: TaskModel, feats: Sequence[Feature], batch_size: int, pad_id: int,
              weight: torch.Tensor | None = None
              ) -> tuple[list[torch.Tensor], float | None]:
    """Each feature's output (on the CPU, padding removed) and the mean loss over
    those with targets (None if none has one). Batches go by length, for speed."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outs: list[torch.Tensor | None] = [None] * len(feats)
    order = sorted(range(len(feats)), key=lambda i: len(feats[i].ids))
    loss_sum, loss_n = 0.0, 0
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            batch = collate([feats[i] for i in chunk], pad_id, device, model.task)
            out = model(batch.ids, batch.mask, batch.types).float()
            scored = sum(feats[i].target is not None for i in chunk)
            if scored:
                # Weighted by examples: for tags a per-token mean of each batch.
                loss_sum += float(task_loss(out, batch.target, model.task, weight)) * scored
                loss_n += scored
            out = out.cpu()  # one device-to-host copy per batch, not one per row
            for j, i in enumerate(chunk):
                outs[i] = out[j] if model.task == "classify" else out[j, : len(feats[i].ids)]
    finally:
        model.train(was_training)
    return outs, (loss_sum / loss_n if loss_n else None)  # type: ignore[return-value]


def decode_outputs(outs: Sequence[torch.Tensor], feats: Sequence[Feature],
                   examples: Sequence[Any], task: Task, labels: LabelSet | None,
                   max_answer_tokens: int) -> list[Prediction]:
    """Model outputs back to labels, word tags or answer spans."""
    preds = []
    for out, f, ex in zip(outs, feats, examples, strict=True):
        if task == "classify":
            assert labels is not None
            p = out.softmax(-1)  # (K,)
            k = int(p.argmax())
            preds.append(Prediction(label=labels.decode(k), probability=float(p[k]),
                                    truncated=f.truncated))
        elif task == "tag":
            assert labels is not None and f.word_tokens is not None
            best = out.argmax(-1).tolist()  # (T,)
            tags = [labels.decode(best[j]) if j >= 0 else None for j in f.word_tokens]
            preds.append(Prediction(tags=tags, truncated=f.truncated))
        else:
            assert f.offsets is not None
            c0, c1 = f.ctx_start, f.ctx_start + len(f.offsets)
            if c1 == c0:  # no context token fits: nothing to point at
                preds.append(Prediction(answer="", answer_start=0, probability=0.0,
                                        truncated=True))
                continue
            s, e, p = best_span(out[c0:c1, 0], out[c0:c1, 1], max_answer_tokens)
            a, b = token_span_to_chars(ex.context, f.offsets, s, e)
            preds.append(Prediction(answer=ex.context[a:b], answer_start=a, probability=p,
                                    truncated=f.truncated))
    return preds


def _is_bio(labels: Sequence[str]) -> bool:
    return all(t == "O" or (len(t) > 2 and t[1] == "-" and t[0] in "BI") for t in labels)


def _fill_cut(tags: Sequence[str | None], labels: LabelSet) -> list[str]:
    """Tags with cut-off words scored as ``O`` (or the first label when there is no O)."""
    fill = "O" if "O" in labels else labels.decode(0)
    return [t if t is not None else fill for t in tags]


def score_predictions(preds: Sequence[Prediction], examples: Sequence[Any], task: Task,
                      labels: LabelSet | None) -> tuple[str, float, Any]:
    """(metric name, its value, the full scores) of predictions against labelled examples.

    classify: macro F1 (``ClassificationReport``); tag: entity F1 when the
    tags are BIO, else token accuracy (``span_f1``'s dict); qa: token F1
    (``qa_scores``'s dict, with exact match).
    """
    from lmlab.metrics import classification_report, qa_scores, span_f1

    if task == "classify":
        assert labels is not None
        report = classification_report(
            [labels.encode(ex.label) for ex in examples],
            [labels.encode(p.label) for p in preds], labels.to_list())
        return "macro_f1", report.macro_f1, report
    if task == "tag":
        assert labels is not None
        true = [ex.tags for ex in examples]
        pred = [_fill_cut(p.tags or [], labels) for p in preds]
        if _is_bio(labels.labels):
            scores = span_f1(true, pred)
            return "entity_f1", scores["f1"], scores
        same = sum(a == b for t, q in zip(true, pred, strict=True)
                   for a, b in zip(t, q, strict=True))
        acc = same / max(1, sum(len(t) for t in true))
        return "token_accuracy", acc, {"token_accuracy": acc}
    scores = qa_scores([p.answer or "" for p in preds], [ex.answer for ex in examples])
    return "f1", scores["f1"], scores


# ---------------------------------------------------------------- checkpoints
def _read_task_info(folder: Path) -> dict[str, Any]:
    try:
        info = json.loads((folder / TASK_FILE).read_text())
    except json.JSONDecodeError as e:
        raise LmlabError(f"{folder / TASK_FILE}: not valid JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise LmlabError(f"{folder / TASK_FILE}: not an lmlab fine-tuning task file")
    return info


def resolve_task_checkpoint(path: Path) -> Path:
    """The fine-tuned checkpoint folder: ``path`` itself or its ``best/``."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"{path}: no such fine-tuned checkpoint or run folder")
    for folder in (path, path / "best"):
        if (folder / TASK_FILE).is_file():
            return folder
    raise LmlabError(f"{path}: not a fine-tuned checkpoint (no {TASK_FILE} here nor in "
                     f"{path / 'best'}); make one with `lmlab finetune`")


def save_task_checkpoint(folder: Path, model: TaskModel, tok: Tokenizer,
                         info: dict[str, Any], source: Path | None) -> Path:
    """Write ``folder`` atomically: weights, backbone config, task.json, tokenizer files."""
    from lmlab.atomic import save_safetensors
    from lmlab.models.weights import model_state

    with atomic_dir(folder) as tmp:
        # TaskModel gives every tensor one owner (an LM head is dropped), so the
        # plain state dict is already free of duplicates.
        save_safetensors(model_state(model), tmp / "model.safetensors",
                  metadata={"format": "pt"})
        model.config.save(tmp / "config.json")
        (tmp / TASK_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        tok.save(tmp / "tokenizer.json")
        # Keep the source's other tokenizer files (vocab.txt, tokenizer_config.json),
        # so the folder also reads as a tokenizer in other tools.
        for name in TOKENIZER_FILES:
            if source is not None and name != "tokenizer.json" and (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
    return folder


def load_task_model(path: Path, device: str = "cpu"
                    ) -> tuple[TaskModel, Tokenizer, dict[str, Any]]:
    """A fine-tuned model (eval mode), its tokenizer and task info from ``path``
    (a run folder made by ``lmlab finetune`` or its ``best/`` folder)."""
    folder = resolve_task_checkpoint(path)
    info = _read_task_info(folder)
    config = load_config(folder / "config.json")
    with torch.device("meta"):
        model = TaskModel(backbone_for(config), info["task"], max(1, len(info["labels"])),
                          info["pooling"], info.get("head_dropout", 0.1))
    sd = read_tensors(folder / MODEL_FILE, device=device, what="fine-tuned model's weights")
    load_weights(model, sd, folder / MODEL_FILE)
    tok = Tokenizer.from_file(folder / "tokenizer.json", eos_token=info.get("eos_token"))
    return model.eval(), tok, info


def task_labels(info: dict[str, Any]) -> LabelSet | None:
    """The label set a task.json names (None for qa, which has no labels)."""
    return LabelSet.from_list(info["labels"]) if info["labels"] else None


def predict_examples(model: TaskModel, tok: Tokenizer, info: dict[str, Any],
                     examples: Sequence[Any], batch_size: int = 32) -> list[Prediction]:
    """Predictions of a fine-tuned model for unlabelled (or labelled) examples."""
    if not examples:
        return []
    labels = task_labels(info)
    enc = TaskEncoder(tok, info["task"], info["backbone"], info["max_length"],
                      info["truncation"], labels)
    feats = enc.encode(examples, labelled=False, where="input")
    outs, _ = run_model(model, feats, batch_size, _pad_id(tok, model))
    return decode_outputs(outs, feats, examples, info["task"], labels,
                          info.get("max_answer_tokens", 30))


def examples_from_texts(task: Task, texts: Sequence[str],
                        context: str | None = None) -> list[Any]:
    """Unlabelled examples from plain strings: a text to classify, a sentence to tag
    (split on whitespace), or a question to answer from ``context`` (qa)."""
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise LmlabError(f"text {empty[0] + 1} is empty; give non-empty texts")
    if task == "classify":
        return [ClassifyExample(t) for t in texts]
    if task == "tag":
        return [TagExample(t.split()) for t in texts]
    if not context or not context.strip():
        raise LmlabError("a question answering model needs --context: the text the "
                         "answers are taken from")
    return [QAExample(context, t) for t in texts]


def predict_texts(model: TaskModel, tok: Tokenizer, info: dict[str, Any],
                  texts: Sequence[str], context: str | None = None,
                  batch_size: int = 32) -> list[Prediction]:
    """Predictions for plain strings (see ``examples_from_texts``)."""
    examples = examples_from_texts(info["task"], texts, context)
    return predict_examples(model, tok, info, examples, batch_size)


def _pad_id(tok: Tokenizer, model: TaskModel) -> int:
    """Any id works for padding (it is masked, or to the right of a causal model's
    tokens); BERT's own [PAD] keeps inputs as the encoder was trained."""
    if model.kind == "bert":
        return tok.pad_id if tok.pad_id is not None else model.config.pad_token_id
    return 0


# ---------------------------------------------------------------- the run
def linear_schedule(step: int, total: int, warmup: int, peak: float) -> float:
    """BERT's schedule: linear warm-up to ``peak`` over ``warmup`` steps, then linear
    decay to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


class Finetuner:
    """Holds data, model, optimizer and run folder; ``fit`` trains, ``test`` scores."""

    def __init__(self, cfg: FinetuneConfig, overwrite: bool = False,
                 progress: bool = True, embedding_init: torch.Tensor | None = None) -> None:
        """Check every input and build the model; ``embedding_init`` (vocab_size, dim)
        initialises a recurrent preset's token embeddings (see ``load_backbone``)."""
        from lmlab.data.tasks import compute_class_weights, load_splits

        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # Under torchrun: DDP, every process training on its share of each global batch.
        self.world, self.device = distributed.join(cfg.device)
        self.progress = progress and self.world.main
        if cfg.pooling is not None and cfg.task != "classify":
            raise LmlabError(f"--pooling applies to classify, not {cfg.task}")
        if cfg.class_weights and cfg.task == "qa":
            raise LmlabError("--class-weights applies to classify and tag, not qa")
        self.run_dir = Path(cfg.out)
        self._check_run_dir(overwrite)

        # -- data
        self.splits = load_splits(Path(cfg.train), _opt_path(cfg.validation),
                                  _opt_path(cfg.test), cfg.task, seed=cfg.seed,
                                  val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                                  **cfg.field_names())
        if not self.splits["val"]:
            raise LmlabError(f"{cfg.train}: no validation examples (too few examples, or "
                             "--val-fraction 0); give --validation FILE or a --val-fraction > 0")
        self.labels = (LabelSet.from_examples(self.splits["train"]) if cfg.task != "qa"
                       else None)

        # -- model
        torch.manual_seed(cfg.seed)  # the head's initialisation and dropout
        tokenizer: str | Tokenizer | None = cfg.tokenizer
        if cfg.vectors:
            if embedding_init is not None:
                raise LmlabError("give word vectors either as --vectors or as embedding_init")
            tokenizer, embedding_init = vector_embeddings(
                Path(cfg.vectors), cfg.tokenizer, cfg.vectors_max_words, cfg.seed)
        backbone, self.tok, self.source, folder_pooling = load_backbone(
            cfg.model, tokenizer, embedding_init)
        kind = reader_of(backbone)
        if self.tok.vocab_size > backbone.config.vocab_size:
            raise LmlabError(f"{cfg.tokenizer or cfg.model}: the tokenizer has "
                             f"{self.tok.vocab_size:,} tokens but the model only "
                             f"{backbone.config.vocab_size:,}")
        # A recurrent encoder has no context limit (its block_size is a training length).
        context = context_of(backbone)
        self.max_length = cfg.max_length or min(context or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)
        if context is not None and self.max_length > context:
            raise LmlabError(f"--max-length {self.max_length} is larger than the backbone's "
                             f"context of {context} tokens")
        # An RNN's mean state over the text is its usual summary; the last state of a
        # bidirectional one has read the text one way only.
        default: Pooling = {"bert": "cls", "gpt": "last", "rnn": "mean"}[kind]
        pooling: Pooling = cfg.pooling or folder_pooling or default
        if kind != "bert" and pooling == "cls":
            raise LmlabError(f"--pooling cls needs a BERT backbone: a {kind.upper()}'s first "
                             "token has seen only itself; use last or mean")
        self.pooling = pooling
        n_labels = len(self.labels) if self.labels else 1
        self.model = TaskModel(backbone, cfg.task, n_labels, pooling, cfg.head_dropout)
        self.model.to(self.device)
        if cfg.freeze_backbone:
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.net: nn.Module = self.model  # what training steps call: DDP's wrapper if any
        if self.world.distributed:
            self.net = distributed.data_parallel(self.model, self.device)
        self.pad_id = _pad_id(self.tok, self.model)

        # -- features
        self.encoder = TaskEncoder(self.tok, cfg.task, kind, self.max_length, cfg.truncation,
                                   self.labels)
        self.feats = {name: self.encoder.encode(exs, labelled=True, where=f"{name} split")
                      for name, exs in self.splits.items()}
        self.notes: list[str] = []
        self._report_truncation()
        if cfg.task == "qa":
            # A training example whose answer was cut off has no target to learn.
            kept = [f for f in self.feats["train"] if f.target is not None]
            skipped = len(self.feats["train"]) - len(kept)
            if skipped:
                self._note(f"{skipped:,} of {len(self.feats['train']):,} training questions "
                           f"skipped: their answer lies beyond --max-length {self.max_length}")
            if not kept:
                raise LmlabError("no training question has its answer within --max-length "
                                 f"{self.max_length}; raise --max-length")
            self.feats["train"] = kept
        self.weight = None
        use_weights = cfg.class_weights if cfg.class_weights is not None else cfg.task == "classify"
        if use_weights and self.labels is not None:
            y = self._train_label_ids()
            self.weight = torch.tensor(compute_class_weights(y, len(self.labels)),
                                       dtype=torch.float32, device=self.device)

        # -- optimization
        # BERT's fine-tuning betas (0.9, 0.999); pretraining uses (0.9, 0.95).
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.weight_decay, (0.9, 0.999))
        self.generator = torch.Generator().manual_seed(cfg.seed)
        # A global batch is batch_size rows from each process.
        self.global_batch = cfg.batch_size * self.world.size
        per_epoch = math.ceil(len(self.feats["train"]) / self.global_batch)
        self.total_steps = cfg.epochs * per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.warmup = round(cfg.warmup_ratio * self.total_steps)
        self.metric_name = ""
        self.kind = kind
        # Nothing is written yet: OUT is made (and an old run in it replaced) by
        # ``fit``, together with the first checkpoint (``_start_run``).

    # -- setup helpers -------------------------------------------------------
    _RUN_OUTPUTS = ("best", "tb", "metrics.jsonl", "loss.png", "report.json", "report.txt",
                    "confusion.png", "finetune_config.json", SPLITS_DIR)

    def _check_run_dir(self, overwrite: bool) -> None:
        present = [n for n in self._RUN_OUTPUTS if (self.run_dir / n).exists()]
        if present and not overwrite:
            raise LmlabError(f"{self.run_dir}: already holds a fine-tuning run ({present[0]}); "
                             "pass --overwrite to replace it, or choose another --out")

    def _remove_outputs(self) -> None:
        for name in self._RUN_OUTPUTS:
            p = self.run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def _start_run(self) -> None:
        """Make OUT as the first checkpoint is about to be saved: replace an old run's
        outputs, write finetune_config.json and the splits."""
        self._remove_outputs()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / "finetune_config.json",
                   json.dumps(dataclasses.asdict(self.cfg), indent=2) + "\n")
        # The examples of each split, as read or carved, so a baseline scores the same ones.
        write_splits(self.splits, self.run_dir)

    def _discard_run(self, made: Path | None) -> None:
        """After a failure before any checkpoint: remove the folder this run made, or
        (in one that was already there) what this run wrote."""
        if (self.run_dir / "best").exists():
            return
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
            _warn(f"removed {made}: fine-tuning stopped before its first checkpoint")
            return
        self._remove_outputs()

    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        if self.world.main:
            _warn(msg)

    def _report_truncation(self) -> None:
        cfg = self.cfg
        for name, feats in self.feats.items():
            cut = sum(f.truncated for f in feats)
            if not cut:
                continue
            if cfg.task == "classify":
                kept = "start" if cfg.truncation == "tail" else "end"
                self._note(f"{cut:,} of {len(feats):,} {name} texts are longer than "
                           f"--max-length {self.max_length} tokens; only their {kept} is read "
                           f"(--truncation {cfg.truncation})")
            elif cfg.task == "tag":
                words = sum(sum(j < 0 for j in f.word_tokens or []) for f in feats)
                self._note(f"{name}: {words:,} words in {cut:,} sentences lie beyond "
                           f"--max-length {self.max_length} and are not tagged (scored as O)")
            else:
                self._note(f"{name}: {cut:,} of {len(feats):,} contexts were cut to fit "
                           f"--max-length {self.max_length}")

    def _train_label_ids(self) -> list[int]:
        feats = self.feats["train"]
        if self.cfg.task == "classify":
            return [int(f.target) for f in feats]  # type: ignore[arg-type]
        return [t for f in feats for t in f.target if t != IGNORE]  # type: ignore[union-attr]

    # -- evaluation ----------------------------------------------------------
    def evaluate(self, split: str) -> tuple[str, float, Any, float | None]:
        """(metric name, value, full scores, mean loss) of the current model on a split."""
        with autocast(self.cfg.dtype, self.device):
            outs, loss = run_model(self.model, self.feats[split], self.cfg.batch_size * 2,
                                   self.pad_id, self.weight)
        preds = decode_outputs(outs, self.feats[split], self.splits[split], self.cfg.task,
                               self.labels, self.cfg.max_answer_tokens)
        name, value, scores = score_predictions(preds, self.splits[split], self.cfg.task,
                                                self.labels)
        return name, value, scores, loss

    def task_info(self, step: int, epoch: int, value: float) -> dict[str, Any]:
        tok = self.tok
        return {
            "format": FORMAT, "task": self.cfg.task, "backbone": self.kind,
            "labels": self.labels.to_list() if self.labels else [],
            "pooling": self.pooling, "max_length": self.max_length,
            "truncation": self.cfg.truncation, "max_answer_tokens": self.cfg.max_answer_tokens,
            "head_dropout": self.cfg.head_dropout, "metric": self.metric_name,
            "val_metric": value, "step": step, "epoch": epoch, "source_model": self.cfg.model,
            "eos_token": tok.id_to_token(tok.eos_id) if tok.eos_id is not None else None,
        }

    # -- the loop ------------------------------------------------------------
    def train_step(self, idx: Sequence[int], step: int) -> tuple[float, float]:
        """One optimizer step on training features ``idx`` (the global batch: under
        torchrun, this process trains on its own share) at schedule position ``step``;
        returns the batch loss (the mean over processes) and the gradient norm before
        clipping."""
        cfg = self.cfg
        lr = linear_schedule(step, self.total_steps, self.warmup, cfg.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        mine = self.world.share(idx)
        batch = collate([self.feats["train"][i] for i in mine], self.pad_id, self.device,
                        cfg.task)
        with autocast(cfg.dtype, self.device):
            out = self.net(batch.ids, batch.mask, batch.types)
        loss = task_loss(out, batch.target, cfg.task, self.weight)
        value = distributed.mean(loss.item(), self.world, self.device)
        if not math.isfinite(value):
            raise LmlabError(f"step {step}: training loss is {value}; try a lower --lr "
                             f"(now {cfg.lr:g})")
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value, float(norm)

    def _train_mode(self) -> None:
        self.model.train()
        if self.cfg.freeze_backbone:
            self.model.backbone.eval()  # a frozen backbone gives stable features: no dropout

    def fit(self) -> dict[str, Any]:
        """Train, validating every epoch (and every ``eval_interval`` steps) and keeping
        the best model in OUT/best/. OUT itself appears with that first checkpoint.

        Ctrl-C lets the step under way end, validates the model as it is (saving it
        if it is the best so far), says where the best model is and raises
        KeyboardInterrupt; a second Ctrl-C stops at once. A run stopped or failed
        before its first checkpoint leaves no OUT behind (if it made it).
        """
        from lmlab.runs import MetricsLogger, plot_loss

        cfg = self.cfg
        logger: MetricsLogger | None = None  # made with OUT, at the first evaluation
        early_rows: list[dict[str, Any]] = []  # train rows logged before that
        started, made = False, None  # made: the outermost folder _start_run made
        bar = None
        if self.progress:
            from lmlab.progress import progress_bar

            bar = progress_bar(total=self.total_steps, desc=f"finetune {cfg.task}", unit="step")
        lengths = [len(f.ids) for f in self.feats["train"]]
        best, best_step, bad_evals = -math.inf, 0, 0
        step, epoch, stopped_early = 0, 0, False
        losses: list[float] = []
        t_start = t_last = time.perf_counter()
        seen = 0
        evaluated_at = -1

        def log(row: dict[str, Any]) -> None:
            if logger is None:
                early_rows.append(row)
            else:
                logger.log(row)

        def validate() -> bool:
            """Evaluate, keep the best checkpoint; True when patience has run out (in every
            process: rank 0 alone evaluates and writes, and tells the others)."""
            nonlocal evaluated_at
            evaluated_at = step
            out_of_patience = self.world.main and evaluate_and_keep()
            return distributed.any_true(out_of_patience, self.world, self.device)

        def evaluate_and_keep() -> bool:
            nonlocal best, best_step, bad_evals, logger, made, started
            name, value, _, loss = self.evaluate("val")
            self.metric_name = name
            row = {"step": step, "split": "val", "epoch": epoch, name: value}
            if loss is not None:
                row["loss"] = loss
            if logger is None:
                started, made = True, missing_root(self.run_dir)
                self._start_run()
                logger = MetricsLogger(self.run_dir)
                for r in early_rows:
                    logger.log(r)
            logger.log(row)
            improved = value > best
            if improved:
                best, best_step, bad_evals = value, step, 0
                save_task_checkpoint(self.run_dir / "best", self.model, self.tok,
                                     self.task_info(step, epoch, value), self.source)
            else:
                bad_evals += 1
            msg = (f"step {step} (epoch {epoch}): val {name} {value:.4f}"
                   + (f", loss {loss:.4f}" if loss is not None else "")
                   + (" (best, saved)" if improved else f" (best {best:.4f} at step {best_step})"))
            bar.write(msg) if bar else print(msg, file=sys.stderr)
            plot_loss(logger.path, self.run_dir / "loss.png", title=f"finetune {cfg.task}",
                      ylabel="task loss (cross-entropy, nats)")
            self._train_mode()
            return cfg.patience is not None and bad_evals >= cfg.patience

        stop = StopOnInterrupt()

        def check_stop() -> None:
            """On Ctrl-C (in any process), between steps: validate the model as it is,
            then stop."""
            if distributed.any_true(stop.requested, self.world, self.device) \
                    and step < self.total_steps:
                if evaluated_at != step:
                    validate()
                raise KeyboardInterrupt

        self._train_mode()
        try:
            with stop:
                while epoch < cfg.epochs and step < self.total_steps and not stopped_early:
                    epoch += 1
                    for idx in length_bucketed_batches(lengths, self.global_batch,
                                                       self.generator):
                        if step >= self.total_steps:
                            break
                        if len(idx) < self.world.size:
                            continue  # a last batch too small to give every process a row
                        loss, norm = self.train_step(idx, step)
                        step += 1
                        seen += len(idx)
                        losses.append(loss)
                        if step % 10 == 0 or step == self.total_steps:
                            now = time.perf_counter()
                            mean = sum(losses) / len(losses)
                            lr = self.optimizer.param_groups[0]["lr"]
                            log({"step": step, "split": "train", "epoch": epoch, "loss": mean,
                                 "lr": lr, "grad_norm": norm,
                                 "examples_per_s": seen / max(now - t_last, 1e-9),
                                 "elapsed_s": now - t_start})
                            if bar:
                                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", refresh=False)
                            losses, seen, t_last = [], 0, now
                        if bar:
                            bar.update(1)
                        if cfg.eval_interval and step % cfg.eval_interval == 0 and validate():
                            stopped_early = True
                            break
                        check_stop()
                    if not stopped_early and evaluated_at != step and validate():
                        stopped_early = True
                    if not stopped_early and epoch < cfg.epochs:
                        check_stop()
        except BaseException as e:
            if bar:
                bar.close()
                bar = None
            if logger is not None:
                logger.close()
                logger = None
            if not self.world.main:
                raise
            if not (self.run_dir / "best").exists():
                if started:
                    self._discard_run(made)
            elif isinstance(e, KeyboardInterrupt):
                print(f"interrupted at step {step} of {self.total_steps}; the best model so "
                      f"far (val {self.metric_name} {best:.4f}, step {best_step}) is in "
                      f"{self.run_dir / 'best'}, which `lmlab predict {self.run_dir}` uses "
                      "(the test split was not scored)", file=sys.stderr)
            raise
        finally:
            if bar:
                bar.close()
            if logger is not None:
                logger.close()
        return {"steps": step, "epochs": epoch, "total_steps": self.total_steps,
                "stopped_early": stopped_early, "best_step": best_step,
                "metric": self.metric_name, "best_val": best,
                "train_seconds": time.perf_counter() - t_start}

    # -- after training ------------------------------------------------------
    def test(self) -> dict[str, Any] | None:
        """Score the best checkpoint on the test split; write OUT/report.{json,txt}
        (and OUT/confusion.png for classify). None when there is no test split."""
        if not self.splits["test"]:
            self._note("no test split (--test-fraction 0 and no --test): nothing to report")
            return None
        best_dir = self.run_dir / "best"
        model, _, info = load_task_model(best_dir, device=str(self.device))
        self.model = model
        name, value, scores, loss = self.evaluate("test")
        n = len(self.splits["test"])
        report: dict[str, Any] = {
            "task": self.cfg.task, "checkpoint": str(best_dir), "metric": name, "value": value,
            "test_examples": n, "test_loss": loss, "best_step": info["step"],
            "val_metric": info["val_metric"],
            "truncated_test_inputs": sum(f.truncated for f in self.feats["test"]),
            "notes": self.notes,
        }
        if self.cfg.task == "classify":
            from lmlab.metrics import plot_confusion

            report["scores"] = scores.to_dict()
            text = scores.format()
            plot_confusion(scores, self.run_dir / "confusion.png",
                           title=f"test: accuracy {scores.accuracy:.3f}, "
                                 f"macro F1 {scores.macro_f1:.3f} (n={n})")
        elif self.cfg.task == "tag":
            report["scores"] = scores
            text = _format_tag_scores(scores, n)
        else:
            report["scores"] = scores
            text = (f"exact match {scores['exact_match']:.4f}   F1 {scores['f1']:.4f}   "
                    f"({scores['n']} questions)")
        write_text(self.run_dir / "report.json", json.dumps(report, indent=2) + "\n")
        write_text(self.run_dir / "report.txt", text + "\n")
        report["text"] = text
        return report


def _format_tag_scores(scores: dict[str, Any], n: int) -> str:
    if "f1" not in scores:
        return f"token accuracy {scores['token_accuracy']:.4f} ({n} sentences)"
    lines = [f"{'type':<12}{'precision':>11}{'recall':>11}{'f1':>11}{'support':>9}"]
    for kind, s in scores["per_type"].items():
        lines.append(f"{kind:<12}{s['precision']:>11.4f}{s['recall']:>11.4f}{s['f1']:>11.4f}"
                     f"{s['support']:>9d}")
    lines.append(f"{'entities':<12}{scores['precision']:>11.4f}{scores['recall']:>11.4f}"
                 f"{scores['f1']:>11.4f}{scores['n_true']:>9d}")
    lines.append(f"token accuracy {scores['token_accuracy']:.4f} ({n} sentences)")
    return "\n".join(lines)


def _opt_path(p: str | None) -> Path | None:
    return Path(p) if p else None


def iter_prediction_rows(examples: Sequence[Any], preds: Sequence[Prediction],
                         task: Task) -> Iterator[dict[str, Any]]:
    """One flat output row per example: its input fields and the prediction columns."""
    for ex, p in zip(examples, preds, strict=True):
        if task == "classify":
            yield {"text": ex.text, "prediction": p.label, "probability": p.probability}
        elif task == "tag":
            yield {"tokens": ex.tokens, "prediction": p.tags}
        else:
            yield {"context": ex.context, "question": ex.question, "prediction": p.answer,
                   "answer_start": p.answer_start, "probability": p.probability}
