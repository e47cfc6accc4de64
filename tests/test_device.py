"""--device: auto picks CUDA when present; a device that is not here is one clear error.
The GPU test runs where CUDA is present and is skipped elsewhere."""

from __future__ import annotations

import pytest
import torch

from lmlab.device import autocast, resolve_device
from lmlab.errors import LmlabError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def test_auto_is_cuda_when_present_else_cpu():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device(None).type == want
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name, needle", [
    ("tpu", "--device tpu: not a device"),
    ("cuda:x", "--device cuda:x: not a device"),
    ("meta", "--device meta: not supported"),
])
def test_a_device_that_is_not_one_is_refused(name, needle):
    with pytest.raises(LmlabError, match=needle):
        resolve_device(name)


def test_an_absent_gpu_is_refused():
    if not torch.cuda.is_available():
        with pytest.raises(LmlabError, match="no CUDA GPU is available here"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(LmlabError, match="no Apple GPU"):
            resolve_device("mps")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n:
        with pytest.raises(LmlabError, match=f"has {n} CUDA GPU"):
            resolve_device(f"cuda:{n}")


def test_bf16_autocast_follows_the_device():
    with autocast("bfloat16", torch.device("cpu")):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16
    with autocast("float32", torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@cuda
def test_pretrain_resume_and_generate_on_cuda(char_shards, tmp_path):
    from lmlab.generate import generate_text
    from lmlab.loading import load_for_inference
    from lmlab.train.loop import TrainConfig, Trainer

    cfg = dict(data=str(char_shards), out=str(tmp_path / "run"), preset="gpt-nano",
               block_size=32, batch_size=4, max_steps=6, eval_interval=3, device="cuda",
               dtype="bfloat16")
    trainer = Trainer(TrainConfig(**cfg), progress=False)
    assert next(trainer.model.parameters()).is_cuda
    first = trainer.fit()
    assert first["val"]["loss"] > 0
    Trainer(TrainConfig(**dict(cfg, max_steps=8)), resume=True, progress=False).fit()
    loaded = load_for_inference(tmp_path / "run", device="cuda")
    assert next(loaded.model.parameters()).is_cuda
    out = generate_text(loaded.model, loaded.tokenizer, "The", max_new_tokens=5)[0]
    assert out.tokens >= 1


def test_out_of_gpu_memory_is_one_error_line(monkeypatch, capsys):
    from lmlab import commands
    from lmlab.cli import main

    def demo() -> None:
        """Run out of GPU memory."""
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(commands.COMMANDS, "demo", demo)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: out of GPU memory; try a smaller --batch-size or --max-length, "
                   "--dtype bfloat16, or a smaller model"]


def test_torchrun_device_settings_that_cannot_work_are_refused():
    from lmlab.train.distributed import World, _check_device_for

    world = World(rank=0, size=2, local_rank=0, local_size=2)
    with pytest.raises(LmlabError, match="each process takes its own GPU"):
        _check_device_for(world, "cuda:1")
    with pytest.raises(LmlabError, match="no backend for Apple GPUs"):
        _check_device_for(world, "mps")
    _check_device_for(world, "cpu")
    assert World(size=2, local_size=2).launcher() == "torchrun --nproc_per_node 2"
    assert World(size=16, local_size=8).launcher() == "torchrun --nnodes 2 --nproc_per_node 8"
