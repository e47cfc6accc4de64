"""`lmlab compare`: every family on one set of shards, one table, one chart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmlab.cli import main
from lmlab.compare import CompareConfig, Comparison, split_documents
from lmlab.errors import LmlabError


def test_split_documents_keeps_one_document_per_end_of_text():
    eos = 9
    docs = split_documents(np.array([1, 2, eos, eos, 3, eos, 4]), eos)
    # "1 2", an empty document, "3", and a last document cut before its end-of-text.
    assert [d.tolist() for d in docs] == [[1, 2], [], [3], [4]]
    assert [d.tolist() for d in split_documents(np.array([1, eos]), eos)] == [[1]]


@pytest.fixture(scope="module")
def compared(char_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    cfg = CompareConfig(out=str(out), data=str(char_shards),
                        models=["ngram-2", "ngram-3", "ffnn", "lstm-small", "gpt-nano"],
                        steps=6, batch_size=4, block_size=32)
    rows = Comparison(cfg, say=lambda m: None).run()
    return out, rows


def test_every_model_predicts_the_same_validation_tokens(compared):
    out, rows = compared
    assert [r.name for r in rows] == ["2-gram KN", "3-gram KN", "ffnn-small", "lstm-small",
                                      "gpt-nano"]
    # n-grams score each document plus its end-of-text; the neural models score the
    # stream after a leading end-of-text: the very same targets, so the same bytes.
    assert len({r.tokens for r in rows}) == 1
    assert len({r.n_bytes for r in rows}) == 1
    for r in rows:
        assert r.params > 0 and r.train_seconds >= 0
        assert 0 < r.bits_per_byte < 10 and r.perplexity > 1
    # With a few steps a char trigram beats a barely trained network and a bigram.
    by = {r.name: r for r in rows}
    assert by["3-gram KN"].bits_per_byte < by["2-gram KN"].bits_per_byte
    assert by["3-gram KN"].bits_per_byte < by["gpt-nano"].bits_per_byte
    assert by["lstm-small"].train_tokens == 6 * 4 * 32


def test_compare_writes_table_json_and_chart(compared):
    out, rows = compared
    table = (out / "compare.md").read_text()
    assert "bits/byte" in table and "does not depend on the tokenizer" in table
    data = json.loads((out / "compare.json").read_text())
    assert [r["name"] for r in data["rows"]] == [r.name for r in rows]
    assert data["rows"][0]["bits_per_byte"] == pytest.approx(rows[0].bits_per_byte)
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "runs" / "lstm-small" / "metrics.jsonl").exists()


def test_word_level_row_is_flagged(char_shards, tmp_path, capsys):
    main(["compare", str(char_shards), "--out", str(tmp_path / "c"), "--models", "ngram-3",
          "--word-ngram", "2"])
    out = capsys.readouterr().out
    assert "2-gram KN (words)" in out and "flatter themselves" in out
    rows = json.loads((tmp_path / "c" / "compare.json").read_text())["rows"]
    assert rows[1]["level"] == "word" and rows[1]["n_bytes"] == rows[0]["n_bytes"]


@pytest.mark.parametrize("models, message", [
    (["ngram-0"], "order N >= 1"),
    (["transformer"], "unknown model 'transformer'"),
    (["bert-mini"], "unknown model 'bert-mini'"),
    ([], "at least one model"),
])
def test_bad_model_names(tmp_path, models, message):
    with pytest.raises(LmlabError, match=message):
        CompareConfig(out=str(tmp_path), models=models)
