"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is a folder written under a temporary name and renamed into place
when complete; ``checkpoints/latest`` (a one-line file, replaced atomically)
then points at it. A crash at any moment leaves either the old or the new
checkpoint as "latest", never a half-written one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from lmlab.atomic import atomic_dir, write_text
from lmlab.config import BertConfig, GPTConfig, RNNConfig, load_config
from lmlab.errors import LmlabError
from lmlab.models.gpt import GPT

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict to save: a tied lm_head is stored once (as wte), like GPT-2."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_embeddings", False):
        sd.pop("lm_head.weight", None)
    return sd


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module,
                    tokenizer_json: Path | None,
                    optimizer: torch.optim.Optimizer | None = None,
                    trainer_state: dict[str, Any] | None = None,
                    rng_tensors: dict[str, torch.Tensor] | None = None,
                    keep: int = 2,
                    carry_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``run_dir/checkpoints/step-NNNNNN`` atomically and point ``latest`` at it.

    ``rng_tensors`` (generator states) and ``carry_tensors`` (state carried from
    step to step, e.g. a recurrent model's hidden state) are saved beside the
    optimizer's, as ``rng.*`` and ``carry.*``.
    """
    ckpt_root = run_dir / "checkpoints"
    name = f"step-{step:06d}"
    with atomic_dir(ckpt_root / name) as tmp:
        _write_checkpoint(tmp, model, tokenizer_json, optimizer, trainer_state, rng_tensors,
                          step, carry_tensors)
    # Only a complete checkpoint folder can be named by "latest".
    write_text(ckpt_root / "latest", name + "\n")
    # Prune old checkpoints only after "latest" points at the new one.
    old = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and p.name != name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return ckpt_root / name


def _write_checkpoint(tmp: Path, model: torch.nn.Module, tokenizer_json: Path | None,
                      optimizer: torch.optim.Optimizer | None,
                      trainer_state: dict[str, Any] | None,
                      rng_tensors: dict[str, torch.Tensor] | None, step: int,
                      carry_tensors: dict[str, torch.Tensor] | None = None) -> None:
    from lmlab.atomic import save_safetensors

    save_safetensors(model_state(model), tmp / MODEL_FILE, metadata={"format": "pt"})
    model.config.save(tmp / CONFIG_FILE)
    if tokenizer_json is not None:
        shutil.copyfile(tokenizer_json, tmp / TOKENIZER_FILE)
    if optimizer is not None:
        tensors, meta = _flatten_optimizer(optimizer)
        tensors.update({f"rng.{k}": v for k, v in (rng_tensors or {}).items()})
        tensors.update({f"carry.{k}": v for k, v in (carry_tensors or {}).items()})
        save_safetensors(tensors, tmp / OPTIM_FILE)
        state = dict(trainer_state or {}, step=step, optimizer=meta)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
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
            state.setdefault(i, {})[name] = v
    for pid, sc in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(sc)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder from a run folder, a checkpoints/ folder or the folder itself."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"{path}: no such checkpoint or run folder")
    if (path / MODEL_FILE).exists():
        return path
    for root in (path / "checkpoints", path):
        latest = root / "latest"
        if latest.exists():
            try:
                name = latest.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise LmlabError(f"{latest}: unreadable ({e})") from None
            if not name or "/" in name or name.startswith("."):
                raise LmlabError(f"{latest}: damaged (it should name a checkpoint folder, "
                                 f"such as step-000100, in {root})")
            ckpt = root / name
            if (ckpt / MODEL_FILE).exists():
                return ckpt
            raise LmlabError(f"{latest}: points at {name}, which has no {MODEL_FILE}")
    raise LmlabError(f"{path}: not a checkpoint (no {MODEL_FILE}) nor a run folder "
                     "(no checkpoints/latest)")


def read_tensors(path: Path, device: str = "cpu",
                 what: str = "safetensors file") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing, truncated or damaged file is an
    LmlabError naming it (``what`` says what it should hold)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise LmlabError(f"{path}: missing (the {what})")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise LmlabError(f"{path}: damaged or truncated {what} ({e})") from None


def load_model(path: Path, device: str = "cpu",
               dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Build the model from config.json and load model.safetensors, checking every key.

    A GPT for a decoder's config; for an encoder's, a ``BertForPreTraining``
    when the weights include the masked-LM head, else the bare ``Bert``; a
    feed-forward or recurrent LM (``models/rnn.py``) for a classic one's.
    """
    ckpt = resolve_checkpoint(path)
    if not (ckpt / CONFIG_FILE).exists():
        raise LmlabError(f"{ckpt}: missing {CONFIG_FILE}")
    config = load_config(ckpt / CONFIG_FILE)
    sd = read_tensors(ckpt / MODEL_FILE, device=device)
    model = build_model(config, sd, ckpt / MODEL_FILE).to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def build_model(config: GPTConfig | BertConfig | RNNConfig, sd: dict[str, torch.Tensor],
                source: Path) -> torch.nn.Module:
    """A model for ``config`` holding the weights ``sd`` (no random init, no copy).

    A tied config ignores any ``lm_head.weight`` in ``sd`` (it is the input
    embedding); every other key must match, or the error names ``source``.
    An encoder's weights (``bert.*`` keys, from ``interop.hf_bert``) give a
    ``BertForPreTraining`` when they hold the masked-LM head, else a ``Bert``.
    """
    if isinstance(config, BertConfig):
        from lmlab.models.bert import Bert, BertForPreTraining

        with torch.device("meta"):
            if "mlm.bias" in sd:
                model = BertForPreTraining(config, nsp="nsp.weight" in sd)
            else:
                model = Bert(config)
                sd = {k.removeprefix("bert."): v for k, v in sd.items()}
        load_weights(model, sd, source)
        return model.eval()
    if config.tie_embeddings:
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    with torch.device("meta"):
        if isinstance(config, RNNConfig):
            from lmlab.models.rnn import build_lm

            model = build_lm(config)
        else:
            model = GPT(config)
    load_weights(model, sd, source)
    return model.eval()


def load_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``sd`` into ``model`` (possibly on meta), failing clearly on any mismatch."""
    expected = model_state(model)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        raise LmlabError(f"{source}: weights do not match config.json: {'; '.join(parts)}")
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise LmlabError(f"{source}: tensor {k} has shape {tuple(sd[k].shape)} but "
                             f"config.json implies {tuple(v.shape)}")
    tied = _tied_embedding_key(model)
    if tied:
        sd = dict(sd, **{"lm_head.weight": sd[tied]})
    # assign=True swaps in the loaded tensors (no copy, needed on meta); a model
    # with real weights is copied into instead, so optimizers keep their params.
    model.load_state_dict(sd, strict=True, assign=next(model.parameters()).is_meta)
    if tied:
        model.lm_head.weight = model.get_parameter(tied)
    # Buffers that are not saved (RoPE tables) were built on meta: rebuild them.
    if getattr(model.config, "pos", None) == "rope":
        from lmlab.models.gpt import rope_cache

        cos, sin = rope_cache(model.config)
        model.rope_cos, model.rope_sin = cos, sin


def _tied_embedding_key(model: torch.nn.Module) -> str | None:
    """The key of the input embedding a tied ``lm_head`` shares (``transformer.wte.weight``
    for a GPT, ``encoder.wte.weight`` for a recurrent LM), or None when untied."""
    if not getattr(model.config, "tie_embeddings", False):
        return None
    head = model.lm_head.weight
    return next(k for k, v in model.state_dict(keep_vars=True).items()
                if v is head and k != "lm_head.weight")
