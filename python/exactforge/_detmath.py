"""Elementwise functions built only from IEEE-exact NumPy operations (+, -, *, /, rint,
ldexp), so each element's bits depend on its value alone: not on the array's length, the
element's position (SIMD body or tail), the thread count or the libm of the machine."""
from __future__ import annotations

import numpy as np

__all__ = ["exp"]

_LN2_HI = 6.93147180369123816490e-01  # upper bits of ln 2 (exact product with small n)
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
# Taylor coefficients 1/j! for j = 0..13: |r| <= ln2/2 gives a truncation error < 1e-17.
_COEF = [1.0 / float(np.prod(np.arange(1, j + 1, dtype=np.float64))) for j in range(14)]


def exp(x: np.ndarray) -> np.ndarray:
    """exp(x) evaluated in float64 (about 1e-16 relative error), returned in x's dtype."""
    x = np.asarray(x)
    xd = x.astype(np.float64)
    xd = np.clip(xd, -745.0, 709.0)
    n = np.rint(xd * _INV_LN2)
    r = (xd - n * _LN2_HI) - n * _LN2_LO
    p = np.full_like(r, _COEF[-1])
    for c in reversed(_COEF[:-1]):
        p = p * r + c
    out = np.ldexp(p, n.astype(np.int64))
    out = np.where(np.isnan(x), np.nan, out)
    return out.astype(x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
