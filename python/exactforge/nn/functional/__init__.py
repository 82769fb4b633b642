"""Autograd functions of the reproducible layers and losses (CPU tensors), one module per
subject: products and convolutions (``linear``), normalisation (``norm``), activations
(``elementwise``), keyed dropout (``dropout``), the Transformer's pieces (``attention``) and the
losses with the gradient norm (``losses``).

Per-example products along feature axes use ``reduce.matmul(mode="fixed")`` (one fixed order,
no batch dependence); reductions over the batch (and over positions of a convolution, which
are per-example too but are summed with the batch into the weight gradient) use the layer's
batch mode: ``"exact"`` is a symmetric function of the terms, so any batch order and any
thread count give the same bits.
"""

from __future__ import annotations

from .attention import attention_mask, bmm, multi_head_attention, softmax
from .dropout import dropout, keep_mask
from .elementwise import gelu, sigmoid, silu, tanh
from .linear import conv2d, embedding, linear
from .losses import clip_grad_norm_, cross_entropy, grad_norm, mse_loss
from .norm import batch_norm_eval, batch_norm_train, layer_norm

__all__ = [
    "linear",
    "conv2d",
    "batch_norm_eval",
    "batch_norm_train",
    "cross_entropy",
    "mse_loss",
    "sigmoid",
    "tanh",
    "gelu",
    "silu",
    "dropout",
    "keep_mask",
    "bmm",
    "softmax",
    "layer_norm",
    "embedding",
    "attention_mask",
    "multi_head_attention",
    "grad_norm",
    "clip_grad_norm_",
]
