"""The output layer and its cross-entropy in one pass, chunk by chunk.

A language model's last step turns N hidden states (N, C) into N x V logits and
a softmax over V: with SmolLM2's 49,152-token vocabulary and a few thousand
tokens a step, the logits alone are hundreds of megabytes, written once,
normalised, kept for backward, and a gradient of the same size is zero-filled
and written again. Since the loss is the last thing computed, its gradient can
be taken right away (the softmax minus the one-hot label, per row): for each
chunk of rows, ``logits = h W^T``, the loss from their log-softmax, and the
gradients ``dh = (p - y) W`` and ``dW = (p - y)^T h`` (when W trains) are all
computed in the forward pass, and the chunk's logits are dropped. Backward only
scales the stored gradients by the incoming one. Same loss and gradients as
``F.cross_entropy(F.linear(h, W, b), labels, label_smoothing=eps)`` up to float
rounding, with no N x V
tensor alive beyond one chunk (Liger-Kernel's "fused linear cross-entropy" did
this on GPUs; here it is the same arithmetic in PyTorch).

Label smoothing (Szegedy et al. 2016, as ``F.cross_entropy`` defines it) mixes the
one-hot target with the uniform one: a row's loss is ``(1 - eps) (lse - z_y) +
eps (lse - mean(z))`` and its gradient ``p - (1 - eps) y - eps / V``, still one
pass over the chunk's logits, where the unfused loss reads and writes the (N, V)
tensors some eight times (log-softmax, the two terms, their backward, the sum).
"""

from __future__ import annotations

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                labels: torch.Tensor, chunk: int, reduction: str, grad: bool,
                smoothing: float) -> torch.Tensor:
        N = h.size(0)
        scale = 1.0 / max(N, 1) if reduction == "mean" else 1.0
        # Under no_grad (validation) the loss alone: needs_input_grad still says True there.
        want_h = grad and ctx.needs_input_grad[0]
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros_like(weight) if grad and ctx.needs_input_grad[1] else None
        grad_b = (torch.zeros_like(bias, dtype=torch.float32)
                  if grad and bias is not None and ctx.needs_input_grad[2] else None)
        w = weight.to(h.dtype)  # under bf16 autocast the hidden states are bf16
        V = weight.size(0)
        total = h.new_zeros((), dtype=torch.float32)
        for start in range(0, N, chunk):
            hc = h[start:start + chunk]  # (n, C)
            yc = labels[start:start + chunk]  # (n,)
            logits = (hc @ w.t()).float()  # (n, V)
            if bias is not None:
                logits += bias.float()
            # One fused log-softmax pass (torch.logsumexp takes several, twice as long).
            logp = torch.log_softmax(logits, dim=-1)  # (n, V)
            del logits
            nll = -logp.gather(1, yc[:, None]).squeeze(1)  # (n,)
            if smoothing:  # the uniform target's cross-entropy is -mean(log p)
                total += ((1 - smoothing) * nll - smoothing * logp.mean(dim=-1)).sum()
            else:
                total += nll.sum()
            if not want_h and grad_w is None and grad_b is None:
                continue
            # d loss / d logits = softmax - the smoothed one-hot, in place over log p.
            probs = logp.exp_()
            if smoothing:
                probs -= smoothing / V
            probs[torch.arange(len(yc), device=h.device), yc] -= 1.0 - smoothing
            if scale != 1.0:
                probs.mul_(scale)
            if grad_b is not None:
                grad_b += probs.sum(dim=0).view_as(grad_b)
            probs = probs.to(h.dtype)
            if grad_h is not None:
                grad_h[start:start + chunk] = probs @ w  # (n, C)
            if grad_w is not None:
                grad_w.addmm_(probs.t().to(grad_w.dtype), hc.to(grad_w.dtype))  # (V, C)
        empty = h.new_empty(0)
        ctx.save_for_backward(*(g if g is not None else empty for g in (grad_h, grad_w, grad_b)))
        ctx.has_grad = (grad_h is not None, grad_w is not None, grad_b is not None)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grads = [g * grad_out.to(g.dtype) if has else None
                 for g, has in zip(ctx.saved_tensors, ctx.has_grad, strict=True)]
        return (*grads, None, None, None, None, None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         bias: torch.Tensor | None = None, label_smoothing: float = 0.0,
                         chunk: int = 1024, reduction: str = "mean") -> torch.Tensor:
    """``F.cross_entropy(F.linear(h, weight, bias), labels, label_smoothing=...)`` for
    hidden states h (N, C), the output layer's weight (V, C), an optional bias (V,) or
    (1, V) and labels (N,), without holding the (N, V) logits (see the module
    docstring). ``reduction``: mean or sum."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction {reduction!r}: use mean or sum")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing {label_smoothing}: must be in [0, 1]")
    return _LinearCrossEntropy.apply(h, weight, bias, labels, chunk, reduction,
                                     torch.is_grad_enabled(), float(label_smoothing))
