"""Layers that act on each example alone, in a fixed order, with no reduction across the batch:
torch's own CPU kernels already give the same bits for any batch order and thread count, so
they run as they are (``reproducible`` only checks that they are known)."""
from torch import nn

from .._registry import register_layer

PER_EXAMPLE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Flatten, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.Unflatten)


@register_layer(*PER_EXAMPLE)
def make_per_example(module: nn.Module, mode: str):
    return type(module).forward


@register_layer(nn.Dropout)
def make_dropout(module: nn.Dropout, mode: str):
    base = nn.Dropout.forward

    def forward(self, x):
        # A training-mode mask draws from torch's RNG stream in batch order, so it would follow
        # the batch order, and a verifier would need the stream's state: not supported yet.
        if self.training and self.p > 0:
            raise RuntimeError("Dropout: reproducible only in eval mode or with p=0 (per-step seeded masks are not "
                               "supported yet)")
        return base(self, x)

    return forward
