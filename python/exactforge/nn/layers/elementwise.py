"""Layers that act on each example alone, with no reduction across the batch.

ReLU, max pooling and the reshapes are exact operations (a comparison, a copy), and average
pooling sums each window in one loop order with no vectorised/scalar split across windows,
so torch's own CPU kernels give the same bits for any batch order and thread count: they run as
they are (``reproducible`` only checks that they are known). Tanh, Sigmoid, GELU and SiLU are
not exact: torch's vectorised body and scalar tail disagree in the last bit, so they go through
exactforge's exp (``functional.sigmoid``/``tanh``/``gelu``/``silu``)."""

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import register_layer
from ..functional import gelu, sigmoid, silu, tanh


class ShortcutA(nn.Module):
    """The parameter-free shortcut of He et al.'s CIFAR ResNets ("option A"): the input
    subsampled by ``stride`` and its channels padded with zeros, half before and half after, to
    ``planes``. Copies only: exact for any batch order and thread count."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        if planes < in_planes or (planes - in_planes) % 2:
            raise ValueError(f"planes: expected in_planes plus an even number of channels, got {in_planes} -> {planes}")
        self.in_planes, self.planes, self.stride = in_planes, planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (self.planes - self.in_planes) // 2
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, pad, pad), "constant", 0.0)


PER_EXAMPLE = (nn.ReLU, nn.Flatten, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.Unflatten, ShortcutA)


@register_layer(*PER_EXAMPLE)
def make_per_example(module: nn.Module, mode: str):
    return type(module).forward


@register_layer(nn.Sigmoid)
def make_sigmoid(module: nn.Sigmoid, mode: str):
    return lambda self, x: sigmoid(x)


@register_layer(nn.Tanh)
def make_tanh(module: nn.Tanh, mode: str):
    return lambda self, x: tanh(x)


@register_layer(nn.GELU)
def make_gelu(module: nn.GELU, mode: str):
    return lambda self, x: gelu(x, self.approximate)


@register_layer(nn.SiLU)
def make_silu(module: nn.SiLU, mode: str):
    return lambda self, x: silu(x)
