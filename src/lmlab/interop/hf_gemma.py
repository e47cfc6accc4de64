"""Hugging Face Gemma 3 (text) <-> lmlab, as pure functions from one state dict to another.

Gemma 3 is a Llama-shaped decoder with six differences, each an lmlab config
switch (see ``GPTConfig``): GeGLU instead of SwiGLU, heads wider than
``n_embd / n_head`` (``head_size``), RMSNorm over each head's queries and keys
(``qk_norm``), a norm on each sublayer's output as well as its input
(``post_norms``), token embeddings scaled by sqrt(n_embd) (``embed_scale``), and
five sliding-window layers (with their own RoPE base) for each global one.

Gemma's RMSNorm multiplies by ``1 + w``, not ``w``: the converter adds the one,
so lmlab's RMSNorm is unchanged (llama.cpp's converter does the same, which is
why a GGUF's norms load with ``norm_offset=0``). Layer names map as:
q/k/v_proj -> fused ``attn.c_attn``, o_proj -> ``attn.c_proj``, q_norm/k_norm ->
``attn.q_norm``/``attn.k_norm``, input_layernorm -> ``ln_1``,
post_attention_layernorm -> ``ln_attn_out``, pre_feedforward_layernorm ->
``ln_2``, post_feedforward_layernorm -> ``ln_mlp_out``, gate/up/down_proj ->
``mlp.c_fc``/``mlp.c_fc2``/``mlp.c_proj``.
"""

from __future__ import annotations

from typing import Any

import torch

from lmlab.config import GPTConfig
from lmlab.errors import LmlabError
from lmlab.interop.hf_llama import fuse_qkv, split_qkv

MODEL_TYPES = ("gemma3_text",)

_LINEARS = {
    "self_attn.o_proj.weight": "attn.c_proj.weight",
    "mlp.gate_proj.weight": "mlp.c_fc.weight",
    "mlp.up_proj.weight": "mlp.c_fc2.weight",
    "mlp.down_proj.weight": "mlp.c_proj.weight",
}
_NORMS = {
    "input_layernorm.weight": "ln_1.weight",
    "post_attention_layernorm.weight": "ln_attn_out.weight",
    "pre_feedforward_layernorm.weight": "ln_2.weight",
    "post_feedforward_layernorm.weight": "ln_mlp_out.weight",
    "self_attn.q_norm.weight": "attn.q_norm.weight",
    "self_attn.k_norm.weight": "attn.k_norm.weight",
}


def _check_gemma_style(config: GPTConfig) -> None:
    ok = (config.norm == "rmsnorm" and config.pos == "rope" and config.mlp == "geglu"
          and not config.bias and config.qk_norm and config.post_norms and config.embed_scale)
    if not ok:
        raise LmlabError("only Gemma-style configs (rmsnorm, rope, geglu, qk_norm, "
                         "post_norms, embed_scale, no biases) convert to Gemma 3")


def sliding_pattern(layer_types: list[str]) -> int:
    """The period of Gemma 3's ``layer_types`` (five "sliding_attention", then one
    "full_attention", ...), which lmlab stores as one number."""
    full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    period = full[0] + 1 if full else len(layer_types) + 1
    want = ["full_attention" if (i + 1) % period == 0 else "sliding_attention"
            for i in range(len(layer_types))]
    if layer_types != want:
        raise LmlabError(f"Gemma 3 layer_types {layer_types} do not repeat one pattern")
    return period


def lmlab_config_from_hf_gemma3(hf: dict[str, Any]) -> GPTConfig:
    """An lmlab config from a Gemma 3 text config.json (as a dict)."""
    for key in ("final_logit_softcapping", "attn_logit_softcapping", "rope_scaling"):
        if hf.get(key) is not None:
            raise LmlabError(f"Gemma 3 config: {key}={hf[key]!r} is not supported")
    if hf.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise LmlabError(f"Gemma 3 config: activation {hf['hidden_activation']!r} "
                         "is not supported (only gelu_pytorch_tanh)")
    n_layer = hf["num_hidden_layers"]
    if "layer_types" in hf and hf["layer_types"] is not None:
        pattern = sliding_pattern(list(hf["layer_types"]))
    else:
        pattern = hf.get("sliding_window_pattern", 6)
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
                     n_layer=n_layer, n_head=hf["num_attention_heads"],
                     n_kv_head=hf.get("num_key_value_heads", hf["num_attention_heads"]),
                     n_embd=hf["hidden_size"], intermediate_size=hf["intermediate_size"],
                     head_size=hf.get("head_dim", 256), norm="rmsnorm",
                     norm_eps=hf.get("rms_norm_eps", 1e-6), pos="rope",
                     rope_base=hf.get("rope_theta", 1_000_000.0),
                     rope_local_base=hf.get("rope_local_base_freq", 10_000.0),
                     mlp="geglu", bias=False, tie_embeddings=hf.get("tie_word_embeddings", True),
                     qk_norm=True, post_norms=True, embed_scale=True,
                     sliding_window=hf.get("sliding_window", 512), sliding_pattern=pattern,
                     query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256))


def hf_gemma3_config(config: GPTConfig) -> dict[str, Any]:
    """Keyword arguments of ``transformers.Gemma3TextConfig`` for an lmlab config."""
    _check_gemma_style(config)
    n = config.n_layer
    layer_types = ["sliding_attention" if config.is_local(i) else "full_attention"
                   for i in range(n)]
    return dict(vocab_size=config.vocab_size, hidden_size=config.n_embd,
                intermediate_size=config.intermediate_size, num_hidden_layers=n,
                num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_head,
                head_dim=config.head_dim, max_position_embeddings=config.block_size,
                rms_norm_eps=config.norm_eps, rope_theta=config.rope_base,
                rope_local_base_freq=config.rope_local_base or config.rope_base,
                query_pre_attn_scalar=config.query_pre_attn_scalar or config.head_dim,
                sliding_window=config.sliding_window or config.block_size,
                layer_types=layer_types, tie_word_embeddings=config.tie_embeddings,
                hidden_activation="gelu_pytorch_tanh", attention_bias=False,
                final_logit_softcapping=None, attn_logit_softcapping=None, rope_scaling=None)


def from_hf_gemma3(sd: dict[str, torch.Tensor], n_layer: int, source: str = "the state dict",
                   norm_offset: float = 1.0) -> dict[str, torch.Tensor]:
    """``Gemma3ForCausalLM`` state dict -> lmlab state dict. ``norm_offset`` is added to
    every norm weight: 1 for HF's ``1 + w`` norms, 0 for a GGUF's (stored with the one)."""
    sd = {k.removeprefix("language_model."): v for k, v in sd.items()}
    try:
        out = {"transformer.wte.weight": sd["model.embed_tokens.weight"],
               "transformer.ln_f.weight": sd["model.norm.weight"] + norm_offset}
        if "lm_head.weight" in sd:
            out["lm_head.weight"] = sd["lm_head.weight"]
        for i in range(n_layer):
            src, dst = f"model.layers.{i}.", f"transformer.h.{i}."
            out[dst + "attn.c_attn.weight"] = fuse_qkv(sd, src)
            for theirs, ours in _LINEARS.items():
                out[dst + ours] = sd[src + theirs]
            for theirs, ours in _NORMS.items():
                out[dst + ours] = sd[src + theirs] + norm_offset
    except KeyError as e:
        raise LmlabError(f"{source}: tensor {e} is missing for a {n_layer}-layer "
                         "Gemma 3") from None
    return out


def to_hf_gemma3(sd: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """lmlab Gemma-style state dict -> ``Gemma3ForCausalLM`` state dict."""
    _check_gemma_style(config)
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"],
           "model.norm.weight": sd["transformer.ln_f.weight"] - 1,
           "lm_head.weight": sd.get("lm_head.weight", sd["transformer.wte.weight"])}
    for i in range(config.n_layer):
        src, dst = f"transformer.h.{i}.", f"model.layers.{i}."
        out.update(split_qkv(sd[src + "attn.c_attn.weight"], config, dst))
        for theirs, ours in _LINEARS.items():
            out[dst + theirs] = sd[src + ours]
        for theirs, ours in _NORMS.items():
            out[dst + theirs] = sd[src + ours] - 1
    return out
