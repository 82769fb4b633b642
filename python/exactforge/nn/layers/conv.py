from torch import nn

from .._registry import UnsupportedLayerError, register_layer
from ..functional import conv2d


@register_layer(nn.Conv2d)
def make_conv2d(module: nn.Conv2d, mode: str):
    # grouped convolutions and other padding modes would need their own im2col; refused up front
    if module.groups != 1:
        raise UnsupportedLayerError(f"module: Conv2d with groups={module.groups} is not supported (groups=1 only)")
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise UnsupportedLayerError(
            "module: Conv2d supports numeric zero padding only "
            f"(padding={module.padding!r}, padding_mode={module.padding_mode!r})"
        )

    def forward(self, x):
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, mode)

    return forward
