"""From a task model's outputs to predictions (labels, tags, answer spans) and scores.

Shapes: B batch, T tokens, K labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmlab.data.tasks import LabelSet, Task
from lmlab.train.tasks.features import Feature, collate, task_loss, token_span_to_chars
from lmlab.train.tasks.model import TaskModel


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


def format_tag_scores(scores: dict[str, Any], n: int) -> str:
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
