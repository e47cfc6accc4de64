"""``Linear``: an ``nn.Linear`` whose float32 inference on a CPU goes through oneDNN.

Decoding multiplies a few rows of activations by each weight matrix (a GEMV),
so its speed is the rate at which the weights stream from memory. torch's
``F.linear`` hands float32 to MKL, whose GEMV measured 10-12 GB/s with 2
threads on an AMD EPYC (AVX-512) whatever the thread count, against 27-30
GB/s for a plain read of the same bytes; oneDNN's linear (the kernel
``torch.compile`` itself emits for CPU linears) streamed the same matrices at
19-25 GB/s for 1 row and 1.4-3.6x faster than MKL up to 32 rows
(``benchmarks/bench_gguf.py`` prints both). That is why HF's GPT-2, whose
Conv1D multiplies by the transposed layout through another MKL path, decoded
faster than lmlab there.

The swap is by subclass, so everything that looks for ``nn.Linear`` (int8/int4
quantization, LoRA, the converters) sees an ordinary Linear; training, any
tensor that needs a gradient, other dtypes and devices, and more rows than
``ONEDNN_MAX_ROWS`` take ``F.linear`` as before. ``LMLAB_CPU_LINEAR=mkl``
turns the oneDNN path off (to compare the two on another CPU).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

# torch.ops.mkldnn exists in every x86 build of torch; the op may not elsewhere.
_ONEDNN = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
ONEDNN_MAX_ROWS = 32


def onednn_enabled() -> bool:
    return _ONEDNN is not None and os.environ.get("LMLAB_CPU_LINEAR", "onednn") != "mkl"


_ENABLED = onednn_enabled()

if _ONEDNN is not None:
    # Inductor lowers the oneDNN op only for weights frozen into the graph; as a custom
    # op it stays one opaque call, with the weight an ordinary input.
    @torch.library.custom_op("lmlab::onednn_linear", mutates_args=())
    def _onednn_linear(x: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
        return _ONEDNN(x, weight, bias, "none", [], "")

    @_onednn_linear.register_fake
    def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], weight.size(0)))


class Linear(nn.Linear):
    """``nn.Linear`` with the oneDNN fast path for few-row float32 CPU inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (_ENABLED and x.device.type == "cpu" and x.dtype == torch.float32
                and w.dtype == torch.float32 and x.numel() <= ONEDNN_MAX_ROWS * x.size(-1)
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
            if torch.compiler.is_compiling():
                return torch.ops.lmlab.onednn_linear(x, w, self.bias)
            return _ONEDNN(x, w, self.bias, "none", [], "")
        return F.linear(x, w, self.bias)
