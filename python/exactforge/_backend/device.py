"""CUDA dispatch: the one place where CUDA arrays meet the `_cuda` module.

CUDA arrays are made C-contiguous (copied if needed) and passed as raw device pointers with
their shape, on the caller library's current stream and device (the array's adapter knows
how, :mod:`exactforge._backend.arrays`)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .arrays import ArrayKind, compute_dtype
from .native import require_cuda

__all__ = ["matmul", "sum_rows", "elementwise"]


def _order(order: Optional[np.ndarray]) -> Optional[list]:
    return None if order is None else order.tolist()


def matmul(a: Any, b: Any, kind: ArrayKind, dtype: str, mode: str, order: Optional[np.ndarray]) -> Any:
    cuda = require_cuda("a")
    ad, cdt = kind.adapter, compute_dtype(dtype)
    a_, b_ = ad.contiguous(a, cdt), ad.contiguous(b, cdt)
    m, k = a_.shape
    n = b_.shape[1]
    out = ad.empty((m, n), cdt, kind.device)
    with ad.stream(kind.device) as stream:
        cuda.matmul(
            cdt,
            mode,
            ad.device_pointer(a_),
            ad.device_pointer(b_),
            ad.device_pointer(out),
            m,
            k,
            n,
            _order(order),
            stream,
        )
    return ad.cast(out, dtype)


def sum_rows(x: Any, kind: ArrayKind, dtype: str, mode: str, order: Optional[np.ndarray]) -> Any:
    cuda = require_cuda("x")
    ad, cdt = kind.adapter, compute_dtype(dtype)
    x_ = ad.contiguous(x, cdt)
    k, n = x_.shape
    out = ad.empty((n,), cdt, kind.device)
    with ad.stream(kind.device) as stream:
        cuda.sum_rows(cdt, mode, ad.device_pointer(x_), ad.device_pointer(out), k, n, _order(order), stream)
    return ad.cast(out, dtype)


def elementwise(x: Any, kind: ArrayKind, dtype: str, fn: str) -> Any:
    cuda = require_cuda("x")
    ad, cdt = kind.adapter, compute_dtype(dtype)
    x_ = ad.contiguous(x, cdt)
    out = ad.empty(tuple(x_.shape), cdt, kind.device)
    with ad.stream(kind.device) as stream:
        cuda.elementwise(cdt, fn, ad.device_pointer(x_), ad.device_pointer(out), int(np.prod(x_.shape)), stream)
    return ad.cast(out, dtype)
