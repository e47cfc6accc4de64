"""Task metrics for fine-tuning: classification, entity tagging and extractive QA.

Written out by hand (numpy only) so that each number can be read off its
definition; the tests cross-check the classification figures against
scikit-learn.

- :func:`classification_report`: accuracy, per-class precision/recall/F1,
  macro F1 and the confusion matrix (rows = true class, columns = predicted).
- :func:`span_f1`: entity-level precision/recall/F1 over BIO tags, as the
  CoNLL-2000/2003 ``conlleval`` script counts them, plus token accuracy.
- :func:`qa_scores`: SQuAD's exact match and token F1 after its answer
  normalization.

All scores are fractions in [0, 1] (not percentages). A ratio whose
denominator is zero (the precision of a class never predicted, the recall of
a class absent from the data) is 0, as scikit-learn's ``zero_division=0``.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmlab.errors import LmlabError

__all__ = [
    "ClassificationReport",
    "classification_report",
    "normalize_answer",
    "plot_confusion",
    "qa_scores",
    "span_f1",
]


# --------------------------------------------------------------------------- classification


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den is 0."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclasses.dataclass
class ClassificationReport:
    """Scores of a classifier on one labelled set.

    ``precision[i]``, ``recall[i]``, ``f1[i]`` and ``support[i]`` (number of
    true examples) belong to ``labels[i]``; ``confusion[i][j]`` counts
    examples of true class i predicted as j. Macro averages weigh every class
    equally, whatever its size (so a rare class counts as much as a common one).
    """

    labels: list[str]
    accuracy: float
    macro_f1: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: list[list[int]]

    @property
    def macro_precision(self) -> float:
        return float(np.mean(self.precision))

    @property
    def macro_recall(self) -> float:
        return float(np.mean(self.recall))

    @property
    def n(self) -> int:
        """The number of examples scored."""
        return int(sum(self.support))

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON: overall scores, a row per class, the confusion matrix."""
        return {
            "accuracy": self.accuracy,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "n": self.n,
            "per_class": {
                label: {
                    "precision": self.precision[i],
                    "recall": self.recall[i],
                    "f1": self.f1[i],
                    "support": self.support[i],
                }
                for i, label in enumerate(self.labels)
            },
            "labels": list(self.labels),
            "confusion": [list(row) for row in self.confusion],
        }

    def format(self, digits: int = 3) -> str:
        """An aligned text table (per class, accuracy, macro average) and the confusion matrix."""
        w = max(len("macro avg"), *(len(x) for x in self.labels))
        cols = ("precision", "recall", "f1-score", "support")
        lines = [" " * w + "".join(f"{c:>11}" for c in cols), ""]
        for i, label in enumerate(self.labels):
            scores = "".join(
                f"{v:>11.{digits}f}" for v in (self.precision[i], self.recall[i], self.f1[i])
            )
            lines.append(f"{label:<{w}}{scores}{self.support[i]:>11d}")
        lines.append("")
        lines.append(f"{'accuracy':<{w}}{'':>22}{self.accuracy:>11.{digits}f}{self.n:>11d}")
        macro = "".join(
            f"{v:>11.{digits}f}" for v in (self.macro_precision, self.macro_recall, self.macro_f1)
        )
        lines.append(f"{'macro avg':<{w}}{macro}{self.n:>11d}")
        lines.append("")
        lines.append("confusion matrix (rows = true, columns = predicted):")
        cw = max(len(str(self.n)), *(len(x) for x in self.labels)) + 2
        lines.append(" " * w + "".join(f"{x:>{cw}}" for x in self.labels))
        for label, row in zip(self.labels, self.confusion, strict=True):
            lines.append(f"{label:<{w}}" + "".join(f"{v:>{cw}d}" for v in row))
        return "\n".join(lines)


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> ClassificationReport:
    """Score predicted class indices against true ones.

    Args:
        y_true: the true class index of each example.
        y_pred: the predicted class index of each example.
        labels: the name of each class index; every class is reported, also
            one absent from both lists (its scores are then 0).

    Returns:
        The report. The precision of a class that is never predicted is 0
        (no prediction of it was right), and so is the recall of a class with
        no true examples; F1 is 2·tp / (2·tp + fp + fn), 0 when that is 0/0.

    Raises:
        LmlabError: lists of different lengths, no examples, or an index
            outside ``labels``.
    """
    k = len(labels)
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape or t.ndim != 1:
        raise LmlabError(f"classification_report: {len(y_true)} true labels but "
                         f"{len(y_pred)} predictions")
    if t.size == 0:
        raise LmlabError("classification_report: no examples to score")
    for name, arr in (("true label", t), ("prediction", p)):
        if arr.min() < 0 or arr.max() >= k:
            bad = int(arr[(arr < 0) | (arr >= k)][0])
            raise LmlabError(f"classification_report: {name} {bad} is not a class index "
                             f"(0..{k - 1})")
    # One bincount over (true, predicted) pairs gives the whole confusion matrix.
    confusion = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion)
    predicted = confusion.sum(axis=0)  # column sums: how often each class was predicted
    support = confusion.sum(axis=1)  # row sums: how many true examples each class has
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    # From counts rather than from P and R, which equals the harmonic mean
    # where both exist and stays defined where one of them is 0/0.
    f1 = _ratio(2 * tp, predicted + support)
    return ClassificationReport(
        labels=list(labels),
        accuracy=float(tp.sum() / t.size),
        macro_f1=float(f1.mean()),
        precision=precision.tolist(),
        recall=recall.tolist(),
        f1=f1.tolist(),
        support=support.tolist(),
        confusion=confusion.tolist(),
    )


def plot_confusion(report: ClassificationReport, png_path: Path, title: str = "") -> Path:
    """Draw the confusion matrix (true classes on rows, counts in the cells) as a PNG.

    The file is written under a temporary name and renamed into place, so a
    reader never sees half a PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png_path = Path(png_path)
    m = np.asarray(report.confusion)
    k = len(report.labels)
    side = min(max(3.5, 0.6 * k + 2.0), 16.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=110)
    im = ax.imshow(m, cmap="Blues", vmin=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    # Dark text on light cells and white on dark ones keeps every count legible.
    threshold = m.max() / 2 if m.size else 0
    if k <= 40:  # beyond that the numbers overlap; the colours still tell
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > threshold else "black")
    tilt = k > 4  # long rows of names overlap unless slanted
    ax.set_xticks(range(k), report.labels, rotation=45 if tilt else 0,
                  ha="right" if tilt else "center")
    ax.set_yticks(range(k), report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"accuracy {report.accuracy:.3f}, macro F1 {report.macro_f1:.3f}")
    from lmlab.runs import save_figure

    return save_figure(fig, png_path)


# --------------------------------------------------------------------------- entity spans


def _spans(tags: Sequence[str], where: str) -> set[tuple[int, int, str]]:
    """The entities of one BIO-tagged sentence as (start, end, type), end exclusive.

    As conlleval reads IOB: an entity starts at ``B-X``, and also at ``I-X``
    when the tag before is ``O`` or of another type (so IOB1 data and a model's
    stray ``I-`` both count); it ends before ``O``, ``B-`` or a type change.
    """
    spans: set[tuple[int, int, str]] = set()
    start, kind = -1, ""
    for i, tag in enumerate([*tags, "O"]):  # the "O" closes an entity at the end
        if tag == "O":
            prefix, t = "O", ""
        elif len(tag) > 2 and tag[1] == "-" and tag[0] in "BI":
            prefix, t = tag[0], tag[2:]
        else:
            raise LmlabError(f"span_f1: {where}: tag {tag!r} is not O, B-<type> or I-<type>")
        continues = prefix == "I" and t == kind and start >= 0
        if start >= 0 and not continues:
            spans.add((start, i, kind))
            start, kind = -1, ""
        if prefix in "BI" and not continues:
            start, kind = i, t
    return spans


def span_f1(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision, recall and F1 over BIO (IOB2) tagged sentences.

    An entity counts as found only if its start, end and type all match
    (conlleval's rule). With no entities at all the scores are 0.

    Returns:
        ``precision``, ``recall``, ``f1``, ``token_accuracy`` (share of tags
        equal, ``O`` included), the counts ``n_true``, ``n_pred``,
        ``n_correct``, and ``per_type``: {type: {precision, recall, f1, support}}.

    Raises:
        LmlabError: different numbers of sentences or tags, or a tag that is
            not ``O``, ``B-X`` or ``I-X``.
    """
    if len(true_tags) != len(pred_tags):
        raise LmlabError(f"span_f1: {len(true_tags)} true sentences but "
                         f"{len(pred_tags)} predicted")
    counts: dict[str, Counter[str]] = {"true": Counter(), "pred": Counter(), "correct": Counter()}
    same = total = 0
    for s, (t, p) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if len(t) != len(p):
            raise LmlabError(f"span_f1: sentence {s} has {len(t)} true tags but "
                             f"{len(p)} predicted")
        same += sum(a == b for a, b in zip(t, p, strict=True))
        total += len(t)
        ts, ps = _spans(t, f"sentence {s}"), _spans(p, f"sentence {s}")
        counts["true"].update(x[2] for x in ts)
        counts["pred"].update(x[2] for x in ps)
        counts["correct"].update(x[2] for x in ts & ps)

    def prf(correct: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
        precision = correct / n_pred if n_pred else 0.0
        recall = correct / n_true if n_true else 0.0
        f1 = 2 * correct / (n_pred + n_true) if n_pred + n_true else 0.0
        return precision, recall, f1

    n_true, n_pred = sum(counts["true"].values()), sum(counts["pred"].values())
    n_correct = sum(counts["correct"].values())
    precision, recall, f1 = prf(n_correct, n_pred, n_true)
    per_type = {}
    for kind in sorted(counts["true"] | counts["pred"]):
        p_, r_, f_ = prf(counts["correct"][kind], counts["pred"][kind], counts["true"][kind])
        per_type[kind] = {"precision": p_, "recall": r_, "f1": f_,
                          "support": counts["true"][kind]}
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "token_accuracy": same / total if total else 0.0,
        "n_true": n_true,
        "n_pred": n_pred,
        "n_correct": n_correct,
        "per_type": per_type,
    }


# --------------------------------------------------------------------------- extractive QA

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalization: lowercase, drop ASCII punctuation and the
    articles a/an/the, collapse whitespace (in that order, as its evaluation script)."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _token_f1(pred: list[str], gold: list[str]) -> float:
    """SQuAD's F1 of two normalized answers, given as their words."""
    if not pred or not gold:
        # Only an empty answer matches an empty answer (e.g. "The" against "a").
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_scores(predictions: Sequence[str], answers: Sequence[str]) -> dict:
    """SQuAD exact match and token F1, averaged over questions (fractions, not %).

    Both compare answers after :func:`normalize_answer`; F1 counts the
    overlap of their word multisets, so a prediction with one extra word
    still earns partial credit. One reference answer per question.

    Returns:
        ``{"exact_match": float, "f1": float, "n": int}``.
    """
    if len(predictions) != len(answers):
        raise LmlabError(f"qa_scores: {len(predictions)} predictions but {len(answers)} answers")
    if not answers:
        raise LmlabError("qa_scores: no answers to score")
    em, f1 = [], []
    for prediction, answer in zip(predictions, answers, strict=True):
        pred, gold = normalize_answer(prediction), normalize_answer(answer)
        em.append(float(pred == gold))
        f1.append(_token_f1(pred.split(), gold.split()))
    return {"exact_match": float(np.mean(em)), "f1": float(np.mean(f1)), "n": len(answers)}


# ---------------------------------------------------------------- generated text
def has_cjk(texts: Sequence[str]) -> bool:
    """Whether most texts hold Chinese (or Japanese) characters: then BLEU tokenizes
    each character, as sacrebleu's ``zh`` tokenizer does."""
    from lmlab.data.chinese import CJK

    pattern = re.compile(f"[{CJK}]")
    return sum(bool(pattern.search(t)) for t in texts) * 2 > len(texts)


def translation_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, one reference each); Chinese references get the
    ``zh`` tokenizer, others ``13a`` (sacrebleu's default)."""
    import sacrebleu

    if len(hyps) != len(refs):
        raise LmlabError(f"{len(hyps)} outputs but {len(refs)} references; give one "
                         "reference per output")
    tokenize = "zh" if has_cjk(refs) else "13a"
    bleu = sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize=tokenize)
    chrf = sacrebleu.corpus_chrf(list(hyps), [list(refs)])
    return {"bleu": bleu.score, "chrf": chrf.score}


class _KeepCJK:
    """rouge-score's tokenizer interface: lowercased words, and every CJK character a token
    of its own (its default tokenizer keeps only [a-z0-9], so Chinese would score 0)."""

    def tokenize(self, text: str) -> list[str]:
        from lmlab.data.chinese import CJK

        return re.findall(f"[{CJK}]|[^\\W{CJK}]+", text.lower())


def rouge_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """ROUGE-1, -2 and -L F1 (rouge-score), averaged over the pairs, in percent."""
    from rouge_score import rouge_scorer

    if len(hyps) != len(refs):
        raise LmlabError(f"{len(hyps)} outputs but {len(refs)} references")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_KeepCJK())
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for h, r in zip(hyps, refs, strict=True):
        for k, v in scorer.score(r, h).items():
            sums[k] += v.fmeasure
    return {k: 100 * v / max(1, len(hyps)) for k, v in sums.items()}
