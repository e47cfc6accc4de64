"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is a model folder (``models/weights.py``: config.json,
model.safetensors, tokenizer.json) plus the optimizer's state and the
trainer's, which resume a run exactly.

A checkpoint is a folder written under a temporary name and renamed into place
when complete; ``checkpoints/latest`` (a one-line file, replaced atomically)
then points at it. A crash at any moment leaves either the old or the new
checkpoint as "latest", never a half-written one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmlab.atomic import atomic_dir, write_text
from lmlab.models.weights import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, model_state

OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module,
                    tokenizer_json: Path | None,
                    optimizer: torch.optim.Optimizer | dict[str, Any] | None = None,
                    trainer_state: dict[str, Any] | None = None,
                    rng_tensors: dict[str, torch.Tensor] | None = None,
                    keep: int = 2,
                    carry_tensors: dict[str, torch.Tensor] | None = None,
                    model_tensors: dict[str, torch.Tensor] | None = None,
                    write_model: Callable[[Path], None] | None = None) -> Path:
    """Write ``run_dir/checkpoints/step-NNNNNN`` atomically and point ``latest`` at it.

    ``rng_tensors`` (generator states) and ``carry_tensors`` (state carried from
    step to step, e.g. a recurrent model's hidden state) are saved beside the
    optimizer's, as ``rng.*`` and ``carry.*``. A sharded model's weights and
    optimizer state come gathered: ``model_tensors`` (``model_state``'s form) and
    ``optimizer`` as a state dict.
    """
    ckpt_root = run_dir / "checkpoints"
    name = f"step-{step:06d}"
    with atomic_dir(ckpt_root / name) as tmp:
        _write_checkpoint(tmp, model, tokenizer_json, optimizer, trainer_state, rng_tensors,
                          step, carry_tensors, model_tensors, write_model)
    # Only a complete checkpoint folder can be named by "latest".
    write_text(ckpt_root / "latest", name + "\n")
    # Prune old checkpoints only after "latest" points at the new one.
    old = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return ckpt_root / name


def write_model_files(folder: Path, model: torch.nn.Module,
                      model_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """A model folder's own files: model.safetensors and config.json."""
    from lmlab.atomic import save_safetensors

    save_safetensors(model_tensors if model_tensors is not None else model_state(model),
                     folder / MODEL_FILE, metadata={"format": "pt"})
    model.config.save(folder / CONFIG_FILE)


def _write_checkpoint(tmp: Path, model: torch.nn.Module, tokenizer_json: Path | None,
                      optimizer: torch.optim.Optimizer | dict[str, Any] | None,
                      trainer_state: dict[str, Any] | None,
                      rng_tensors: dict[str, torch.Tensor] | None, step: int,
                      carry_tensors: dict[str, torch.Tensor] | None = None,
                      model_tensors: dict[str, torch.Tensor] | None = None,
                      write_model: Callable[[Path], None] | None = None) -> None:
    from lmlab.atomic import save_safetensors

    if write_model is not None:
        write_model(tmp)
    else:
        write_model_files(tmp, model, model_tensors)
    if tokenizer_json is not None:
        shutil.copyfile(tokenizer_json, tmp / TOKENIZER_FILE)
    if optimizer is not None:
        tensors, meta = _flatten_optimizer(optimizer)
        tensors.update({f"rng.{k}": v for k, v in (rng_tensors or {}).items()})
        tensors.update({f"carry.{k}": v for k, v in (carry_tensors or {}).items()})
        save_safetensors(tensors, tmp / OPTIM_FILE)
        state = dict(trainer_state or {}, step=step, optimizer=meta)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def _flatten_optimizer(optimizer: torch.optim.Optimizer | dict[str, Any]
                       ) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    groups = json.loads(json.dumps(sd["param_groups"], default=list))
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   meta: dict[str, Any]) -> None:
    """Restore ``optimizer`` from ``_flatten_optimizer``'s output.

    Raises ValueError when the saved state does not fit the optimizer's
    parameters (another model, or a damaged file), before anything is loaded.
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            i = int(pid)
            if not 0 <= i < len(params):
                raise ValueError(f"state for parameter {i}, but the model has {len(params)}")
            # Moments (exp_avg, exp_avg_sq) have their parameter's shape; the step is a scalar.
            if v.dim() > 0 and v.shape != params[i].shape:
                raise ValueError(f"{key} has shape {tuple(v.shape)}, its parameter "
                                 f"{tuple(params[i].shape)}")
            if v.dim() > 0 and hasattr(params[i], "device_mesh"):
                # A sharded (FSDP2) parameter: its moments are sharded the same way.
                from torch.distributed.tensor import distribute_tensor

                v = distribute_tensor(v.to(params[i].device), params[i].device_mesh,
                                      params[i].placements)
            state.setdefault(i, {})[name] = v
    for pid, sc in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(sc)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


