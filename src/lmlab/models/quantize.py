"""Weight-only int8 quantization for inference: swap every ``nn.Linear`` in place.

Batch-1 decoding reads every weight matrix once per token, so on a CPU its speed
is set by memory bandwidth, not arithmetic. Storing the weights as int8 with one
float scale per output row (symmetric, "per-channel") reads ~4x fewer bytes than
float32; activations, norms, embeddings and biases stay in float.

    model = load_model(ckpt)
    quantize_int8(model)          # explicit step; the model is changed in place
    generate(model, prompt, 64)   # unchanged decoding code

Shapes: M rows of activations (batch x tokens, flattened), K = in_features,
N = out_features.
"""

from __future__ import annotations

from collections.abc import Collection

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
    shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(float weight) -> (q, scales)
    targets = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, nn.Linear) and not _skipped(name, skip)
               and ".lora_" not in name]  # LoRA adapters stay float (models/lora.py)
    for name, linear in targets:
        if not name:
            raise ValueError("quantize_int8 swaps submodules in place; quantize a bare "
                             "nn.Linear with WeightOnlyInt8Linear.from_linear")
        key = id(linear.weight)
        if key not in shared:
            shared[key] = quantize_weight_int8(linear.weight)
        q, scales = shared[key]
        new = WeightOnlyInt8Linear(q, scales, linear.bias, use_kernel=use_kernel)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model
