"""The bag-of-words baseline: fits, predicts and reports on the labels it was given."""

from __future__ import annotations

import random

import pytest

from lmlab.data.tasks import ClassifyExample

pytest.importorskip("sklearn")


def _examples(n: int, seed: int) -> list[ClassifyExample]:
    rng = random.Random(seed)
    words = {"spam": ["free", "winner", "prize", "click", "offer"],
             "ham": ["meeting", "notes", "lunch", "patch", "review"]}
    filler = ["the", "a", "and", "of", "to", "today", "please"]
    out = []
    for i in range(n):
        label = "spam" if i % 3 == 0 else "ham"  # imbalanced, as real mail
        text = " ".join(rng.choice(words[label] + filler) for _ in range(12))
        out.append(ClassifyExample(text, label))
    return out


def test_bow_logreg_separates_lexical_classes():
    from lmlab.baselines import bow_logreg

    report, seconds = bow_logreg(_examples(150, 0), _examples(60, 1))
    assert report.labels == ["ham", "spam"] and report.n == 60
    assert report.accuracy >= 0.95 and report.macro_f1 >= 0.95
    assert seconds >= 0.0
