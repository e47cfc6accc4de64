"""Training across processes: torch.distributed as launched by ``torchrun``.

``torchrun --nproc_per_node N -m lmlab pretrain ...`` starts N copies of the
command with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` in their environment; ``join`` reads them and joins the
process group (gloo on CPU, NCCL on CUDA). Without them a run is one process
and nothing here does anything.

The data parallelism is DDP's: each process holds the whole model, reads its
own rows of every global batch, and the gradients are averaged across
processes before each optimizer step, so N processes with per-process batch B
step exactly as one process with batch N x B over the same rows (in
pretraining; fine-tuning shares an epoch's last, smaller batch unevenly, and
averages per-process mean losses).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from lmlab.device import resolve_device
from lmlab.errors import LmlabError


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1  # processes on this machine (torchrun's --nproc_per_node)

    @property
    def main(self) -> bool:
        """Rank 0 alone writes logs and checkpoints and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def rows(self, batch_size: int) -> slice:
        """This process's rows of a global batch of ``batch_size`` x ``size`` rows."""
        return slice(self.rank * batch_size, (self.rank + 1) * batch_size)

    def launcher(self) -> str:
        """The torchrun command line (without rendezvous flags) that starts this world."""
        nodes = max(1, self.size // max(1, self.local_size))
        per_node = f"--nproc_per_node {self.local_size if nodes > 1 else self.size}"
        return f"torchrun --nnodes {nodes} {per_node}" if nodes > 1 else f"torchrun {per_node}"

    def share(self, items: list) -> list:
        """This process's part of ``items`` (at least ``size`` of them): ``size`` contiguous
        parts whose lengths differ by at most one."""
        if self.size == 1:
            return items
        q, r = divmod(len(items), self.size)
        start = self.rank * q + min(self.rank, r)
        return items[start:start + q + (self.rank < r)]


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise LmlabError(f"${name} is not set: launch with torchrun")
        return default
    try:
        return int(value)
    except ValueError:
        raise LmlabError(f"${name}={value!r}: not a whole number") from None


def join(device_name: str | None = "auto") -> tuple[World, torch.device]:
    """This process's world and device; joins the process group when torchrun launched
    more than one process (gloo for CPU tensors, NCCL for CUDA ones)."""
    if not launched():
        return World(), resolve_device(device_name)
    world = World(_env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK", 0),
                  _env_int("LOCAL_WORLD_SIZE", _env_int("WORLD_SIZE")))
    if world.distributed:
        _check_device_for(world, device_name or "auto")
    device = resolve_device(device_name, local_rank=world.local_rank)
    if world.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Rank 0 validates (and writes) while the others wait in their next collective:
        # give a long validation time before the wait counts as a hang.
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(hours=2))
    return world, device


def _check_device_for(world: World, name: str) -> None:
    """Refuse device settings that cannot give each process its own device."""
    if name.startswith("cuda:"):
        raise LmlabError(f"--device {name}: under torchrun each process takes its own GPU "
                         "(cuda:LOCAL_RANK); use --device cuda, and CUDA_VISIBLE_DEVICES to "
                         "choose the GPUs")
    if name == "mps":
        raise LmlabError("--device mps: torch.distributed has no backend for Apple GPUs; "
                         "use --device cpu under torchrun")
    if name in ("cuda", "auto") and torch.cuda.is_available() \
            and world.local_size > torch.cuda.device_count():
        raise LmlabError(f"{world.local_size} processes on this machine but "
                         f"{torch.cuda.device_count()} CUDA GPU(s): one process per GPU "
                         "(--nproc_per_node), or --device cpu")


def leave() -> None:
    """Leave the process group (at the end of a run), if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def data_parallel(model: torch.nn.Module, device: torch.device,
                  find_unused_parameters: bool = False) -> torch.nn.Module:
    """``model`` wrapped in DDP: its gradients are averaged across the processes in
    backward (the model's own parameters stay those of ``model``)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None, find_unused_parameters=find_unused_parameters)


def mean(value: float, world: World, device: torch.device) -> float:
    """The mean of a float over all processes (itself in a single process)."""
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world.size


def any_true(flag: bool, world: World, device: torch.device) -> bool:
    """Whether ``flag`` is set in any process (so that all of them act on it together)."""
    if not world.distributed:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(tensor: torch.Tensor, world: World, device: torch.device) -> list[torch.Tensor]:
    """Every process's ``tensor`` (same shape and dtype everywhere), in rank order."""
    if not world.distributed:
        return [tensor]
    local = tensor.to(device)
    out = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


# ---------------------------------------------------------------- FSDP2
def shard(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """Shard ``model``'s parameters, gradients and optimizer state across the processes
    with FSDP2 (``fully_shard``), in place.

    Each block of the model (every element of its ``nn.ModuleList``s: a GPT's or
    BERT's layers) is a unit of its own, gathered just before it runs and freed
    after; the rest (embeddings, final norm, head) is the root unit. A model
    without such lists is one unit.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world.size,))
    for module in list(model.modules()):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) tensor gathered whole on every process, on the CPU; any other
    tensor as it is. Every process must call it for the same tensors in the same order."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu()


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict (torch's numbered form) with sharded moments gathered."""
    sd = optimizer.state_dict()
    return {"state": {pid: {k: full_tensor(v) if isinstance(v, torch.Tensor) else v
                            for k, v in st.items()} for pid, st in sd["state"].items()},
            "param_groups": sd["param_groups"]}
