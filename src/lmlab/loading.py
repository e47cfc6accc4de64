"""Load any model lmlab can run: an lmlab run or checkpoint, an HF folder, a GGUF file.

``load_model`` is the one way in, for every command; ``load_for_inference``
(what `generate`, `eval` and `chat` call) adds the tokenizer and the chat
template when the source has one, and refuses an encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.device import resolve_device
from lmlab.errors import LmlabError
from lmlab.models.gpt import GPT
from lmlab.models.registry import kind_of
from lmlab.models.rnn import StatefulLM
from lmlab.models.weights import TOKENIZER_FILE, load_checkpoint, resolve_checkpoint
from lmlab.tokenizer import Tokenizer


@dataclass
class Loaded:
    model: GPT | StatefulLM  # a Transformer decoder, or a feed-forward / recurrent LM
    tokenizer: Tokenizer
    source: Path
    chat_template: str | None = None


def _template_from_folder(folder: Path) -> str | None:
    """The chat template of an HF tokenizer_config.json, if there is one."""
    cfg = folder / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    template = json.loads(cfg.read_text()).get("chat_template")
    if isinstance(template, list):  # several named templates: take the default one
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    return template


def write_chat_config(folder: Path, template: str | None, tokenizer: Tokenizer) -> None:
    """tokenizer_config.json with the chat template and end token a model was tuned with,
    as an HF folder has it (``_template_from_folder`` and ``eos_token_of_folder`` read it
    back)."""
    (Path(folder) / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": template, "eos_token": tokenizer.eos_token}, indent=2) + "\n")


def eos_token_of_folder(folder: Path) -> str | None:
    """The end token an HF tokenizer_config.json names (e.g. <|im_end|>), if any.

    A missing or malformed tokenizer_config.json names none: the tokenizer's
    own fallbacks (``Tokenizer.eos_id``) then apply.
    """
    cfg = folder / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        eos = json.loads(cfg.read_text()).get("eos_token")
    except json.JSONDecodeError:
        return None
    return eos.get("content") if isinstance(eos, dict) else eos


def adapter_base(adapter: Path) -> Path:
    """The base model an adapter folder names (``base_model_name_or_path``), if it is here."""
    from lmlab.models.lora import read_adapter

    _, raw, _ = read_adapter(adapter)
    base = raw.get("base_model_name_or_path")
    if not base or not Path(base).exists():
        raise LmlabError(f"{adapter}: an adapter whose base model ({base or 'unnamed'}) is "
                         "not here; pass the base as the model and this folder as --adapter")
    return Path(base)


def _load(source: Path, device: str = "cpu", adapter: Path | None = None,
          quantize: str = "none") -> tuple[torch.nn.Module, Path, dict | None, Path | None]:
    """The model, the folder (or file) it came from, a GGUF file's metadata, and the
    adapter folder put on it (a LoRA run's checkpoint, or ``adapter``). With
    ``quantize="int4"`` a GGUF's 4-bit tensors are repacked as they load."""
    from lmlab.interop.hf_folder import is_hf_folder
    from lmlab.models.lora import is_adapter_folder, load_adapter

    source = Path(source)
    if adapter is None and source.is_dir() and not is_hf_folder(source):
        folder = resolve_checkpoint(source)
        if is_adapter_folder(folder):  # a LoRA run: its base, then the adapter on it
            source, adapter = adapter_base(folder), folder
    model, folder, gguf = _load_plain(source, device, quantize)
    if adapter is not None:
        adapter = Path(adapter)
        if not is_adapter_folder(adapter):
            adapter = resolve_checkpoint(adapter)
        load_adapter(model, adapter)
    return model, folder, gguf, adapter


def _load_plain(source: Path, device: str,
                quantize: str = "none") -> tuple[torch.nn.Module, Path, dict | None]:
    from lmlab.interop.hf_folder import is_hf_folder, load_hf

    if source.suffix == ".gguf":
        from lmlab.interop.gguf import load_gguf

        if not source.is_file():
            raise LmlabError(f"{source}: no such file")
        model, tok, meta = load_gguf(source, quantize="int4" if quantize == "int4" else "none")
        return model.to(device), source, dict(meta, tokenizer=tok)
    if is_hf_folder(source):
        return load_hf(source).to(device), source, None
    folder = resolve_checkpoint(source)
    return load_checkpoint(folder, device=device), folder, None


def model_folder(source: Path | str) -> Path:
    """The folder holding a model's files: an HF folder itself, a run's latest checkpoint."""
    from lmlab.interop.hf_folder import is_hf_folder

    return Path(source) if is_hf_folder(source) else resolve_checkpoint(Path(source))


def load_model(source: Path | str, device: str = "cpu",
               adapter: Path | str | None = None) -> torch.nn.Module:
    """Any model lmlab reads, in eval mode: an lmlab run or checkpoint folder, a Hugging
    Face folder (GPT-2, Llama, BERT) or a ``.gguf`` file, with a LoRA adapter (a LoRA
    run's, or PEFT's) when ``adapter`` names one or ``source`` is a LoRA run.
    ``models/registry.py`` tells what it is (``kind_of``, ``context_of``)."""
    return _load(Path(source), device, Path(adapter) if adapter else None)[0]


def load_for_inference(source: Path, tokenizer: Path | None = None, dtype: str = "float32",
                       quantize: str = "none", device: str = "cpu",
                       adapter: Path | None = None) -> Loaded:
    """Model + tokenizer from a run/checkpoint folder, an HF folder or a ``.gguf`` file.

    The model is a GPT-style decoder or, from an lmlab checkpoint, a classic
    feed-forward or recurrent LM (``models/rnn.py``); an encoder is refused.
    """
    if quantize != "none" and device in (None, "auto"):
        device = "cpu"  # the int8 and int4 kernels are the CPU's
    target = resolve_device(device)  # a device that is not here: refused before any work
    if target.type != "cpu" and quantize != "none":
        raise LmlabError(f"--quantize {quantize} runs on the CPU only; drop it for "
                         f"--device {device}")
    if quantize not in ("none", "int8", "int4"):
        raise LmlabError(f"unknown quantization {quantize!r} (choose none, int8 or int4)")
    model, folder, gguf, adapter = _load(Path(source), adapter=adapter, quantize=quantize)
    if kind_of(model) == "encoder":
        raise LmlabError(f"{source}: is an encoder (BERT), which cannot generate or score "
                         "text left to right; use it with `lmlab neighbors` or "
                         "`lmlab finetune`")
    if kind_of(model) == "seq2seq":
        raise LmlabError(f"{source}: is an encoder-decoder, which writes a text for a "
                         "source text; use it with `lmlab translate`")
    if gguf is not None:
        template = gguf.get("chat_template")
        tok = Tokenizer.from_file(tokenizer) if tokenizer is not None else gguf["tokenizer"]
    else:
        tok_path = folder / TOKENIZER_FILE
        if tokenizer is None and not tok_path.exists():
            raise LmlabError(f"{folder}: no {TOKENIZER_FILE} beside the model; pass --tokenizer")
        # An HF folder names its end token in tokenizer_config.json (e.g. <|im_end|>).
        eos = eos_token_of_folder(folder) if tokenizer is None else None
        tok = Tokenizer.from_file(tokenizer or tok_path, eos_token=eos)
        template = _template_from_folder(folder)
    if adapter is not None and (adapter / "tokenizer_config.json").is_file():
        # The template a chat fine-tuning run trained with (ChatML on a base without one).
        template = _template_from_folder(adapter) or template
    if tok.vocab_size > model.config.vocab_size:
        raise LmlabError(f"{folder}: tokenizer has {tok.vocab_size} tokens but the model has "
                         f"only {model.config.vocab_size}")
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    if quantize == "int8":
        from lmlab.models.quantize import quantize_int8

        quantize_int8(model)
    elif quantize == "int4":
        from lmlab.models.quantize import quantize_int4

        quantize_int4(model)  # a GGUF's Linears are int4 already: only the rest change
    if target.type != "cpu":
        model = model.to(target)
    return Loaded(model.eval(), tok, folder, template)
