"""Perplexity and bits per byte.

Bits per byte (BPB) = total negative log-likelihood in bits / UTF-8 bytes of
the text. Unlike perplexity it does not depend on the tokenizer, so a
character-level and a BPE model, or an n-gram and a GPT, can be compared.

A Transformer is scored in windows of its context (``score_tokens``); a
feed-forward or recurrent LM reads the tokens as a stream, carrying its state
from chunk to chunk (``score_stream``), so every token is scored with all the
text before it as context, as the model would read it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.models.gpt import GPT
from lmlab.models.registry import is_stateful
from lmlab.models.rnn import StatefulLM


@dataclass
class LMScore:
    """Summed negative log-likelihood over ``tokens`` predicted tokens of ``n_bytes`` bytes."""

    nll: float  # nats, summed
    tokens: int
    n_bytes: int

    @property
    def loss(self) -> float:
        return self.nll / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / max(self.n_bytes, 1)

    def to_dict(self) -> dict[str, float | int]:
        return {"loss": self.loss, "perplexity": self.perplexity,
                "bits_per_byte": self.bits_per_byte, "tokens": self.tokens, "bytes": self.n_bytes}


def document_start(tokenizer) -> list[int]:
    """What a scored text starts after: the model's start token (Gemma's <bos>) where it
    has one, else the end-of-text token, as documents follow one another in training
    shards; nothing if the tokenizer has neither."""
    start = tokenizer.start_ids
    if start:
        return list(start)
    return [tokenizer.eos_id] if tokenizer.eos_id is not None else []


def window_starts(n: int, block: int, stride: int) -> list[tuple[int, int]]:
    """(start, first scored offset) of sliding windows over n tokens.

    Each window holds up to ``block + 1`` tokens (inputs and targets); after
    the first, a window scores only its last ``stride`` targets, so every
    token is scored exactly once with at least ``block - stride`` tokens of
    context.
    """
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")  # else it never advances
    if n < 2:
        return []
    out = [(0, 0)]
    end = min(block, n - 1)  # targets 1..end are scored by the first window
    while end < n - 1:
        new_end = min(end + stride, n - 1)
        start = max(0, new_end - block)
        out.append((start, end - start))
        end = new_end
    return out


@torch.inference_mode()
def score_stream(model: StatefulLM, tokens: np.ndarray | torch.Tensor, *, streams: int = 1,
                 chunk: int | None = None,
                 progress: Callable[[int], None] | None = None) -> tuple[float, int]:
    """Sum of NLL (nats) and count of scored tokens of a stateful (ffnn / recurrent) LM.

    The tokens are cut into ``streams`` contiguous parts read side by side as
    one batch, ``chunk`` tokens per call (default: the model's block_size),
    the state carried from call to call. With one stream every target is scored
    with all tokens before it as context: the same as one forward pass over
    the whole sequence. With more streams (faster), each part after the first
    starts from an empty state, as a Transformer's window starts without
    context. Tokens 1..n-1 are scored, except a remainder of fewer than
    ``streams`` tokens at the end.
    """
    chunk = chunk or model.config.block_size
    toks = (tokens.long() if isinstance(tokens, torch.Tensor)
            else torch.from_numpy(np.asarray(tokens, dtype=np.int64)))
    n_targets = len(toks) - 1
    if n_targets < 1:
        return 0.0, 0
    streams = max(1, min(streams, n_targets))
    L = n_targets // streams  # targets per stream
    device = next(model.parameters()).device
    # Row b reads tokens [b*L, (b+1)*L] (inputs and targets): windows overlapping by one.
    rows = toks.unfold(0, L + 1, L)[:streams].to(device)  # (streams, L+1)
    was_training = model.training
    model.eval()
    nll, state = 0.0, None
    try:
        for t in range(0, L, chunk):
            x = rows[:, t:min(t + chunk, L)]  # (streams, <= chunk)
            y = rows[:, t + 1:min(t + chunk, L) + 1]
            logits, state = model(x, state)  # (streams, <= chunk, V)
            nll += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(),
                                   reduction="sum").item()
            if progress:
                progress(1)
    finally:
        model.train(was_training)
    return nll, streams * L


@torch.inference_mode()
def score_tokens(model: GPT | StatefulLM, tokens: np.ndarray | torch.Tensor, *,
                 stride: int | None = None, batch_size: int = 8, max_tokens: int | None = None,
                 progress: Callable[[int], None] | None = None,
                 context: int | None = None) -> tuple[float, int]:
    """Sum of NLL (nats) and count of scored tokens, with a sliding window.

    Windows are ``context`` tokens long (default and at most the model's
    context). ``stride`` defaults to the window (non-overlapping windows,
    cheapest); a smaller stride gives each token more context at more compute. A
    feed-forward or recurrent LM is scored by ``score_stream`` instead, with
    ``batch_size`` parallel streams (``stride`` does not apply: its state
    carries all the context there is); ``batch_size=1`` scores it exactly.
    """
    toks = torch.from_numpy(np.array(tokens[: max_tokens + 1] if max_tokens else tokens,
                                     dtype=np.int64))
    if is_stateful(model):
        return score_stream(model, toks, streams=batch_size, progress=progress)
    block = min(context or model.config.block_size, model.config.block_size)
    stride = min(stride or block, block)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    wins = window_starts(len(toks), block, stride)
    nll, count = 0.0, 0
    # Long contexts: fewer windows per forward, so activations stay bounded.
    batch_size = max(1, min(batch_size, 32768 // block))
    for i in range(0, len(wins), batch_size):
        chunk = wins[i:i + batch_size]
        length = max(min(block, len(toks) - 1 - s) for s, _ in chunk)
        x = torch.zeros(len(chunk), length, dtype=torch.long)
        y = torch.full((len(chunk), length), -100, dtype=torch.long)
        for r, (s, first) in enumerate(chunk):
            n = min(block, len(toks) - 1 - s)
            x[r, :n] = toks[s:s + n]
            y[r, first:n] = toks[s + 1 + first:s + 1 + n]
        h = model(x.to(device), hidden=True)  # (b, T, C)
        y = y.to(device)
        # The logits of a long window are huge (8192 tokens x 49152 words = 1.6 GB
        # in float32 per row), so the lm_head and the loss go a chunk at a time.
        for t in range(0, length, 512):
            logits = model.lm_head(h[:, t:t + 512])  # (b, <=512, V)
            nll += F.cross_entropy(logits.float().flatten(0, 1), y[:, t:t + 512].flatten(),
                                   ignore_index=-100, reduction="sum").item()
        count += int((y != -100).sum())
        if progress:
            progress(len(chunk))
    model.train(was_training)
    return nll, count


def evaluate_documents(model: GPT | StatefulLM, tokenizer, docs: Sequence[str], *,
                       stride: int | None = None, batch_size: int = 8,
                       show_progress: bool = True, context: int | None = None) -> LMScore:
    """Perplexity and bits per byte of documents under ``model``.

    ``context`` shortens the windows below the model's context (a model of 32k
    positions scored with windows of 1,024 and a stride of 512 costs 1/32 as much).

    The token stream is ``EOS d1 EOS d2 ... dn``, as in training shards; the
    leading end-of-text token lets the first real token be scored too, so
    every byte of every document is counted. A feed-forward or recurrent LM
    reads the whole stream as one, carrying its state (exact; ``stride`` and
    ``batch_size`` do not apply).
    """
    if stride is not None and stride < 1:
        raise LmlabError(f"stride must be at least 1, got {stride}")  # 0 or less never advances
    if context is not None and context < 2:
        raise LmlabError(f"context must be at least 2 tokens, got {context}")
    if batch_size < 1:
        raise LmlabError(f"batch size must be at least 1, got {batch_size}")
    if not any(doc.strip() for doc in docs):
        raise LmlabError("nothing to score: the text is empty")
    eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    # Each document starts as a model expects its input to: after its start token
    # (Gemma's <bos>) where it has one, else after the end token of the one before.
    start = tokenizer.start_ids
    ids = document_start(tokenizer)
    for i, doc in enumerate(docs):
        if i:
            ids += eos + start
        ids += tokenizer.encode(doc)
    block = min(context or model.config.block_size, model.config.block_size)
    stride = min(stride or block, block)
    stateful = is_stateful(model)
    if stateful:
        batch_size = 1  # one stream: every token scored with the whole text before it
    bar = None
    if show_progress:
        from lmlab.progress import progress_bar

        # One stream: a forward call per block of the len(ids) - 1 targets.
        total = (-(-max(len(ids) - 1, 0) // block) if stateful
                 else len(window_starts(len(ids), block, stride)))
        bar = progress_bar(total=total, desc="eval", unit="chunk" if stateful else "win",
                           leave=False)
    nll, count = score_tokens(model, np.array(ids), stride=stride, batch_size=batch_size,
                              progress=bar.update if bar else None, context=block)
    if bar:
        bar.close()
    return LMScore(nll, count, sum(len(d.encode("utf-8")) for d in docs))


def unigram_score(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int,
                  n_bytes: int) -> LMScore:
    """An add-one-smoothed unigram model: the baseline every LM must beat."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size) + 1.0
    logp = np.log(counts / counts.sum())
    targets = np.asarray(eval_tokens[1:], dtype=np.int64)  # the same targets a GPT scores
    return LMScore(float(-logp[targets].sum()), len(targets), n_bytes)
