"""`lmlab sweep`: the power-law fit, a tiny sweep end to end with resume, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import weights
from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.models.weights import resolve_checkpoint
from lmlab.sweep import fit_power_law, parse_size, plan_sweep
from lmlab.train.configs import SweepConfig
from lmlab.train.loop import Trainer

# Three tiny sizes, 10 steps of 4 x 16 characters each (one thread: on busy cores a
# second one waits more than it helps).
SIZES = ["1x32", "2x32", "2x64"]
TINY = ["--sizes", *SIZES, "--tokens", "640", "--block-size", "16", "--batch-size", "4",
        "--eval-interval", "5", "--eval-tokens", "256", "--warmup-steps", "2", "--threads",
        "1"]


def cli(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- the fit
N = np.geomspace(1e4, 1e7, 7)


@pytest.mark.parametrize("E, A, alpha", [(1.8, 60.0, 0.3), (3.2, 900.0, 0.55),
                                         (0.5, 12.0, 0.12)])
def test_fit_recovers_known_law_from_noisy_points(E, A, alpha):
    rng = np.random.default_rng(0)
    loss = (E + A * N ** -alpha) * (1 + 0.002 * rng.standard_normal(len(N)))
    fit = fit_power_law(N, loss)
    assert fit.ok, fit.message
    assert fit.alpha == pytest.approx(alpha, abs=0.03)
    assert abs(fit.E - E) < 0.05 * E + 0.02
    assert fit.predict(3e7) == pytest.approx(E + A * 3e7 ** -alpha, rel=0.01)
    assert fit.r2 > 0.999
    exact = fit_power_law(N, E + A * N ** -alpha)
    assert (exact.E, exact.A, exact.alpha) == pytest.approx((E, A, alpha), rel=1e-5)


def test_fit_matches_scipy_curve_fit():
    optimize = pytest.importorskip("scipy.optimize")
    loss = (2.0 + 40 * N ** -0.25) * (1 + 0.003 * np.random.default_rng(1).standard_normal(7))
    ours = fit_power_law(N, loss)
    (E, A, alpha), _ = optimize.curve_fit(lambda n, E, A, a: E + A * n ** -a, N, loss,
                                          p0=[1.0, 10.0, 0.5], maxfev=20000)
    assert (ours.E, ours.A, ours.alpha) == pytest.approx((E, A, alpha), rel=1e-3)


def test_fit_refuses_what_is_not_a_falling_power_law():
    few = fit_power_law(N[:2], [4.0, 3.0])
    assert few.status == "too_few" and "at least 3" in few.message and few.alpha is None
    rising = fit_power_law(N[:4], [3.0, 3.1, 3.3, 3.4])
    assert rising.status == "not_decreasing" and "does not fall" in rising.message
    # Falling faster and faster in log N: the best curve has alpha < 0, not a power law.
    bent = fit_power_law(N, [5.0, 4.9, 4.8, 4.5, 4.0, 3.0, 1.0])
    assert bent.status == "no_power_law" and bent.alpha <= 0 and not bent.ok


# ---------------------------------------------------------------- sizes and budgets
def test_sizes_and_budgets(char_shards, tmp_path):
    assert parse_size("3x128") == parse_size("3x128")
    s = parse_size("3x128")
    assert (s.preset, s.n_layer, s.n_head, s.n_embd) == ("gpt-nano", 3, 4, 128)
    assert parse_size("gpt-micro").n_layer is None
    base = dict(data=str(char_shards), out=str(tmp_path / "s"), block_size=16, batch_size=4)
    plans = plan_sweep(SweepConfig(**base, tokens=1000), vocab_size=512)
    assert [p.size.name for p in plans] == ["gpt-nano", "2x96", "3x128", "4x160", "4x192"]
    assert {p.steps for p in plans} == {16} and {p.tokens for p in plans} == {1024}
    assert [p.params for p in plans] == sorted(p.params for p in plans)
    # gpt-nano: 2 blocks of 12 * 64^2 weights + biases and norms; the tables are extra.
    nano = plans[0]
    assert 12 * 2 * 64 ** 2 < nano.params < 13 * 2 * 64 ** 2
    assert nano.params_total - nano.params == 512 * 64 + 16 * 64  # wte (tied) + wpe
    # A compute budget: the smaller the model, the more tokens, C = 6 N D each.
    flops = plan_sweep(SweepConfig(**base, flops=1e12, sizes=["1x32", "2x64"]), 512)
    assert flops[0].tokens > flops[1].tokens
    for p in flops:
        assert p.flops == pytest.approx(1e12, rel=64 / p.tokens)


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def swept(char_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    code = main(["sweep", str(char_shards), "--out", str(out), *TINY])
    assert code == 0
    return out


def test_sweep_writes_table_json_and_plot(swept):
    report = json.loads((swept / "sweep.json").read_text())
    rows = report["sizes"]
    assert [r["size"] for r in rows] == SIZES
    assert all(r["tokens"] == 640 and r["steps"] == 10 and r["state"] == "new" for r in rows)
    assert [r["params"] for r in rows] == sorted(r["params"] for r in rows)
    for r in rows:
        # Each size is an ordinary pretraining run, finished, scored on the whole split.
        assert resolve_checkpoint(swept / r["size"]).name == "step-000010"
        assert 0 < r["val_loss"] < np.log(512)
        assert r["val_perplexity"] == pytest.approx(np.exp(r["val_loss"]))
    fit = report["fit"]
    assert fit["status"] in ("ok", "not_decreasing", "no_power_law")
    assert fit["points"] == 3
    if fit["status"] == "ok":
        assert fit["formula"].startswith("L(N) = ") and fit["alpha"] > 0
    else:
        assert fit["message"]
    table = (swept / "sweep.md").read_text()
    for size in SIZES:
        assert f"| {size} " in table
    assert (swept / "scaling.png").stat().st_size > 10_000
    assert json.loads((swept / "sweep_config.json").read_text())["tokens"] == 640


def test_rerun_skips_finished_sizes_and_resumes_the_unfinished(swept, char_shards, capsys,
                                                                 monkeypatch):
    before = {s: weights(swept / s) for s in SIZES}
    # A fourth size dies after its first checkpoint (step 5), as a killed sweep would.
    real_step = Trainer._train_step
    calls = {"n": 0}

    def dying_step(self: Trainer) -> float:
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "_train_step", dying_step)
    args = ["sweep", str(char_shards), "--out", str(swept), *TINY[:4], "3x32", *TINY[4:]]
    assert main(args) == 130  # the CLI's exit status after Ctrl-C
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    assert resolve_checkpoint(swept / "3x32").name == "step-000005"
    assert "sweep stopped in 3x32: run the same `lmlab sweep` again" in capsys.readouterr().err

    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert sum(line.endswith("- already done") for line in out.splitlines()) == 3
    assert "resuming from" in err and "step-000005" in err
    for s in SIZES:  # untouched
        after = weights(swept / s)
        assert all(np.array_equal(before[s][k], after[k]) for k in after)
    rows = {r["size"]: r for r in json.loads((swept / "sweep.json").read_text())["sizes"]}
    assert rows["3x32"]["state"] == "resume" and rows["1x32"]["state"] == "done"
    assert resolve_checkpoint(swept / "3x32").name == "step-000010"
    assert "| 3x32 " in out and ("fit: L(N) = " in out or "no fit: " in out)

    # Another budget for the same folder would mix runs: refused, naming the setting.
    code, _, err = cli(capsys, "sweep", char_shards, "--out", swept,
                       *[("1280" if a == "640" else a) for a in TINY])
    assert code == 2 and "error: " in err and "max_steps" in err and "--overwrite" in err


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("extra, needle", [
    (["--sizes", "gpt-huge", "--tokens", "100"], "unknown size"),
    (["--sizes", "bert-mini", "--tokens", "100"], "not a GPT preset"),
    (["--sizes", "3x100", "--tokens", "100"], "multiple of 32"),
    (["--sizes", "gpt-nano", "gpt-nano", "--tokens", "100"], "more than once"),
    (["--tokens", "0"], "--tokens must be at least 1"),
    (["--flops", "0"], "--flops must be greater than 0"),
    (["--flops", "1000"], "less than one step"),
    ([], "give a budget"),
    (["--tokens", "100", "--flops", "1e12"], "not both"),
])
def test_bad_input_is_one_error_line(char_shards, tmp_path, capsys, extra, needle):
    code, _, err = cli(capsys, "sweep", char_shards, "--out", tmp_path / "s", *extra)
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith("error: ") and needle in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_foreign_folder_is_refused(char_shards, tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    cfg = SweepConfig(data=str(char_shards), out=str(tmp_path / "s"), sizes=["1x32"],
                      tokens=64, block_size=16, batch_size=4)
    from lmlab.sweep import run_sweep

    with pytest.raises(LmlabError, match="did not make"):
        run_sweep(cfg, progress=False)
    assert Path(tmp_path / "s" / "notes.txt").read_text() == "mine"


def test_report_without_a_fit_says_why_and_draws_no_curve(char_shards, tmp_path):
    from lmlab.sweep import write_report

    cfg = SweepConfig(data=str(char_shards), out=str(tmp_path), tokens=640)
    rows = [{"size": s, "n_layer": 1, "n_embd": 32, "params": n, "params_total": 2 * n,
             "tokens": 640, "flops": 6 * 2 * n * 640, "val_loss": loss,
             "val_perplexity": float(np.exp(loss)), "val_bits_per_byte": loss / np.log(2),
             "state": "new"} for s, n, loss in (("a", 1000, 4.0), ("b", 4000, 3.5))]
    fit = fit_power_law([r["params"] for r in rows], [r["val_loss"] for r in rows])
    text = write_report(tmp_path, cfg, rows, fit, {"val_tokens": 100})
    assert "no fit: 2 finished sizes" in text and "L(N) =" not in text
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert report["fit"]["status"] == "too_few" and report["fit"]["alpha"] is None
    assert (tmp_path / "scaling.png").stat().st_size > 5_000
