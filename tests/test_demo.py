"""`lmlab demo` end to end on the built-in corpus, with a handful of steps."""

from __future__ import annotations

from lmlab.demo import run_demo


def test_demo_runs_the_whole_pipeline(tmp_path, capsys):
    result = run_demo(tmp_path / "demo", steps=8, preset="gpt-nano", vocab_size=512)
    out = capsys.readouterr().out
    for step in range(1, 7):
        assert f"[{step}/6]" in out
    assert "unigram (add-one)" in out and "GPT gpt-nano" in out
    assert len(result["samples"]) == 3
    assert 1 < result["val_ppl"] < 1000 and result["val_bpb"] > 0
    assert (tmp_path / "demo" / "gpt" / "loss.png").exists()
    assert (tmp_path / "demo" / "corpus" / "train.jsonl").exists()
