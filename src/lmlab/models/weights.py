"""Model files: a folder of config.json + model.safetensors (+ tokenizer.json), read and written.

This is model I/O for every family and every format converter: training
checkpoints (``train/checkpoint.py``) add the optimizer and trainer state
beside these files, and the Hugging Face and GGUF converters (``interop/``)
build their models through ``build_from_weights``. Which class to build is
the registry's answer (``models/registry.py``), never a guess made here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from lmlab.config import ModelConfig, load_config
from lmlab.errors import LmlabError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
ADAPTER_FILE = "adapter_model.safetensors"  # a LoRA run's checkpoint (models/lora.py)
# Every tokenizer file a model folder may carry (lmlab's and Hugging Face's); copied
# along whenever a model folder is converted or fine-tuned into another.
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "generation_config.json", "vocab.txt")


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict to save: a tied lm_head is stored once (as wte), like GPT-2."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_embeddings", False):
        sd.pop("lm_head.weight", None)
    return sd




@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Module constructors inside this block leave their weights unfilled.

    For a model built on the meta device only to receive loaded weights: the
    random init is wasted work, and on meta not a free one, since torch's first
    meta ``normal_`` imports torch._dynamo (about 3 s, most of a GGUF load).
    The in-place initializers of ``torch.nn.init`` (``normal_``, ``uniform_``,
    ``kaiming_uniform_``...), which every ``reset_parameters`` and lmlab's own
    init functions call, become no-ops until the block ends. Not thread-safe:
    load models from one thread at a time.
    """
    init = torch.nn.init
    saved = {name: getattr(init, name) for name in dir(init)
             if name.endswith("_") and not name.startswith("_")}
    for name in saved:
        setattr(init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder from a run folder, a checkpoints/ folder or the folder itself."""
    path = Path(path)
    if not path.exists():
        raise LmlabError(f"{path}: no such checkpoint or run folder")
    if (path / MODEL_FILE).exists() or (path / ADAPTER_FILE).exists():
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
            if (ckpt / MODEL_FILE).exists() or (ckpt / ADAPTER_FILE).exists():
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


def load_checkpoint(path: Path, device: str = "cpu",
                    dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Build the model of an lmlab checkpoint or run folder from its config.json and load
    its model.safetensors, checking every key (eval mode).

    The class is the one the saved tensors fill (``registry.model_for_weights``):
    a GPT; a ``BertForPreTraining`` when an encoder's weights include the
    masked-LM head, else the bare ``Bert``; a feed-forward or recurrent LM.
    """
    ckpt = resolve_checkpoint(path)
    if not (ckpt / CONFIG_FILE).exists():
        raise LmlabError(f"{ckpt}: missing {CONFIG_FILE}")
    config = load_config(ckpt / CONFIG_FILE)
    sd = read_tensors(ckpt / MODEL_FILE, device=device)
    model = build_from_weights(config, sd, ckpt / MODEL_FILE).to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def build_from_weights(config: ModelConfig, sd: dict[str, torch.Tensor],
                       source: Path) -> torch.nn.Module:
    """A model for ``config`` holding the weights ``sd`` (no random init, no copy).

    A tied config ignores any ``lm_head.weight`` in ``sd`` (it is the input
    embedding); every other key must match, or the error names ``source``.
    """
    from lmlab.models.registry import model_for_weights

    if getattr(config, "tie_embeddings", False):
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}
    with torch.device("meta"), skip_init():
        model, rename = model_for_weights(config, sd.keys())
    load_weights(model, {rename(k): v for k, v in sd.items()}, source)
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
    for module in model.modules():
        if hasattr(module, "rebuild_buffers"):
            module.rebuild_buffers(next(model.parameters()).device)


def _tied_embedding_key(model: torch.nn.Module) -> str | None:
    """The key of the input embedding a tied ``lm_head`` shares (``transformer.wte.weight``
    for a GPT, ``encoder.wte.weight`` for a recurrent LM), or None when untied."""
    lm_head = getattr(model, "lm_head", None)
    if not getattr(model.config, "tie_embeddings", False) or not hasattr(lm_head, "weight"):
        return None  # untied, or a task model whose LM head was dropped
    head = lm_head.weight
    return next(k for k, v in model.state_dict(keep_vars=True).items()
                if v is head and k != "lm_head.weight")
