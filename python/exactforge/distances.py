"""Distances between flattened parameter vectors, as the papers use them: l2 (default),
l1, linf, cosine (1 - cos), l2sq (Thudi et al.) and l2sq_dim = l2^2 / dim (Kong et al.)."""
from __future__ import annotations

import numpy as np

__all__ = ["DISTANCES", "distance"]

DISTANCES = ("l2", "l1", "linf", "cosine", "l2sq", "l2sq_dim")


def distance(a: np.ndarray, b: np.ndarray, kind: str = "l2") -> float:
    """Distance between two parameter vectors (computed in float64)."""
    if kind not in DISTANCES:
        raise ValueError(f"distance: expected one of {DISTANCES}, got {kind!r}")
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"distance: vectors differ in size ({a.size} vs {b.size})")
    d = a - b
    if kind == "l2":
        return float(np.linalg.norm(d))
    if kind == "l1":
        return float(np.sum(np.abs(d)))
    if kind == "linf":
        return float(np.max(np.abs(d))) if d.size else 0.0
    if kind == "l2sq":
        return float(d @ d)
    if kind == "l2sq_dim":
        return float(d @ d) / max(d.size, 1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0 if na == nb else 1.0
    return float(1.0 - (a @ b) / (na * nb))
