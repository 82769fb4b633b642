"""Reproducible PyTorch layers and losses: gradients that are bitwise the same for any batch
order and thread count (``mode="exact"``), within float32 rounding of autograd.

    model = exactforge.nn.reproducible(model)        # same module, same state_dict
    loss = exactforge.nn.cross_entropy(model(x), y)
    loss.backward()

Supported: Linear, Conv2d (groups=1, zero padding, any stride and dilation), BatchNorm1d/2d
(training mode: batch statistics as order-free sums), LayerNorm, MultiheadAttention and the
Transformer encoder, Embedding, ReLU, Tanh, Sigmoid, GELU, SiLU, Flatten, Unflatten, Identity, MaxPool2d, AvgPool2d,
AdaptiveAvgPool2d (``layers.pool``: a fixed summation order per bin), and Dropout
(training-mode masks keyed to (seed, step, layer, example): ``dropout_keys``; attention-weight
dropout likewise). Anything else is
refused by ``reproducible`` with its name. CPU tensors.

The optimizer of a reproducible model steps through ``reproducible_optimizer(optimizer)``:
torch's SGD, Adam, AdamW and RMSprop with one written-down rounding per operation, the same
bits on every CPU (``exactforge.nn.update``); ``TraceRecorder`` installs it for you.
"""

from . import layers as _layers  # noqa: F401  (registers the layer types)
from ._registry import (
    MODES,
    UnsupportedLayerError,
    arithmetic_of,
    mode_of,
    register_layer,
    reproducible,
    shared_batch_of,
    supported_layers,
)
from .augment import KeyedAugment, StreamAugment, augment_from_dict
from .functional import (
    batch_norm_train,
    clip_grad_norm_,
    cross_entropy,
    dropout,
    gelu,
    grad_norm,
    mse_loss,
    sigmoid,
    silu,
    tanh,
)
from .layers.dropout import dropout_keys, keyed_dropout, keyed_layers
from .layers.shortcut import ShortcutA
from .update import ARITHMETIC, portable_step, reproducible_optimizer

__all__ = [
    "reproducible",
    "mode_of",
    "arithmetic_of",
    "ARITHMETIC",
    "portable_step",
    "reproducible_optimizer",
    "cross_entropy",
    "mse_loss",
    "sigmoid",
    "tanh",
    "gelu",
    "silu",
    "dropout",
    "dropout_keys",
    "keyed_dropout",
    "keyed_layers",
    "register_layer",
    "supported_layers",
    "UnsupportedLayerError",
    "MODES",
    "shared_batch_of",
    "clip_grad_norm_",
    "grad_norm",
    "batch_norm_train",
    "KeyedAugment",
    "StreamAugment",
    "augment_from_dict",
    "ShortcutA",
]
