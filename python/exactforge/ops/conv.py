"""The stride/padding/dilation convolution's three products as operators: the forward and the
input gradient in a fixed order inside an example, the weight gradient over the batch in a
mode. Every choice that reads values (a finite bias fused into the store, an infinite weight
that needs the im2col route) is made inside, so a compiled graph holds no data-dependent branch.

Layout: im2col (native, src/core/conv.cpp) as one (C*kh*kw) x (batch*positions) matrix, so
every product is one call and no element-wise transpose is needed; col2im adds in torch's
order (F.fold's bits). Exact products are symmetric under transposition, a @ b = (b.T @ a.T).T
to the bit, and fixed ones keep each output's term order, so these layouts give the same bits
as an example-major im2col."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from .._backend.native import _core
from ._library import define
from .products import _mm_impl

__all__ = ["conv2d", "conv2d_input_grad", "conv2d_weight_grad", "im2col"]

_NATIVE = (torch.float32, torch.float64)


def _out_hw(H: int, W: int, kh: int, kw: int, stride, padding, dilation):
    Ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return Ho, Wo


def _geo(kh: int, kw: int, stride, padding, dilation):
    return ([kh, kw], list(stride), list(padding), list(dilation))


def im2col(x: torch.Tensor, geo) -> torch.Tensor:
    """CKK x (B*L): the columns of every example's positions side by side."""
    if x.dtype in _NATIVE:
        return torch.from_numpy(_core.im2col(x.detach().contiguous().numpy(), *geo))
    cols = F.unfold(x, geo[0], dilation=geo[3], padding=geo[2], stride=geo[1])  # other dtypes: torch's
    return cols.transpose(0, 1).reshape(cols.shape[1], -1)


def _col2im(cols: torch.Tensor, shape, geo) -> torch.Tensor:
    if cols.dtype in _NATIVE:
        return torch.from_numpy(_core.col2im(cols.contiguous().numpy(), list(shape), *geo))
    B, L = shape[0], cols.shape[1] // shape[0]
    c3 = cols.reshape(-1, B, L).transpose(0, 1)
    return F.fold(c3, tuple(shape[2:]), geo[0], dilation=geo[3], padding=geo[2], stride=geo[1])


def _direct(x: torch.Tensor, stride, dilation) -> bool:
    return x.dtype in _NATIVE and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)


def _conv2d_impl(x, weight, bias: Optional[torch.Tensor], stride, padding, dilation) -> torch.Tensor:
    x, weight = x.detach(), weight.detach()
    B, _, H, W = x.shape
    O, _, kh, kw = weight.shape
    Ho, Wo = _out_hw(H, W, kh, kw, stride, padding, dilation)
    L = Ho * Wo
    if _direct(x, stride, dilation):
        # the direct convolution (src/core/conv.cpp): each output's chain over C*kh*kw in the
        # im2col product's order, padded positions included, so its bits, read from x. A finite
        # bias of x's dtype is added as each output is stored (the same one addition); others
        # keep the separate one, whose NaN and promotion rules are torch's.
        fuse = bias is not None and bias.dtype == x.dtype and bool(torch.isfinite(bias).all())
        y = torch.from_numpy(
            _core.conv2d_fixed(
                x.contiguous().numpy(),
                weight.contiguous().numpy(),
                list(padding),
                bias=bias.detach().contiguous().numpy() if fuse and bias is not None else None,
            )
        )
        if bias is not None and not fuse:
            y += bias.detach().reshape(1, O, 1, 1)
        return y
    cols2 = im2col(x, _geo(kh, kw, stride, padding, dilation))  # CKK x (B*L)
    if cols2.dtype in _NATIVE:
        # (B*L) x O, reading cols2 as its transpose: the long axis as rows keeps the tile full
        # when O is a handful of channels (each output's chain over CKK is the same)
        w2 = weight.reshape(O, -1)
        y = torch.empty((B, O, L), dtype=cols2.dtype)
        view = _mm_impl(cols2, w2.t(), "fixed", True).reshape(B, L, O).transpose(1, 2)
        # the bias is added in the pass that lays the output out as B x O x L: one pass
        if bias is not None:
            torch.add(view, bias.detach().reshape(1, O, 1), out=y)
        else:
            y.copy_(view)
        return y.reshape(B, O, Ho, Wo)
    y = _mm_impl(weight.reshape(O, -1), cols2, "fixed")  # O x (B*L)
    if bias is not None:
        y = y + bias.detach().reshape(O, 1)
    return y.reshape(O, B, Ho, Wo).transpose(0, 1).contiguous()


def _conv2d_fake(x, weight, bias, stride, padding, dilation):
    Ho, Wo = _out_hw(x.shape[2], x.shape[3], weight.shape[2], weight.shape[3], stride, padding, dilation)
    native = x.dtype in _NATIVE
    dtype = torch.promote_types(x.dtype, bias.dtype) if bias is not None and not native else x.dtype
    return x.new_empty((x.shape[0], weight.shape[0], Ho, Wo), dtype=dtype)


def _input_grad_impl(dy, weight, x_shape: Sequence[int], stride, padding, dilation) -> torch.Tensor:
    dy, weight = dy.detach(), weight.detach()
    B, O, Ho, Wo = dy.shape
    kh, kw = weight.shape[2], weight.shape[3]
    shape = [int(s) for s in x_shape]
    if _direct(dy, stride, dilation) and bool(torch.isfinite(weight).all()):
        # directly (src/core/conv.cpp): each column's chain over the output channels, then each
        # pixel's terms in col2im's order, so the bits of the two steps below. (An infinite
        # weight would meet positions col2im skips: those keep the steps.)
        return torch.from_numpy(
            _core.conv2d_input_grad_fixed(dy.contiguous().numpy(), weight.contiguous().numpy(), shape, list(padding))
        )
    dyt = dy.reshape(B, O, Ho * Wo).transpose(1, 2).reshape(B * Ho * Wo, O)
    dcols = _mm_impl(weight.reshape(O, -1).t(), dyt.t(), "fixed")  # CKK x (B*L)
    return _col2im(dcols, shape, _geo(kh, kw, stride, padding, dilation))


def _input_grad_fake(dy, weight, x_shape, stride, padding, dilation):
    return dy.new_empty([int(s) for s in x_shape])


def _weight_grad_impl(x, dyt, w_shape: Sequence[int], stride, padding, dilation, mode: str) -> torch.Tensor:
    """dyt: the output gradient as (B*L) x O, the layout the bias gradient also reads."""
    x, dyt = x.detach(), dyt.detach()
    O, C, kh, kw = (int(s) for s in w_shape)
    geo = _geo(kh, kw, stride, padding, dilation)
    if mode in ("exact", "fixed") and x.dtype in _NATIVE and dyt.dtype == x.dtype:
        # im2col(x) @ dyt with im2col gathered a panel at a time as the product packs or slices
        # it (src/core/conv.cpp): the bits of the product below, without the kh x kw copies of x
        grad = _core.conv2d_weight_grad_exact if mode == "exact" else _core.conv2d_weight_grad_fixed
        dw = torch.from_numpy(grad(x.contiguous().numpy(), dyt.contiguous().numpy(), *geo))
    else:
        # im2col(x) (CKK x (B*L)): the big operand as a, whose slicing is vectorised along the
        # reduced axis
        dw = _mm_impl(im2col(x, geo), dyt, mode)
    return dw.t().reshape(O, C, kh, kw).contiguous()  # operators return dense tensors


def _weight_grad_fake(x, dyt, w_shape, stride, padding, dilation, mode):
    return x.new_empty([int(s) for s in w_shape])


_CONV = define(
    "conv2d(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation) -> Tensor",
    _conv2d_impl,
    _conv2d_fake,
)
_DGRAD = define(
    "conv2d_input_grad(Tensor dy, Tensor weight, int[] x_shape, int[] stride, int[] padding, int[] dilation) -> Tensor",
    _input_grad_impl,
    _input_grad_fake,
)
_WGRAD = define(
    "conv2d_weight_grad(Tensor x, Tensor dyt, int[] w_shape, int[] stride, int[] padding, int[] dilation,"
    " str mode) -> Tensor",
    _weight_grad_impl,
    _weight_grad_fake,
)


def conv2d(x, weight, bias, stride: List[int], padding: List[int], dilation: List[int]) -> torch.Tensor:
    """The convolution's forward, each output a fixed-order chain over C*kh*kw (groups = 1)."""
    return _CONV(x, weight, bias, stride, padding, dilation)


def conv2d_input_grad(dy, weight, x_shape, stride, padding, dilation) -> torch.Tensor:
    """The input gradient: a fixed-order chain over output channels, then col2im's order."""
    return _DGRAD(dy, weight, x_shape, stride, padding, dilation)


def conv2d_weight_grad(x, dyt, w_shape, stride, padding, dilation, mode: str) -> torch.Tensor:
    """The weight gradient, summed over examples and positions together in ``mode``."""
    return _WGRAD(x, dyt, w_shape, stride, padding, dilation, mode)
