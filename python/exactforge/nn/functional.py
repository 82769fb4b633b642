"""Autograd functions of the reproducible layers and losses (CPU tensors).

Per-example products along feature axes use ``reduce.matmul(mode="fixed")`` (one fixed order,
no batch dependence); reductions over the batch (and over positions of a convolution, which
are per-example too but are summed with the batch into the weight gradient) use the layer's
batch mode: ``"exact"`` is a symmetric function of the terms, so any batch order and any
thread count give the same bits.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .. import mathfn
from .. import reduce as R
from .._backend.native import _core

__all__ = [
    "linear",
    "conv2d",
    "batch_norm_eval",
    "batch_norm_train",
    "cross_entropy",
    "mse_loss",
    "sigmoid",
    "tanh",
    "gelu",
    "silu",
    "dropout",
    "keep_mask",
    "bmm",
    "softmax",
    "layer_norm",
    "embedding",
    "attention_mask",
    "multi_head_attention",
    "grad_norm",
    "clip_grad_norm_",
]


def _fixed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return R.matmul(a.contiguous(), b.contiguous(), mode="fixed")


def _batch(a, b: torch.Tensor, mode: Any, grad_of: Optional[torch.Tensor] = None, finish=None) -> torch.Tensor:
    """A reduction over examples: "exact" or "fixed", or a mode object whose examples are
    split among processes (exactforge.distributed.SharedBatch: its own exact product). ``a`` may
    be a function that makes it (a convolution's im2col), for a reduction that waits.
    ``grad_of`` names the parameter the product is the gradient of, and ``finish`` maps the
    product to its shape: a shared mode may then reduce it when the backward pass ends."""
    if not isinstance(mode, str):
        return mode.matmul(a, b, grad_of=grad_of, finish=finish)
    if not isinstance(a, torch.Tensor):
        a = a()
    out = R.matmul(a.contiguous(), b.contiguous(), mode=mode)
    return finish(out) if finish is not None else out


def _bsum(x: torch.Tensor, mode: Any, grad_of: Optional[torch.Tensor] = None) -> torch.Tensor:
    if not isinstance(mode, str):
        return mode.sum(x.contiguous(), grad_of=grad_of)
    return R.sum(x.contiguous(), axis=0, mode=mode)


def _total(x: torch.Tensor, mode: Any) -> tuple:
    """A loss's sum over the batch of its per-example values (k x 1) and the batch's size: over
    every process's examples for a shared mode (one collective for both)."""
    if not isinstance(mode, str):
        return mode.total(x.contiguous())
    return _bsum(x, mode), len(x)


def _shared_param(t: Optional[torch.Tensor], mode: Any) -> Optional[torch.Tensor]:
    """The tensor a shared mode's reduction names as the one its gradient is of (kept only there:
    the string modes never defer)."""
    return None if isinstance(mode, str) else t


def _count(k: int, mode: Any) -> int:
    """How many terms a batch reduction of k local terms has: k, or their sum over processes."""
    return k if isinstance(mode, str) else mode.rows(k)


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


_NATIVE = (torch.float32, torch.float64)


def _rsqrt(v: torch.Tensor, arithmetic: str) -> torch.Tensor:
    """1 / sqrt(v) for a normalisation: the correctly rounded root then IEEE division (the
    portable arithmetic, the same on every CPU), or torch's root, which is MKL's and follows the
    CPU vendor, for traces recorded with torch's arithmetic (``arithmetic="torch"``)."""
    if arithmetic == "torch" or v.dtype not in _NATIVE:
        return 1.0 / torch.sqrt(v)
    return 1.0 / torch.from_numpy(_core.sqrt_rn(v.detach().contiguous().numpy())).reshape(v.shape)


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


def _affine(xhat: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], shape) -> torch.Tensor:
    """BatchNorm's gamma * xhat + beta per channel: two separately rounded operations."""
    y = xhat
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


class _BatchNormEval(torch.autograd.Function):
    """y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta with the running
    statistics fixed (eval mode); gamma's and beta's gradients sum over examples and positions."""

    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, eps, mode, arithmetic):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        inv = torch.rsqrt(var + eps) if arithmetic == "torch" else _rsqrt(var + eps, arithmetic)
        xhat = (x - mean.reshape(shape)) * inv.reshape(shape)
        y = _affine(xhat, weight, bias, shape)
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
        dw = _channel_sum(dy * xhat, ctx.mode, weight) if weight is not None and ctx.needs_input_grad[3] else None
        db = _channel_sum(dy, ctx.mode, ctx.bias) if ctx.needs_input_grad[4] else None
        return dx, None, None, dw, db, None, None, None


def batch_norm_eval(
    x, running_mean, running_var, weight, bias, eps: float, mode: str = "exact", arithmetic: str = "portable-1"
):
    return _BatchNormEval.apply(x, running_mean, running_var, weight, bias, eps, mode, arithmetic)


def _channel_sum(t: torch.Tensor, mode: Any, grad_of: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, C, *) -> (C,): each channel's sum over examples and positions, in the batch mode
    (fixed: example by example, position by position). The native pass reads the activations
    where they lie; other dtypes go through a transposed copy and the same sum."""
    N, C = t.shape[0], t.shape[1]
    x = t.detach().reshape(N, C, -1)
    if x.dtype in _NATIVE and isinstance(mode, str):
        return torch.from_numpy(_core.sum_channels(x.contiguous().numpy(), mode))
    return _bsum(x.transpose(1, 2).reshape(-1, C), mode, grad_of)


class _BatchNormTrain(torch.autograd.Function):
    """Training-mode normalisation by the batch's own statistics: per channel the mean and the
    biased variance are sums over examples and positions in the batch mode (exact: one
    rounding of the exact sum, so any batch order and thread count give the same bits), each
    divided by the count; the backward's two sums over the batch likewise. Elementwise steps
    are single IEEE operations (1 / sqrt, not an approximate rsqrt), the same on every CPU.

    For float32/float64 the passes over the activations are fused (src/core/norm.cpp and the
    channel sums of src/core/reduce.cpp): the variance's terms (x - mean)^2 and the backward's
    dy * xhat are summed chunk by chunk instead of materialised, and the normalisation and the
    input gradient are one pass each, every operation the one the tensor expressions below
    perform, in their order: the same bits."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, mode, arithmetic):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        M = _count(x.numel() // x.shape[1], mode)
        mean = _channel_sum(x, mode) / M
        # fused only where no NaN can enter an operation with another NaN (x and the affine
        # parameters finite): there x86 keeps the first operand's NaN, and the order of operands
        # inside torch's broadcasting kernels is not one this code can promise to repeat
        fused = isinstance(mode, str) and _fused_norm(x, weight, bias) and bool(torch.isfinite(mean).all())
        if fused:
            x3 = _ncl(x)
            var = torch.from_numpy(_core.sum_centered_squares(x3, mean.numpy(), mode)) / M
            rstd = _rsqrt(var + eps, arithmetic)
            xh, yn = _core.batch_norm_normalize(x3, mean.numpy(), rstd.numpy(), _vec(weight), _vec(bias))
            xhat, y = torch.from_numpy(xh).reshape(x.shape), torch.from_numpy(yn).reshape(x.shape)
        else:
            xc = x - mean.reshape(shape)
            var = _channel_sum(xc * xc, mode) / M
            rstd = _rsqrt(var + eps, arithmetic)
            xhat = xc * rstd.reshape(shape)
            y = _affine(xhat, weight, bias, shape)
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.conf = (shape, M, mode, fused)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        xhat, rstd, weight = ctx.saved_tensors
        shape, M, mode, fused = ctx.conf
        fused = fused and dy.dtype == xhat.dtype
        # the two sums over the batch that every gradient here needs (as torch's kernel): the
        # input gradient's means of gamma * dy and gamma * dy * xhat are gamma times them
        sum_dy = _channel_sum(dy, mode)
        if fused:
            dy3, xh3 = _ncl(dy), _ncl(xhat)
            sum_dyx = torch.from_numpy(_core.sum_channel_products(dy3, xh3, mode))
        else:
            sum_dyx = _channel_sum(dy * xhat, mode)
        dx = None
        if ctx.needs_input_grad[0]:
            g, mg, mgx = dy, sum_dy / M, sum_dyx / M
            if weight is not None:
                mg, mgx = mg * weight, mgx * weight
            if fused and bool(torch.isfinite(sum_dy).all() and torch.isfinite(sum_dyx).all()):
                # finite sums: dy and dy * xhat are finite, so (as in the forward) no NaN meets a NaN
                dxn = _core.batch_norm_input_grad(dy3, xh3, _vec(weight), mg.numpy(), mgx.numpy(), rstd.numpy())
                dx = torch.from_numpy(dxn).reshape(dy.shape)
            else:
                if weight is not None:
                    g = dy * weight.reshape(shape)
                dx = (g - mg.reshape(shape) - xhat * mgx.reshape(shape)) * rstd.reshape(shape)
        dw = sum_dyx if weight is not None and ctx.needs_input_grad[1] else None
        db = sum_dy if ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None


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


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, q, mode):
        z = logits.detach().cpu().numpy()
        qn = q.detach().cpu().numpy()
        losses, p = mathfn.softmax_xent(z, qn, mode="fixed")  # per example; classes in a fixed order
        total, count = _total(torch.from_numpy(np.ascontiguousarray(losses.reshape(-1, 1))), mode)
        n = np.asarray(z.dtype.type(count))  # the whole batch's size
        ctx.save_for_backward(torch.from_numpy(mathfn.output_errors(p, qn, mode="fixed") / n))
        return torch.from_numpy(np.asarray(total.numpy()[0] / n))

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
        rows = R.sum(per.t().contiguous(), axis=0, mode="fixed").reshape(-1, 1)
        total, examples = _total(torch.as_tensor(rows), mode)
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


# ---- elementwise activations ---------------------------------------------------------------
# torch's CPU kernels run a vectorised body and a scalar tail (std::exp, 1/(1+exp)) that can
# differ in the last bit: measured, 828 of 20,000 float32 sigmoids. Which elements of a batch
# fall in the tail depends on where each example sits, so torch.sigmoid is not batch-order
# invariant. These evaluate every element the same way: exactforge's exp (the same bits
# everywhere) in float64, one rounding to the input's dtype.


def _npdtype(t: torch.Tensor):
    return torch.empty(0, dtype=t.dtype).numpy().dtype


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64)


def _sigmoid64(v: np.ndarray) -> np.ndarray:
    from .._backend.native import _core

    e = _core.exp(-np.abs(v))  # in (0, 1]: no overflow for any input
    return np.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _tanh64(v: np.ndarray) -> np.ndarray:
    from .._backend.native import _core

    a = np.abs(v)
    e = _core.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    # 1 - e cancels for tiny |x|; below 2^-8 the series to x^7 is exact to float64 rounding
    a2 = a * a
    small = a * (1.0 - a2 * (1.0 / 3.0 - a2 * (2.0 / 15.0 - a2 * (17.0 / 315.0))))
    return np.copysign(np.where(a < 2.0**-8, small, big), v)


class _Elementwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind):
        f = _sigmoid64 if kind == "sigmoid" else _tanh64
        y = torch.from_numpy(f(_np(x)).astype(_npdtype(x)))
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


# GELU and SiLU the same way: each value and each derivative a float64 expression of the one
# input (exactforge's exp; erf from its own series, below), rounded once to the input's dtype.

_SQRT_2_PI = 0.7978845608028654  # sqrt(2 / pi)
_INV_SQRT_PI = 0.5641895835477563  # 1 / sqrt(pi)


def _erfc64(z: np.ndarray) -> np.ndarray:
    """erfc(z) for z >= 0 to about 1e-15 relative: below 2, 1 - erf from the series with
    positive terms erf(z) = 2/sqrt(pi) e^(-z^2) sum 2^n z^(2n+1) / (2n+1)!!; from 2 on, the
    continued fraction e^(-z^2)/sqrt(pi) / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...)))), evaluated
    from a fixed depth. Fixed iteration counts: the same operations for every element."""
    from .._backend.native import _core

    z = np.asarray(z, dtype=np.float64)
    small = np.minimum(z, 2.0)
    z2 = small * small
    term = small.copy()
    total = small.copy()
    for n in range(1, 60):
        term = term * (2.0 * z2 / (2 * n + 1))
        total = total + term
    erf_small = 2.0 * _INV_SQRT_PI * _core.exp(-z2) * total
    big = np.maximum(z, 2.0)
    frac = big.copy()
    for k in range(80, 0, -1):
        frac = big + (k / 2.0) / frac
    erfc_big = _core.exp(-big * big) * _INV_SQRT_PI / frac
    return np.where(z < 2.0, 1.0 - erf_small, erfc_big)


def _phi64(v: np.ndarray) -> np.ndarray:
    """The standard normal CDF, accurate in both tails (erfc of |v| / sqrt 2)."""
    tail = 0.5 * _erfc64(np.abs(v) * 0.7071067811865476)
    return np.where(v < 0, tail, 1.0 - tail)


def _gelu64(v: np.ndarray):
    from .._backend.native import _core

    cdf = _phi64(v)
    pdf = _core.exp(-0.5 * v * v) * (0.5 * _INV_SQRT_PI * 1.4142135623730951)  # 1 / sqrt(2 pi)
    return v * cdf, cdf + v * pdf


def _gelu_tanh64(v: np.ndarray):
    # 0.5 x (1 + tanh u) = x sigmoid(2u): no cancellation for large negative x
    u = _SQRT_2_PI * (v + 0.044715 * v * v * v)
    s = _sigmoid64(2.0 * u)
    return v * s, s + v * (2.0 * s * (1.0 - s)) * _SQRT_2_PI * (1.0 + 3 * 0.044715 * v * v)


def _silu64(v: np.ndarray):
    s = _sigmoid64(v)
    return v * s, s * (1.0 + v * (1.0 - s))


_WITH_DERIVATIVE = {"gelu": _gelu64, "gelu-tanh": _gelu_tanh64, "silu": _silu64}


class _Activation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind):
        y64, d64 = _WITH_DERIVATIVE[kind](_np(x))
        dt = _npdtype(x)
        ctx.save_for_backward(torch.from_numpy(d64.astype(dt)))
        return torch.from_numpy(y64.astype(dt))

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


# ---- dropout keyed to (seed, step, layer, example) --------------------------------------------
# torch draws a dropout mask from one RNG stream in batch order, so the mask an example gets
# depends on where it sits in the batch and on everything drawn before. Here each element's
# keep bit is a hash of (seed, step, layer, dataset index of the example, element): a pure
# function a verifier recomputes from the trace, that follows the example under any batch order
# and any thread count. splitmix64 is the mixer (a bijection of 64-bit words, so distinct keys
# never collide before the final 53-bit cut).

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _word(v: int) -> np.ndarray:
    return np.asarray([int(v) % (1 << 64)], dtype=np.uint64)


def keep_mask(seed: int, step: int, layer: int, examples: np.ndarray, n: int, p: float) -> np.ndarray:
    """(len(examples), n) booleans: element j of example i is kept. P(kept) = 1 - p to 2^-53."""
    base = _splitmix(_splitmix(_splitmix(_word(seed)) ^ _word(step)) ^ _word(layer))
    ex = _splitmix(base ^ np.asarray(examples, dtype=np.int64).astype(np.uint64))
    h = _splitmix(ex[:, None] ^ np.arange(n, dtype=np.uint64)[None, :])
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return u >= p


def dropout(x: torch.Tensor, p: float, *, seed: int, step: int, layer: int, examples: Any) -> torch.Tensor:
    """Inverted dropout (kept elements scaled by 1/(1-p), as torch) with the mask keyed to
    ``(seed, step, layer, examples[i])`` for example i (the first axis of ``x``)."""
    ex = np.asarray(examples)
    if ex.ndim != 1 or len(ex) != x.shape[0] or not np.issubdtype(ex.dtype, np.integer):
        raise ValueError(f"examples: expected one integer key per example ({x.shape[0]}), got shape {ex.shape}")
    if p >= 1:
        return x * 0
    n = int(np.prod(x.shape[1:]))
    keep = keep_mask(seed, step, layer, ex, n, float(p))
    scale = np.float64(1.0) / (1.0 - float(p))
    m = torch.from_numpy((keep * scale).astype(_npdtype(x))).reshape(x.shape)
    return x * m


# ---- the Transformer's pieces ------------------------------------------------------------------
# Every reduction inside one example (over features, positions, keys) runs in one fixed order:
# exactforge's fixed-mode sum, or a loop of separately rounded torch multiplies and adds (each a
# correctly rounded IEEE operation, so the same bits wherever the element sits). Reductions over
# the batch (parameter gradients) use the layer's batch mode.


def _rowsum(x2: torch.Tensor) -> torch.Tensor:
    """(R, D) -> (R,): each row summed in index order."""
    if x2.dtype in _NATIVE and x2.device.type == "cpu" and x2.shape[1] > 0:
        # the fixed-mode sum's chains, along the rows as they lie (no transposed copy)
        return torch.from_numpy(_core.rowsum_fixed(x2.detach().contiguous().numpy()))
    return R.sum(x2.t().contiguous(), axis=0, mode="fixed")


def _bmm_loop(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M, K) @ (N, K, P), each output the sum over k = 0..K-1 in that order, no FMA."""
    if a.dtype in _NATIVE and a.dtype == b.dtype and a.device.type == "cpu" and b.device.type == "cpu":
        # the same loop in C++ (exactforge/batched.hpp): the same separately rounded operations
        return torch.from_numpy(_core.bmm_unfused(a.detach().contiguous().numpy(), b.detach().contiguous().numpy()))
    acc = a[:, :, 0:1] * b[:, 0:1, :]
    for k in range(1, a.shape[2]):
        acc = acc + a[:, :, k : k + 1] * b[:, k : k + 1, :]
    return acc


class _BMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _bmm_loop(a, b)

    @staticmethod
    def backward(ctx, dc):
        a, b = ctx.saved_tensors
        da = _bmm_loop(dc, b.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        db = _bmm_loop(a.transpose(1, 2), dc) if ctx.needs_input_grad[1] else None
        return da, db


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched product of per-example matrices in a fixed order (attention scores, attention
    times values): no sum crosses the leading axis, so no batch mode applies."""
    return _BMM.apply(a, b)


class _Softmax(torch.autograd.Function):
    """Softmax over the last axis with exactforge's exp and fixed-order row sums."""

    @staticmethod
    def forward(ctx, s):
        shp = s.shape
        s2 = s.reshape(-1, shp[-1])
        m = s2.max(dim=1, keepdim=True).values  # exact
        e = mathfn.exp(s2 - m)
        p = (e / _rowsum(e).reshape(-1, 1)).reshape(shp)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, dp):
        (p,) = ctx.saved_tensors
        L = p.shape[-1]
        p2, dp2 = p.reshape(-1, L), dp.reshape(-1, L)
        dot = _rowsum(dp2 * p2).reshape(-1, 1)
        return (p2 * (dp2 - dot)).reshape(p.shape)


def softmax(s: torch.Tensor) -> torch.Tensor:
    return _Softmax.apply(s)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, D, eps, mode, arithmetic):
        x2 = x.reshape(-1, D)
        mean = (_rowsum(x2) / D).reshape(-1, 1)
        xc = x2 - mean
        var = (_rowsum(xc * xc) / D).reshape(-1, 1)
        rstd = _rsqrt(var + eps, arithmetic)
        xhat = xc * rstd
        y = xhat
        if weight is not None:
            y = y * weight.reshape(1, D)
        if bias is not None:
            y = y + bias.reshape(1, D)
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.conf = (x.shape, D, mode, bias is not None)
        ctx.bias = _shared_param(bias, mode)
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, dy):
        xhat, rstd, weight = ctx.saved_tensors
        shape, D, mode, has_bias = ctx.conf
        dy2 = dy.reshape(-1, D)
        g = dy2 if weight is None else dy2 * weight.reshape(1, D)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            mg = (_rowsum(g) / D).reshape(-1, 1)
            mgx = (_rowsum(g * xhat) / D).reshape(-1, 1)
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
    D = int(np.prod(normalized_shape))
    w = weight.reshape(-1) if weight is not None else None
    b = bias.reshape(-1) if bias is not None else None
    out = _LayerNorm.apply(x, w, b, D, float(eps), mode, arithmetic)
    return out


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


def attention_mask(
    attn_mask: Optional[torch.Tensor],
    key_padding_mask: Optional[torch.Tensor],
    is_causal: bool,
    B: int,
    H: int,
    L: int,
    S: int,
    dtype,
) -> Optional[torch.Tensor]:
    """One additive mask (B*H, L, S) from torch's conventions: a boolean True (or -inf) means
    "may not attend"; a float mask is added to the scores."""

    def additive(m):
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype).masked_fill(m, float("-inf"))
        return m.to(dtype)

    total = None
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(L, S, dtype=torch.bool).triu(1)
    if attn_mask is not None:
        a = additive(attn_mask)
        a = a.reshape(B, H, L, S) if a.dim() == 3 else a.reshape(1, 1, L, S)
        total = a
    if key_padding_mask is not None:
        k = additive(key_padding_mask).reshape(B, 1, 1, S)
        total = k if total is None else total + k
    if total is None:
        return None
    return total.expand(B, H, L, S).reshape(B * H, L, S)


def multi_head_attention(
    q_in,
    k_in,
    v_in,
    mha,
    attn_mask=None,
    key_padding_mask=None,
    is_causal=False,
    need_weights=False,
    average_attn_weights=True,
    mode: str = "exact",
    drop: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
):
    """nn.MultiheadAttention's computation (batch first) with reproducible pieces: projections
    as reproducible linears (their weight gradients sum over the batch in ``mode``), per-head
    scores and weighted values as fixed-order per-example products, softmax with exactforge's
    exp; ``drop``, where given, is applied to the attention weights before they weigh the values
    (the returned weights are the ones before dropout, as torch's)."""
    B, L, E = q_in.shape
    S = k_in.shape[1]
    H = mha.num_heads
    dh = E // H
    if mha._qkv_same_embed_dim:
        w, b = mha.in_proj_weight, mha.in_proj_bias
        if q_in is k_in and k_in is v_in:
            q, k, v = linear(q_in, w, b, mode).chunk(3, dim=-1)
        else:
            bs = (None, None, None) if b is None else (b[:E], b[E : 2 * E], b[2 * E :])
            q = linear(q_in, w[:E], bs[0], mode)
            k = linear(k_in, w[E : 2 * E], bs[1], mode)
            v = linear(v_in, w[2 * E :], bs[2], mode)
    else:
        bs = (None, None, None) if mha.in_proj_bias is None else mha.in_proj_bias.split(E)
        q = linear(q_in, mha.q_proj_weight, bs[0], mode)
        k = linear(k_in, mha.k_proj_weight, bs[1], mode)
        v = linear(v_in, mha.v_proj_weight, bs[2], mode)

    def heads(t, n):
        return t.reshape(B, n, H, dh).transpose(1, 2).reshape(B * H, n, dh)

    q, k, v = heads(q, L), heads(k, S), heads(v, S)
    scores = bmm(q, k.transpose(1, 2)) * (1.0 / float(np.sqrt(dh)))
    mask = attention_mask(attn_mask, key_padding_mask, is_causal, B, H, L, S, scores.dtype)
    if mask is not None:
        scores = scores + mask
    p = softmax(scores)
    o = bmm(p if drop is None else drop(p), v).reshape(B, H, L, dh).transpose(1, 2).reshape(B, L, E)
    out = linear(o, mha.out_proj.weight, mha.out_proj.bias, mode)
    weights = None
    if need_weights:
        pw = p.detach().reshape(B, H, L, S)
        weights = pw
        if average_attn_weights:
            acc = pw[:, 0]
            for h in range(1, H):
                acc = acc + pw[:, h]
            weights = acc / H
    return out, weights


def grad_norm(grads: Any) -> float:
    """The L2 norm of the gradients ``grads`` (tensors) as one number that depends on their
    values only: each square is exact in float64 and the squares are summed exactly
    (``reduce.sum(mode="exact")``, in chunks of at most its term limit, the chunks in a fixed
    order). torch's own norm sums in an order that follows the thread count."""
    import math

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
