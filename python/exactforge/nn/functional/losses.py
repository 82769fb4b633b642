"""Cross-entropy and mean squared error with an order-free batch mean, and the gradient norm
and clipping that depend on the gradients' values only."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ... import ops
from ... import reduce as R
from ._common import _total


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, q, mode):
        losses, d = ops.softmax_xent(logits, q)  # per example; classes in a fixed order
        total, count = _total(losses, mode)
        n = torch.tensor(count, dtype=logits.dtype)  # the whole batch's size
        ctx.save_for_backward(d / n)
        return total[0] / n

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved_tensors
        return d * g, None, None


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, *, label_smoothing: float = 0.0, mode: str = "exact"
) -> torch.Tensor:
    """Mean softmax cross-entropy over the batch with exactforge's exp/log and an
    order-independent batch mean (``mode="exact"``). ``target``: class indices or probability
    vectors; ``label_smoothing`` as in torch."""
    if logits.dim() != 2:
        raise ValueError(f"logits: expected (batch, classes), got shape {tuple(logits.shape)}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing: expected a number in [0, 1], got {label_smoothing!r}")
    C = logits.shape[1]
    if target.dim() == 1:
        if target.dtype not in (torch.int64, torch.int32) or len(target) != len(logits):
            raise ValueError("target: expected one class index per example")
        q = F.one_hot(target.long(), C).to(logits.dtype)
    else:
        q = target.to(logits.dtype)
    if label_smoothing:
        q = q * (1 - label_smoothing) + label_smoothing / C
    return _CrossEntropy.apply(logits, q, mode)


class _MSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, t, mode):
        d = (x - t).reshape(len(x), -1)
        per = d * d
        rows = ops.rowsum(per).reshape(-1, 1)  # each example's squares in index order
        total, examples = _total(rows, mode)
        n = examples * d.shape[1]  # the whole batch's terms
        ctx.save_for_backward(d)
        ctx.n, ctx.shape = n, x.shape
        return total[0] / n

    @staticmethod
    def backward(ctx, g):
        (d,) = ctx.saved_tensors
        grad = ((2 * d / ctx.n) * g).reshape(ctx.shape)
        return grad, -grad, None


def mse_loss(input: torch.Tensor, target: torch.Tensor, *, mode: str = "exact") -> torch.Tensor:
    """Mean squared error over every element; per example the squares are summed in a fixed
    order, over the batch order-independently (``mode="exact"``)."""
    if input.shape != target.shape:
        raise ValueError(f"target: expected the shape of input {tuple(input.shape)}, got {tuple(target.shape)}")
    if len(input) == 0:
        raise ValueError("input: an empty batch has no mean")
    return _MSE.apply(input, target.to(input.dtype), mode)


def grad_norm(grads: Any) -> float:
    """The L2 norm of the gradients ``grads`` (tensors) as one number that depends on their
    values only: each square is exact in float64 and the squares are summed exactly
    (``reduce.sum(mode="exact")``, in chunks of at most its term limit, the chunks in a fixed
    order). torch's own norm sums in an order that follows the thread count."""
    parts = []
    for g in grads:
        sq = np.square(g.detach().cpu().numpy().astype(np.float64).ravel())
        for lo in range(0, sq.size, R.EXACT_SUM_MAX_K):
            parts.append(float(R.sum(sq[lo : lo + R.EXACT_SUM_MAX_K], mode="exact")))
    return math.sqrt(math.fsum(parts))


def clip_grad_norm_(parameters: Any, max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` (L2, the same coefficient ``max_norm / (norm +
    1e-6)`` clamped to 1) with an order-free norm (:func:`grad_norm`), so a clipped step of a
    reproducible model keeps its bits under any batch order and thread count. Returns the norm."""
    params = [
        p for p in (parameters if not isinstance(parameters, torch.Tensor) else [parameters]) if p.grad is not None
    ]
    norm = grad_norm(p.grad for p in params)
    coef = min(1.0, float(max_norm) / (norm + 1e-6))
    if coef < 1.0:
        for p in params:
            g = p.grad
            assert g is not None  # params holds those with a gradient
            g.mul_(torch.tensor(coef, dtype=g.dtype))
    return norm
