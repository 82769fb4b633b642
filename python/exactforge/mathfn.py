"""exp and log with the same bits on every CPU and GPU (src/exactforge/mathfn.hpp): only
once-rounded IEEE operations and exact power-of-two scaling, evaluated in float64 and rounded
once to the input's dtype. libm's exp/log differ between libraries and devices."""
from __future__ import annotations

from typing import Any

from . import _device
from ._arrays import check_dtype, compute_dtype, from_numpy, kind_of, to_numpy
from ._native import _core

__all__ = ["exp", "log"]


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
