"""Task inputs: texts, sentences and question/context pairs as token ids with their
targets (``TaskEncoder``), the character <-> token span maths of QA, batches of
similar lengths, collation and the task losses.

Shapes: B batch, T tokens, K labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from lmlab.data.tasks import ClassifyExample, LabelSet, QAExample, TagExample, Task
from lmlab.errors import LmlabError
from lmlab.tokenizer import Tokenizer
from lmlab.train.configs import Truncation

BackboneKind = Literal["bert", "gpt", "rnn"]
DEFAULT_MAX_LENGTH = 256
IGNORE = -100  # cross_entropy's ignore_index: tokens that carry no tag target


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


