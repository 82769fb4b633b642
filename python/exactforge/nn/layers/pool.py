"""Adaptive average pooling (the end of torchvision's ResNets) in one written-down order.

torch's own kernel is not used as AvgPool2d's is: for a (1, 1) output it computes
``input.mean((-2, -1))``, a vectorised reduction whose summation order follows the CPU's
vector width and, for few planes, the thread count. Here each output is its bin's elements
summed in row-major order, one separately rounded addition at a time, divided once by the
bin's size; torch's bin edges (start ``floor(i*H/oh)``, end ``ceil((i+1)*H/oh)``). Every
operation is elementwise over (N, C), so an example's output and input gradient do not depend
on where it sits in the batch or on the thread count. The backward pass gives each element of a
bin dy/count, bins added in row-major order of the output where they overlap (as torch)."""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import torch
from torch import nn

from ... import ops
from .._registry import register_layer

__all__ = ["adaptive_avg_pool2d", "bin_edges"]


def bin_edges(size: int, out: int) -> List[Tuple[int, int]]:
    """torch's adaptive pooling bins of an axis of ``size`` cut into ``out``: (start, end)."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _output_size(x: torch.Tensor, output_size: Any) -> Tuple[int, int]:
    size: Sequence[Any] = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2:
        raise ValueError(f"output_size: expected an int or a pair, got {output_size!r}")
    oh, ow = (x.shape[-2 + k] if s is None else int(s) for k, s in enumerate(size))
    if oh < 1 or ow < 1:
        raise ValueError(f"output_size: expected positive sizes, got {(oh, ow)}")
    return oh, ow


def _bin_sum(x: torch.Tensor, rows: List[Tuple[int, int]], cols: List[Tuple[int, int]]) -> torch.Tensor:
    """Each bin's sum over (N, C): offset by offset in row-major order of the bin, every bin at
    once (a bin without an element at an offset keeps its sum)."""
    dev = x.device
    kh, kw = max(e - s for s, e in rows), max(e - s for s, e in cols)
    rs = torch.tensor([s for s, _ in rows], device=dev)
    cs = torch.tensor([s for s, _ in cols], device=dev)
    rn = torch.tensor([e - s for s, e in rows], device=dev)
    cn = torch.tensor([e - s for s, e in cols], device=dev)
    H, W = x.shape[-2], x.shape[-1]
    acc = torch.zeros(*x.shape[:-2], len(rows), len(cols), dtype=x.dtype, device=dev)
    for a in range(kh):
        ri = (rs + a).clamp(max=H - 1)
        xr = x.index_select(-2, ri)
        for b in range(kw):
            v = xr.index_select(-1, (cs + b).clamp(max=W - 1))
            present = (a < rn)[:, None] & (b < cn)[None, :]
            acc = torch.where(present, acc + v, acc)
    return acc


class _AdaptiveAvgPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, oh: int, ow: int) -> torch.Tensor:  # type: ignore[override]
        rows, cols = bin_edges(x.shape[-2], oh), bin_edges(x.shape[-1], ow)
        count = torch.tensor([[(re - rs) * (ce - cs) for cs, ce in cols] for rs, re in rows], dtype=x.dtype)
        ctx.rows, ctx.cols, ctx.shape = rows, cols, x.shape
        ctx.save_for_backward(count.to(x.device))
        return _bin_sum(x, rows, cols) / count.to(x.device)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:  # type: ignore[override]
        (count,) = ctx.saved_tensors
        share = dy / count  # dy/count, once per bin
        dx = torch.zeros(ctx.shape, dtype=dy.dtype, device=dy.device)
        for i, (rs, re) in enumerate(ctx.rows):  # bins in row-major order: overlaps add in it
            for j, (cs, ce) in enumerate(ctx.cols):
                dx[..., rs:re, cs:ce] += share[..., i : i + 1, j : j + 1]
        return dx, None, None


def adaptive_avg_pool2d(x: torch.Tensor, output_size: Any) -> torch.Tensor:
    """``torch.nn.functional.adaptive_avg_pool2d`` in a fixed order: input (N, C, H, W) or
    (C, H, W); within float32 rounding of torch's, bitwise the same for any batch order and
    thread count."""
    if x.dim() not in (3, 4):
        raise ValueError(f"adaptive_avg_pool2d: expected a 3-D or 4-D input, got {x.dim()}-D")
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise ValueError(f"adaptive_avg_pool2d: empty spatial size {tuple(x.shape[-2:])}")
    oh, ow = _output_size(x, output_size)
    return _AdaptiveAvgPool2d.apply(x.contiguous(), oh, ow)


@register_layer(nn.AdaptiveAvgPool2d)
def make_adaptive_avg_pool2d(module: nn.AdaptiveAvgPool2d, mode: str):
    def forward(self, x):
        return adaptive_avg_pool2d(x, self.output_size)

    return forward


def _pair(v: Any) -> List[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v]


class _AvgPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, conf: tuple) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.conf = conf
        return ops.avg_pool2d(x, *conf)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return ops.avg_pool2d_backward(dy, x, *ctx.conf), None


class _MaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, conf: tuple) -> torch.Tensor:  # type: ignore[override]
        y, indices = ops.max_pool2d(x, *conf)
        ctx.save_for_backward(x, indices)
        ctx.conf = conf
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> Any:  # type: ignore[override]
        x, indices = ctx.saved_tensors
        kernel, stride, padding, dilation, ceil_mode = ctx.conf
        return ops.max_pool2d_backward(dy, x, kernel, stride, padding, dilation, ceil_mode, indices), None


@register_layer(nn.AvgPool2d)
def make_avg_pool2d(module: nn.AvgPool2d, mode: str):
    """torch's kernel as it is when eager (each window summed in one loop order); inside a
    compiled graph, the same kernel through an operator (the compiler's own loop sums a large
    window in another order)."""

    def forward(self, x):
        if not torch.compiler.is_compiling() or x.dim() != 4:
            return nn.AvgPool2d.forward(self, x)
        stride = self.kernel_size if self.stride is None else self.stride
        conf = (
            _pair(self.kernel_size),
            _pair(stride),
            _pair(self.padding),
            bool(self.ceil_mode),
            bool(self.count_include_pad),
            self.divisor_override,
        )
        return _AvgPool2d.apply(x, conf)

    return forward


@register_layer(nn.MaxPool2d)
def make_max_pool2d(module: nn.MaxPool2d, mode: str):
    """torch's kernel as it is when eager; inside a compiled graph, the same kernel and its
    backward through operators (the compiler's own may pick another of tied maxima)."""

    def forward(self, x):
        if not torch.compiler.is_compiling() or x.dim() != 4 or self.return_indices:
            return nn.MaxPool2d.forward(self, x)
        stride = self.kernel_size if self.stride is None else self.stride
        conf = (_pair(self.kernel_size), _pair(stride), _pair(self.padding), _pair(self.dilation), bool(self.ceil_mode))
        return _MaxPool2d.apply(x, conf)

    return forward
