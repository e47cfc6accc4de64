"""The bias probe: log-likelihood differences per template and filler, its summary, the
templates file, and `lmlab bias` writing its JSON and picture."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.bias import BUILT_IN, ProbeSet, probe, read_probe_sets
from lmlab.cli import main
from lmlab.config import GPTConfig
from lmlab.errors import LmlabError
from lmlab.models.registry import build_model
from lmlab.multiple_choice import loglikelihoods
from lmlab.tokenizer import Tokenizer
from lmlab.train.checkpoint import save_checkpoint

TEXT = "The nurse said that she would be late. The pilot said that he would be late. " * 6


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT, "这位护士说她今天会晚一点到。"], kind="bpe", vocab_size=300,
                           show_progress=False)


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    return build_model(GPTConfig.from_name("gpt-nano", vocab_size=tok.vocab_size,
                                           block_size=64)).eval()


SETS = [ProbeSet("t", ["The {filler} said that {word} would be late.",
                       "{filler} said {word} was busy."], ("he", "she"),
                 ["nurse", "pilot", "cook"])]


def test_differences_are_the_sentences_log_likelihoods(model, tok):
    results = probe(model, tok, SETS)
    assert [r.template for r in results] == SETS[0].templates
    for r in results:
        for filler, diff in r.per_filler.items():
            # Sentences start with a capital letter, scored after the start token.
            he, she = (r.template.format(filler=filler, word=w) for w in ("he", "she"))
            he, she = he[0].upper() + he[1:], she[0].upper() + she[1:]
            (a, _), (b, _) = loglikelihoods(model, tok, [("", he), ("", she)])
            assert diff == pytest.approx(a - b, abs=1e-5)
        vals = list(r.per_filler.values())
        assert r.mean == pytest.approx(sum(vals) / 3)
        assert r.first_wins == sum(v > 0 for v in vals) / 3
        assert r.std == pytest.approx(torch.tensor(vals).std().item(), abs=1e-6)


def test_built_in_sets_have_both_slots_and_chinese():
    assert {s.name for s in BUILT_IN} >= {"en", "zh"}
    for s in BUILT_IN:
        assert all("{filler}" in t and "{word}" in t for t in s.templates)
    assert next(s for s in BUILT_IN if s.name == "zh").pair == ("他", "她")


def test_templates_file_and_its_errors(tmp_path):
    good = tmp_path / "t.json"
    good.write_text(json.dumps([{"name": "x", "templates": ["A {filler} and {word}."],
                                 "pair": ["he", "she"], "fillers": ["cook"]}]))
    assert read_probe_sets(good)[0].pair == ("he", "she")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x", "templates": ["no slots"], "pair": ["a", "b"],
                                "fillers": ["c"]}]))
    with pytest.raises(LmlabError, match="needs both a {filler} and a {word} slot"):
        read_probe_sets(bad)
    bad.write_text("[{}]")
    with pytest.raises(LmlabError, match="expected a JSON list"):
        read_probe_sets(bad)


def test_cli_writes_json_and_picture(tmp_path, model, tok, capsys):
    tok.save(tmp_path / "tok.json")
    save_checkpoint(tmp_path / "gpt", 1, model, tmp_path / "tok.json")
    (tmp_path / "t.json").write_text(json.dumps(
        [{"name": s.name, "templates": s.templates, "pair": list(s.pair), "fillers": s.fillers}
         for s in SETS]))
    code = main(["bias", str(tmp_path / "gpt"), "--templates", str(tmp_path / "t.json"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"])
    stdout = capsys.readouterr().out
    assert code == 0 and "[t] he/she" in stdout and "mean" in stdout
    report = json.loads((tmp_path / "out" / "bias.json").read_text())
    assert len(report["results"]) == 2 and "not a certificate" in report["note"]
    assert (tmp_path / "out" / "bias.png").stat().st_size > 1000
