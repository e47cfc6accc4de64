"""Scoring continuations by log-likelihood: multiple-choice and few-shot evaluation.

A multiple-choice question is answered the way lm-evaluation-harness answers
it: each choice is a continuation of the prompt, the model's summed
log-probability of its tokens is the choice's score, and

* ``acc``: the right choice has the highest summed log-likelihood;
* ``acc_norm``: the same with each score divided by the choice's length in
  characters (the harness's ``acc_norm``), so a long answer is not penalised
  for having more tokens to pay for.

A k-shot prompt is the set's description, k answered questions drawn with a
seed (never the question itself), each followed by a blank line, then the
question. The ``lmlab`` model of lm-evaluation-harness (``lmlab.harness``)
calls the same ``loglikelihoods``, so the two agree.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmlab.data.choice_sets import Question
from lmlab.errors import LmlabError
from lmlab.evaluate import document_start
from lmlab.models.registry import context_of, is_stateful


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (prefix + context, continuation).

    As the harness does it: spaces at the end of the context move to the
    continuation, and the pair is tokenized as one text, the continuation being
    what follows the context's own tokens; so " Paris" is scored as the model
    would write it after "capital is", not as a text of its own.
    """
    stripped = context.rstrip(" ")
    continuation = context[len(stripped):] + continuation
    ctx = tokenizer.encode(stripped) if stripped else []
    cont = tokenizer.encode(stripped + continuation)[len(ctx):]
    if not cont:
        cont = tokenizer.encode(continuation)
    prefix = document_start(tokenizer)
    if not prefix and not ctx:
        raise LmlabError("an empty context and a tokenizer without a start or end-of-text "
                         "token: nothing for the first token to follow")
    return prefix + ctx, cont


def _scored(logits: torch.Tensor, cont: Sequence[int]) -> tuple[float, bool]:
    """(summed log-probability, greedy) of tokens ``cont`` under ``logits`` (len(cont), V)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    t = torch.tensor(cont, device=logp.device)
    return logp.gather(1, t[:, None]).sum().item(), bool((logp.argmax(-1) == t).all())


@torch.no_grad()
def loglikelihoods(model, tokenizer, requests: Sequence[tuple[str, str]], *,
                   batch_size: int = 16,
                   progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """(summed log-probability in nats, greedy) of each (context, continuation).

    ``greedy`` is True when every continuation token is the model's most likely
    next token. The choices of one question share their context, which is read
    once: with answers of several tokens, into a KV cache that every choice
    continues from (a 5-shot prompt costs one pass, not one per choice); with
    one-token answers (MMLU's letters), as one row whose last position scores
    them all. Other requests go in batches of rows sorted by length and
    right-padded, so padding is never attended to. A pair longer than the
    model's context keeps its last tokens (the context's start is dropped), as
    the harness does.
    """
    if batch_size < 1:
        raise LmlabError(f"batch size must be at least 1, got {batch_size}")
    pairs = [encode_pair(tokenizer, c, x) for c, x in requests]
    limit = context_of(model)
    groups: dict[tuple[int, ...], list[int]] = {}  # context -> its requests
    for i, ((ctx, cont), (_, text)) in enumerate(zip(pairs, requests, strict=True)):
        if limit is not None and len(cont) > limit:
            raise LmlabError(f"the continuation {text[:40]!r} is {len(cont)} tokens, "
                             f"longer than the model's context of {limit}")
        groups.setdefault(tuple(ctx), []).append(i)
    shared, rest = [], []
    for ctx, idx in groups.items():
        longest = max(len(pairs[i][1]) for i in idx)
        if (not is_stateful(model) and len(idx) > 1 and longest > 1
                and len(ctx) + longest - 1 <= limit):
            shared.append((list(ctx), idx))
        else:
            rest += idx
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    was_training = model.training
    model.eval()
    try:
        for ctx, idx in shared:
            conts = [pairs[i][1] for i in idx]
            for i, result in zip(idx, _continue_shared(model, ctx, conts), strict=True):
                out[i] = result
            if progress:
                progress(len(idx))
        _score_rows(model, pairs, rest, out, limit, batch_size, progress)
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def _continue_shared(model, ctx: list[int], conts: list[list[int]]) -> list[tuple[float, bool]]:
    """Score several continuations of one context, reading the context once."""
    device = next(model.parameters()).device
    n, width = len(conts), max(len(c) for c in conts)
    model.setup_cache(1, len(ctx) + width - 1)
    try:
        h0 = model(torch.tensor([ctx], device=device), hidden=True)[:, -1:]  # (1, 1, C)
        h = h0.expand(n, 1, -1)  # (n, 1, C): every continuation's first token
        if width > 1:
            model.repeat_cache(n)
            x = torch.zeros(n, width - 1, dtype=torch.long)
            for r, cont in enumerate(conts):
                x[r, :len(cont) - 1] = torch.tensor(cont[:-1])
            # Right padding: a row's real tokens never attend to the padding after them.
            rest = model(x.to(device), start_pos=len(ctx), hidden=True)  # (n, width-1, C)
            h = torch.cat([h, rest], dim=1)  # (n, width, C)
        return [_scored(model.lm_head(h[r, :len(cont)]), cont) for r, cont in enumerate(conts)]
    finally:
        model.clear_cache()


def _score_rows(model, pairs: list[tuple[list[int], list[int]]], todo: list[int],
                out: list, limit: int | None, batch_size: int,
                progress: Callable[[int], None] | None) -> None:
    """Score requests ``todo`` as rows of batches; requests that read the same tokens
    (one-token choices of one context) share a row."""
    rows: dict[tuple[int, ...], int] = {}  # model input -> row
    inputs: list[list[int]] = []
    where: dict[int, tuple[int, int]] = {}  # request -> (row, first target column)
    for i in todo:
        ctx, cont = pairs[i]
        seq = ctx + cont
        if limit is not None and len(seq) > limit + 1:
            seq = seq[-(limit + 1):]
        inp = tuple(seq[:-1])
        row = rows.setdefault(inp, len(inputs))
        if row == len(inputs):
            inputs.append(list(inp))
        where[i] = (row, len(inp) - len(cont))
    need: dict[int, int] = {}  # row -> first column any request of it scores
    by_row: dict[int, list[int]] = {}
    for i, (row, first) in where.items():
        need[row] = min(need.get(row, first), first)
        by_row.setdefault(row, []).append(i)
    device = next(model.parameters()).device
    order = sorted(range(len(inputs)), key=lambda r: -len(inputs[r]))
    for b in range(0, len(order), batch_size):
        chunk = order[b:b + batch_size]
        x = torch.zeros(len(chunk), len(inputs[chunk[0]]), dtype=torch.long)
        for r, row in enumerate(chunk):
            x[r, :len(inputs[row])] = torch.tensor(inputs[row])
        x = x.to(device)
        if is_stateful(model):
            logits, _ = model(x, None)  # (B, T, V)
            spans = [logits[r, need[row]:len(inputs[row])] for r, row in enumerate(chunk)]
        else:
            h = model(x, hidden=True)  # (B, T, C): the output layer only where scored
            spans = [model.lm_head(h[r, need[row]:len(inputs[row])])
                     for r, row in enumerate(chunk)]
        for row, span in zip(chunk, spans, strict=True):
            for i in by_row[row]:
                first = where[i][1] - need[row]
                out[i] = _scored(span[first:first + len(pairs[i][1])], pairs[i][1])
        if progress:
            progress(sum(len(by_row[row]) for row in chunk))


def few_shot_prompt(question: Question, pool: Sequence[Question], shots: int,
                    rng: random.Random) -> str:
    """The description, ``shots`` answered examples from ``pool`` (of the question's
    subject first, never the question itself), then the question."""
    others = [q for q in pool if q.query != question.query]
    same = [q for q in others if q.subject == question.subject]
    rest = [q for q in others if q.subject != question.subject]
    picked = rng.sample(same, min(shots, len(same)))
    picked += rng.sample(rest, min(shots - len(picked), len(rest)))
    return question.description + "".join(q.answered() + "\n\n" for q in picked) + question.query


def prompts(questions: Sequence[Question], shots: int = 0, seed: int = 0,
            pool: Sequence[Question] | None = None) -> list[str]:
    """The prompt of every question; each question's examples are drawn with its own
    seeded generator, so a question's prompt does not depend on the others."""
    pool = questions if pool is None else pool
    return [few_shot_prompt(q, pool, shots, random.Random(f"{seed}:{i}"))
            for i, q in enumerate(questions)]


def _stderr(values: Sequence[float]) -> float:
    """Standard error of a mean (sample standard deviation / sqrt(n)), as the harness
    reports it."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


@dataclass
class ChoiceScore:
    """Accuracy of a model on a set of questions."""

    questions: int
    shots: int
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float
    chance: float  # the expected accuracy of a random guess

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def choice_requests(prompt_texts: Sequence[str],
                    questions: Sequence[Question]) -> list[tuple[str, str]]:
    """(context, continuation) of every choice of every question, in order."""
    return [(p, " " + c) for p, q in zip(prompt_texts, questions, strict=True)
            for c in q.choices]


def score_choices(questions: Sequence[Question], lls: Sequence[tuple[float, bool]],
                  shots: int) -> tuple[ChoiceScore, list[dict]]:
    """Accuracies from the log-likelihoods of every choice (``choice_requests``'s order),
    and each question's prediction."""
    it = iter(lls)
    hits, hits_norm, rows = [], [], []
    for q in questions:
        ll = [next(it)[0] for _ in q.choices]
        norm = [v / len(c) for v, c in zip(ll, q.choices, strict=True)]
        pred = max(range(len(ll)), key=ll.__getitem__)
        pred_norm = max(range(len(norm)), key=norm.__getitem__)
        hits.append(float(pred == q.gold))
        hits_norm.append(float(pred_norm == q.gold))
        rows.append({"subject": q.subject, "gold": q.gold, "pred": pred, "pred_norm": pred_norm,
                     "loglikelihoods": ll})
    n = len(questions)
    score = ChoiceScore(
        questions=n, shots=shots, acc=sum(hits) / n, acc_stderr=_stderr(hits),
        acc_norm=sum(hits_norm) / n, acc_norm_stderr=_stderr(hits_norm),
        chance=sum(1 / len(q.choices) for q in questions) / n)
    return score, rows


def evaluate_choices(model, tokenizer, questions: Sequence[Question], *, shots: int = 0,
                     seed: int = 0, batch_size: int = 16, show_progress: bool = True,
                     pool: Sequence[Question] | None = None) -> tuple[ChoiceScore, list[dict]]:
    """Zero- or k-shot accuracy (and ``acc_norm``) of a causal model on ``questions``."""
    if not questions:
        raise LmlabError("no questions to evaluate")
    if shots < 0:
        raise LmlabError(f"shots must be 0 or more, got {shots}")
    texts = prompts(questions, shots, seed, pool)
    requests = choice_requests(texts, questions)
    bar = None
    if show_progress:
        from lmlab.progress import progress_bar

        bar = progress_bar(total=len(requests), desc=f"{shots}-shot", unit="choice",
                           leave=False)
    lls = loglikelihoods(model, tokenizer, requests, batch_size=batch_size,
                         progress=bar.update if bar else None)
    if bar:
        bar.close()
    return score_choices(questions, lls, shots)
