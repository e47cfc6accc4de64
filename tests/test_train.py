"""The training loop: loss falls, exact resume, atomic checkpoints, NaN detection."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import interrupt_and_resume, weights
from lmlab.errors import LmlabError
from lmlab.models.weights import load_checkpoint, resolve_checkpoint
from lmlab.runs import read_metrics
from lmlab.train.loop import TrainConfig, Trainer, lr_at

TINY = dict(preset="gpt-nano", block_size=32, batch_size=8, lr=3e-3, warmup_steps=5,
            eval_tokens=2048, threads=2)


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(data="", out="", lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)


@pytest.mark.parametrize("max_norm", [0.05, 1e4])  # clipped, and not
def test_clipping_inside_the_fused_step_is_clip_grad_norm_then_step(max_norm):
    """``clip_and_step`` (the fused AdamW divides the gradients by the clipping's factor in
    its own pass) against ``clip_grad_norm_`` then ``step``: the same norm and the same
    parameters over three steps; the optimizer keeps no ``grad_scale`` afterwards, and
    a non-fused optimizer and bf16 weights take the plain way."""
    from lmlab.train.engine import clip_and_step, make_optimizer

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16),
                                  torch.nn.Linear(16, 4)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused, plain = (make_optimizer(m, 1e-2, 0.1, (0.9, 0.98)) for m in models)
    scales, step = [], fused.step  # the scale each step saw: clipped in the fused pass

    def spy():
        scales.append(getattr(fused, "grad_scale", None))
        step()

    fused.step = spy
    x = torch.randn(32, 8)
    for _ in range(3):
        for m in models:
            m(x).pow(2).sum().backward()
        got = clip_and_step(fused, models[0].parameters(), max_norm)
        want = torch.nn.utils.clip_grad_norm_(models[1].parameters(), max_norm)
        plain.step()
        assert got == pytest.approx(float(want), rel=1e-6)
        assert (got > max_norm) == (max_norm < 1)
        for opt in (fused, plain):
            opt.zero_grad(set_to_none=True)
    assert not hasattr(fused, "grad_scale")
    assert all((s is not None) == (max_norm < 1) for s in scales) and len(scales) == 3
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    unfused = torch.optim.SGD(models[0].parameters(), lr=0.1)
    models[0](x).pow(2).sum().backward()
    grads = [p.grad.clone() for p in models[0].parameters()]
    norm = clip_and_step(unfused, models[0].parameters(), 0.05)
    assert norm == pytest.approx(float(torch.nn.utils.get_total_norm(grads)), rel=1e-6)
    assert torch.nn.utils.get_total_norm(
        [p.grad for p in models[0].parameters()]) == pytest.approx(0.05, rel=1e-4)
    half = torch.nn.Linear(8, 4).to(torch.bfloat16)  # the fused kernel takes no scale here
    opt = make_optimizer(half, 1e-2, 0.1, (0.9, 0.98))
    half(x.bfloat16()).float().pow(2).sum().backward()
    assert clip_and_step(opt, half.parameters(), 0.05) > 0.05
    # the gradients clipped in place, the plain way (at bf16's precision)
    assert float(torch.nn.utils.get_total_norm([p.grad.float() for p in half.parameters()])
                 ) == pytest.approx(0.05, rel=2e-2)


def test_thirty_steps_loss_falls_and_run_folder_is_complete(char_shards, tmp_path):
    run = tmp_path / "run"
    cfg = TrainConfig(data=str(char_shards), out=str(run), max_steps=30, eval_interval=15, **TINY)
    result = Trainer(cfg, progress=False).fit()
    rows = read_metrics(run / "metrics.jsonl")
    train = [r["loss"] for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert train[-1] < train[0] - 0.5, train
    assert math.log(512) > val[-1]["loss"]  # better than uniform over the vocabulary
    assert val[-1]["bits_per_byte"] == pytest.approx(
        val[-1]["loss"] / math.log(2) * val[-1]["tokens"] / val[-1]["bytes"])
    assert (run / "loss.png").stat().st_size > 1000
    assert any((run / "tb").iterdir())
    ckpt = Path(result["checkpoint"])
    assert ckpt.name == "step-000030"
    for f in ("model.safetensors", "config.json", "tokenizer.json", "optimizer.safetensors",
              "trainer_state.json"):
        assert (ckpt / f).exists(), f
    model = load_checkpoint(run)
    assert model.config.block_size == 32


def test_interrupted_then_resumed_equals_uninterrupted(char_shards, tmp_path, monkeypatch):
    """Stop a run after step 13 (last checkpoint: 10), resume, compare bit for bit."""
    common = dict(data=str(char_shards), max_steps=20, eval_interval=10, checkpoint_interval=5,
                  dropout=0.1, **TINY)
    assert interrupt_and_resume(common, tmp_path, 14, monkeypatch) == "step-000010"

    a, b = weights(tmp_path / "straight"), weights(tmp_path / "broken")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in read_metrics(tmp_path / "broken" / "metrics.jsonl")
             if r["split"] == "train"]
    assert steps == sorted(set(steps))  # no duplicated rows from the dead run's future


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(char_shards, tmp_path):
    """A real SIGKILL of `lmlab pretrain` mid-run, then --resume."""
    args = [sys.executable, "-m", "lmlab", "pretrain", str(char_shards), "--preset", "gpt-nano",
            "--block-size", "32", "--batch-size", "8", "--max-steps", "60",
            "--eval-interval", "20", "--checkpoint-interval", "5", "--eval-tokens", "1024",
            "--threads", "1", "--dropout", "0.1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run([*args, "--out", str(tmp_path / "straight")], check=True, env=env,
                   capture_output=True)
    broken = tmp_path / "broken"
    proc = subprocess.Popen([*args, "--out", str(broken)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        latest = broken / "checkpoints" / "latest"
        if latest.exists() and latest.read_text().strip() >= "step-000020":
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = resolve_checkpoint(broken).name
    assert stopped_at < "step-000060", "the run finished before it could be killed"
    subprocess.run([*args, "--out", str(broken), "--resume"], check=True, env=env,
                   capture_output=True)
    a, b = weights(tmp_path / "straight"), weights(broken)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_with_another_config_is_refused(char_shards, tmp_path):
    run = tmp_path / "run"
    Trainer(TrainConfig(data=str(char_shards), out=str(run), max_steps=2, eval_interval=2,
                        **TINY), progress=False).fit()
    other = dict(TINY, batch_size=4)
    with pytest.raises(LmlabError, match="batch_size"):
        Trainer(TrainConfig(data=str(char_shards), out=str(run), max_steps=4, **other),
                resume=True, progress=False)


def test_a_run_folder_is_never_mixed_with_another_run(char_shards, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(LmlabError, match="nothing to resume"):
        Trainer(TrainConfig(data=str(char_shards), out=str(run), **TINY), resume=True)
    Trainer(TrainConfig(data=str(char_shards), out=str(run), max_steps=4, eval_interval=2,
                        **TINY), progress=False).fit()
    with pytest.raises(LmlabError, match="already holds a run"):
        Trainer(TrainConfig(data=str(char_shards), out=str(run), max_steps=2, **TINY))
    Trainer(TrainConfig(data=str(char_shards), out=str(run), max_steps=2, eval_interval=2,
                        **TINY), overwrite=True, progress=False).fit()
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000002"]


def test_nan_loss_is_reported_with_its_step(char_shards, tmp_path):
    cfg = TrainConfig(data=str(char_shards), out=str(tmp_path / "run"), max_steps=50,
                      eval_interval=50, **dict(TINY, lr=1e30, warmup_steps=1))
    with pytest.raises(LmlabError, match=r"step \d+: training loss is nan"):
        Trainer(cfg, progress=False).fit()


def test_llama_style_and_grad_accumulation_train(char_shards, tmp_path):
    """The Llama-style config trains through the same loop, with accumulation."""
    cfg = TrainConfig(data=str(char_shards), out=str(tmp_path / "llama"), max_steps=20,
                      eval_interval=20, grad_accum=2, **dict(TINY, preset="llama-nano"))
    Trainer(cfg, progress=False).fit()
    rows = read_metrics(tmp_path / "llama" / "metrics.jsonl")
    train = [r["loss"] for r in rows if r["split"] == "train"]
    assert train[-1] < train[0]
    model = load_checkpoint(tmp_path / "llama")
    assert model.config.norm == "rmsnorm" and model.config.n_kv_head == 2
