"""Sigmoid, tanh, GELU and SiLU with the same bits for every element wherever it sits in the
batch.

torch's CPU kernels run a vectorised body and a scalar tail (std::exp, 1/(1+exp)) that can
differ in the last bit, and which elements of a batch fall in the tail depends on where each
example sits, so torch.sigmoid is not batch-order invariant. These evaluate every element the
same way: exactforge's exp (the same bits everywhere) in float64, one rounding to the input's
dtype (``exactforge.ops.activations``)."""

from __future__ import annotations

import torch

from ... import ops


class _Elementwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind):
        y, _ = ops.activation(x, kind)
        ctx.save_for_backward(y)
        ctx.kind = kind
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        # separate correctly rounded multiplies and subtractions: the same bits in any position
        d = y * (1 - y) if ctx.kind == "sigmoid" else 1 - y * y
        return dy * d, None


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Logistic sigmoid with the same bits for every element wherever it sits in the batch."""
    return _Elementwise.apply(x, "sigmoid")


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh with the same bits for every element wherever it sits in the batch."""
    return _Elementwise.apply(x, "tanh")


class _Activation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind):
        y, d = ops.activation(x, kind)
        ctx.save_for_backward(d)
        return y

    @staticmethod
    def backward(ctx, dy):
        (d,) = ctx.saved_tensors
        return dy * d, None


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU (``approximate="none"``: x Phi(x); ``"tanh"``: torch's tanh formula) with the same
    bits for every element wherever it sits in the batch, within an ulp or two of torch's."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    return _Activation.apply(x, "gelu" if approximate == "none" else "gelu-tanh")


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU (x sigmoid(x)) with the same bits for every element wherever it sits in the batch."""
    return _Activation.apply(x, "silu")
