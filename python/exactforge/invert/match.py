"""Matching reconstructions to examples: up to order and sign, by |cosine|."""

from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np

__all__ = ["cosines", "match"]


def cosines(A: Any, B: Any) -> np.ndarray:
    """(len(A), len(B)) cosines between the rows of A and of B (0 for a zero row)."""
    A = np.asarray(A, dtype=np.float64).reshape(len(A), -1)
    B = np.asarray(B, dtype=np.float64).reshape(len(B), -1)
    na = np.linalg.norm(A, axis=1, keepdims=True)
    nb = np.linalg.norm(B, axis=1, keepdims=True)
    return (A / np.where(na > 0, na, 1.0)) @ (B / np.where(nb > 0, nb, 1.0)).T


def match(estimates: Any, truth: Any) -> Tuple[List[int], np.ndarray]:
    """The permutation pairing each estimate with a distinct true row that maximises the total
    |cosine| (Hungarian method), and the |cosine| of each pair: (truth index per estimate,
    |cos| per estimate)."""
    from scipy.optimize import linear_sum_assignment

    C = np.abs(cosines(estimates, truth))
    rows, cols = linear_sum_assignment(-C)
    order = np.empty(len(rows), dtype=int)
    order[rows] = cols
    return [int(c) for c in order], C[rows, cols][np.argsort(rows)]
