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
tensor that needs a gradient, other dtypes and devices, more rows than
``ONEDNN_MAX_ROWS`` and products smaller than ``ONEDNN_MIN_MACS`` take
``F.linear`` as before. ``LMLAB_CPU_LINEAR=mkl`` turns the oneDNN path off (to
compare the two on another CPU).

In eval mode the weight is handed to oneDNN pre-packed: reordered once into
the blocked layout its kernel reads (``torch.ops.mkldnn._reorder_linear_weight``,
laid out for ``PACK_ROWS`` rows) and kept beside the weight until the weight
changes (a new tensor, or an in-place update: its version counter) or the
module goes back to training. Handed the plain layout, oneDNN reorders or reads
it the slow way on every call. Pre-packed, on an AMD EPYC with 2 threads, the
products of a beam step (32 rows at 256 wide, and an 8,000-row output layer)
took 0.6-0.8x the time of the plain layout, 8-row products of GPT-2's shapes
0.55-0.75x, and against MKL, 64 to 256 rows took 0.3-0.85x for weights of
768 x 256 and up (even at 256 x 256). The packed copies cost their weights'
bytes again, so they are held within a budget for the process
(``LMLAB_PACK_BUDGET_MB``, 2,048 MiB by default; 0 turns packing off): past
it, a weight is used as it is.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# torch.ops.mkldnn exists in every x86 build of torch; the op may not elsewhere.
_ONEDNN = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_ONEDNN_ADD = getattr(_ONEDNN, "binary", None)  # the product, then + another tensor
ONEDNN_MAX_ROWS = 256
PACK_ROWS = 32  # the rows oneDNN lays a packed weight out for (faster for 1-256 rows)
# Products of fewer multiply-adds (rows x weight elements) stay with MKL: oneDNN's call
# costs about 30 us before any arithmetic, MKL's under 10 (AMD EPYC, 2 threads): at 32
# rows a 256 x 256 weight is even between them; at 1 row MKL is ahead up to ~768 x 768.
ONEDNN_MIN_MACS = 2**20


def onednn_enabled() -> bool:
    return (_ONEDNN is not None and _ONEDNN_ADD is not None
            and os.environ.get("LMLAB_CPU_LINEAR", "onednn") != "mkl")


_ENABLED = onednn_enabled()
_REORDER = getattr(getattr(torch.ops, "mkldnn", None), "_reorder_linear_weight", None)
PACK_BUDGET = int(os.environ.get("LMLAB_PACK_BUDGET_MB", "2048")) * 2**20
_packed_bytes = 0  # held by the packed weights alive now
_LOCK = threading.RLock()  # reentrant: freeing a stale copy runs _release at once


def _release(nbytes: int) -> None:
    global _packed_bytes
    with _LOCK:
        _packed_bytes -= nbytes


def _stamp(tensors: tuple[torch.Tensor, ...]) -> tuple | None:
    """What tells whether ``tensors`` still hold the values seen now: each tensor (kept
    alive, so that no new tensor can take its memory) with its version counter, which
    in-place updates move. None for inference-mode tensors, which have no counter."""
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((t.detach(), t._version) for t in tensors)


def _unchanged(stamp: tuple | None, tensors: tuple[torch.Tensor, ...]) -> bool:
    return stamp is not None and len(stamp) == len(tensors) and all(
        seen.data_ptr() == t.data_ptr() and version == t._version
        for (seen, version), t in zip(stamp, tensors, strict=False))

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


def _fits_onednn(x: torch.Tensor, n: int, w: torch.Tensor) -> bool:
    """Whether a product of n input elements like x (rows of w's in_features) by the
    weight w takes oneDNN: float32 on the CPU, at most ``ONEDNN_MAX_ROWS`` rows and at
    least ``ONEDNN_MIN_MACS`` multiply-adds (gradients aside)."""
    return (_ENABLED and x.dtype is torch.float32 and w.dtype is torch.float32 and x.is_cpu
            and n <= ONEDNN_MAX_ROWS * w.size(1) and n * w.size(0) >= ONEDNN_MIN_MACS)


class Linear(nn.Linear):
    """``nn.Linear`` with the oneDNN fast path for few-row float32 CPU inference."""

    # (the weight seen, its version counter then, the weight packed for oneDNN), or None.
    _packed: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None, *,
                relu: bool = False, add: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features). ``bias`` (out_features,) is added
        too, inside the product: an output layer's bias that is not its own (Marian's
        ``final_logits_bias`` beside a weight tied to the embedding). ``relu`` applies
        it to the result and ``add`` (..., out_features) is added to it (a residual), in
        the product's own pass where oneDNN runs it: a decoding step's elementwise
        calls cost more than their arithmetic. The values are the separate calls'
        (bit-equal in a check on an AMD EPYC; the tests allow 1e-6)."""
        # A decoding step calls this some twenty times: the checks read what they need
        # once, the cheapest first.
        params = self._parameters
        w = params.get("weight")
        if w is None:  # parametrized (weight_norm, pruning): a property computes it
            w = self.weight
        try:
            own = params["bias"]
        except KeyError:  # parametrized too
            own = self.bias
        if bias is None:
            bias = own
        elif own is not None:
            bias = bias + own
        if (_fits_onednn(x, x.numel(), w) and not (torch.is_grad_enabled() and (
                x.requires_grad or w.requires_grad
                or (add is not None and add.requires_grad)))):
            if torch.compiler.is_compiling():
                y = torch.ops.lmlab.onednn_linear(x, w, bias)
            else:
                packed = self.onednn_weight(w)
                if add is not None and not relu and add.is_contiguous() \
                        and add.dtype is x.dtype and add.shape == (*x.shape[:-1], w.size(0)):
                    return _ONEDNN_ADD(x, add, packed, bias, "add")
                y = _ONEDNN(x, packed, bias, "relu" if relu else "none", [], "")
                relu = False
        else:
            y = F.linear(x, w, bias)
        return _then(y, relu, add)

    def onednn_weight(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """The weight ``w`` (the module's by default) as oneDNN should read it: pre-packed
        in eval mode within the budget (packed on first use, again after the weight
        changes), else as it is. A change made in place through ``.data`` moves no
        version counter: ``train()`` drops the packed copy (``eval()`` on a model
        already in eval mode keeps it: ``generate`` calls it each time)."""
        if w is None:
            w = self.weight
        held = self._packed  # the common case first: a decoding step asks ~20 times
        if (held is not None and not self.training and held[0].data_ptr() == w.data_ptr()
                and held[1] == w._version):
            return held[2]
        if self.training or _REORDER is None or w.is_inference():
            return w
        self._packed = held = None  # stale: its bytes go back to the budget, now
        nbytes = w.numel() * w.element_size()
        with _LOCK:
            if _packed_bytes + nbytes > PACK_BUDGET:
                return w
            with torch.no_grad():
                packed = _REORDER(w.detach(), PACK_ROWS)
            _account(packed, nbytes)
        # The weight seen is kept alive, so that no new tensor takes its memory (and its
        # data pointer) while the copy is held.
        self._packed = (w.detach(), w._version, packed)
        return packed

    def __getstate__(self) -> dict:
        # A copy (deepcopy, pickle) packs its own weight when it needs to: oneDNN's
        # opaque tensor has no storage to copy.
        state = dict(super().__getstate__())
        state.pop("_packed", None)
        return state

    def train(self, mode: bool = True) -> Linear:
        if mode or self.training:  # training changes the weights at every step
            self._packed = None
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 (nn.Module's)
        self._packed = None  # moved or cast (.to, .half): the copy is of the old tensor
        return super()._apply(fn, recurse)


def _account(packed: torch.Tensor, nbytes: int) -> None:
    global _packed_bytes
    with _LOCK:
        _packed_bytes += nbytes
    weakref.finalize(packed, _release, nbytes)


def linear_then(layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None, *,
                relu: bool = False, add: torch.Tensor | None = None) -> torch.Tensor:
    """``layer(x)`` plus another ``bias``, then ReLU with ``relu``, then ``+ add``: in the
    product's pass when the layer is a plain ``Linear`` (see ``Linear.forward``), as
    separate calls when it is an adapter or a quantized layer."""
    if type(layer) is Linear:
        return layer(x, bias, relu=relu, add=add)
    y = layer(x)
    return _then(y if bias is None else y + bias, relu, add)


def bound(layer: nn.Module, rows: int, like: torch.Tensor, *, relu: bool = False,
          add: bool = False) -> Callable[..., torch.Tensor]:
    """``linear_then(layer, x, relu=relu)`` as a function of x, or with ``add`` of (x,
    other), for inputs of ``rows`` rows of like's dtype and device, its checks made
    once, now: a beam search makes the same products at every step, and ``forward``'s
    checks and module call are a few microseconds of a 30-60 us product. The weights
    are taken as they are now, for as long as they hold still (a search's).

    A plain ``Linear`` at inference on oneDNN's path calls oneDNN with the packed
    weight, ReLU or the addition inside the product (``other`` is the output's
    shape); anything else (adapters, quantized layers, training, gradients on (the
    oneDNN op has no backward, and an input may need one through an adapter), other
    dtypes, too few or too many rows, ReLU and an addition together) goes through
    ``linear_then`` at each call."""
    if (type(layer) is Linear and not layer.training and not (relu and add)
            and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and _fits_onednn(like, rows * layer.in_features, layer.weight)):
        packed, b = layer.onednn_weight(layer.weight), layer.bias
        if add:  # other.contiguous(): oneDNN reads the addend as a dense block
            return lambda x, other: _ONEDNN_ADD(x, other.contiguous(), packed, b, "add")
        op = "relu" if relu else "none"
        return lambda x: _ONEDNN(x, packed, b, op, [], "")
    if add:
        return lambda x, other: linear_then(layer, x, relu=relu, add=other)
    return lambda x: linear_then(layer, x, relu=relu)


def _then(y: torch.Tensor, relu: bool, add: torch.Tensor | None) -> torch.Tensor:
    """ReLU of y with ``relu``, then ``+ add``: what oneDNN's post-operations do inside the
    product, as separate calls."""
    if relu:
        y = F.relu(y)
    return y if add is None else y + add


class Stacked:
    """Several Linears of one input as one product, for inference: their weights (and
    biases) stacked along the output in one ``Linear`` (``linear``), whose result the
    caller splits back or reads side by side. Three 256-wide
    projections of 32 rows took 1.5x the time of one 768-wide (oneDNN, pre-packed):
    each call has its fixed cost. Built on first use and again when any weight changes;
    the stacked copy costs the parts' bytes again (outside the packing budget). Not a
    module (not in the state dict, not trained)."""

    def __init__(self) -> None:
        self.built: tuple[tuple | None, Linear] | None = None  # (the parts' stamp, product)

    @staticmethod
    def fits(parts: tuple[nn.Module, ...]) -> bool:
        """Whether ``parts`` can be stacked: plain Linears (not LoRA's adapters or a
        quantized layer) with version counters, outside torch.compile (whose graph the
        counters would break)."""
        return (not torch.compiler.is_compiling()
                and all(type(p) is Linear and not p.weight.is_inference() for p in parts))

    def linear(self, parts: tuple[Linear, ...]) -> Linear:
        """The one Linear of the parts stacked, as their weights are now."""
        tensors = tuple(t for p in parts for t in (p.weight, p.bias) if t is not None)
        built = self.built
        if built is None or not _unchanged(built[0], tensors):
            # Made outside inference mode even within it (a beam search): a weight made
            # there has no version counter, and oneDNN's packed copy needs one.
            with torch.inference_mode(False), torch.no_grad():
                w = torch.cat([p.weight for p in parts])
                linear = Linear(w.size(1), w.size(0), bias=False, device="meta")
                linear.weight = nn.Parameter(w, requires_grad=False)
                if any(p.bias is not None for p in parts):
                    linear.bias = nn.Parameter(torch.cat(
                        [p.weight.new_zeros(p.out_features) if p.bias is None else p.bias
                         for p in parts]), requires_grad=False)
            built = self.built = (_stamp(tensors), linear.eval())
        return built[1]
