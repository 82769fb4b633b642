"""CUDA dispatch: the one place where CUDA arrays meet the `_cuda` module.

CUDA arrays are made C-contiguous (copied if needed) and passed as raw device pointers with
their shape, on the caller framework's current stream and device."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .arrays import ArrayKind, compute_dtype, dtype_name
from .native import require_cuda

__all__ = ["matmul", "sum_rows", "elementwise"]


@contextmanager
def _on_device(kind: ArrayKind) -> Iterator[int]:
    """Makes the array's device current and yields the framework's current stream handle."""
    if kind.framework == "torch":
        import torch

        with torch.cuda.device(kind.device):
            yield int(torch.cuda.current_stream().cuda_stream)
    else:
        import cupy

        with cupy.cuda.Device(kind.device):
            yield int(cupy.cuda.get_current_stream().ptr)


def _prepare(x: Any, kind: ArrayKind, dtype: str) -> Any:
    if kind.framework == "torch":
        import torch

        x = x.detach()
        if dtype_name(x) != dtype:
            x = x.to(getattr(torch, dtype))
        return x.contiguous()
    import cupy

    return cupy.ascontiguousarray(x, dtype=dtype)


def _ptr(x: Any, kind: ArrayKind) -> int:
    return int(x.data_ptr()) if kind.framework == "torch" else int(x.data.ptr)


def _empty(shape: Sequence[int], dtype: str, kind: ArrayKind) -> Any:
    if kind.framework == "torch":
        import torch

        return torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=f"cuda:{kind.device}")
    import cupy

    with cupy.cuda.Device(kind.device):
        return cupy.empty(tuple(shape), dtype=dtype)


def _finish(out: Any, kind: ArrayKind, dtype: str) -> Any:
    if dtype_name(out) == dtype:
        return out
    if kind.framework == "torch":
        import torch

        return out.to(getattr(torch, dtype))
    return out.astype(dtype)


def matmul(a: Any, b: Any, kind: ArrayKind, dtype: str, mode: str, order: Optional[np.ndarray]) -> Any:
    cuda = require_cuda("a")
    cdt = compute_dtype(dtype)
    a_ = _prepare(a, kind, cdt)
    b_ = _prepare(b, kind, cdt)
    m, k = a_.shape
    n = b_.shape[1]
    out = _empty((m, n), cdt, kind)
    with _on_device(kind) as stream:
        cuda.matmul(cdt, mode, _ptr(a_, kind), _ptr(b_, kind), _ptr(out, kind), m, k, n,
                    None if order is None else order.tolist(), stream)
    return _finish(out, kind, dtype)


def sum_rows(x: Any, kind: ArrayKind, dtype: str, mode: str, order: Optional[np.ndarray]) -> Any:
    cuda = require_cuda("x")
    cdt = compute_dtype(dtype)
    x_ = _prepare(x, kind, cdt)
    k, n = x_.shape
    out = _empty((n,), cdt, kind)
    with _on_device(kind) as stream:
        cuda.sum_rows(cdt, mode, _ptr(x_, kind), _ptr(out, kind), k, n,
                      None if order is None else order.tolist(), stream)
    return _finish(out, kind, dtype)


def elementwise(x: Any, kind: ArrayKind, dtype: str, fn: str) -> Any:
    cuda = require_cuda("x")
    cdt = compute_dtype(dtype)
    x_ = _prepare(x, kind, cdt)
    out = _empty(tuple(x_.shape), cdt, kind)
    with _on_device(kind) as stream:
        cuda.elementwise(cdt, fn, _ptr(x_, kind), _ptr(out, kind), int(np.prod(x_.shape)), stream)
    return _finish(out, kind, dtype)
