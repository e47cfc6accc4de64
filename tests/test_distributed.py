"""Training across processes with torchrun: DDP on CPU with gloo, 2 processes x 1 thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_shards, weights
from lmlab.models.weights import load_checkpoint, resolve_checkpoint
from lmlab.runs import read_metrics
from lmlab.train.loop import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="this torch build has no torch.distributed")
HERE = Path(__file__).resolve().parent
TINY = dict(preset="gpt-nano", block_size=32, lr=3e-3, warmup_steps=3, max_steps=12,
            eval_interval=6, eval_tokens=2048, threads=1, seed=7)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, lee_docs) -> Path:
    return make_shards(tmp_path_factory.mktemp("ddp"), lee_docs, "char", 512)


def torchrun(*args: str, env: dict[str, str] | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` (one thread per process)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", "2", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def pretrain_args(shards: Path, out: Path, batch_size: int, **extra: object) -> list[str]:
    cfg = {**TINY, "batch_size": batch_size, **extra}
    words = ["-m", "lmlab", "pretrain", str(shards), "--out", str(out)]
    for k, v in cfg.items():
        words += [f"--{k.replace('_', '-')}", str(v)]
    return words


def assert_same_run(one: Path, two: Path) -> None:
    """The same metrics rows, losses within 1e-5, and weights within 1e-5 (up to the order
    of floating-point sums across processes)."""
    ra, rb = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [(r["step"], r["split"]) for r in ra] == [(r["step"], r["split"]) for r in rb]
    for a, b in zip(ra, rb, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), (a, b)
    wa, wb = weights(one), weights(two)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-5)


def test_ddp_steps_as_one_process_with_the_global_batch(shards, tmp_path, capsys):
    """2 processes x batch 4 == 1 process x batch 8 over the same rows: same logged losses
    and the same weights after 12 steps (up to the order of floating-point sums)."""
    torch.set_num_threads(1)
    Trainer(TrainConfig(data=str(shards), out=str(tmp_path / "one"), batch_size=8, **TINY),
            progress=False).fit()
    result = torchrun(*pretrain_args(shards, tmp_path / "ddp", batch_size=4))
    out = result.stdout + result.stderr
    assert "global batch: 4 rows x 2 processes = 8 rows of 32 tokens per step" in out
    assert out.count("model: ") == 1  # rank 0 alone reports
    assert_same_run(tmp_path / "one", tmp_path / "ddp")
    state = json.loads((next((tmp_path / "ddp" / "checkpoints").glob("step-*"))
                        / "trainer_state.json").read_text())
    assert state["world_size"] == 2


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_killed_with_sigkill_resumes_bit_identical(shards, tmp_path, fsdp):
    cfg = {**TINY, "data": str(shards), "batch_size": 4, "checkpoint_interval": 4,
           "dropout": 0.1,  # dropout: each process's own random state must resume too
           "fsdp": fsdp}
    worker = str(HERE / "ddp_worker.py")
    torchrun(worker, json.dumps({**cfg, "out": str(tmp_path / "straight")}))
    killed = torchrun(worker, json.dumps({**cfg, "out": str(tmp_path / "broken")}), "7",
                      check=False)
    assert killed.returncode != 0
    latest = (tmp_path / "broken" / "checkpoints" / "latest").read_text().strip()
    assert latest == "step-000004"
    # A different world size is refused, naming the one to use.
    if not fsdp:  # (one process cannot take --fsdp at all)
        alone = subprocess.run([sys.executable, "-m", "lmlab", "pretrain", str(shards),
                                "--out", str(tmp_path / "broken"), "--resume",
                                *sum(([f"--{k.replace('_', '-')}", str(v)]
                                      for k, v in cfg.items() if k not in ("data", "fsdp")),
                                     [])],
                               capture_output=True, text=True)
        assert alone.returncode == 2
        assert "trained with 2" in alone.stderr
        assert "torchrun --nproc_per_node 2" in alone.stderr
    torchrun(worker, json.dumps({**cfg, "out": str(tmp_path / "broken")}),
             env={"RESUME": "1"})
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "broken")
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[(r["step"], r["loss"]) for r in read_metrics(tmp_path / run / "metrics.jsonl")]
              for run in ("straight", "broken")]
    assert losses[0] == losses[1]


def test_fsdp_matches_ddp_and_its_checkpoint_loads_in_one_process(shards, tmp_path):
    torchrun(*pretrain_args(shards, tmp_path / "ddp", batch_size=4, grad_accum=2))
    result = torchrun(*pretrain_args(shards, tmp_path / "fsdp", batch_size=4, grad_accum=2),
                      "--fsdp")
    assert "2 processes x 2 micro-batches = 16 rows" in result.stdout + result.stderr
    ddp = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    fsdp = read_metrics(tmp_path / "fsdp" / "metrics.jsonl")
    assert [r["step"] for r in ddp] == [r["step"] for r in fsdp]
    for a, b in zip(ddp, fsdp, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4), (a, b)
    # The checkpoint is whole: it loads in one process and gives DDP's logits.
    x = torch.randint(0, 100, (2, 24))
    logits = [load_checkpoint(tmp_path / run)(x) for run in ("ddp", "fsdp")]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-4)
    # ... and so does its optimizer state: the file holds every moment whole.
    from safetensors.torch import load_file

    ckpt = resolve_checkpoint(tmp_path / "fsdp")
    moments = load_file(str(ckpt / "optimizer.safetensors"))
    full = load_file(str(resolve_checkpoint(tmp_path / "ddp") / "optimizer.safetensors"))
    assert moments.keys() == full.keys()
    assert all(moments[k].shape == full[k].shape for k in full)


@pytest.mark.parametrize("argv, needle", [
    (["--fsdp"], "--fsdp shards the model across processes: launch the run with torchrun"),
    (["--device", "cuda"], "--device cuda: no CUDA GPU is available here"),
])
def test_fsdp_without_torchrun_and_a_missing_device_are_one_line(shards, tmp_path, argv,
                                                                  needle):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "lmlab", "pretrain", str(shards),
                             "--out", str(out), "--max-steps", "2", *argv],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {needle}" + result.stderr.strip()
                                                  .split(needle, 1)[1]]
    assert not out.exists()


def test_finetune_runs_under_torchrun(tmp_path, tmp_path_factory):
    """Fine-tuning under torchrun: 2 processes share each global batch, rank 0 alone
    validates, keeps the best model, scores the test split and reports."""
    from test_finetune import _train_tokenizer, polarity_path

    tok = _train_tokenizer(tmp_path_factory, "wordpiece", 800)
    out = tmp_path / "run"
    result = torchrun("-m", "lmlab", "finetune", "--task", "classify", "--train",
                      str(polarity_path()), "--encoding", "cp1252", "--model", "bert-nano",
                      "--tokenizer", str(tok), "--max-length", "32", "--batch-size", "8",
                      "--epochs", "2", "--lr", "1e-3", "--threads", "1", "--out", str(out))
    text = result.stdout + result.stderr
    assert text.count("model: BERT backbone") == 1 and "2 processes x batch 8" in text
    assert (out / "best" / "model.safetensors").is_file() and (out / "report.json").is_file()
    info = json.loads((out / "best" / "task.json").read_text())
    rows = read_metrics(out / "metrics.jsonl")
    # 2 epochs of global batches of 16 (a last batch of 1 cannot be shared: skipped).
    n_train = len((out / "splits" / "train.jsonl").read_text().splitlines())
    per_epoch = -(-n_train // 16) - (n_train % 16 == 1)
    assert max(r["step"] for r in rows) == 2 * per_epoch
    assert 0 < info["step"] <= 2 * per_epoch
    predicted = subprocess.run([sys.executable, "-m", "lmlab", "predict", str(out),
                                "--texts", "a wonderful, moving film"],
                               capture_output=True, text=True)
    assert predicted.returncode == 0, predicted.stderr


def test_seq2seq_ddp_steps_as_one_process_with_the_global_batch(tmp_path):
    """The encoder-decoder under torchrun: 2 processes with --max-tokens M step as one
    process with 2M (the same batches, each process every other pair, the loss weighed
    by the whole batch's tokens): same losses and weights (dropout off: each process
    draws its own masks)."""
    from lmlab.train.configs import Seq2SeqTrainConfig
    from lmlab.train.seq2seq import Seq2SeqTrainer
    from test_translation import _toy_data

    torch.set_num_threads(1)
    data = _toy_data(tmp_path / "data", n=300)
    common = dict(preset="seq2seq-nano", max_length=16, max_steps=6, warmup_steps=2,
                  eval_interval=6, eval_sentences=0, seed=3, threads=1, dropout=0.0)
    Seq2SeqTrainer(Seq2SeqTrainConfig(data=str(data), out=str(tmp_path / "one"),
                                      max_tokens=400, **common), progress=False).fit()
    words = ["-m", "lmlab", "seq2seq", str(data), "--out", str(tmp_path / "ddp"),
             "--max-tokens", "200"]
    for k, v in common.items():
        words += [f"--{k.replace('_', '-')}", str(v)]
    torchrun(*words)
    assert_same_run(tmp_path / "one", tmp_path / "ddp")
