"""The activations' float64 expressions: each value and each derivative a function of the one
input through exactforge's exp (the same bits everywhere), so every element is evaluated the same
way wherever it sits in the batch; the operator rounds them once to the input's dtype."""

from __future__ import annotations

import numpy as np

from .._backend.native import _core

__all__ = ["FLOAT64"]


def _sigmoid64(v: np.ndarray) -> np.ndarray:
    e = _core.exp(-np.abs(v))  # in (0, 1]: no overflow for any input
    return np.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _tanh64(v: np.ndarray) -> np.ndarray:
    a = np.abs(v)
    e = _core.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    # 1 - e cancels for tiny |x|; below 2^-8 the series to x^7 is exact to float64 rounding
    a2 = a * a
    small = a * (1.0 - a2 * (1.0 / 3.0 - a2 * (2.0 / 15.0 - a2 * (17.0 / 315.0))))
    return np.copysign(np.where(a < 2.0**-8, small, big), v)


# GELU and SiLU the same way: each value and each derivative a float64 expression of the one
# input (exactforge's exp; erf from its own series, below), rounded once to the input's dtype.

_SQRT_2_PI = 0.7978845608028654  # sqrt(2 / pi)
_INV_SQRT_PI = 0.5641895835477563  # 1 / sqrt(pi)


def _erfc64(z: np.ndarray) -> np.ndarray:
    """erfc(z) for z >= 0 to about 1e-15 relative: below 2, 1 - erf from the series with
    positive terms erf(z) = 2/sqrt(pi) e^(-z^2) sum 2^n z^(2n+1) / (2n+1)!!; from 2 on, the
    continued fraction e^(-z^2)/sqrt(pi) / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...)))), evaluated
    from a fixed depth. Fixed iteration counts: the same operations for every element."""
    z = np.asarray(z, dtype=np.float64)
    small = np.minimum(z, 2.0)
    z2 = small * small
    term = small.copy()
    total = small.copy()
    for n in range(1, 60):
        term = term * (2.0 * z2 / (2 * n + 1))
        total = total + term
    erf_small = 2.0 * _INV_SQRT_PI * _core.exp(-z2) * total
    big = np.maximum(z, 2.0)
    frac = big.copy()
    for k in range(80, 0, -1):
        frac = big + (k / 2.0) / frac
    erfc_big = _core.exp(-big * big) * _INV_SQRT_PI / frac
    return np.where(z < 2.0, 1.0 - erf_small, erfc_big)


def _phi64(v: np.ndarray) -> np.ndarray:
    """The standard normal CDF, accurate in both tails (erfc of |v| / sqrt 2)."""
    tail = 0.5 * _erfc64(np.abs(v) * 0.7071067811865476)
    return np.where(v < 0, tail, 1.0 - tail)


def _gelu64(v: np.ndarray):
    cdf = _phi64(v)
    pdf = _core.exp(-0.5 * v * v) * (0.5 * _INV_SQRT_PI * 1.4142135623730951)  # 1 / sqrt(2 pi)
    return v * cdf, cdf + v * pdf


def _gelu_tanh64(v: np.ndarray):
    # 0.5 x (1 + tanh u) = x sigmoid(2u): no cancellation for large negative x
    u = _SQRT_2_PI * (v + 0.044715 * v * v * v)
    s = _sigmoid64(2.0 * u)
    return v * s, s + v * (2.0 * s * (1.0 - s)) * _SQRT_2_PI * (1.0 + 3 * 0.044715 * v * v)


def _silu64(v: np.ndarray):
    s = _sigmoid64(v)
    return v * s, s * (1.0 + v * (1.0 - s))


def _sigmoid_value(v: np.ndarray):
    return _sigmoid64(v), None


def _tanh_value(v: np.ndarray):
    return _tanh64(v), None


#: kind -> float64 function of an array returning (value, derivative or None: the layer then
#: differentiates from the value)
FLOAT64 = {
    "sigmoid": _sigmoid_value,
    "tanh": _tanh_value,
    "gelu": _gelu64,
    "gelu-tanh": _gelu_tanh64,
    "silu": _silu64,
}
