"""Hugging Face Llama <-> lmlab, as pure functions from one state dict to another.

lmlab keeps GPT-2's parameter names for both families, so a Llama layer maps
as: q/k/v_proj -> one fused ``attn.c_attn`` (rows stacked q, k, v), o_proj ->
``attn.c_proj``, gate/up/down_proj -> ``mlp.c_fc`` / ``mlp.c_fc2`` /
``mlp.c_proj``, input/post_attention_layernorm -> ``ln_1`` / ``ln_2``. RoPE
uses the same "rotate half" layout as HF, so no row permutation is needed
(GGUF files, which use llama.cpp's interleaved layout, do need one).
"""

from __future__ import annotations

from typing import Any

import torch

from lmlab.config import GPTConfig
from lmlab.errors import LmlabError

_LAYER_MAP = {
    "self_attn.o_proj.weight": "attn.c_proj.weight",
    "mlp.gate_proj.weight": "mlp.c_fc.weight",
    "mlp.up_proj.weight": "mlp.c_fc2.weight",
    "mlp.down_proj.weight": "mlp.c_proj.weight",
    "input_layernorm.weight": "ln_1.weight",
    "post_attention_layernorm.weight": "ln_2.weight",
}


def _check_llama_style(config: GPTConfig) -> None:
    ok = (config.norm == "rmsnorm" and config.pos == "rope" and config.mlp == "swiglu"
          and not config.bias)
    if not ok:
        raise LmlabError("only Llama-style configs (rmsnorm, rope, swiglu, no biases) "
                         "convert to Llama")


def hf_llama_config(config: GPTConfig) -> dict[str, Any]:
    """Keyword arguments of ``transformers.LlamaConfig`` for an lmlab config."""
    _check_llama_style(config)
    return dict(vocab_size=config.vocab_size, hidden_size=config.n_embd,
                intermediate_size=config.intermediate_size,
                num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
                num_key_value_heads=config.n_kv_head, head_dim=config.head_dim,
                max_position_embeddings=config.block_size, rms_norm_eps=config.norm_eps,
                rope_theta=config.rope_base, tie_word_embeddings=config.tie_embeddings,
                attention_bias=False, mlp_bias=False, hidden_act="silu")


def lmlab_config_from_hf_llama(hf: dict[str, Any]) -> GPTConfig:
    """An lmlab config from a Llama config.json (as a dict)."""
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
                     n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                     n_kv_head=hf.get("num_key_value_heads", hf["num_attention_heads"]),
                     n_embd=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
                     norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), pos="rope",
                     rope_base=hf.get("rope_theta", 10000.0), mlp="swiglu", bias=False,
                     tie_embeddings=hf.get("tie_word_embeddings", False))


def from_hf_llama(sd: dict[str, torch.Tensor], n_layer: int,
                  source: str = "the state dict") -> dict[str, torch.Tensor]:
    """``LlamaForCausalLM`` state dict -> lmlab state dict."""
    try:
        return _from_hf_llama(sd, n_layer)
    except KeyError as e:
        raise LmlabError(f"{source}: tensor {e} is missing for a {n_layer}-layer Llama") from None


def fuse_qkv(sd: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """HF's q_proj, k_proj, v_proj under ``prefix`` stacked into lmlab's ``attn.c_attn``."""
    return torch.cat([sd[prefix + f"self_attn.{p}_proj.weight"] for p in "qkv"], dim=0)


def split_qkv(w: torch.Tensor, config: GPTConfig, prefix: str) -> dict[str, torch.Tensor]:
    """lmlab's fused ``attn.c_attn`` weight as HF's q/k/v_proj weights under ``prefix``."""
    hs = config.head_dim
    sizes = [config.n_head * hs, config.n_kv_head * hs, config.n_kv_head * hs]
    return {prefix + f"self_attn.{name}_proj.weight": part.contiguous()
            for name, part in zip("qkv", w.split(sizes, dim=0), strict=True)}


def _from_hf_llama(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    out = {"transformer.wte.weight": sd["model.embed_tokens.weight"],
           "transformer.ln_f.weight": sd["model.norm.weight"]}
    if "lm_head.weight" in sd:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(n_layer):
        src, dst = f"model.layers.{i}.", f"transformer.h.{i}."
        out[dst + "attn.c_attn.weight"] = fuse_qkv(sd, src)
        for theirs, ours in _LAYER_MAP.items():
            out[dst + ours] = sd[src + theirs]
    return out


def to_hf_llama(sd: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """lmlab Llama-style state dict -> ``LlamaForCausalLM`` state dict."""
    _check_llama_style(config)
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"],
           "model.norm.weight": sd["transformer.ln_f.weight"],
           "lm_head.weight": sd.get("lm_head.weight", sd["transformer.wte.weight"])}
    for i in range(config.n_layer):
        src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
        out.update(split_qkv(sd[src + "attn.c_attn.weight"], config, dst))
        for theirs, ours in _LAYER_MAP.items():
            out[dst + theirs] = sd[src + ours]
    return out
