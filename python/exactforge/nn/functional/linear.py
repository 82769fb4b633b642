"""Linear, Conv2d and Embedding: products in a fixed order inside an example, the weight's
gradient summed over the batch in the layer's mode."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..._backend.native import _core
from ._common import _NATIVE, _batch, _bsum, _fixed, _shared_param


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, mode):
        x2 = x.reshape(-1, x.shape[-1])
        y = _fixed(x2, weight.t())
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(x2, weight)
        ctx.mode, ctx.shape, ctx.has_bias = mode, x.shape, bias is not None
        ctx.bias = _shared_param(bias, mode)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x2, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, weight.shape[0])
        dx = _fixed(dy2, weight).reshape(ctx.shape) if ctx.needs_input_grad[0] else None
        dw = _batch(dy2.t(), x2, ctx.mode, grad_of=weight) if ctx.needs_input_grad[1] else None
        db = _bsum(dy2, ctx.mode, grad_of=ctx.bias) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, mode: str = "exact"):
    return _Linear.apply(x, weight, bias, mode)


def _im2col(x: torch.Tensor, geo) -> torch.Tensor:
    if x.dtype in _NATIVE:
        return torch.from_numpy(_core.im2col(x.contiguous().numpy(), *geo))
    cols = F.unfold(x, geo[0], dilation=geo[3], padding=geo[2], stride=geo[1])  # other dtypes: torch's
    return cols.transpose(0, 1).reshape(cols.shape[1], -1)


def _col2im(cols: torch.Tensor, shape, geo) -> torch.Tensor:
    if cols.dtype in _NATIVE:
        return torch.from_numpy(_core.col2im(cols.contiguous().numpy(), shape, *geo))
    B, L = shape[0], cols.shape[1] // shape[0]
    c3 = cols.reshape(-1, B, L).transpose(0, 1)
    return F.fold(c3, tuple(shape[2:]), geo[0], dilation=geo[3], padding=geo[2], stride=geo[1])


class _Conv2d(torch.autograd.Function):
    """im2col (native, src/conv.cpp) laid out as one (C*kh*kw) x (batch*positions) matrix, so
    every product is one call and no element-wise transpose is needed; col2im adds in torch's
    order (F.fold's bits). Forward and input gradient are fixed-order sums over the
    channel-kernel axis and over output channels; the weight gradient sums over examples and
    positions together in the batch mode. (Exact products are symmetric under transposition,
    a @ b = (b.T @ a.T).T to the bit, and fixed ones keep each output's term order, so these
    layouts give the same bits as an example-major im2col.)"""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, mode):
        B, _, H, W = x.shape
        O, _, kh, kw = weight.shape
        geo = ([kh, kw], list(stride), list(padding), list(dilation))
        Ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        Wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        L = Ho * Wo
        # x, not its im2col: the weight gradient builds that in the backward, so the forward
        # does not hold it (9 copies of the input for a 3 x 3 kernel) between the two
        ctx.save_for_backward(x.detach(), weight)
        ctx.conf = (B, H, W, L, stride, padding, dilation, mode, bias is not None)
        ctx.bias = _shared_param(bias, mode)
        if x.dtype in _NATIVE and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1):
            # the direct convolution (src/core/conv.cpp): each output's chain over C*kh*kw in
            # the im2col product's order, padded positions included, so its bits, read from x.
            # A finite bias of x's dtype is added as each output is stored (the same one
            # addition); others keep the separate one, whose NaN and promotion rules are torch's.
            fuse = bias is not None and bias.dtype == x.dtype and bool(torch.isfinite(bias).all())
            y = torch.from_numpy(
                _core.conv2d_fixed(
                    x.detach().contiguous().numpy(),
                    weight.detach().contiguous().numpy(),
                    list(padding),
                    bias=bias.detach().contiguous().numpy() if fuse else None,
                )
            )
            if bias is not None and not fuse:
                y += bias.detach().reshape(1, O, 1, 1)
            return y
        cols2 = _im2col(x.detach(), geo)  # CKK x (B*L)
        if cols2.dtype in _NATIVE:
            # (B*L) x O, reading cols2 as its transpose: the long axis as rows keeps the tile
            # full when O is a handful of channels (each output's chain over CKK is the same)
            w2 = weight.detach().reshape(O, -1)
            y = torch.empty((B, O, L), dtype=cols2.dtype)
            yt = torch.from_numpy(_core.matmul(cols2.numpy(), w2.t().contiguous().numpy(), "fixed", a_transposed=True))
            view = yt.reshape(B, L, O).transpose(1, 2)
            # the bias is added in the pass that lays the output out as B x O x L: one pass
            if bias is not None:
                torch.add(view, bias.detach().reshape(1, O, 1), out=y)
            else:
                y.copy_(view)
            return y.reshape(B, O, Ho, Wo)
        y = _fixed(weight.reshape(O, -1), cols2)  # O x (B*L)
        if bias is not None:
            y = y + bias.reshape(O, 1)
        return y.reshape(O, B, Ho, Wo).transpose(0, 1).contiguous()

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        B, H, W, L, stride, padding, dilation, mode, has_bias = ctx.conf
        O, _, kh, kw = weight.shape
        # (B*L) x O, made once: the weight and bias gradients read it as it is (each transposed
        # copy of a B*L x O matrix with a handful of channels cost more than its product)
        dyt = dy.reshape(B, O, L).transpose(1, 2).reshape(B * L, O)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            shape = [B, weight.shape[1], H, W]
            direct = tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and dy.dtype in _NATIVE
            if direct and bool(torch.isfinite(weight).all()):
                # directly (src/core/conv.cpp): each column's chain over the output channels, then
                # each pixel's terms in col2im's order, so the bits of the two steps below.
                # (An infinite weight would meet positions col2im skips: those keep the steps.)
                dx = torch.from_numpy(
                    _core.conv2d_input_grad_fixed(
                        dy.detach().contiguous().numpy(), weight.detach().contiguous().numpy(), shape, list(padding)
                    )
                )
            else:
                dcols = _fixed(weight.reshape(O, -1).t(), dyt.t())  # CKK x (B*L)
                dx = _col2im(dcols, shape, ([kh, kw], list(stride), list(padding), list(dilation)))
        if ctx.needs_input_grad[1]:
            geo = ([kh, kw], list(stride), list(padding), list(dilation))
            if isinstance(mode, str) and mode == "exact" and x.dtype in _NATIVE:
                # im2col(x) @ dyt with im2col gathered a panel at a time as the product slices it
                # (src/core/conv.cpp): the bits of the product below, without the kh x kw copies
                # of x that im2col is
                dw = torch.from_numpy(
                    _core.conv2d_weight_grad_exact(x.contiguous().numpy(), dyt.contiguous().numpy(), *geo)
                )
                dw = dw.t().reshape(weight.shape)
            else:
                # im2col(x) (CKK x (B*L)): the big operand as a, whose slicing is vectorised along
                # the reduced axis; made when the product is (a shared one may wait)
                dw = _batch(
                    lambda: _im2col(x, geo), dyt, mode, grad_of=weight, finish=lambda t: t.t().reshape(weight.shape)
                )
        if has_bias and ctx.needs_input_grad[2]:
            db = _bsum(dyt, mode, grad_of=ctx.bias)
        return dx, dw, db, None, None, None, None


def conv2d(x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mode: str = "exact"):
    return _Conv2d.apply(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), mode)


class _Embedding(torch.autograd.Function):
    """Rows of the table by token id; the table's gradient sums, per token, the rows of every
    position that holds it: over the batch, so in the batch mode (exact: any order)."""

    @staticmethod
    def forward(ctx, ids, weight, padding_idx, mode):
        ctx.save_for_backward(ids)
        ctx.conf = (weight.shape, padding_idx, mode)
        return weight[ids]

    @staticmethod
    def backward(ctx, dy):
        (ids,) = ctx.saved_tensors
        shape, padding_idx, mode = ctx.conf
        flat = ids.reshape(-1).numpy()
        dy2 = dy.reshape(-1, shape[1]).contiguous()
        if not isinstance(mode, str):  # a shared batch: each token's rows over every process
            keep = flat != padding_idx
            return None, mode.token_sums(dy2[torch.from_numpy(keep)], flat[keep], shape[0]), None, None
        dw = torch.zeros(shape, dtype=dy.dtype)
        order = np.argsort(flat, kind="stable")  # stable: fixed mode keeps the batch's order per token
        toks = flat[order]
        cut = np.flatnonzero(np.diff(toks)) + 1
        if dy2.dtype in _NATIVE and len(toks):
            # every token's sum in one native call: the same sums as one call per token
            starts = np.r_[0, cut, len(toks)].astype(np.int64)
            sums = torch.from_numpy(_core.segment_sums(dy2.numpy(), order.astype(np.int64), starts, mode))
            first = torch.from_numpy(toks[starts[:-1]].astype(np.int64))
            real = first != padding_idx
            dw[first[real]] = sums[real]
            return None, dw, None, None
        for start, end in zip(np.r_[0, cut], np.r_[cut, len(toks)]):
            tok = int(toks[start])
            if tok == padding_idx:
                continue
            rows = torch.from_numpy(order[start:end])
            dw[tok] = dy2[rows[0]] if end - start == 1 else _bsum(dy2[rows], mode)
        return None, dw, None, None


def embedding(
    ids: torch.Tensor, weight: torch.Tensor, padding_idx: Optional[int] = None, mode: str = "exact"
) -> torch.Tensor:
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ids: expected integer token ids, got {ids.dtype}")
    return _Embedding.apply(ids.long(), weight, -1 if padding_idx is None else int(padding_idx), mode)
