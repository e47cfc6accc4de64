"""Hugging Face Marian / BART <-> lmlab's encoder-decoder, as pure functions of state dicts.

``models/seq2seq.py`` keeps the names of ``MarianMTModel`` and
``BartForConditionalGeneration`` without their ``model.`` prefix, so the
tensors are copied; what differs is what each side stores:

* HF stores the shared table three times (``model.shared``,
  ``model.{encoder,decoder}.embed_tokens``) plus ``lm_head.weight``, all one
  tensor; lmlab stores ``shared.weight`` once.
* Marian stores its sinusoid tables (``embed_positions``, not trained); lmlab
  computes them (the same numbers: tested).
* BART's learned positions keep their two offset rows (``pos_offset`` 2).

Both HF models are post-LN; lmlab's pre-LN option has no HF counterpart and is
refused on export.
"""

from __future__ import annotations

from typing import Any

import torch

from lmlab.config import Seq2SeqConfig
from lmlab.errors import LmlabError

# HF activation names <-> lmlab's.
_ACT = {"relu": "relu", "gelu": "gelu", "swish": "silu", "silu": "silu"}
ARCHS = ("marian", "bart")


def seq2seq_config_from_hf(hf: dict[str, Any]) -> Seq2SeqConfig:
    """An lmlab config from a Marian or BART config.json (as a dict)."""
    arch = hf.get("model_type")
    if arch not in ARCHS:
        raise LmlabError(f"not a Marian or BART config (model_type {arch!r})")
    heads, ffn = hf["encoder_attention_heads"], hf["encoder_ffn_dim"]
    if hf.get("decoder_attention_heads", heads) != heads \
            or hf.get("decoder_ffn_dim", ffn) != ffn:
        raise LmlabError("encoder and decoder of different head counts or widths are not "
                         "supported")
    if hf.get("decoder_vocab_size") not in (None, hf["vocab_size"]) \
            or hf.get("share_encoder_decoder_embeddings") is False:
        raise LmlabError("only models with one vocabulary shared by source and target are "
                         "supported")
    act = hf.get("activation_function", "gelu")
    if act not in _ACT:
        raise LmlabError(f"activation {act!r} is not supported (relu, gelu, swish)")
    if hf.get("normalize_before") or hf.get("add_final_layer_norm"):
        raise LmlabError("pre-LN Marian/mBART checkpoints are not supported")
    bart = arch == "bart"
    return Seq2SeqConfig(
        vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
        n_encoder_layer=hf["encoder_layers"], n_decoder_layer=hf["decoder_layers"],
        n_head=hf["encoder_attention_heads"], n_embd=hf["d_model"],
        intermediate_size=hf["encoder_ffn_dim"], norm_first=False,
        pos="learned" if bart else "sinusoidal", pos_offset=2 if bart else 0,
        scale_embedding=bool(hf.get("scale_embedding", False)), embed_norm=bart,
        activation=_ACT[act], norm_eps=1e-5, final_logits_bias=True,
        dropout=hf.get("dropout", 0.1), attn_dropout=hf.get("attention_dropout", 0.0),
        activation_dropout=hf.get("activation_dropout", 0.0),
        pad_token_id=hf.get("pad_token_id", 0), eos_token_id=hf.get("eos_token_id", 2),
        decoder_start_token_id=hf.get("decoder_start_token_id", 2))


def hf_seq2seq_config(config: Seq2SeqConfig) -> tuple[str, dict[str, Any]]:
    """(model_type, keyword arguments of ``transformers.MarianConfig`` or ``BartConfig``)
    for an lmlab config: BART for learned positions, Marian for sinusoids."""
    if config.norm_first:
        raise LmlabError("a pre-LN encoder-decoder has no Hugging Face counterpart (Marian and "
                         "BART are post-LN); train with --no-norm-first to export")
    bart = config.pos == "learned"
    if bart != config.embed_norm or (bart and config.pos_offset != 2) \
            or (not bart and config.pos_offset):
        raise LmlabError("this encoder-decoder's layout is neither Marian's (sinusoids, no "
                         "embedding norm) nor BART's (learned positions offset by 2, an "
                         "embedding norm)")
    act = {"relu": "relu", "gelu": "gelu", "silu": "swish"}[config.activation]
    kw = dict(vocab_size=config.vocab_size, max_position_embeddings=config.block_size,
              encoder_layers=config.n_encoder_layer, decoder_layers=config.n_decoder_layer,
              encoder_attention_heads=config.n_head, decoder_attention_heads=config.n_head,
              d_model=config.n_embd, encoder_ffn_dim=config.intermediate_size,
              decoder_ffn_dim=config.intermediate_size, activation_function=act,
              scale_embedding=config.scale_embedding, dropout=config.dropout,
              attention_dropout=config.attn_dropout,
              activation_dropout=config.activation_dropout,
              pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id,
              decoder_start_token_id=config.decoder_start_token_id,
              forced_eos_token_id=None, tie_word_embeddings=True)
    if not bart:
        kw.update(decoder_vocab_size=config.vocab_size, share_encoder_decoder_embeddings=True)
    return ("bart" if bart else "marian"), kw


def from_hf_seq2seq(sd: dict[str, torch.Tensor],
                    config: Seq2SeqConfig) -> dict[str, torch.Tensor]:
    """``MarianMTModel`` / ``BartForConditionalGeneration`` state dict -> lmlab's."""
    if "model.shared.weight" not in sd:
        raise LmlabError("not a Marian or BART checkpoint: no model.shared.weight")
    tied = ("lm_head.weight", "model.encoder.embed_tokens.weight",
            "model.decoder.embed_tokens.weight")  # the shared table again
    out = {k.removeprefix("model."): v for k, v in sd.items() if k not in tied}
    if config.pos == "sinusoidal":  # Marian's stored tables: lmlab computes them
        out = {k: v for k, v in out.items() if not k.endswith("embed_positions.weight")}
    return out


def to_hf_seq2seq(sd: dict[str, torch.Tensor], config: Seq2SeqConfig) -> dict[str, torch.Tensor]:
    """lmlab state dict -> HF keys (``model.`` prefix, the shared table under every name
    HF gives it, Marian's sinusoid tables written out)."""
    from lmlab.models.seq2seq import sinusoidal_positions

    out = {f"model.{k}" if k != "final_logits_bias" else k: v for k, v in sd.items()}
    shared = sd["shared.weight"]
    for k in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
              "lm_head.weight"):
        out[k] = shared
    if config.pos == "sinusoidal":
        table = sinusoidal_positions(config.block_size, config.n_embd)
        out["model.encoder.embed_positions.weight"] = table
        out["model.decoder.embed_positions.weight"] = table.clone()
    if "final_logits_bias" not in out:
        out["final_logits_bias"] = torch.zeros(1, config.vocab_size)
    return out
