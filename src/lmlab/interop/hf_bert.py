"""Hugging Face BERT <-> lmlab, as pure functions from one state dict to another.

lmlab's encoder keeps HF's names for the embeddings and the pooler; inside a
layer it uses short names and one fused query/key/value matrix:

    HF encoder.layer.i.                     lmlab bert.layers.i.
      attention.self.{query,key,value}  ->    attn.qkv    (rows stacked q, k, v)
      attention.output.dense            ->    attn.proj
      attention.output.LayerNorm        ->    ln_1
      intermediate.dense                ->    fc
      output.dense                      ->    proj
      output.LayerNorm                  ->    ln_2
    cls.predictions.transform.dense     ->  mlm.dense
    cls.predictions.transform.LayerNorm ->  mlm.LayerNorm
    cls.predictions.bias                ->  mlm.bias   (decoder weight = word embeddings)
    cls.seq_relationship                ->  nsp

``BertModel`` checkpoints have no ``bert.`` prefix; ``BertForMaskedLM`` and
``BertForPreTraining`` ones do. Both are read; lmlab state dicts always carry
the ``bert.`` prefix (the layout of ``models.bert.BertForPreTraining``).
"""

from __future__ import annotations

from typing import Any

import torch

from lmlab.config import BertConfig
from lmlab.errors import LmlabError

_LAYER_MAP = {
    "attention.output.dense": "attn.proj",
    "attention.output.LayerNorm": "ln_1",
    "intermediate.dense": "fc",
    "output.dense": "proj",
    "output.LayerNorm": "ln_2",
}
_HEAD_MAP = {
    "cls.predictions.transform.dense": "mlm.dense",
    "cls.predictions.transform.LayerNorm": "mlm.LayerNorm",
    "cls.seq_relationship": "nsp",
}
_QKV = ("query", "key", "value")


def hf_bert_config(config: BertConfig) -> dict[str, Any]:
    """Keyword arguments of ``transformers.BertConfig`` for an lmlab config."""
    return dict(vocab_size=config.vocab_size, hidden_size=config.n_embd,
                num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
                intermediate_size=config.intermediate_size, hidden_act="gelu",
                hidden_dropout_prob=config.dropout,
                attention_probs_dropout_prob=config.attn_dropout,
                max_position_embeddings=config.block_size,
                type_vocab_size=config.type_vocab_size, layer_norm_eps=config.norm_eps,
                pad_token_id=config.pad_token_id, position_embedding_type="absolute")


def bert_config_from_hf(hf: dict[str, Any], pooler: bool = True) -> BertConfig:
    """An lmlab config from a BERT config.json (as a dict)."""
    act = hf.get("hidden_act", "gelu")
    if act != "gelu" or hf.get("position_embedding_type", "absolute") != "absolute":
        raise LmlabError(f"only BERT models with hidden_act 'gelu' and absolute positions are "
                         f"supported (this one: {act!r}, "
                         f"{hf.get('position_embedding_type')!r})")
    return BertConfig(vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
                      type_vocab_size=hf.get("type_vocab_size", 2),
                      n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                      n_embd=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
                      norm_eps=hf.get("layer_norm_eps", 1e-12),
                      dropout=hf.get("hidden_dropout_prob", 0.1),
                      attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
                      pad_token_id=hf.get("pad_token_id", 0) or 0, pooler=pooler)


def from_hf_bert(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``BertModel`` / ``BertForMaskedLM`` / ``BertForPreTraining`` state dict -> lmlab.

    Returns keys ``bert.*`` and, when the checkpoint has them, ``mlm.*`` and
    ``nsp.*``. Buffers (``position_ids``) and the tied decoder weight are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k.endswith("position_ids") or k in ("cls.predictions.decoder.weight",
                                                 "cls.predictions.decoder.bias"):
            continue  # a buffer; the decoder is tied (bias duplicates cls.predictions.bias)
        if k.startswith("cls."):
            if k == "cls.predictions.bias":
                out["mlm.bias"] = v
                continue
            for theirs, ours in _HEAD_MAP.items():
                if k.startswith(theirs + "."):
                    out[ours + k[len(theirs):]] = v
                    break
            else:
                raise LmlabError(f"unexpected tensor {k} in a BERT checkpoint")
            continue
        k = k.removeprefix("bert.")
        if not k.startswith("encoder.layer."):
            out["bert." + k] = v  # embeddings.*, pooler.dense.* (renamed below)
            continue
        _, _, i, rest = k.split(".", 3)
        if rest.startswith("attention.self."):
            which, param = rest.removeprefix("attention.self.").split(".")
            qkv.setdefault((int(i), param), {})[which] = v
            continue
        for theirs, ours in _LAYER_MAP.items():
            if rest.startswith(theirs + "."):
                out[f"bert.layers.{i}.{ours}{rest[len(theirs):]}"] = v
                break
        else:
            raise LmlabError(f"unexpected tensor {k} in a BERT checkpoint")
    for (i, param), parts in qkv.items():
        out[f"bert.layers.{i}.attn.qkv.{param}"] = torch.cat([parts[n] for n in _QKV], dim=0)
    for param in ("weight", "bias"):
        if f"bert.pooler.dense.{param}" in out:
            out[f"bert.pooler.{param}"] = out.pop(f"bert.pooler.dense.{param}")
    return out


def to_hf_bert(sd: dict[str, torch.Tensor], n_embd: int) -> dict[str, torch.Tensor]:
    """lmlab state dict (``bert.*`` [+ ``mlm.*``, ``nsp.*``]) -> ``BertForPreTraining``
    / ``BertForMaskedLM`` keys (``bert.`` prefix; ``BertModel`` drops it on load)."""
    out: dict[str, torch.Tensor] = {}
    inv_layer = {ours: theirs for theirs, ours in _LAYER_MAP.items()}
    inv_head = {ours: theirs for theirs, ours in _HEAD_MAP.items()}
    for k, v in sd.items():
        if k == "mlm.bias":
            out["cls.predictions.bias"] = v
            continue
        head, _, param = k.rpartition(".")
        if head in inv_head:
            out[f"{inv_head[head]}.{param}"] = v
            continue
        if not k.startswith("bert."):
            raise LmlabError(f"unexpected tensor {k} in an lmlab BERT state dict")
        if k.startswith("bert.pooler."):
            out[f"bert.pooler.dense.{param}"] = v
            continue
        if not k.startswith("bert.layers."):
            out[k] = v
            continue
        _, _, i, rest = k.split(".", 3)
        name = rest.rpartition(".")[0]
        if name == "attn.qkv":
            for n, part in zip(_QKV, v.split(n_embd, dim=0), strict=True):
                out[f"bert.encoder.layer.{i}.attention.self.{n}.{param}"] = part.contiguous()
        else:
            out[f"bert.encoder.layer.{i}.{inv_layer[name]}.{param}"] = v
    if "cls.predictions.bias" in out:
        # HF keeps the tied decoder as its own key; it is the word embedding.
        out["cls.predictions.decoder.weight"] = out["bert.embeddings.word_embeddings.weight"]
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    return out
