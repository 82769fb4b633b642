from torch import nn

from .._registry import UnsupportedLayerError, owned, register_layer
from ..functional import batch_norm_eval, batch_norm_train, layer_norm


@register_layer(nn.BatchNorm1d, nn.BatchNorm2d)
def make_batch_norm(module: nn.modules.batchnorm._BatchNorm, mode: str):
    if (module.running_mean is None) != (module.running_var is None):
        raise UnsupportedLayerError("module: BatchNorm with only one of running_mean and running_var is not supported")

    def forward(self, x):
        # torch's rule: the batch's own statistics in training mode, and in eval mode too when
        # the layer keeps no running statistics
        if not self.training and self.running_mean is not None:
            return batch_norm_eval(
                x,
                self.running_mean,
                self.running_var,
                self.weight,
                self.bias,
                self.eps,
                mode,
                self._exactforge_arithmetic,
            )
        momentum = self.momentum
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # a cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        running = self.training or not self.track_running_stats
        return owned(
            batch_norm_train(
                x,
                self.running_mean if running else None,
                self.running_var if running else None,
                self.weight,
                self.bias,
                0.0 if momentum is None else momentum,
                self.eps,
                mode,
                self._exactforge_arithmetic,
            )
        )

    return forward


@register_layer(nn.LayerNorm)
def make_layer_norm(module: nn.LayerNorm, mode: str):
    def forward(self, x):
        return owned(
            layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, mode, self._exactforge_arithmetic)
        )

    return forward
