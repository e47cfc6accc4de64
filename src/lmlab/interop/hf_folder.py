"""Hugging Face model folders <-> lmlab checkpoints (GPT-2, Llama, BERT, Marian, BART).

An HF folder is ``config.json`` (with ``model_type``) + ``model.safetensors``
(or shards listed in ``model.safetensors.index.json``) + tokenizer files. The
tensors go through the pure state-dict converters of ``hf_gpt2``,
``hf_llama``, ``hf_bert`` and ``hf_seq2seq``; nothing here imports
``transformers``, and pickle checkpoints (``pytorch_model.bin``) are refused,
never unpickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from lmlab.atomic import atomic_dir
from lmlab.config import BertConfig, GPTConfig
from lmlab.errors import LmlabError
from lmlab.interop import hf_bert, hf_gemma, hf_gpt2, hf_llama, hf_seq2seq
from lmlab.models.registry import family_of
from lmlab.models.weights import TOKENIZER_FILES

_PICKLES = ("pytorch_model.bin", "model.bin", "pytorch_model.bin.index.json", "model.pt",
            "model.pth", "consolidated.00.pth")


def is_hf_folder(path: Path) -> bool:
    """True for a folder whose config.json is a Hugging Face one (has ``model_type``).

    lmlab's own encoder configs carry ``model_type`` too; they alone have ``block_size``.
    """
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        d = json.loads(cfg.read_text())
    except json.JSONDecodeError:
        return False
    return isinstance(d, dict) and "model_type" in d and "block_size" not in d


def read_hf_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder's safetensors file(s); pickle files are refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        pickles = [p for p in _PICKLES if (folder / p).exists()]
        if pickles:
            raise LmlabError(
                f"{folder / pickles[0]}: pickle checkpoints are refused (loading one can run "
                "arbitrary code); re-save it as safetensors with a tool you trust, e.g. "
                "transformers' save_pretrained(out, safe_serialization=True)")
        raise LmlabError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    sd: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            sd.update(load_file(str(folder / name)))
        except (SafetensorError, OSError) as e:
            raise LmlabError(f"{folder / name}: unreadable safetensors file ({e})") from None
    return sd


def config_from_hf(hf: dict[str, Any], source: Path, pooler: bool = True) -> Any:
    kind = hf.get("model_type")
    try:
        if kind in hf_seq2seq.ARCHS:
            return hf_seq2seq.seq2seq_config_from_hf(hf)
        if kind == "bert":
            return hf_bert.bert_config_from_hf(hf, pooler=pooler)
        if kind == "gpt2":
            return hf_gpt2.lmlab_config_from_hf_gpt2(hf)
        if kind in ("llama", "mistral", "qwen2") and not hf.get("attention_bias", False):
            return hf_llama.lmlab_config_from_hf_llama(hf)
        if kind in hf_gemma.MODEL_TYPES:
            return hf_gemma.lmlab_config_from_hf_gemma3(hf)
    except KeyError as e:
        raise LmlabError(f"{source}: a {kind} config needs the field {e}") from None
    raise LmlabError(f"{source}: model_type {kind!r} is not supported "
                     "(supported: gpt2, bert, marian, bart, gemma3_text, llama and "
                     "Llama-shaped models without attention bias)")


def load_hf(folder: Path) -> torch.nn.Module:
    """An lmlab model (float32, eval mode) holding an HF GPT-2, Llama, Gemma 3, BERT, Marian
    or BART folder's weights.

    A BERT folder gives a ``BertForPreTraining`` if it holds the masked-LM head
    (``BertForMaskedLM`` / ``BertForPreTraining``), else a bare ``Bert`` encoder.
    """
    from lmlab.models.weights import build_from_weights

    folder = Path(folder)
    cfg_path = folder / "config.json"
    hf = json.loads(cfg_path.read_text())
    sd = read_hf_state_dict(folder)  # first: a pickle folder is refused before anything else
    pooler = any(k.endswith("pooler.dense.weight") for k in sd)
    config = config_from_hf(hf, cfg_path, pooler=pooler)
    if hf["model_type"] in hf_seq2seq.ARCHS:
        ours = hf_seq2seq.from_hf_seq2seq(sd, config)
    elif hf["model_type"] == "bert":
        ours = hf_bert.from_hf_bert(sd)
    elif hf["model_type"] == "gpt2":
        ours = hf_gpt2.from_hf_gpt2(sd)
    elif hf["model_type"] in hf_gemma.MODEL_TYPES:
        ours = hf_gemma.from_hf_gemma3(sd, config.n_layer, f"{folder} (config.json)")
    else:
        ours = hf_llama.from_hf_llama(sd, config.n_layer, f"{folder} (config.json)")
    return build_from_weights(config, ours, folder / "model.safetensors").float()


def import_hf(folder: Path, out: Path) -> Path:
    """Convert an HF GPT-2, Llama or BERT folder into an lmlab checkpoint folder ``out``."""
    from lmlab.models.weights import model_state

    folder = Path(folder)
    model = load_hf(folder)
    with atomic_dir(out) as tmp:
        from lmlab.atomic import save_safetensors

        save_safetensors(model_state(model), tmp / "model.safetensors", metadata={"format": "pt"})
        model.config.save(tmp / "config.json")
        for name in TOKENIZER_FILES:
            if (folder / name).exists():
                shutil.copyfile(folder / name, tmp / name)
    return Path(out)


def hf_config_for(config: GPTConfig | BertConfig,
                  architecture: str | None = None) -> dict[str, Any]:
    """config.json contents that ``transformers.AutoConfig`` reads back as this model."""
    if family_of(config).name == "bert":
        d = hf_bert.hf_bert_config(config)
        d.update(model_type="bert", architectures=[architecture or "BertModel"])
    elif config.norm == "layernorm":
        d = hf_gpt2.hf_gpt2_config(config)
        d.update(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_ctx=config.block_size)
    elif config.mlp == "geglu":
        d = hf_gemma.hf_gemma3_config(config)
        d.update(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"])
    else:
        d = hf_llama.hf_llama_config(config)
        d.update(model_type="llama", architectures=["LlamaForCausalLM"])
    d["torch_dtype"] = "float32"
    return d


def export_hf(checkpoint: Path, out: Path) -> Path:
    """Write an lmlab checkpoint as an HF folder: ``AutoModelForCausalLM`` loads a GPT's,
    ``BertForPreTraining`` / ``BertForMaskedLM`` / ``BertModel`` an encoder's,
    ``AutoModelForSeq2SeqLM`` an encoder-decoder's (as Marian or BART)."""
    from lmlab.atomic import save_safetensors
    from lmlab.models.weights import load_checkpoint, model_state, resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    model = load_checkpoint(ckpt)
    config = model.config
    if family_of(config).name not in ("gpt", "bert", "seq2seq"):
        raise LmlabError(f"{ckpt}: a {family_of(config).name} model has no Hugging Face "
                         "format lmlab writes (GPT-2, Llama, BERT, Marian and BART do)")
    sd = model_state(model)
    if family_of(config).name == "seq2seq":
        arch, kwargs = hf_seq2seq.hf_seq2seq_config(config)
        hf_cfg = dict(kwargs, model_type=arch, architectures=[
            "MarianMTModel" if arch == "marian" else "BartForConditionalGeneration"])
        theirs = hf_seq2seq.to_hf_seq2seq(sd, config)
        for k in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"):
            theirs.pop(k)  # HF ties them to model.shared on load
    elif family_of(config).name == "bert":
        if not any(k.startswith("bert.") for k in sd):
            sd = {f"bert.{k}": v for k, v in sd.items()}  # a bare encoder
        arch = ("BertForPreTraining" if "nsp.weight" in sd else
                "BertForMaskedLM" if "mlm.bias" in sd else "BertModel")
        hf_cfg = hf_config_for(config, arch)
        theirs = hf_bert.to_hf_bert(sd, config.n_embd)
        # HF re-ties the decoder to the word embeddings on load.
        theirs.pop("cls.predictions.decoder.weight", None)
        theirs.pop("cls.predictions.decoder.bias", None)
        if arch == "BertModel":
            theirs = {k.removeprefix("bert."): v for k, v in theirs.items()}
    elif config.norm == "layernorm":
        hf_cfg = hf_config_for(config)
        theirs = hf_gpt2.to_hf_gpt2(sd)
    elif config.mlp == "geglu":
        hf_cfg = hf_config_for(config)
        theirs = hf_gemma.to_hf_gemma3(sd, config)
    else:
        hf_cfg = hf_config_for(config)
        theirs = hf_llama.to_hf_llama(sd, config)
    if getattr(config, "tie_embeddings", False):
        theirs.pop("lm_head.weight", None)  # HF re-ties it from the input embedding
    with atomic_dir(out) as tmp:
        save_safetensors({k: v.contiguous() for k, v in theirs.items()}, tmp / "model.safetensors",
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            if (ckpt / name).exists():
                shutil.copyfile(ckpt / name, tmp / name)
    return Path(out)
