"""ggml's block-quantized tensor types, decoded with vectorized torch ops.

Each type stores a row in blocks of 32 values (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
or 256-value "super-blocks" of 8 or 16 sub-blocks with their own small scales
(the k-quants Q4_K, Q5_K, Q6_K). The layouts below are ggml's block structs;
they are format facts, checked value for value against the ``gguf`` package's
numpy reference in the tests. Decoding whole tensors with torch ops (rather
than per block) takes SmolLM2's 135M weights in well under a second.

Two ways out of a GGUF tensor:

- ``dequantize`` -> float32 (rows, cols);
- ``int4_groups`` -> 4-bit codes with one (scale, zero) per 32 values, exactly
  the tensor's own numbers, for the types whose values are affine in a 4-bit
  code per 32-value group (Q4_0, Q4_1, Q4_K). ``models/quantize.py`` packs them
  for torch's int4 kernel without a round trip through float32.
"""

from __future__ import annotations

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.interop.gguf_file import GGUFTensor

# Types with exact 4-bit codes per group of 32: code q in 0..15, value = scale * (q - 8) + zero.
INT4_TYPES = ("Q4_0", "Q4_1", "Q4_K")
FLOAT_TYPES = ("F32", "F16", "BF16")
DEQUANTIZED_TYPES = FLOAT_TYPES + ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K",
                                   "Q6_K")


def _blocks(t: GGUFTensor, block_bytes: int) -> torch.Tensor:
    """The tensor's bytes as (n_blocks, block_bytes) uint8, copied out of the memory map."""
    raw = torch.from_numpy(np.array(t.data, copy=True))
    return raw.view(-1, block_bytes)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(n, 2) bytes -> (n, 1) float32 from little-endian float16."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Low and high 4 bits of each byte, as int16 (room for the 5th/6th bits added later)."""
    q = qs.to(torch.int16)
    return q & 0xF, q >> 4


def _bits(b: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 8k) bits, bit j of the little-endian word at column j."""
    shifts = torch.arange(8, dtype=torch.int16)
    return ((b.to(torch.int16)[:, :, None] >> shifts) & 1).flatten(1)


def _k_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> eight 6-bit scales and eight 6-bit mins, (n, 8) each.

    Sub-blocks 0-3 keep their scale and min in the low 6 bits of bytes 0-3 and
    4-7; sub-blocks 4-7 have their low 4 bits in bytes 8-11 and their top 2 bits
    in the spare top bits of bytes 0-7.
    """
    s = s.to(torch.int16)
    s0, s1, s2 = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scale = torch.cat([s0 & 63, (s2 & 0xF) | ((s0 >> 6) << 4)], dim=1)
    mins = torch.cat([s1 & 63, (s2 >> 4) | ((s1 >> 6) << 4)], dim=1)
    return scale.float(), mins.float()


def _q4_0(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # struct { f16 d; u8 qs[16]; }: value j = d * (nibble - 8), low nibbles first
    d = _f16(b[:, 0:2])
    lo, hi = _nibbles(b[:, 2:18])
    return torch.cat([lo, hi], dim=1), d, torch.zeros_like(d)


def _q4_1(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # struct { f16 d; f16 m; u8 qs[16]; }: value = d * nibble + m
    d, m = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    lo, hi = _nibbles(b[:, 4:20])
    return torch.cat([lo, hi], dim=1), d, m + 8 * d


def _q4_k(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # struct { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }, 8 sub-blocks of 32:
    # value = d * scale_s * nibble - dmin * min_s. Byte run j (32 bytes) holds
    # sub-block 2j in its low nibbles and 2j + 1 in its high ones.
    n = b.size(0)
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scales(b[:, 4:16])
    lo, hi = _nibbles(b[:, 16:144].reshape(n, 4, 32))
    q = torch.stack([lo, hi], dim=2).reshape(n * 8, 32)  # one row per sub-block
    scale = (d * sc).reshape(-1, 1)  # (n * 8, 1)
    return q, scale, 8 * scale - (dmin * mn).reshape(-1, 1)


def int4_groups(t: GGUFTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Q4_0/Q4_1/Q4_K tensor (N, K) as codes, scales and zeros of 32-value groups.

    Returns ``q`` uint8 (N, K) in 0..15 and ``scale``, ``zero`` float32
    (N, K // 32), with value = scale * (q - 8) + zero exactly (in float32).
    """
    if t.type not in INT4_TYPES:
        raise LmlabError(f"tensor {t.name} is {t.type}, not one of {', '.join(INT4_TYPES)}")
    fn, size = {"Q4_0": (_q4_0, 18), "Q4_1": (_q4_1, 20), "Q4_K": (_q4_k, 144)}[t.type]
    q, scale, zero = fn(_blocks(t, size))  # (groups, 32), (groups, 1), (groups, 1)
    N, K = t.shape
    return (q.to(torch.uint8).reshape(N, K), scale.reshape(N, K // 32),
            zero.reshape(N, K // 32))


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    # struct { f16 d; i8 qs[32]; }
    return _f16(b[:, 0:2]) * b[:, 2:34].contiguous().view(torch.int8).float()


def _q5(b: torch.Tensor, with_min: bool) -> torch.Tensor:
    # Q5_0 struct { f16 d; u8 qh[4]; u8 qs[16]; }: value = d * (code - 16);
    # Q5_1 struct { f16 d; f16 m; u8 qh[4]; u8 qs[16]; }: value = d * code + m.
    # code j = nibble j | bit j of qh << 4 (low nibbles are values 0-15).
    d = _f16(b[:, 0:2])
    at = 4 if with_min else 2
    high = _bits(b[:, at:at + 4]) << 4  # (n, 32)
    lo, hi = _nibbles(b[:, at + 4:at + 20])
    code = (torch.cat([lo, hi], dim=1) | high).float()
    return d * code + _f16(b[:, 2:4]) if with_min else d * (code - 16)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    # struct { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }: Q4_K plus a
    # fifth bit per value, sub-block s taking bit s of each of the 32 qh bytes.
    n = b.size(0)
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scales(b[:, 4:16])
    shifts = torch.arange(8, dtype=torch.int16)[None, :, None]
    high = ((b[:, 16:48].to(torch.int16)[:, None, :] >> shifts) & 1) << 4  # (n, 8, 32)
    lo, hi = _nibbles(b[:, 48:176].reshape(n, 4, 32))
    code = (torch.stack([lo, hi], dim=2).reshape(n, 8, 32) | high).float()
    return ((d * sc)[:, :, None] * code - (dmin * mn)[:, :, None]).reshape(n, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    # struct { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }: code = 4 low bits from
    # ql | 2 high bits from qh, value = d * scale[o // 16] * (code - 32). Each half
    # (128 values) uses 64 ql bytes (runs A, B of 32) and 32 qh bytes: values 0-31
    # are A's low nibbles, 32-63 B's low, 64-95 A's high, 96-127 B's high, with
    # qh bit pairs 0-1, 2-3, 4-5, 6-7 on top.
    n = b.size(0)
    ql = b[:, 0:128].to(torch.int16).reshape(n, 2, 2, 32)
    qh = b[:, 128:192].to(torch.int16).reshape(n, 2, 32)
    a, bb = ql[:, :, 0], ql[:, :, 1]
    code = torch.stack([(a & 0xF) | ((qh & 3) << 4),
                        (bb & 0xF) | (((qh >> 2) & 3) << 4),
                        (a >> 4) | (((qh >> 4) & 3) << 4),
                        (bb >> 4) | (((qh >> 6) & 3) << 4)], dim=2)  # (n, 2, 4, 32)
    scales = b[:, 192:208].contiguous().view(torch.int8).float()  # (n, 16): one per 16 values
    d = _f16(b[:, 208:210])
    return (d * scales).repeat_interleave(16, dim=1) * (code.reshape(n, 256) - 32).float()


def dequantize(t: GGUFTensor) -> torch.Tensor:
    """A GGUF tensor as float32 in torch's (rows, cols) order; a new tensor, not a view."""
    if t.type == "F32":
        out = torch.from_numpy(np.array(t.data, copy=True)).view(torch.float32)
    elif t.type == "F16":
        out = torch.from_numpy(np.array(t.data, copy=True)).view(torch.float16).float()
    elif t.type == "BF16":
        out = torch.from_numpy(np.array(t.data, copy=True)).view(torch.bfloat16).float()
    elif t.type in INT4_TYPES:
        q, scale, zero = int4_groups(t)
        N, K = t.shape
        out = ((q.view(N, K // 32, 32).float() - 8) * scale[..., None] + zero[..., None])
    elif t.type == "Q8_0":
        out = _q8_0(_blocks(t, 34))
    elif t.type in ("Q5_0", "Q5_1"):
        out = _q5(_blocks(t, 22 if t.type == "Q5_0" else 24), with_min=t.type == "Q5_1")
    elif t.type == "Q5_K":
        out = _q5_k(_blocks(t, 176))
    elif t.type == "Q6_K":
        out = _q6_k(_blocks(t, 210))
    else:
        raise LmlabError(f"tensor {t.name} has type {t.type}, which lmlab cannot decode "
                         f"(supported: {', '.join(DEQUANTIZED_TYPES)})")
    return out.reshape(t.shape)
