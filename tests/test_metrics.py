"""Task metrics: classification (checked against scikit-learn), entity spans, SQuAD scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmlab.errors import LmlabError
from lmlab.metrics import (
    classification_report,
    normalize_answer,
    plot_confusion,
    qa_scores,
    span_f1,
)

# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_report_matches_sklearn(seed):
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    k = 5
    y_true = rng.integers(0, 4, size=300)  # class 4 never occurs
    # Mostly right, some noise, and class 3 is never predicted.
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 5, size=300))
    y_pred[y_pred == 3] = 2
    labels = ["w", "x", "y", "z", "absent"]
    report = classification_report(y_true.tolist(), y_pred.tolist(), labels)

    ids = list(range(k))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    np.testing.assert_allclose(report.precision, p)
    np.testing.assert_allclose(report.recall, r)
    np.testing.assert_allclose(report.f1, f)
    assert report.support == s.tolist()
    assert report.macro_f1 == pytest.approx(
        f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0))
    assert report.accuracy == pytest.approx(float(np.mean(y_true == y_pred)))
    assert report.confusion == confusion_matrix(y_true, y_pred, labels=ids).tolist()
    assert report.precision[3] == 0.0  # never predicted: precision 0 by convention


def test_classification_report_against_sklearn_text_report():
    from sklearn.metrics import classification_report as sk_report

    y_true, y_pred = [0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 1, 0]
    names = ["ham", "spam", "eggs"]
    ours = classification_report(y_true, y_pred, names)
    theirs = sk_report(y_true, y_pred, target_names=names, output_dict=True, zero_division=0)
    for i, name in enumerate(names):
        assert ours.precision[i] == pytest.approx(theirs[name]["precision"])
        assert ours.recall[i] == pytest.approx(theirs[name]["recall"])
        assert ours.f1[i] == pytest.approx(theirs[name]["f1-score"])
    assert ours.macro_f1 == pytest.approx(theirs["macro avg"]["f1-score"])
    assert ours.accuracy == pytest.approx(theirs["accuracy"])


def test_format_and_to_dict():
    report = classification_report([0, 0, 1, 1], [0, 1, 1, 1], ["ham", "spam"])
    text = report.format()
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[2].split() == ["ham", "1.000", "0.500", "0.667", "2"]
    assert "accuracy" in text and "0.750" in text
    assert "confusion matrix (rows = true, columns = predicted):" in text
    assert lines[-1].split() == ["spam", "0", "2"]
    assert len({len(line) for line in lines[-3:]}) == 1  # the matrix is aligned
    d = json.loads(json.dumps(report.to_dict()))
    assert d["per_class"]["ham"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                     "support": 2}
    assert d["confusion"] == [[1, 1], [0, 2]] and d["n"] == 4


def test_classification_report_errors():
    with pytest.raises(LmlabError, match="2 true labels but 1 predictions"):
        classification_report([0, 1], [0], ["a", "b"])
    with pytest.raises(LmlabError, match="prediction 2 is not a class index"):
        classification_report([0, 1], [0, 2], ["a", "b"])
    with pytest.raises(LmlabError, match="no examples"):
        classification_report([], [], ["a", "b"])


def test_plot_confusion_writes_png(tmp_path):
    report = classification_report([0, 1, 2, 2], [0, 2, 2, 1], ["a", "b", "c"])
    out = plot_confusion(report, tmp_path / "plots" / "confusion.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["confusion.png"]  # no temporary left


# --------------------------------------------------------------------------- spans


def test_span_f1_perfect_and_partial():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    assert span_f1(true, true)["f1"] == 1.0
    # The person's end is wrong (a partial match counts as a miss), LOC right, ORG missed.
    pred = [["B-PER", "O", "O", "B-LOC"], ["O", "O"]]
    s = span_f1(true, pred)
    assert (s["n_true"], s["n_pred"], s["n_correct"]) == (3, 2, 1)
    assert s["precision"] == 0.5 and s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert s["token_accuracy"] == pytest.approx(4 / 6)
    assert s["per_type"]["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert s["per_type"]["ORG"]["support"] == 1 and s["per_type"]["ORG"]["f1"] == 0.0


def test_span_f1_wrong_type_is_a_miss():
    s = span_f1([["B-PER", "I-PER"]], [["B-ORG", "I-ORG"]])
    assert (s["n_correct"], s["f1"]) == (0, 0.0)


def test_span_f1_reads_tags_as_conlleval_does():
    # An I- after O starts an entity, so these are equal to their B- forms.
    assert span_f1([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]])["f1"] == 1.0
    # A type change inside I- tags starts a new entity; B- after I- of the same type too.
    s = span_f1([["B-PER", "B-LOC", "B-PER", "B-PER"]], [["I-PER", "I-LOC", "I-PER", "B-PER"]])
    assert (s["n_true"], s["n_pred"], s["n_correct"]) == (4, 4, 4)
    # Two B-s of one type are two entities; I-X I-X is one.
    s = span_f1([["B-X", "B-X"]], [["I-X", "I-X"]])
    assert (s["n_true"], s["n_pred"], s["n_correct"]) == (2, 1, 0)


def test_span_f1_no_entities_and_errors():
    s = span_f1([["O", "O"]], [["O", "O"]])
    assert (s["f1"], s["token_accuracy"]) == (0.0, 1.0)
    with pytest.raises(LmlabError, match="sentence 0 has 2 true tags but 1 predicted"):
        span_f1([["O", "O"]], [["O"]])
    with pytest.raises(LmlabError, match="tag 'PER' is not O, B-<type> or I-<type>"):
        span_f1([["PER"]], [["O"]])


# --------------------------------------------------------------------------- QA


def test_normalize_answer_like_squad():
    assert normalize_answer("  The Eiffel-Tower!  ") == "eiffeltower"
    assert normalize_answer("an apple, a pear and THE plum") == "apple pear and plum"
    assert normalize_answer("theatre") == "theatre"  # only whole-word articles go


def test_qa_scores():
    preds = ["the Eiffel Tower", "in Paris, France", "London", "a"]
    answers = ["Eiffel Tower", "Paris", "Paris", "the"]
    s = qa_scores(preds, answers)
    # EM: 1, 0, 0, 1 (both normalize to ""). F1: 1, 2*(1/3)*1/(1/3+1) = 0.5, 0, 1.
    assert s["exact_match"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert s["n"] == 4
    # Repeated words count as often as they occur in both.
    assert qa_scores(["dog dog dog"], ["dog cat"])["f1"] == pytest.approx(2 * (1 / 3) * 0.5
                                                                          / (1 / 3 + 0.5))
    with pytest.raises(LmlabError, match="1 predictions but 2 answers"):
        qa_scores(["x"], ["x", "y"])
