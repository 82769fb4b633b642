from torch import nn

from .._registry import register_layer
from ..functional import batch_norm_eval


@register_layer(nn.BatchNorm1d, nn.BatchNorm2d)
def make_batch_norm(module: nn.modules.batchnorm._BatchNorm, mode: str):
    def forward(self, x):
        # Training mode normalises by statistics of the batch itself, a reduction over the
        # batch inside the forward pass that this layer does not make reproducible yet.
        if self.training or self.running_mean is None:
            raise RuntimeError(
                f"{type(self).__name__}: reproducible only in eval mode with running statistics "
                "(call .eval() on it, or train without BatchNorm)"
            )
        return batch_norm_eval(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps, mode)

    return forward


@register_layer(nn.LayerNorm)
def make_layer_norm(module: nn.LayerNorm, mode: str):
    from ..functional import layer_norm

    def forward(self, x):
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, mode)

    return forward
