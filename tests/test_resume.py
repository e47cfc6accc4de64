"""Resume that explains itself: damaged or mismatched checkpoints, Ctrl-C saving the
step it stopped at, runs that leave no folder without a checkpoint, finetune's splits."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_shards, weights
from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.models.weights import resolve_checkpoint
from lmlab.runs import read_metrics
from lmlab.tokenizer import Tokenizer
from lmlab.train import checkpoint as ckpt
from lmlab.train.finetune import FinetuneConfig, Finetuner
from lmlab.train.loop import TrainConfig, Trainer

TINY = dict(preset="gpt-nano", block_size=32, batch_size=8, lr=3e-3, warmup_steps=5,
            eval_tokens=1024, threads=1)


def _cfg(shards: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(data=str(shards), out=str(out), **dict(TINY, **kw))


@pytest.fixture(scope="module")
def run4(tmp_path_factory, char_shards) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("resume") / "run"
    Trainer(_cfg(char_shards, run, max_steps=4, eval_interval=2), progress=False).fit()
    return run


def _copy(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``run`` and the folder of its latest checkpoint."""
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst, resolve_checkpoint(dst)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ---------------------------------------------------------------- damaged checkpoints
@pytest.mark.parametrize("name, damage, message", [
    ("optimizer.safetensors", _truncate, "damaged or truncated optimizer state"),
    ("model.safetensors", _truncate, "damaged or truncated model weights"),
    ("optimizer.safetensors", Path.unlink, "missing"),
    ("trainer_state.json", Path.unlink, "missing"),
    ("trainer_state.json", lambda p: p.write_text('{"step": 4, '), "not valid JSON"),
    ("trainer_state.json", lambda p: p.write_text('{"step": 4}'), "incomplete"),
    ("config.json", lambda p: p.write_text("{oops"), "damaged"),
])
def test_a_damaged_checkpoint_names_its_file(run4, tmp_path, char_shards, name, damage,
                                             message):
    run, latest = _copy(run4, tmp_path)
    damage(latest / name)
    with pytest.raises(LmlabError) as err:
        Trainer(_cfg(char_shards, run, max_steps=6), resume=True, progress=False)
    text = str(err.value)
    assert f"{latest / name}: " in text and message in text, text
    # ... and says how to go on: the earlier checkpoint, or starting over.
    assert "step-000002" in text and "--overwrite" in text, text


def test_a_damaged_latest_pointer_is_named(run4, tmp_path, char_shards):
    run, _ = _copy(run4, tmp_path)
    (run / "checkpoints" / "latest").write_text("\n")
    with pytest.raises(LmlabError, match=r"latest: damaged"):
        Trainer(_cfg(char_shards, run, max_steps=6), resume=True, progress=False)


def test_a_truncated_optimizer_is_one_error_line_on_the_command_line(run4, tmp_path,
                                                                      char_shards, capsys):
    run, latest = _copy(run4, tmp_path)
    _truncate(latest / "optimizer.safetensors")
    code = main(["pretrain", str(char_shards), "--out", str(run), "--max-steps", "6",
                 "--preset", "gpt-nano", "--block-size", "32", "--batch-size", "8",
                 "--threads", "1", "--resume"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "SafetensorError" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "optimizer.safetensors" in lines[0], err


def test_shards_of_another_tokenizer_say_so(run4, tmp_path, lee_docs, char_shards):
    bpe = make_shards(tmp_path / "bpe", lee_docs, "bpe", 300)
    run, _ = _copy(run4, tmp_path)
    with pytest.raises(LmlabError, match="different tokenizer") as err:
        Trainer(_cfg(bpe, run, max_steps=6), resume=True, progress=False)
    v_run = Tokenizer.from_file(char_shards / "tokenizer.json").vocab_size
    v_new = Tokenizer.from_file(bpe / "tokenizer.json").vocab_size
    assert f"vocab size {v_run:,}" in str(err.value)
    assert f"vocab size {v_new:,}" in str(err.value)


def test_a_conflicting_flag_is_named(run4, tmp_path, char_shards):
    run, _ = _copy(run4, tmp_path)
    with pytest.raises(LmlabError, match="--batch-size 4.*--batch-size 8"):
        Trainer(_cfg(char_shards, run, max_steps=6, batch_size=4), resume=True,
                progress=False)
    with pytest.raises(LmlabError, match="with --n-layer 1: the run was started without --n-layer"):
        Trainer(_cfg(char_shards, run, max_steps=6, n_layer=1), resume=True, progress=False)


# ---------------------------------------------------------------- values refused up front
@pytest.mark.parametrize("kw, message", [
    (dict(max_steps=0), "--max-steps must be at least 1, got 0"),
    (dict(block_size=0), "--block-size must be at least 1, got 0"),
    (dict(batch_size=0), "--batch-size must be at least 1, got 0"),
    (dict(lr=-1.0), "--lr must be greater than 0, got -1.0"),
    (dict(dropout=2.0), "--dropout must be in [0, 1), got 2.0"),
    (dict(eval_interval=0), "--eval-interval must be at least 1, got 0"),
])
def test_out_of_range_settings_name_their_flag(kw, message):
    with pytest.raises(LmlabError) as err:
        TrainConfig(data="", out="", **kw)
    assert str(err.value) == message


def test_finetune_max_steps_zero_names_the_flag():
    with pytest.raises(LmlabError, match="--max-steps must be at least 1, got 0"):
        FinetuneConfig(task="classify", train="x", model="bert-nano", out="o", max_steps=0)
    with pytest.raises(LmlabError, match="--val-fraction"):
        FinetuneConfig(task="classify", train="x", model="bert-nano", out="o",
                       val_fraction=0.6, test_fraction=0.5)


def test_pretrain_max_steps_zero_on_the_command_line(char_shards, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", str(char_shards), "--out", str(out), "--max-steps", "0"]) == 2
    assert "--max-steps must be at least 1, got 0" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- Ctrl-C
def _ctrl_c_at(monkeypatch, cls: type, method: str, call: int) -> None:
    """Send this process a real SIGINT (Ctrl-C) during the ``call``-th call of
    ``cls.method``, once."""
    real = getattr(cls, method)
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            signal.raise_signal(signal.SIGINT)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, step)


def test_ctrl_c_saves_the_step_and_the_printed_command_resumes_exactly(
        char_shards, tmp_path, monkeypatch, capsys):
    kw = dict(max_steps=12, eval_interval=6, dropout=0.1)
    Trainer(_cfg(char_shards, tmp_path / "straight", **kw), progress=False).fit()

    run = tmp_path / "broken"
    _ctrl_c_at(monkeypatch, Trainer, "_train_step", 4)  # during step 4 (index 3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(char_shards, run, **kw), progress=False).fit()
    assert resolve_checkpoint(run).name == "step-000004"  # the step it stopped at
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("interrupted"))
    assert line.startswith(f"interrupted at step 4; saved a checkpoint to {run}. Resume with: "
                           "lmlab pretrain ")
    command = shlex.split(line.split("Resume with: ", 1)[1])
    assert command[-1] == "--resume"

    assert main(command[1:]) == 0  # the printed command, as typed
    a, b = weights(tmp_path / "straight"), weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The logged losses too (the row at step 10 averages steps 1-10 in both runs).
    rows = [[(r["step"], r["loss"]) for r in read_metrics(p / "metrics.jsonl")
             if r["split"] in ("train", "val")] for p in (tmp_path / "straight", run)]
    assert rows[0] == rows[1]


def test_ctrl_c_during_the_save_keeps_the_previous_checkpoint(char_shards, tmp_path,
                                                              monkeypatch, capsys):
    run = tmp_path / "run"
    _ctrl_c_at(monkeypatch, Trainer, "_train_step", 5)
    real_write = ckpt._write_checkpoint
    calls = {"n": 0}

    def write(tmp, *args, **kwargs):
        calls["n"] += 1
        real_write(tmp, *args, **kwargs)
        if calls["n"] == 2:  # the save of step 5: the second Ctrl-C lands at its end
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "_write_checkpoint", write)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(char_shards, run, max_steps=10, eval_interval=3), progress=False).fit()
    assert resolve_checkpoint(run).name == "step-000003"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-000003"]
    err = capsys.readouterr().err
    assert "interrupted at step 5; the last checkpoint" in err and "step 3" in err
    assert "--resume" in err


@pytest.mark.slow
def test_a_real_ctrl_c_exits_130_with_the_resume_command(char_shards, tmp_path):
    """`lmlab pretrain` in a child process, sent a real SIGINT once it has a checkpoint."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "lmlab", "pretrain", str(char_shards), "--out", str(run),
            "--preset", "gpt-nano", "--block-size", "32", "--batch-size", "8",
            "--max-steps", "100000", "--eval-interval", "20", "--eval-tokens", "512",
            "--threads", "1"]
    # Python ignores SIGINT in a child that inherited it ignored: give it the default.
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "latest").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    stopped = resolve_checkpoint(run).name
    assert stopped >= "step-000020"
    step = int(stopped.removeprefix("step-"))
    assert f"interrupted at step {step}; saved a checkpoint to {run}. Resume with: " in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- no run without a checkpoint
def _nan_cfg(shards: Path, out: Path) -> TrainConfig:
    return _cfg(shards, out, max_steps=30, eval_interval=30, lr=1e30, warmup_steps=1)


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(char_shards, tmp_path,
                                                                       monkeypatch):
    out = tmp_path / "new" / "run"
    with pytest.raises(LmlabError, match="training loss is nan"):
        Trainer(_nan_cfg(char_shards, out), progress=False).fit()
    assert not (tmp_path / "new").exists()

    def dying_step(self):
        raise KeyboardInterrupt  # a hard stop at step 0

    monkeypatch.setattr(Trainer, "_train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_cfg(char_shards, out, max_steps=4), progress=False).fit()
    assert not (tmp_path / "new").exists()


def test_a_folder_that_was_there_is_never_deleted(char_shards, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(LmlabError, match="training loss is nan"):
        Trainer(_nan_cfg(char_shards, out), progress=False).fit()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------- finetune
def _polarity() -> Path:
    from gensim.test.utils import datapath

    return Path(datapath("pang_lee_polarity.cor"))


@pytest.fixture(scope="module")
def wp_tok(tmp_path_factory) -> Path:
    texts = [line.split(" ", 1)[1] for line in
             _polarity().read_text(encoding="cp1252").splitlines()]
    tok = Tokenizer.train(texts, kind="wordpiece", vocab_size=600, show_progress=False)
    path = tmp_path_factory.mktemp("wp") / "tokenizer.json"
    tok.save(path)
    return path


def _ft_cfg(out: Path, tok: Path, **kw) -> FinetuneConfig:
    base = dict(task="classify", train=str(_polarity()), model="bert-nano", out=str(out),
                tokenizer=str(tok), encoding="cp1252", max_length=32, batch_size=32,
                epochs=1, lr=1e-3, threads=1)
    return FinetuneConfig(**dict(base, **kw))


def test_finetune_writes_its_splits_and_a_resume_checkpoint(tmp_path, wp_tok):
    from lmlab.data.tasks import read_task_file

    out = tmp_path / "ft"
    tuner = Finetuner(_ft_cfg(out, wp_tok), progress=False)
    tuner.fit()
    assert (out / "best" / "model.safetensors").exists()
    for name in ("train", "val", "test"):
        back = read_task_file(out / "splits" / f"{name}.jsonl", "classify")
        assert back == tuner.splits[name], name
    # One resume checkpoint: the last validation's.
    assert resolve_checkpoint(out).name == f"step-{tuner.total_steps:06d}"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest", f"step-{tuner.total_steps:06d}"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_finetune_stopped_before_its_first_checkpoint_leaves_no_folder(tmp_path, wp_tok,
                                                                      monkeypatch):
    out = tmp_path / "ft"

    def dying_step(self, step):
        raise KeyboardInterrupt

    monkeypatch.setattr(Finetuner, "train_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        Finetuner(_ft_cfg(out, wp_tok), progress=False).fit()
    assert not out.exists()


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_finetune_ctrl_c_keeps_the_best_model_and_the_printed_command_resumes_exactly(
        tmp_path, wp_tok, monkeypatch, capsys):
    # Dropout on, an epoch of 5 steps and validation every 3: Ctrl-C lands mid-epoch,
    # between validations, so resume must find the place in the epoch's batch order.
    kw = dict(epochs=2, batch_size=32, eval_interval=3, head_dropout=0.2)
    straight = Finetuner(_ft_cfg(tmp_path / "straight", wp_tok, **kw), progress=False)
    straight.fit()

    out = tmp_path / "ft"
    _ctrl_c_at(monkeypatch, Finetuner, "train_step", 7)  # during step 7 (epoch 2)
    with pytest.raises(KeyboardInterrupt):
        Finetuner(_ft_cfg(out, wp_tok, **kw), progress=False).fit()
    monkeypatch.undo()
    assert (out / "best" / "task.json").exists()
    assert (out / "splits" / "test.jsonl").exists()
    assert resolve_checkpoint(out).name == "step-000007"
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("interrupted"))
    assert line.startswith(f"interrupted at step 7; saved a checkpoint to {out}. The best "
                           "model so far (val macro_f1 ")
    assert str(out / "best") in line
    command = shlex.split(line.split("Resume with: ", 1)[1])
    assert command[:2] == ["lmlab", "finetune"] and command[-1] == "--resume"
    assert "--head-dropout" in command and "--eval-interval" in command

    assert main(command[1:]) == 0  # the printed command, as typed: trains, then tests
    for name in ("best", f"checkpoints/step-{straight.total_steps:06d}"):
        a, b = _tensors(tmp_path / "straight" / name), _tensors(out / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    rows = [[(r["step"], r["split"], r.get("loss")) for r in read_metrics(p / "metrics.jsonl")]
            for p in (tmp_path / "straight", out)]
    assert rows[0] == rows[1]
    assert (out / "report.json").exists()


def test_finetune_resume_refuses_other_data_and_needs_a_checkpoint(tmp_path, wp_tok, capsys):
    out = tmp_path / "ft"
    Finetuner(_ft_cfg(out, wp_tok, max_steps=2), progress=False).fit()
    with pytest.raises(LmlabError, match=r"already holds a run; pass --resume"):
        Finetuner(_ft_cfg(out, wp_tok, max_steps=2), progress=False)
    with pytest.raises(LmlabError, match=r"cannot resume with --max-length 16: the run was "
                                         r"started with --max-length 32"):
        Finetuner(_ft_cfg(out, wp_tok, max_length=16), progress=False, resume=True)
    with pytest.raises(LmlabError, match="nothing to resume"):
        Finetuner(_ft_cfg(tmp_path / "new", wp_tok), progress=False, resume=True)
    assert not (tmp_path / "new").exists()
