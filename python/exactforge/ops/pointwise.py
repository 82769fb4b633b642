"""Elementwise functions whose every element is evaluated the same way wherever it sits:
the correctly rounded square root, and the activations through exactforge's exp in float64,
rounded once to the input's dtype (``activations.FLOAT64``)."""

from __future__ import annotations

import numpy as np
import torch

from .. import mathfn
from .._backend.native import _core
from ._library import define
from .activations import FLOAT64

__all__ = ["sqrt_rn", "exp", "activation"]

_NATIVE = (torch.float32, torch.float64)


def _sqrt_impl(v: torch.Tensor) -> torch.Tensor:
    if v.dtype not in _NATIVE or v.device.type != "cpu":
        return torch.sqrt(v)
    return torch.from_numpy(_core.sqrt_rn(v.detach().contiguous().numpy())).reshape(v.shape)


def _sqrt_fake(v):
    return torch.empty_like(v)


def _activation_impl(x: torch.Tensor, kind: str):
    dt = torch.empty(0, dtype=x.dtype).numpy().dtype
    y64, d64 = FLOAT64[kind](x.detach().cpu().numpy().astype(np.float64))
    y = torch.from_numpy(y64.astype(dt))
    d = torch.from_numpy(d64.astype(dt)) if d64 is not None else torch.empty(0, dtype=x.dtype)
    return y, d


def _activation_fake(x, kind):
    return torch.empty_like(x), x.new_empty(x.shape if kind in ("gelu", "gelu-tanh", "silu") else (0,))


def _exp_impl(x: torch.Tensor) -> torch.Tensor:
    return mathfn.exp(x.detach())


_SQRT = define("sqrt_rn(Tensor v) -> Tensor", _sqrt_impl, _sqrt_fake)
_EXP = define("exp(Tensor x) -> Tensor", _exp_impl, _sqrt_fake)
_ACT = define("activation(Tensor x, str kind) -> (Tensor, Tensor)", _activation_impl, _activation_fake)


def sqrt_rn(v: torch.Tensor) -> torch.Tensor:
    """The correctly rounded square root (float32/float64 on the CPU: the same on every CPU)."""
    return _SQRT(v)


def exp(x: torch.Tensor) -> torch.Tensor:
    """e**x with exactforge's exp: the same bits on every CPU and GPU."""
    return _EXP(x)


def activation(x: torch.Tensor, kind: str):
    """(value, derivative) of a registered activation; the derivative is empty for the kinds
    that differentiate from their value (sigmoid, tanh)."""
    return _ACT(x, kind)
