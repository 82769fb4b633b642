"""exactforge's reproducible kernels as PyTorch operators (``torch.ops.exactforge.*``).

Each operator runs the native kernel on the tensors' memory and has a fake implementation
(shapes and dtypes only), so ``torch.compile`` traces a reproducible model through it without a
graph break and the compiled step has the eager step's bits. The reproducible layers
(``exactforge.nn``) call these functions; in eager mode they run the kernel directly, without the
dispatcher's round trip. The NumPy entry points (``exactforge.reduce``) stay the array API."""

from .conv import conv2d, conv2d_input_grad, conv2d_weight_grad, im2col
from .losses import softmax_xent
from .norm import batch_norm_train, batch_norm_train_backward, channel_sum, rsqrt
from .pointwise import activation, exp, sqrt_rn
from .pool import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward
from .products import bmm, mm, rowsum, sum0

__all__ = [
    "mm",
    "bmm",
    "sum0",
    "rowsum",
    "conv2d",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "im2col",
    "softmax_xent",
    "channel_sum",
    "rsqrt",
    "batch_norm_train",
    "batch_norm_train_backward",
    "activation",
    "sqrt_rn",
    "exp",
    "avg_pool2d",
    "avg_pool2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
]
