"""Layers that act on each example alone, with no reduction across the batch.

ReLU, max pooling and the reshapes are exact operations (a comparison, a copy), and average
pooling sums each window in one loop order with no vectorised/scalar split across windows,
so torch's own CPU kernels give the same bits for any batch order and thread count: they run as
they are (``reproducible`` only checks that they are known). Tanh, Sigmoid, GELU and SiLU are
not exact: torch's vectorised body and scalar tail disagree in the last bit, so they go through
exactforge's exp (``functional.sigmoid``/``tanh``/``gelu``/``silu``)."""

from torch import nn

from .._registry import register_layer
from ..functional import gelu, sigmoid, silu, tanh

PER_EXAMPLE = (nn.ReLU, nn.Flatten, nn.Identity, nn.Unflatten)  # pooling: layers/pool.py


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
