"""Which device a command runs on, and the bf16 autocast that follows it.

``--device auto`` (the default) is CUDA when a GPU is present, else the CPU;
``cuda``, ``cuda:N``, ``mps`` and ``cpu`` name one. A named device that is not
here is one error line, before any work.
"""

from __future__ import annotations

import contextlib

import torch

from lmlab.errors import LmlabError


def resolve_device(name: str | None = "auto", local_rank: int | None = None) -> torch.device:
    """The device ``name`` means here. Under torchrun, a bare ``cuda`` (or ``auto`` with
    GPUs) is the process's own GPU, ``cuda:LOCAL_RANK``."""
    name = name or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LmlabError(f"--device {name}: not a device; use auto, cpu, cuda (cuda:N for one "
                         "of several GPUs) or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LmlabError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        if (device.index or 0) >= torch.cuda.device_count():
            raise LmlabError(f"--device {name}: this machine has {torch.cuda.device_count()} "
                             "CUDA GPU(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise LmlabError(f"--device {name}: no Apple GPU (MPS) is available here; use "
                             "--device cpu")
    elif device.type != "cpu":
        raise LmlabError(f"--device {name}: not supported; use auto, cpu, cuda or mps")
    return device


def autocast(dtype: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``dtype == "bfloat16"``, else nothing (float32)."""
    if dtype == "bfloat16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise LmlabError(f"--dtype bfloat16: the GPU {device} has no bf16; use float32")
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
