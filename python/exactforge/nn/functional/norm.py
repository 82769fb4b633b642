"""BatchNorm (eval and training mode) and LayerNorm: statistics over the batch as order-free
sums in the layer's mode, per-example statistics in a fixed order, 1 / sqrt correctly rounded."""

from __future__ import annotations

from typing import Optional

import torch

from ... import ops
from ...ops.norm import affine
from ._common import _bsum, _count, _shared_param


class _BatchNormEval(torch.autograd.Function):
    """y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta with the running
    statistics fixed (eval mode); gamma's and beta's gradients sum over examples and positions."""

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps, mode, arithmetic):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        inv = torch.rsqrt(var + eps) if arithmetic == "torch" else ops.rsqrt(var + eps, arithmetic)
        xhat = (x - mean.reshape(shape)) * inv.reshape(shape)
        y = affine(xhat, weight, bias, shape)
        ctx.save_for_backward(xhat, inv, weight)
        ctx.mode, ctx.shape = mode, shape
        ctx.bias = _shared_param(bias, mode)
        return y

    @staticmethod
    def backward(ctx, dy):
        xhat, inv, weight = ctx.saved_tensors
        shape = ctx.shape
        g = dy if weight is None else dy * weight.reshape(shape)
        dx = g * inv.reshape(shape) if ctx.needs_input_grad[0] else None
        dw = ops.channel_sum(dy * xhat, ctx.mode, weight) if weight is not None and ctx.needs_input_grad[3] else None
        db = ops.channel_sum(dy, ctx.mode, ctx.bias) if ctx.needs_input_grad[4] else None
        return dx, None, None, dw, db, None, None, None


def batch_norm_eval(
    x, running_mean, running_var, weight, bias, eps: float, mode: str = "exact", arithmetic: str = "portable-1"
):
    return _BatchNormEval.apply(x, running_mean, running_var, weight, bias, eps, mode, arithmetic)


class _BatchNormTrain(torch.autograd.Function):
    """Training-mode normalisation by the batch's own statistics: per channel the mean and the
    biased variance are sums over examples and positions in the batch mode (exact: one
    rounding of the exact sum, so any batch order and thread count give the same bits), each
    divided by the count; the backward's two sums over the batch likewise. Elementwise steps
    are single IEEE operations (1 / sqrt, not an approximate rsqrt), the same on every CPU.
    The passes are ``exactforge.ops.batch_norm_train`` and its backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, mode, arithmetic):
        M = _count(x.numel() // x.shape[1], mode)
        y, mean, var, xhat, rstd, fused = ops.batch_norm_train(x, weight, bias, eps, M, mode, arithmetic)
        ctx.save_for_backward(xhat, rstd, weight, fused)
        ctx.conf = (M, mode)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        xhat, rstd, weight, fused = ctx.saved_tensors
        M, mode = ctx.conf
        dx, sum_dyx, sum_dy = ops.batch_norm_train_backward(
            dy, xhat, rstd, weight, fused, M, mode, ctx.needs_input_grad[0]
        )
        dw = sum_dyx if weight is not None and ctx.needs_input_grad[1] else None
        db = sum_dy if ctx.needs_input_grad[2] else None
        return (dx if ctx.needs_input_grad[0] else None), dw, db, None, None, None


def batch_norm_train(
    x: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    momentum: float,
    eps: float,
    mode: str = "exact",
    arithmetic: str = "portable-1",
) -> torch.Tensor:
    """BatchNorm normalising by the batch's statistics (order-free in ``mode="exact"``), and
    the running statistics updated in place as torch does: ``(1 - momentum) * running +
    momentum * batch``, the variance unbiased (times n / (n - 1)); each channel's update is
    one float64 expression rounded once, so it does not depend on where the channel sits."""
    if x.dim() < 2 or x.numel() == 0:
        raise ValueError(f"x: expected (batch, channels, ...) with at least one element, got {tuple(x.shape)}")
    M = _count(x.numel() // x.shape[1], mode)
    if M < 2:
        raise ValueError(f"x: training-mode BatchNorm needs more than one value per channel, got {tuple(x.shape)}")
    y, mean, var = _BatchNormTrain.apply(x, weight, bias, float(eps), mode, arithmetic)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            m = float(momentum)
            unbiased = var.double() * (M / (M - 1))
            running_mean.copy_((running_mean.double() * (1 - m) + mean.double() * m).to(running_mean.dtype))
            running_var.copy_((running_var.double() * (1 - m) + unbiased * m).to(running_var.dtype))
    return y


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, D, eps, mode, arithmetic):
        x2 = x.reshape(-1, D)
        mean = (ops.rowsum(x2) / D).reshape(-1, 1)
        xc = x2 - mean
        var = (ops.rowsum(xc * xc) / D).reshape(-1, 1)
        rstd = ops.rsqrt(var + eps, arithmetic)
        xhat = xc * rstd
        y = xhat
        if weight is not None:
            y = y * weight.reshape(1, D)
        if bias is not None:
            y = y + bias.reshape(1, D)
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.conf = (x.shape, D, mode, bias is not None)
        ctx.bias = _shared_param(bias, mode)
        return y  # (-1, D): the caller reshapes, so the output is no view made inside

    @staticmethod
    def backward(ctx, dy):
        xhat, rstd, weight = ctx.saved_tensors
        shape, D, mode, has_bias = ctx.conf
        dy2 = dy.reshape(-1, D)
        g = dy2 if weight is None else dy2 * weight.reshape(1, D)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            mg = (ops.rowsum(g) / D).reshape(-1, 1)
            mgx = (ops.rowsum(g * xhat) / D).reshape(-1, 1)
            dx = (rstd * (g - mg - xhat * mgx)).reshape(shape)
        if weight is not None and ctx.needs_input_grad[1]:
            dw = _bsum(dy2 * xhat, mode, grad_of=weight)
        if has_bias and ctx.needs_input_grad[2]:
            db = _bsum(dy2, mode, grad_of=ctx.bias)
        return dx, dw, db, None, None, None, None


def layer_norm(
    x: torch.Tensor,
    normalized_shape,
    weight=None,
    bias=None,
    eps: float = 1e-5,
    mode: str = "exact",
    arithmetic: str = "portable-1",
) -> torch.Tensor:
    """LayerNorm over the trailing ``normalized_shape`` axes: statistics per example and
    position in a fixed order; gamma's and beta's gradients summed over the batch in ``mode``."""
    D = 1
    for s in normalized_shape:  # plain ints: nothing for a compiler to trace
        D *= int(s)
    w = weight.reshape(-1) if weight is not None else None
    b = bias.reshape(-1) if bias is not None else None
    return _LayerNorm.apply(x, w, b, D, float(eps), mode, arithmetic).reshape(x.shape)
