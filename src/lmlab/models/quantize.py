"""Weight-only int8 and int4 quantization for inference: swap every ``nn.Linear`` in place.

Batch-1 decoding reads every weight matrix once per token, so on a CPU its speed
is set by memory bandwidth, not arithmetic. Storing the weights as int8 with one
float scale per output row (symmetric, "per-channel") reads ~4x fewer bytes than
float32; int4 with a scale and a zero point per group of 32 (or 64...) inputs
reads ~7x fewer. Activations, norms, embeddings and biases stay in float.

    model = load_model(ckpt)
    quantize_int4(model)          # explicit step; the model is changed in place
    generate(model, prompt, 64)   # unchanged decoding code

Both use torch's CPU weight-only kernels (``_weight_int8pack_mm``,
``_weight_int4pack_mm_for_cpu``), which are vectorized for bfloat16 activations
only: a float32 input is rounded to bf16 for them (a relative error of 2^-9 per
element, below the weights' own). Long inputs (a prompt, an evaluation) take a
dequantize-then-matmul path instead, where float32 stays float32.

Shapes: M rows of activations (batch x tokens, flattened), K = in_features,
N = out_features, G = K / group_size groups per row.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
import torch.nn as nn
import torch.nn.functional as F

# torch's CPU weight-only int8 GEMM, y = x @ (q * s[:, None]).T with q int8 (N, K).
# Private API: absent from older or other builds, in which case the plain
# dequantize-matmul path is used.
_INT8_MM = getattr(torch.ops.aten, "_weight_int8pack_mm", None)

# Measured on an AVX-512 CPU (torch 2.13): the kernel is vectorized only for
# bfloat16 activations. With float32 or float16 ones it runs a scalar loop that
# is 10-20x slower than a float32 matmul, so float32 inputs are rounded to bf16
# for it (a relative error of 2^-9 per element, below int8's weight error).
_KERNEL_DTYPES = (torch.float32, torch.bfloat16)
# The kernel streams the weights once per row block like a GEMV; from ~32-64
# rows on (a long prompt, evaluation) dequantizing and calling the float GEMM
# is faster. Decoding (M = batch size) stays far below this.
_KERNEL_MAX_ROWS = 32

_QMAX = 127  # symmetric range -127..127: -128 is left unused so that q -> -q is exact


def quantize_weight_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-row symmetric int8 quantization of a (N, K) weight.

    Returns ``(q, scales)``: q int8 (N, K) and scales bfloat16 (N,), with
    weight ~= q * scales[:, None]. The scales are bfloat16 because that is what
    the fast kernel takes; q is rounded against the bf16-rounded scale, so the
    two forward paths compute with exactly the same dequantized weight.
    """
    w = weight.detach().float()  # (N, K)
    amax = w.abs().amax(dim=1)  # (N,)
    # An all-zero row gets any positive scale (its q is 0 either way).
    scales = (amax / _QMAX).clamp(min=torch.finfo(torch.bfloat16).tiny).to(torch.bfloat16)
    q = torch.round(w / scales.float()[:, None]).clamp(-_QMAX, _QMAX).to(torch.int8)
    return q, scales


def quantization_error(weight: torch.Tensor) -> float:
    """Relative Frobenius error ||W - dequant(quant(W))|| / ||W|| of int8 quantization."""
    q, scales = quantize_weight_int8(weight)
    w = weight.detach().float()
    err = w - q.float() * scales.float()[:, None]
    return (err.norm() / w.norm().clamp(min=1e-30)).item()


class WeightOnlyInt8Linear(nn.Module):
    """A ``nn.Linear`` whose weight is int8 with per-output-row scales; for inference.

    Buffers (no parameters, nothing to train): ``weight`` int8 (N, K),
    ``scales`` (N,) and ``bias`` (N,) or None in the original float dtype.
    Outputs have the input's dtype.
    """

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None = None, use_kernel: bool = True) -> None:
        super().__init__()
        if weight.dtype != torch.int8 or weight.dim() != 2:
            raise ValueError(f"weight must be a 2-d int8 tensor, got {weight.dtype} "
                             f"{tuple(weight.shape)}")
        if scales.shape != weight.shape[:1]:
            raise ValueError(f"scales must be ({weight.size(0)},), got {tuple(scales.shape)}")
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if bias is None else bias.detach())
        # False forces the dequantize-matmul path (tests compare the two paths).
        self.use_kernel = use_kernel

    @classmethod
    def from_linear(cls, linear: nn.Linear, use_kernel: bool = True) -> WeightOnlyInt8Linear:
        """Quantize ``linear``'s weight; its bias is kept as it is (float)."""
        q, scales = quantize_weight_int8(linear.weight)
        return cls(q, scales, linear.bias, use_kernel=use_kernel)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (N, K) this module multiplies by, in ``dtype``."""
        return self.weight.to(dtype) * self.scales.to(dtype)[:, None]

    def _kernel_applies(self, x: torch.Tensor) -> bool:
        return (self.use_kernel and _INT8_MM is not None and x.device.type == "cpu"
                and x.dtype in _KERNEL_DTYPES and 0 < x.size(0) <= _KERNEL_MAX_ROWS
                # The kernel has no backward; autograd through x takes the plain path.
                and not (x.requires_grad and torch.is_grad_enabled()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, K = x.shape
        x2 = x.reshape(-1, K)  # (M, K)
        if self._kernel_applies(x2):
            y = _INT8_MM(x2.to(torch.bfloat16).contiguous(), self.weight,
                         self.scales.to(torch.bfloat16))  # (M, N) bf16
            y = y.to(x.dtype)
        else:
            # Scale the (M, N) output rather than the (N, K) weight: same result,
            # N*M multiplies instead of N*K.
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scales.to(x.dtype)  # (M, N)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


def _skipped(name: str, skip: Collection[str]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def _swap_linears(model: nn.Module, skip: Collection[str],
                  make: Callable[[str, nn.Linear, dict[int, object]], nn.Module]) -> None:
    """Replace each ``nn.Linear`` of ``model`` not in ``skip`` by ``make(name, linear, shared)``.

    ``shared`` is one dict for the whole model, keyed by ``id(weight)``, so Linears
    that share a weight can share its quantized copy.
    """
    shared: dict[int, object] = {}
    targets = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, nn.Linear) and not _skipped(name, skip)
               and ".lora_" not in name]  # LoRA adapters stay float (models/lora.py)
    for name, linear in targets:
        if not name:
            raise ValueError("quantization swaps submodules in place; quantize a bare "
                             "nn.Linear with the module's from_linear")
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(name, linear, shared))


@torch.no_grad()
def quantize_int8(model: nn.Module, skip: Collection[str] = (),
                  use_kernel: bool = True) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` by a ``WeightOnlyInt8Linear``, in place.

    ``skip`` names modules to keep in float (a name also covers the modules
    under it, e.g. ``"lm_head"`` or ``"transformer.h.0"``). Only Linear layers
    change: embeddings, norms and biases stay float. A weight shared between a
    Linear and another module (GPT's lm_head tied to the token embedding) is
    quantized into a separate int8 copy for the Linear and the embedding stays
    float; Linears sharing one weight share one int8 copy. The float weights of
    the replaced Linears are freed unless something else holds them.

    Returns ``model``, for chaining. Meant for inference: the new modules have
    no parameters to train.
    """
    def make(name: str, linear: nn.Linear, shared: dict[int, object]) -> nn.Module:
        key = id(linear.weight)
        if key not in shared:
            shared[key] = quantize_weight_int8(linear.weight)
        q, scales = shared[key]
        return WeightOnlyInt8Linear(q, scales, linear.bias, use_kernel=use_kernel)

    _swap_linears(model, skip, make)
    return model


# ---------------------------------------------------------------------------- int4

_INT4_MM = getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None)
_INT4_PACK = getattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", None)
# The CPU kernel's packed layout (torch 2.13): rows in blocks of 64, and for each
# input k, 32 bytes whose low nibbles are rows 0-31 of the block and high nibbles
# rows 32-63. Row counts are padded to a multiple of 64 (the padding rows are
# zero and their outputs are cut off). `_pack_int4` checks this layout against
# the op once, so a torch that changes it falls back to the plain path.
_INT4_BLOCK_N = 64
_INT4_MAX_ROWS = 32  # as for int8: beyond this, dequantize + float GEMM wins
_INT4_GROUP_SIZES = (32, 64, 128, 256)


def quantize_weight_int4(weight: torch.Tensor, group_size: int = 32
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit quantization of a (N, K) weight, one scale and zero per group.

    Returns ``(q, scale, zero)``: q uint8 (N, K) in 0..15 and scale, zero
    bfloat16 (N, K // group_size), with weight ~= scale * (q - 8) + zero (the
    kernel's formula). A group's range [min, max] maps onto 0..15; q is rounded
    against the bf16-rounded scale and zero, so the kernel and the plain path
    compute with the same dequantized weight.
    """
    N, K = weight.shape
    if K % group_size:
        raise ValueError(f"in_features {K} is not a multiple of the group size {group_size}")
    w = weight.detach().float().view(N, K // group_size, group_size)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)  # (N, G)
    scale = ((hi - lo) / 15).clamp(min=torch.finfo(torch.bfloat16).tiny).to(torch.bfloat16)
    zero = (lo + 8 * scale.float()).to(torch.bfloat16)
    base = zero.float() - 8 * scale.float()  # the value of code 0
    q = torch.round((w - base[..., None]) / scale.float()[..., None]).clamp(0, 15)
    return q.to(torch.uint8).view(N, K), scale, zero


def _pack_int4_layout(q: torch.Tensor) -> torch.Tensor:
    """(N, K) codes, N a multiple of 64 -> the kernel's (N, K / 2) uint8 layout."""
    N, K = q.shape
    blocks = q.view(N // _INT4_BLOCK_N, 2, 32, K)  # (N/64, half, row, k)
    packed = blocks[:, 0] | (blocks[:, 1] << 4)  # (N/64, 32, K)
    return packed.transpose(1, 2).contiguous().view(N, K // 2)


def _unpack_int4_layout(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `_pack_int4_layout`: (N, K / 2) uint8 -> (N, K) codes."""
    N, half_k = packed.shape
    K = 2 * half_k
    b = packed.view(N // _INT4_BLOCK_N, K, 32).transpose(1, 2)  # (N/64, 32, K)
    return torch.stack([b & 0xF, b >> 4], dim=1).reshape(N, K)


_layout_ok: bool | None = None


def _kernel_layout_ok() -> bool:
    """Whether torch's int4 packing matches `_pack_int4_layout` (checked once)."""
    global _layout_ok
    if _layout_ok is None:
        _layout_ok = False
        if _INT4_PACK is not None and _INT4_MM is not None:
            q = torch.randint(0, 16, (_INT4_BLOCK_N, 64), dtype=torch.uint8)
            try:
                theirs = _INT4_PACK(q.int(), 1)
            except RuntimeError:
                return False
            _layout_ok = theirs.shape == (64, 32) and bool(
                torch.equal(theirs, _pack_int4_layout(q)))
    return _layout_ok


class WeightOnlyInt4Linear(nn.Module):
    """A ``nn.Linear`` whose weight is 4-bit with a scale and zero per group; for inference.

    Buffers: ``weight`` uint8 (N', K / 2), the codes packed two per byte in the
    CPU kernel's layout (N' = N rounded up to 64); ``scales_and_zeros``
    bfloat16 (G, N', 2), as the kernel takes them; ``bias`` (N,) or None.
    Value = scale * (code - 8) + zero. Outputs have the input's dtype.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                 bias: torch.Tensor | None = None, use_kernel: bool = True) -> None:
        super().__init__()
        N, K = q.shape
        G = scale.size(1)
        if scale.shape != (N, G) or zero.shape != (N, G) or K % G or K // G not in \
                _INT4_GROUP_SIZES:
            raise ValueError(f"bad int4 groups: codes {tuple(q.shape)}, scales "
                             f"{tuple(scale.shape)}, zeros {tuple(zero.shape)}")
        self.out_features, self.in_features, self.group_size = N, K, K // G
        pad = -N % _INT4_BLOCK_N
        q = F.pad(q.to(torch.uint8), (0, 0, 0, pad))
        sz = torch.stack([scale, zero], dim=-1).to(torch.bfloat16)  # (N, G, 2)
        sz = F.pad(sz, (0, 0, 0, 0, 0, pad)).transpose(0, 1).contiguous()  # (G, N', 2)
        self.register_buffer("weight", _pack_int4_layout(q))
        self.register_buffer("scales_and_zeros", sz)
        self.register_buffer("bias", None if bias is None else bias.detach())
        self.use_kernel = use_kernel

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32,
                    use_kernel: bool = True) -> WeightOnlyInt4Linear:
        """Quantize ``linear``'s weight in groups of ``group_size`` inputs; bias kept."""
        q, scale, zero = quantize_weight_int4(linear.weight, group_size)
        return cls(q, scale, zero, linear.bias, use_kernel=use_kernel)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (N, K) this module multiplies by, in ``dtype``."""
        N, K, gs = self.out_features, self.in_features, self.group_size
        q = _unpack_int4_layout(self.weight)[:N].to(dtype).view(N, K // gs, gs)
        sz = self.scales_and_zeros[:, :N].to(dtype)  # (G, N, 2)
        scale, zero = sz[..., 0].t()[..., None], sz[..., 1].t()[..., None]  # (N, G, 1)
        return ((q - 8) * scale + zero).view(N, K)

    def _kernel_applies(self, x: torch.Tensor) -> bool:
        return (self.use_kernel and x.device.type == "cpu" and _kernel_layout_ok()
                and x.dtype in _KERNEL_DTYPES and 0 < x.size(0) <= _INT4_MAX_ROWS
                and not (x.requires_grad and torch.is_grad_enabled()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, K = x.shape
        x2 = x.reshape(-1, K)  # (M, K)
        if self._kernel_applies(x2):
            y = _INT4_MM(x2.to(torch.bfloat16).contiguous(), self.weight, self.group_size,
                         self.scales_and_zeros.to(torch.bfloat16))  # (M, N') bf16
            y = y[:, :self.out_features].to(x.dtype)
        else:
            y = F.linear(x2, self.dequantize(x.dtype))  # (M, N)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


def pack_rows(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Codes (N, K) and float scales/zeros (N, G) as one uint8 (N, K + 8G) tensor.

    Row operations (concatenating q, k and v; permuting q/k rows) then apply to a
    4-bit weight exactly as to a float one: the GGUF loader moves such rows
    through the same converter as float weights. `unpack_rows` undoes it.
    """
    sz = torch.cat([scale.float(), zero.float()], dim=1).contiguous()  # (N, 2G)
    return torch.cat([q.to(torch.uint8), sz.view(torch.uint8)], dim=1)


def unpack_rows(rows: torch.Tensor, in_features: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `pack_rows`: (q, scale, zero)."""
    q = rows[:, :in_features]
    sz = rows[:, in_features:].contiguous().view(torch.float32)  # (N, 2G)
    scale, zero = sz.chunk(2, dim=1)
    return q, scale, zero


@torch.no_grad()
def quantize_int4(model: nn.Module, group_size: int = 32, skip: Collection[str] = (),
                  packed: dict[str, torch.Tensor] | None = None,
                  use_kernel: bool = True, head_int8: bool = True) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` by a ``WeightOnlyInt4Linear``, in place.

    As `quantize_int8` (``skip``, tied and shared weights). ``packed`` maps
    module names to weights already in 4-bit groups (`pack_rows`, from a GGUF's
    Q4 tensors): those are used as they are, not quantized again. A Linear whose
    in_features is not a multiple of ``group_size`` (and has no packed weight)
    gets int8 instead, and so does the output layer ``lm_head`` with
    ``head_int8`` (unless ``packed`` has it): the logits are where 4 bits cost
    most. Measured on SmolLM2-135M (held-out perplexity against float32): every
    Linear in 4 bits +6.0%, the output layer in 8 bits +0.25%, for 13% more
    bytes per token. llama.cpp's Q4_K_M files keep theirs in 6 or 8 bits too.
    Returns ``model``.
    """
    if group_size not in _INT4_GROUP_SIZES:
        raise ValueError(f"group size {group_size} is not one of {_INT4_GROUP_SIZES}")
    packed = packed or {}

    def make(name: str, linear: nn.Linear, shared: dict[int, object]) -> nn.Module:
        if name in packed:
            q, scale, zero = unpack_rows(packed[name], linear.in_features)
            return WeightOnlyInt4Linear(q, scale, zero, linear.bias, use_kernel=use_kernel)
        if linear.in_features % group_size or (head_int8 and name == "lm_head"):
            q8, s8 = quantize_weight_int8(linear.weight)
            return WeightOnlyInt8Linear(q8, s8, linear.bias, use_kernel=use_kernel)
        key = id(linear.weight)
        if key not in shared:
            shared[key] = quantize_weight_int4(linear.weight, group_size)
        q, scale, zero = shared[key]
        return WeightOnlyInt4Linear(q, scale, zero, linear.bias, use_kernel=use_kernel)

    _swap_linears(model, skip, make)
    return model
