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


@pytest.mark.parametrize("features", ["word", "char"])
def test_tfidf_logreg_features(features):
    from lmlab.baselines import tfidf_logreg

    result = tfidf_logreg(_examples(150, 0), _examples(60, 1), features=features)
    assert result.features == features and result.report.accuracy >= 0.95
    assert result.n_features > 0 and result.train_examples == 150
    assert result.to_dict()["scores"]["n"] == 60


def test_auto_features_follow_the_language():
    from lmlab.baselines import choose_features, tfidf_logreg

    assert choose_features(["free prize, click now"]) == "word"
    assert choose_features(["这个东西质量很好，推荐购买"]) == "char"
    assert tfidf_logreg(_examples(60, 0), _examples(10, 1)).features == "word"


def test_baseline_errors():
    from lmlab.baselines import tfidf_logreg
    from lmlab.errors import LmlabError

    train = _examples(30, 0)
    with pytest.raises(LmlabError, match="single class"):
        tfidf_logreg([ex for ex in train if ex.label == "ham"], train)
    with pytest.raises(LmlabError, match="no test examples"):
        tfidf_logreg(train, [])
    with pytest.raises(LmlabError, match="2 or more training texts"):
        tfidf_logreg([ClassifyExample("apple", "x"), ClassifyExample("pear", "y")],
                     [ClassifyExample("apple", "x")], features="word")
