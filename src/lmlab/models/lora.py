"""LoRA adapters (Hu et al. 2021): a trainable low-rank update beside each frozen Linear.

A Linear y = W x + b becomes y = W x + b + (alpha / r) B A dropout(x), with A (r, in)
and B (out, r). B starts at zero, so a fresh adapter changes nothing; A starts as
PEFT starts it (Kaiming-uniform, a = sqrt(5)), so that a run here and a run with
``peft`` begin from the same distribution. Only A and B train; the base stays frozen
(and may be int8: the adapter reads the same input, in float).

Sites. An adapter is named by the module it updates in the Hugging Face export of
the model (``model.layers.0.self_attn.q_proj``), and its target by that module's
leaf name (``q_proj``), so that the saved adapter is PEFT's own layout and
``--lora-targets`` reads as PEFT's ``target_modules``. lmlab fuses some of those
modules: a Llama-shaped GPT's ``c_attn`` holds q, k and v, BERT's ``qkv`` holds
query, key and value. A fused Linear gets one adapter per part, each updating its
rows of the output, which is exactly what PEFT does on the separate modules (and a
GPT-2-shaped ``c_attn``, fused in HF too, gets one adapter, as PEFT gives it).

Files (PEFT's layout): ``adapter_config.json`` (peft_type LORA, r, lora_alpha,
lora_dropout, target_modules, ...) and ``adapter_model.safetensors`` with keys
``base_model.model.<HF module>.lora_A.weight`` (r, in) and ``.lora_B.weight``
(out, r). ``peft.PeftModel.from_pretrained`` loads them on lmlab's HF export.

Merging folds (alpha / r) B A into W's rows; the model is then a plain one again.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlab.errors import LmlabError
from lmlab.models.weights import ADAPTER_FILE

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ADAPTER_FILE
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every Linear but the output layer


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = (ALL_LINEAR,)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class Site:
    """One adapter's place: rows ``start:start+size`` of the output of lmlab's Linear
    ``path``, which are the HF module ``hf`` (leaf name ``role``)."""

    path: str
    role: str
    hf: str
    start: int
    size: int


# ---------------------------------------------------------------- where adapters go
def _gpt_parts(config: Any, path: str) -> list[tuple[str, str]] | None:
    """(role, HF module) for each part of a GPT Linear, by output order; None if the
    Linear has no HF twin an adapter can name."""
    if path == "lm_head":
        return [("lm_head", "lm_head")]
    m = re.fullmatch(r"transformer\.h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc2?|mlp\.c_proj)",
                     path)
    if m is None:
        return None
    i, name = m.groups()
    if config.norm == "layernorm":  # GPT-2: the HF module has lmlab's name
        return [(name.rsplit(".", 1)[1], path)]
    prefix = f"model.layers.{i}."
    if name == "attn.c_attn":
        return [(f"{p}_proj", f"{prefix}self_attn.{p}_proj") for p in "qkv"]
    hf = {"attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "mlp.gate_proj",
          "mlp.c_fc2": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}[name]
    return [(hf.rsplit(".", 1)[1], prefix + hf)]


def _gpt_sizes(config: Any, path: str) -> list[int]:
    hs = config.head_dim
    if path.endswith("attn.c_attn") and config.norm != "layernorm":
        return [config.n_head * hs, config.n_kv_head * hs, config.n_kv_head * hs]
    return []


def _bert_parts(config: Any, path: str) -> list[tuple[str, str]] | None:
    # The bare encoder (``layers.0...``) or inside a pretraining / task model.
    m = re.fullmatch(r"(?:\w+\.)?layers\.(\d+)\.(attn\.qkv|attn\.proj|fc|proj)", path)
    if m is None:
        return [("dense", "pooler.dense")] if re.fullmatch(r"(?:\w+\.)?pooler", path) else None
    i, name = m.groups()
    prefix = f"encoder.layer.{i}."
    if name == "attn.qkv":
        return [(p, f"{prefix}attention.self.{p}") for p in ("query", "key", "value")]
    hf = {"attn.proj": "attention.output.dense", "fc": "intermediate.dense",
          "proj": "output.dense"}[name]
    return [("dense", prefix + hf)]


def _seq2seq_parts(config: Any, path: str) -> list[tuple[str, str]] | None:
    # lmlab's names are Marian's and BART's without their ``model.`` prefix.
    if path == "lm_head":
        return [("lm_head", "lm_head")]
    leaf = r"(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
    if re.fullmatch(r"(encoder|decoder)\.layers\.\d+\.(\w+\.)?" + leaf, path) is None:
        return None
    return [(path.rsplit(".", 1)[1], "model." + path)]


_PARTS = {"gpt": _gpt_parts, "bert": _bert_parts, "seq2seq": _seq2seq_parts}
TASK_TYPES = {"gpt": "CAUSAL_LM", "bert": "FEATURE_EXTRACTION", "seq2seq": "SEQ_2_SEQ_LM"}


def _family(model: nn.Module) -> str:
    from lmlab.models.registry import family_of

    name = family_of(model.config).name
    if name not in _PARTS:
        raise LmlabError(f"LoRA adapters fit Transformer models (GPT, Llama, BERT, the "
                         f"encoder-decoder), not a {name} model")
    return name


def sites(model: nn.Module) -> list[Site]:
    """Every place of ``model`` an adapter can go, in module order."""
    family = _family(model)
    config = model.config
    out = []
    for path, module in model.named_modules():
        if isinstance(module, LoraLinear):
            module = module.base
        elif path.endswith(".base") and isinstance(model.get_submodule(path[:-5]), LoraLinear):
            continue
        if not hasattr(module, "in_features"):
            continue
        parts = _PARTS[family](config, path)
        if parts is None:
            continue
        sizes = (_gpt_sizes(config, path) if family == "gpt" else []) or \
            ([module.out_features // len(parts)] * len(parts))
        start = 0
        for (role, hf), size in zip(parts, sizes, strict=True):
            out.append(Site(path, role, hf, start, size))
            start += size
    return out


def chosen_sites(model: nn.Module, targets: Iterable[str]) -> list[Site]:
    """The sites named by ``targets`` (HF leaf names, or ``all-linear``: all but the
    output layer); an unknown name is an error listing the ones this model has."""
    targets = tuple(targets)
    every = sites(model)
    roles = sorted({s.role for s in every})
    if ALL_LINEAR in targets:
        return [s for s in every if s.role != "lm_head"]
    unknown = [t for t in targets if t not in roles]
    if unknown:
        raise LmlabError(f"--lora-targets {','.join(unknown)}: this model has no such "
                         f"module; choose from {', '.join(roles)} or {ALL_LINEAR}")
    return [s for s in every if s.role in targets]


# ---------------------------------------------------------------- the layer
class LoraLinear(nn.Module):
    """A frozen Linear (or int8 Linear) with low-rank updates on parts of its output."""

    def __init__(self, base: nn.Module, parts: list[Site], cfg: LoraConfig) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.scaling = cfg.scaling
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.parts = sorted(parts, key=lambda s: s.start)
        weight = next(base.parameters(), None)
        device = weight.device if weight is not None else None
        for s in self.parts:
            a = nn.Linear(self.in_features, cfg.rank, bias=False, device=device)
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            b = nn.Linear(cfg.rank, s.size, bias=False, device=device)
            nn.init.zeros_(b.weight)
            self.lora_A[s.role], self.lora_B[s.role] = a, b
        # The output cut into runs of rows: (size, role or None for rows left alone).
        self.runs: list[tuple[int, str | None]] = []
        at = 0
        for s in self.parts:
            if s.start > at:
                self.runs.append((s.start - at, None))
            self.runs.append((s.size, s.role))
            at = s.start + s.size
        if at < self.out_features:
            self.runs.append((self.out_features - at, None))

    @property
    def weight(self) -> torch.Tensor:  # for code that reads a Linear's weight (tied heads)
        return self.base.weight

    def update_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A (k r, in): the parts' A stacked; B (out, k r): their B block-diagonal, with
        zero rows where an output run has no adapter. One pair of matmuls then updates
        every part (q, k and v of a fused projection) at once."""
        roles = [s.role for s in self.parts]
        A = (self.lora_A[roles[0]].weight if len(roles) == 1
             else torch.cat([self.lora_A[r].weight for r in roles]))
        if len(self.runs) == 1:
            return A, self.lora_B[roles[0]].weight
        blocks = [self.lora_B[role].weight if role is not None else A.new_zeros(size, 0)
                  for size, role in self.runs]
        return A, torch.block_diag(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out)
        A, B = self.update_weights()
        # The scale goes on the rank-r activations, the smaller tensor.
        a = F.linear(self.drop(x).to(A.dtype), A) * self.scaling  # (..., k r)
        if not a.dtype == y.dtype == B.dtype:  # bf16 autocast, or an int8 base's output
            return y + F.linear(a, B.to(a.dtype)).to(y.dtype)
        # Added into the base's output in place (its backward does not need it): one pass
        # over the largest tensor, and no second one allocated.
        return y.view(-1, y.size(-1)).addmm_(a.view(-1, a.size(-1)), B.t()).view(y.shape)

    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / r) B A, row block by row block."""
        w = self.base.weight.detach().clone()
        for s in self.parts:
            update = self.lora_B[s.role].weight @ self.lora_A[s.role].weight  # (size, in)
            w[s.start:s.start + s.size] += (update * self.scaling).to(w.dtype)
        return w


def add_lora(model: nn.Module, cfg: LoraConfig) -> list[Site]:
    """Freeze ``model`` and put fresh adapters at the sites ``cfg.targets`` names;
    returns those sites. Only the adapters' A and B require gradients afterwards."""
    chosen = chosen_sites(model, cfg.targets)
    if not chosen:
        raise LmlabError("no module to adapt")
    _install(model, chosen, cfg)
    return chosen


def _install(model: nn.Module, chosen: list[Site], cfg: LoraConfig) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    by_path: dict[str, list[Site]] = {}
    for s in chosen:
        by_path.setdefault(s.path, []).append(s)
    for path, parts in by_path.items():
        parent_name, _, leaf = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        current = getattr(parent, leaf)
        if isinstance(current, LoraLinear):
            raise LmlabError(f"{path} already has an adapter")
        setattr(parent, leaf, LoraLinear(current, parts, cfg))


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights in PEFT's names (``base_model.model.<hf>.lora_A.weight``)."""
    out = {}
    for layer in lora_layers(model).values():
        for s in layer.parts:
            key = f"base_model.model.{s.hf}"
            out[f"{key}.lora_A.weight"] = layer.lora_A[s.role].weight.detach().float().contiguous()
            out[f"{key}.lora_B.weight"] = layer.lora_B[s.role].weight.detach().float().contiguous()
    return out


def adapter_config(model: nn.Module, cfg: LoraConfig, base: str | None) -> dict[str, Any]:
    """adapter_config.json as PEFT writes it (the fields it reads back)."""
    family = _family(model)
    roles = sorted({s.role for layer in lora_layers(model).values() for s in layer.parts})
    return {
        "peft_type": "LORA", "task_type": TASK_TYPES[family],
        "base_model_name_or_path": base, "r": cfg.rank, "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout, "target_modules": roles, "bias": "none",
        # GPT-2's HF modules are Conv1D (weights stored transposed): PEFT must know to merge.
        "fan_in_fan_out": family == "gpt" and model.config.norm == "layernorm",
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
        "layers_to_transform": None, "layers_pattern": None, "revision": None,
    }


def save_adapter(model: nn.Module, folder: Path, cfg: LoraConfig, base: str | None) -> None:
    """Write the adapter (only) into ``folder``, in PEFT's layout."""
    from lmlab.atomic import save_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(adapter_tensors(model), folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (folder / ADAPTER_CONFIG).write_text(
        json.dumps(adapter_config(model, cfg, base), indent=2) + "\n")


def is_adapter_folder(path: Path | str) -> bool:
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file()


def read_adapter(folder: Path) -> tuple[LoraConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """An adapter folder's settings, its raw adapter_config.json and its tensors; a
    folder that is not a LoRA adapter PEFT would load is refused with the reason."""
    from lmlab.models.weights import read_tensors

    folder = Path(folder)
    file = folder / ADAPTER_CONFIG
    if not file.is_file():
        raise LmlabError(f"{folder}: not an adapter folder (no {ADAPTER_CONFIG})")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmlabError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        raise LmlabError(f"{file}: not a LoRA adapter (peft_type "
                         f"{raw.get('peft_type') if isinstance(raw, dict) else None!r})")
    for key in ("use_dora", "use_rslora"):
        if raw.get(key):
            raise LmlabError(f"{file}: {key} adapters are not supported")
    if raw.get("rank_pattern") or raw.get("alpha_pattern"):
        raise LmlabError(f"{file}: per-module ranks (rank_pattern, alpha_pattern) are not "
                         "supported")
    try:
        cfg = LoraConfig(rank=int(raw["r"]), alpha=float(raw["lora_alpha"]),
                         dropout=float(raw.get("lora_dropout") or 0.0),
                         targets=_targets(raw.get("target_modules")))
    except (KeyError, TypeError, ValueError) as e:
        raise LmlabError(f"{file}: incomplete LoRA settings ({e})") from None
    tensors = read_tensors(folder / ADAPTER_WEIGHTS, what="adapter weights")
    return cfg, raw, tensors


def _targets(value: Any) -> tuple[str, ...]:
    """PEFT's target_modules: a list of names, ``all-linear``, or a regular expression
    (kept as written; the tensors say where the adapters are)."""
    if isinstance(value, str):
        return (value,)
    return tuple(value or ())


def load_adapter(model: nn.Module, folder: Path) -> LoraConfig:
    """Put the adapter saved in ``folder`` (lmlab's or PEFT's) on ``model``; every
    tensor must find its module and shape, or the error names it."""
    cfg, _, tensors = read_adapter(folder)
    by_hf = {s.hf: s for s in sites(model)}
    chosen, seen = [], set()
    for key in tensors:
        m = re.fullmatch(r"base_model\.model\.(.+)\.lora_[AB](?:\.\w+)?\.weight", key)
        if m is None or m.group(1) not in by_hf:
            raise LmlabError(f"{folder / ADAPTER_WEIGHTS}: tensor {key} names no module of "
                             "this model (is it the adapter of another base?)")
        if m.group(1) not in seen:
            seen.add(m.group(1))
            chosen.append(by_hf[m.group(1)])
    _install(model, chosen, cfg)
    _copy_tensors(model, tensors, folder / ADAPTER_WEIGHTS)
    model.eval()
    return cfg


def restore_adapter(model: nn.Module, folder: Path) -> None:
    """Load the adapter weights saved in ``folder`` into the adapters ``model`` already
    has (a LoRA run resumed)."""
    _, _, tensors = read_adapter(folder)
    _copy_tensors(model, tensors, folder / ADAPTER_WEIGHTS)


def _copy_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    params = {}
    for path, layer in lora_layers(model).items():
        for s in layer.parts:
            for ab in ("A", "B"):
                key = f"base_model.model.{s.hf}.lora_{ab}.weight"
                alt = f"base_model.model.{s.hf}.lora_{ab}.default.weight"
                t = tensors.get(key, tensors.get(alt))
                target = getattr(layer, f"lora_{ab}")[s.role].weight
                if t is None or t.shape != target.shape:
                    raise LmlabError(f"{source}: {key} is "
                                     f"{'missing' if t is None else tuple(t.shape)}; the model "
                                     f"needs {tuple(target.shape)} (another base?)")
                params[f"{path}.lora_{ab}.{s.role}.weight"] = t
    with torch.no_grad():
        for name, t in params.items():
            model.get_parameter(name).copy_(t)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain Linear back, in place."""
    for path, layer in lora_layers(model).items():
        if not isinstance(layer.base, nn.Linear):
            raise LmlabError("cannot merge into int8 weights: load the base in float32")
        with torch.no_grad():
            layer.base.weight.copy_(layer.merged_weight())
        parent_name, _, leaf = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, layer.base)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


@dataclass
class Trainable:
    """What a model trains: counts for the run's report."""

    trainable: int
    total: int
    sites: list[Site] = field(default_factory=list)

    def line(self) -> str:
        share = 100 * self.trainable / max(self.total, 1)
        return f"trainable parameters: {self.trainable:,} of {self.total:,} ({share:.2f}%)"


def count_trainable(model: nn.Module) -> Trainable:
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return Trainable(trainable, total)
