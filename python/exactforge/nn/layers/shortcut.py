"""The parameter-free shortcut of the CIFAR ResNets, and its registration: a copy and a zero
pad, so torch's own forward is already exact for any batch order and thread count."""

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import register_layer


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


@register_layer(ShortcutA)
def make_shortcut(module: ShortcutA, mode: str):
    return type(module).forward
