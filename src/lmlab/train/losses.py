"""The output layer and its cross-entropy in one pass, chunk by chunk.

A language model's last step turns N hidden states (N, C) into N x V logits and
a softmax over V: with SmolLM2's 49,152-token vocabulary and a few thousand
tokens a step, the logits alone are hundreds of megabytes, written once,
normalised, kept for backward, and a gradient of the same size is zero-filled
and written again. Since the loss is the last thing computed, its gradient can
be taken right away (the softmax minus the one-hot label, per row): for each
chunk of rows, ``logits = h W^T``, the loss from their log-sum-exp, and the
gradients ``dh = (p - y) W`` and ``dW = (p - y)^T h`` (when W trains) are all
computed in the forward pass, and the chunk's logits are dropped. Backward only
scales the stored gradients by the incoming one. Same loss and gradients as
``F.cross_entropy(F.linear(h, W), labels)`` up to float rounding, with no N x V
tensor alive beyond one chunk (Liger-Kernel's "fused linear cross-entropy" did
this on GPUs; here it is the same arithmetic in PyTorch).
"""

from __future__ import annotations

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                chunk: int, reduction: str, grad: bool) -> torch.Tensor:
        N = h.size(0)
        scale = 1.0 / max(N, 1) if reduction == "mean" else 1.0
        # Under no_grad (validation) the loss alone: needs_input_grad still says True there.
        want_h = grad and ctx.needs_input_grad[0]
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros_like(weight) if grad and ctx.needs_input_grad[1] else None
        w = weight.to(h.dtype)  # under bf16 autocast the hidden states are bf16
        total = h.new_zeros((), dtype=torch.float32)
        for start in range(0, N, chunk):
            hc = h[start:start + chunk]  # (n, C)
            yc = labels[start:start + chunk]  # (n,)
            logits = (hc @ w.t()).float()  # (n, V)
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            total += (lse - logits.gather(1, yc[:, None]).squeeze(1)).sum()
            if not want_h and grad_w is None:
                continue
            # d loss / d logits = softmax - one-hot, in place over the chunk's logits.
            probs = logits.sub_(lse[:, None]).exp_()
            probs[torch.arange(len(yc), device=h.device), yc] -= 1.0
            probs = probs.mul_(scale).to(h.dtype)
            if grad_h is not None:
                grad_h[start:start + chunk] = probs @ w  # (n, C)
            if grad_w is not None:
                grad_w.addmm_(probs.t().to(grad_w.dtype), hc.to(grad_w.dtype))  # (V, C)
        ctx.save_for_backward(grad_h if grad_h is not None else h.new_empty(0),
                              grad_w if grad_w is not None else h.new_empty(0))
        ctx.has_grad = (grad_h is not None, grad_w is not None)
        return total * scale

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        has_h, has_w = ctx.has_grad
        return (grad_h * grad_out.to(grad_h.dtype) if has_h else None,
                grad_w * grad_out.to(grad_w.dtype) if has_w else None, None, None, None, None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         chunk: int = 1024, reduction: str = "mean") -> torch.Tensor:
    """``F.cross_entropy(h @ weight.T, labels)`` for hidden states h (N, C), the output
    layer's weight (V, C) and labels (N,), without holding the (N, V) logits (see the
    module docstring). ``reduction``: mean or sum."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction {reduction!r}: use mean or sum")
    return _LinearCrossEntropy.apply(h, weight, labels, chunk, reduction,
                                     torch.is_grad_enabled())
