"""Cheap baselines that a fine-tuned model has to beat.

A fine-tuned transformer is worth its cost only if it beats a bag of words:
on spam detection, topic labels and other keyword-driven tasks a TF-IDF
logistic regression is often within a point of it, trained in seconds.
scikit-learn is imported only here, when a baseline runs
(``pip install lmlab[eval]``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from lmlab.data.tasks import ClassifyExample, LabelSet
from lmlab.errors import LmlabError
from lmlab.metrics import ClassificationReport, classification_report

__all__ = ["bow_logreg"]


def bow_logreg(
    train: Sequence[ClassifyExample],
    test: Sequence[ClassifyExample],
    *,
    seed: int = 0,
) -> tuple[ClassificationReport, float]:
    """Fit TF-IDF + logistic regression on ``train`` and score it on ``test``.

    Features are word unigrams and bigrams seen in at least 2 training texts,
    with sublinear term frequency (1 + log tf, so a word repeated 50 times in
    one spam does not drown the rest). The classes are weighted inversely to
    their frequency (``class_weight="balanced"``), as the fine-tuning loss can be.

    Returns:
        The test report (labels sorted, as :class:`LabelSet` orders them) and
        the seconds spent fitting (vectorizer and model, not scoring).

    Raises:
        LmlabError: scikit-learn is missing, or a test label is not in train.
    """
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise LmlabError(
            "the bag-of-words baseline needs scikit-learn: pip install 'scikit-learn>=1.4' "
            "(or pip install 'lmlab[eval]')"
        ) from None
    label_set = LabelSet.from_examples(train)
    if len(label_set) < 2:
        raise LmlabError("bow_logreg: the training examples have a single class")
    y_train = _encode(train, label_set, "the training examples")
    y_test = _encode(test, label_set, "the test examples")

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    x_train = vectorizer.fit_transform([ex.text for ex in train])
    model = LogisticRegression(max_iter=1000, class_weight="balanced", random_state=seed)
    model.fit(x_train, y_train)
    fit_seconds = time.perf_counter() - start

    y_pred = [int(y) for y in model.predict(vectorizer.transform([ex.text for ex in test]))]
    return classification_report(y_test, y_pred, label_set.to_list()), fit_seconds


def _encode(examples: Sequence[ClassifyExample], label_set: LabelSet, where: str) -> list[int]:
    """Class indices of labelled examples; an unlabelled one is an error, not a guess."""
    out = []
    for i, ex in enumerate(examples):
        if ex.label is None:
            raise LmlabError(f"bow_logreg: example {i} of {where} has no label")
        out.append(label_set.encode(ex.label, where))
    return out
