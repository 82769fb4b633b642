"""Average and max pooling as operators that run torch's own eager CPU kernels, forward and
backward. Eager, those kernels already give the same bits for any batch order and thread count
(each window summed in one loop order, or a maximum), so the reproducible layers call them as
they are; a compiled graph would instead get the compiler's own loops, whose order of summation
(a window of 64 values) and choice among tied maxima differ from them. These operators keep the
eager kernels inside a compiled graph."""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from ._library import define

__all__ = ["avg_pool2d", "avg_pool2d_backward", "max_pool2d", "max_pool2d_backward"]


def _avg_impl(
    x,
    kernel: List[int],
    stride: List[int],
    padding: List[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: Optional[int],
) -> torch.Tensor:
    return F.avg_pool2d(x.detach(), kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _avg_fake(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return torch.ops.aten.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)


def _avg_backward_impl(dy, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return torch.ops.aten.avg_pool2d_backward(
        dy.detach(), x.detach(), kernel, stride, padding, ceil_mode, count_include_pad, divisor_override
    )


def _avg_backward_fake(dy, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return torch.empty_like(x)


def _max_impl(x, kernel: List[int], stride: List[int], padding: List[int], dilation: List[int], ceil_mode: bool):
    return torch.ops.aten.max_pool2d_with_indices(x.detach(), kernel, stride, padding, dilation, ceil_mode)


def _max_fake(x, kernel, stride, padding, dilation, ceil_mode):
    return torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, padding, dilation, ceil_mode)


def _max_backward_impl(dy, x, kernel, stride, padding, dilation, ceil_mode, indices):
    return torch.ops.aten.max_pool2d_with_indices_backward(
        dy.detach(), x.detach(), kernel, stride, padding, dilation, ceil_mode, indices
    )


def _max_backward_fake(dy, x, kernel, stride, padding, dilation, ceil_mode, indices):
    return torch.empty_like(x)


_AVG = define(
    "avg_pool2d(Tensor x, int[] kernel, int[] stride, int[] padding, bool ceil_mode, bool count_include_pad,"
    " int? divisor_override) -> Tensor",
    _avg_impl,
    _avg_fake,
)
_AVG_BACKWARD = define(
    "avg_pool2d_backward(Tensor dy, Tensor x, int[] kernel, int[] stride, int[] padding, bool ceil_mode,"
    " bool count_include_pad, int? divisor_override) -> Tensor",
    _avg_backward_impl,
    _avg_backward_fake,
)
_MAX = define(
    "max_pool2d(Tensor x, int[] kernel, int[] stride, int[] padding, int[] dilation, bool ceil_mode)"
    " -> (Tensor, Tensor)",
    _max_impl,
    _max_fake,
)
_MAX_BACKWARD = define(
    "max_pool2d_backward(Tensor dy, Tensor x, int[] kernel, int[] stride, int[] padding, int[] dilation,"
    " bool ceil_mode, Tensor indices) -> Tensor",
    _max_backward_impl,
    _max_backward_fake,
)


def avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override) -> torch.Tensor:
    """torch's eager average pooling (the operator under torch.compile)."""
    return _AVG(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)


def avg_pool2d_backward(dy, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    return _AVG_BACKWARD(dy, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)


def max_pool2d(x, kernel, stride, padding, dilation, ceil_mode):
    """torch's eager max pooling with its indices (the operator under torch.compile)."""
    return _MAX(x, kernel, stride, padding, dilation, ceil_mode)


def max_pool2d_backward(dy, x, kernel, stride, padding, dilation, ceil_mode, indices):
    return _MAX_BACKWARD(dy, x, kernel, stride, padding, dilation, ceil_mode, indices)
