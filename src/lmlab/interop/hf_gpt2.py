"""Hugging Face GPT-2 <-> lmlab, as pure functions from one state dict to another.

lmlab's GPT-2-style parameters carry GPT-2's own names, so the conversion is
a key copy plus a transpose of the four projections that GPT-2 stores as
``Conv1D`` (weight shaped (in, out) rather than nn.Linear's (out, in)).
"""

from __future__ import annotations

from typing import Any

import torch

from lmlab.config import GPTConfig
from lmlab.errors import LmlabError

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _check_gpt2_style(config: GPTConfig) -> None:
    ok = (config.norm == "layernorm" and config.pos == "learned" and config.mlp == "gelu"
          and config.bias and config.n_kv_head == config.n_head
          and config.intermediate_size == 4 * config.n_embd)
    if not ok:
        raise LmlabError("only GPT-2-style configs (layernorm, learned positions, GELU MLP of "
                         "4x width, biases, no grouped-query attention) convert to GPT-2")


def hf_gpt2_config(config: GPTConfig) -> dict[str, Any]:
    """Keyword arguments of ``transformers.GPT2Config`` for an lmlab config."""
    _check_gpt2_style(config)
    return dict(vocab_size=config.vocab_size, n_positions=config.block_size,
                n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
                layer_norm_epsilon=config.norm_eps, activation_function="gelu_new",
                resid_pdrop=config.dropout, embd_pdrop=config.dropout,
                attn_pdrop=config.dropout, tie_word_embeddings=config.tie_embeddings)


def lmlab_config_from_hf_gpt2(hf: dict[str, Any]) -> GPTConfig:
    """An lmlab config from a GPT-2 config.json (as a dict)."""
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"],
                     n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                     norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                     tie_embeddings=hf.get("tie_word_embeddings", True))


def to_hf_gpt2(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lmlab GPT-2-style state dict -> ``GPT2LMHeadModel`` state dict."""
    out = {}
    for k, v in sd.items():
        out[k] = v.t().contiguous() if k.endswith(_CONV1D) else v
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def from_hf_gpt2(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``GPT2LMHeadModel`` (or ``GPT2Model``) state dict -> lmlab state dict."""
    out = {}
    for k, v in sd.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old checkpoints, not parameters
        if not k.startswith(("transformer.", "lm_head.")):
            k = "transformer." + k  # GPT2Model checkpoints have no prefix
        out[k] = v.t().contiguous() if k.endswith(_CONV1D) else v
    return out
