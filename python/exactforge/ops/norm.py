"""Normalisation's passes as operators: each channel's sum over examples and positions in a
batch mode, and training-mode BatchNorm's forward and backward, whose fused native passes
(src/core/norm.cpp) apply only where the values allow: that choice reads the data, so it is made
inside the operator and handed to the backward as a tensor, and a compiled graph holds no
data-dependent branch.

The fused passes sum the variance's terms (x - mean)^2 and the backward's dy * xhat chunk by
chunk instead of materialising them, and make the normalisation and the input gradient one pass
each, every operation the one the tensor expressions perform, in their order: the same bits.
Modes are "exact" or "fixed", or (eager only) a mode object whose examples are split among
processes (``exactforge.distributed.SharedBatch``): its ``sum`` reduces over all of them."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from .. import reduce as R
from .._backend.native import _core
from ._library import define
from .pointwise import sqrt_rn

__all__ = ["channel_sum", "rsqrt", "affine", "batch_norm_train", "batch_norm_train_backward"]

_NATIVE = (torch.float32, torch.float64)


def rsqrt(v: torch.Tensor, arithmetic: str) -> torch.Tensor:
    """1 / sqrt(v) for a normalisation: the correctly rounded root then IEEE division (the
    portable arithmetic, the same on every CPU), or torch's root, which is MKL's and follows the
    CPU vendor, for traces recorded with torch's arithmetic (``arithmetic="torch"``)."""
    if arithmetic == "torch" or v.dtype not in _NATIVE:
        return 1.0 / torch.sqrt(v)
    return 1.0 / sqrt_rn(v)


def _channel_sum_impl(t: torch.Tensor, mode: Any, grad_of: Optional[torch.Tensor] = None) -> torch.Tensor:
    N, C = t.shape[0], t.shape[1]
    x = t.detach().reshape(N, C, -1)
    if x.dtype in _NATIVE and isinstance(mode, str):
        return torch.from_numpy(_core.sum_channels(x.contiguous().numpy(), mode))
    x2 = x.transpose(1, 2).reshape(-1, C).contiguous()
    if not isinstance(mode, str):
        return mode.sum(x2, grad_of=grad_of)
    return R.sum(x2, axis=0, mode=mode)


def _channel_sum_fake(t, mode):
    return t.new_empty((t.shape[1],))


def _ncl(t: torch.Tensor) -> np.ndarray:
    """(N, C, *) as a C-contiguous (N, C, L) array: the layout the fused passes read."""
    return t.detach().contiguous().reshape(t.shape[0], t.shape[1], -1).numpy()


def _vec(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().contiguous().numpy()


def _fused_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor]) -> bool:
    """Whether the fused passes apply: a native dtype shared by x and the affine parameters (the
    tensor expressions would promote mixed dtypes; those keep them), the parameters finite."""
    return x.dtype in _NATIVE and all(
        p is None or (p.dtype == x.dtype and bool(torch.isfinite(p).all())) for p in (weight, bias)
    )


def affine(xhat: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], shape) -> torch.Tensor:
    """BatchNorm's gamma * xhat + beta per channel: two separately rounded operations."""
    y = xhat
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def _bn_train_impl(x, weight, bias, eps: float, count: int, mode: Any, arithmetic: str):
    """(y, mean, var, xhat, rstd, fused): the batch's statistics over ``count`` values per
    channel (every process's, for a shared mode), and whether the fused passes ran."""
    x = x.detach().contiguous()  # dense outputs, whatever x's layout (a copy: same values)
    weight = None if weight is None else weight.detach()
    bias = None if bias is None else bias.detach()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean = _channel_sum_impl(x, mode) / count
    # fused only where no NaN can enter an operation with another NaN (x and the affine
    # parameters finite): there x86 keeps the first operand's NaN, and the order of operands
    # inside torch's broadcasting kernels is not one this code can promise to repeat
    fused = isinstance(mode, str) and _fused_norm(x, weight, bias) and bool(torch.isfinite(mean).all())
    if fused:
        x3 = _ncl(x)
        var = torch.from_numpy(_core.sum_centered_squares(x3, mean.numpy(), mode)) / count
        rstd = rsqrt(var + eps, arithmetic)
        xh, yn = _core.batch_norm_normalize(x3, mean.numpy(), rstd.numpy(), _vec(weight), _vec(bias))
        # shaped as NumPy arrays: tensors that are no view of another (the layer returns y)
        xhat, y = torch.from_numpy(xh.reshape(x.shape)), torch.from_numpy(yn.reshape(x.shape))
    else:
        xc = x - mean.reshape(shape)
        var = _channel_sum_impl(xc * xc, mode) / count
        rstd = rsqrt(var + eps, arithmetic)
        xhat = xc * rstd.reshape(shape)
        y = affine(xhat, weight, bias, shape)
    return y, mean, var, xhat, rstd, torch.tensor(fused)


def _bn_train_fake(x, weight, bias, eps, count, mode, arithmetic):
    C = x.shape[1]
    return (
        torch.empty_like(x),
        x.new_empty((C,)),
        x.new_empty((C,)),
        torch.empty_like(x),
        x.new_empty((C,)),
        x.new_empty((), dtype=torch.bool),
    )


def _bn_backward_impl(dy, xhat, rstd, weight, fused_t: torch.Tensor, count: int, mode: Any, need_dx: bool):
    """(dx or an empty tensor, sum of dy * xhat, sum of dy) per channel."""
    dy, xhat, rstd = dy.detach().contiguous(), xhat.detach(), rstd.detach()
    weight = None if weight is None else weight.detach()
    shape = (1, -1) + (1,) * (dy.dim() - 2)
    fused = bool(fused_t) and dy.dtype == xhat.dtype
    # the two sums over the batch that every gradient here needs (as torch's kernel): the input
    # gradient's means of gamma * dy and gamma * dy * xhat are gamma times them
    sum_dy = _channel_sum_impl(dy, mode)
    if fused:
        dy3, xh3 = _ncl(dy), _ncl(xhat)
        sum_dyx = torch.from_numpy(_core.sum_channel_products(dy3, xh3, mode))
    else:
        sum_dyx = _channel_sum_impl(dy * xhat, mode)
    dx = dy.new_empty((0,))
    if need_dx:
        g, mg, mgx = dy, sum_dy / count, sum_dyx / count
        if weight is not None:
            mg, mgx = mg * weight, mgx * weight
        if fused and bool(torch.isfinite(sum_dy).all() and torch.isfinite(sum_dyx).all()):
            # finite sums: dy and dy * xhat are finite, so (as in the forward) no NaN meets a NaN
            dxn = _core.batch_norm_input_grad(dy3, xh3, _vec(weight), mg.numpy(), mgx.numpy(), rstd.numpy())
            dx = torch.from_numpy(dxn.reshape(dy.shape))
        else:
            if weight is not None:
                g = dy * weight.reshape(shape)
            dx = (g - mg.reshape(shape) - xhat * mgx.reshape(shape)) * rstd.reshape(shape)
    return dx, sum_dyx, sum_dy


def _bn_backward_fake(dy, xhat, rstd, weight, fused_t, count, mode, need_dx):
    C = dy.shape[1]
    return (torch.empty_like(dy) if need_dx else dy.new_empty((0,))), dy.new_empty((C,)), dy.new_empty((C,))


_CSUM = define("channel_sum(Tensor t, str mode) -> Tensor", _channel_sum_impl, _channel_sum_fake)
_BN = define(
    "batch_norm_train(Tensor x, Tensor? weight, Tensor? bias, float eps, int count, str mode, str arithmetic)"
    " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    _bn_train_impl,
    _bn_train_fake,
)
_BN_BACKWARD = define(
    "batch_norm_train_backward(Tensor dy, Tensor xhat, Tensor rstd, Tensor? weight, Tensor fused, int count,"
    " str mode, bool need_dx) -> (Tensor, Tensor, Tensor)",
    _bn_backward_impl,
    _bn_backward_fake,
)


def channel_sum(t: torch.Tensor, mode: Any, grad_of: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, C, *) -> (C,): each channel's sum over examples and positions, in the batch mode
    (fixed: example by example, position by position). The native pass reads the activations
    where they lie; other dtypes and shared modes go through a transposed copy and the same sum."""
    if not isinstance(mode, str):
        return _channel_sum_impl(t, mode, grad_of)
    return _CSUM(t, mode)


def batch_norm_train(x, weight, bias, eps: float, count: int, mode: Any, arithmetic: str):
    """(y, mean, var, xhat, rstd, fused) of training-mode BatchNorm (see the module's doc)."""
    if not isinstance(mode, str):
        return _bn_train_impl(x, weight, bias, eps, count, mode, arithmetic)
    return _BN(x, weight, bias, eps, count, mode, arithmetic)


def batch_norm_train_backward(dy, xhat, rstd, weight, fused, count: int, mode: Any, need_dx: bool):
    """(dx, the sum of dy * xhat, the sum of dy) per channel; dx is empty unless ``need_dx``."""
    if not isinstance(mode, str):
        return _bn_backward_impl(dy, xhat, rstd, weight, fused, count, mode, need_dx)
    return _BN_BACKWARD(dy, xhat, rstd, weight, fused, count, mode, need_dx)
