"""exp and log with the same bits on every CPU and GPU (src/exactforge/mathfn.hpp): only
once-rounded IEEE operations and exact power-of-two scaling, evaluated in float64 and rounded
once to the input's dtype. libm's exp/log differ between libraries and devices."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from . import reduce as R
from ._backend import device as _device
from ._backend.arrays import check_dtype, compute_dtype, from_numpy, kind_of, to_numpy
from ._backend.native import _core

__all__ = ["exp", "log", "softmax_xent", "output_errors"]


def _apply(x: Any, fn: str) -> Any:
    kx = kind_of(x, "x")
    dx = check_dtype(x, "x")
    if kx.cuda:
        return _device.elementwise(x, kx, dx, fn)
    cdt = compute_dtype(dx)
    out = (_core.exp if fn == "exp" else _core.log)(to_numpy(x, kx, cdt))
    return from_numpy(out, kx, dx)


def exp(x: Any) -> Any:
    """e**x elementwise (NumPy, torch or CuPy arrays; float16/bfloat16 via float32)."""
    return _apply(x, "exp")


def log(x: Any) -> Any:
    """Natural logarithm elementwise; log(0) = -inf, log(x < 0) = NaN."""
    return _apply(x, "log")


def softmax_xent(z: np.ndarray, y: np.ndarray, *, mode: str = "fixed") -> Tuple[np.ndarray, np.ndarray]:
    """Per-example cross-entropy losses and softmax probabilities, with exactforge's exp/log.
    ``y`` holds class indices (b,) or label vectors (b x n, e.g. the soft labels of a forgery:
    loss = -sum_j y_j log softmax_j). The class sums are reductions in a fixed class order."""
    zs = z - z.max(axis=1, keepdims=True)
    e = exp(zs)
    s = R.sum(e, axis=1, mode=mode)
    p = e / s[:, None]
    ls = log(s)
    if y.ndim == 1:
        losses = ls - zs[np.arange(len(y)), y]
    else:
        losses = R.sum(y * (ls[:, None] - zs), axis=1, mode=mode)
    return losses, p


def output_errors(p: np.ndarray, y: np.ndarray, *, mode: str = "fixed") -> np.ndarray:
    """dloss/dz for softmax cross-entropy: p - onehot(y), or p * sum(y) - y for label vectors
    (Lemma 1: every row sums to zero either way)."""
    if y.ndim == 1:
        d = p.copy()
        d[np.arange(len(y)), y] -= d.dtype.type(1)
        return d
    return p * R.sum(y, axis=1, mode=mode)[:, None] - y
