"""Linear, Conv2d and Embedding: products in a fixed order inside an example, the weight's
gradient summed over the batch in the layer's mode."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ... import ops
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
        return y  # 2-D: the caller reshapes, so the output is no view made inside (in-place safe)

    @staticmethod
    def backward(ctx, dy):
        x2, weight = ctx.saved_tensors
        dy2 = dy.reshape(-1, weight.shape[0])
        dx = _fixed(dy2, weight).reshape(ctx.shape) if ctx.needs_input_grad[0] else None
        dw = _batch(dy2, x2, ctx.mode, grad_of=weight, a_transposed=True) if ctx.needs_input_grad[1] else None
        db = _bsum(dy2, ctx.mode, grad_of=ctx.bias) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db, None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, mode: str = "exact"):
    return _Linear.apply(x, weight, bias, mode).reshape(*x.shape[:-1], weight.shape[0])


class _Conv2d(torch.autograd.Function):
    """A convolution (groups = 1) from the operators of ``exactforge.ops.conv``: forward and
    input gradient fixed-order sums over the channel-kernel axis and over output channels; the
    weight gradient sums over examples and positions together in the batch mode."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, mode):
        # x, not its im2col: the weight gradient builds that in the backward, so the forward
        # does not hold it (9 copies of the input for a 3 x 3 kernel) between the two
        ctx.save_for_backward(x.detach(), weight)
        ctx.conf = (stride, padding, dilation, mode, bias is not None)
        ctx.bias = _shared_param(bias, mode)
        return ops.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, mode, has_bias = ctx.conf
        B, O = dy.shape[0], dy.shape[1]
        # (B*L) x O, made once: the weight and bias gradients read it as it is (each transposed
        # copy of a B*L x O matrix with a handful of channels cost more than its product)
        dyt = dy.reshape(B, O, -1).transpose(1, 2).reshape(-1, O)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = ops.conv2d_input_grad(dy, weight, x.shape, stride, padding, dilation)
        if ctx.needs_input_grad[1]:
            if isinstance(mode, str):
                dw = ops.conv2d_weight_grad(x, dyt, weight.shape, stride, padding, dilation, mode)
            else:
                # a shared batch: its product of im2col(x), made when the product is (a shared
                # one may wait), reduced over every process's examples
                geo = (list(weight.shape[2:]), list(stride), list(padding), list(dilation))
                dw = _batch(
                    lambda: ops.im2col(x, geo), dyt, mode, grad_of=weight, finish=lambda t: t.t().reshape(weight.shape)
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
