"""Distances between parameter vectors, as the papers use them: l2 (default), l1, linf,
cosine (1 - cos), l2sq (Thudi et al.) and l2sq_dim = l2^2 / dim (Kong et al.).

Every distance is exactly 0 for bitwise-equal parameters (a recomputation that reproduces the
checkpoint must pass at epsilon = 0), and is computed tensor by tensor in float64, so a
verifier never holds a float64 copy of a whole model.

``cosine`` is **scale-blind**: theta and 1.5 * theta have 1 - cos = 0. The papers use it to
compare update directions; as a verifier's test it would accept a rescaled checkpoint. So
``verification_distance(..., "cosine")`` (what ``verify`` uses) is the larger of 1 - cos and
the relative difference of the two norms, which is 0 only for equal-norm, equal-direction
vectors.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence, Tuple

import numpy as np

__all__ = ["DISTANCES", "distance", "distance_parts", "verification_distance"]

DISTANCES = ("l2", "l1", "linf", "cosine", "l2sq", "l2sq_dim")

Pair = Tuple[np.ndarray, np.ndarray]


def _check(kind: str) -> None:
    if kind not in DISTANCES:
        raise ValueError(f"distance: expected one of {DISTANCES}, got {kind!r}")


_CHUNK = 1 << 16  # elements converted to float64 at a time: a verifier's extra memory stays small


def _chunks(a: np.ndarray, b: np.ndarray):
    a, b = a.reshape(-1), b.reshape(-1)
    for i in range(0, a.size, _CHUNK):
        yield np.asarray(a[i : i + _CHUNK], np.float64), np.asarray(b[i : i + _CHUNK], np.float64)


def distance_parts(pairs: Sequence[Pair], kind: str = "l2") -> float:
    """The distance between two vectors given as matching parts (e.g. the tensors of two
    checkpoints, in the same order), in float64, a chunk at a time. NaN in either gives NaN."""
    _check(kind)
    pairs = [(np.asarray(a), np.asarray(b)) for a, b in pairs]
    for a, b in pairs:
        if a.size != b.size:
            raise ValueError(f"distance: vectors differ in size ({a.size} vs {b.size})")
    if all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in pairs):
        return 0.0  # bitwise-equal values (array_equal is False for NaN, so NaN falls through)
    size = sum(a.size for a, _ in pairs)
    if kind == "cosine":
        na = math.sqrt(sum(_sq(a) for a, _ in pairs))
        nb = math.sqrt(sum(_sq(b) for _, b in pairs))
        if not (math.isfinite(na) and math.isfinite(nb)):
            return float("nan")
        if na == 0 or nb == 0:
            return 0.0 if na == nb else 1.0
        # 1 - cos = ||a/|a| - b/|b|||^2 / 2: no cancellation for nearly parallel vectors
        s = 0.0
        for a, b in pairs:
            for x, y in _chunks(a, b):
                d = x / na - y / nb
                s += float(d @ d)
        return s / 2
    acc = 0.0
    for a, b in pairs:
        for x, y in _chunks(a, b):
            d = x - y
            if kind == "l1":
                acc += float(np.sum(np.abs(d)))
            elif kind == "linf":
                if np.isnan(d).any():
                    return float("nan")
                acc = max(acc, float(np.max(np.abs(d)))) if d.size else acc
            else:
                acc += float(d @ d)
    if kind in ("l1", "linf", "l2sq"):
        return acc
    if kind == "l2":
        return math.sqrt(acc)
    return acc / max(size, 1)  # l2sq_dim


def _sq(a: np.ndarray) -> float:
    return sum(float(x @ x) for x, _ in _chunks(a, a))


def distance(a: np.ndarray, b: np.ndarray, kind: str = "l2") -> float:
    """Distance between two parameter vectors (computed in float64)."""
    _check(kind)
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"distance: vectors differ in size ({a.size} vs {b.size})")
    return distance_parts([(a, b)], kind)


def verification_distance(pairs: Iterable[Pair], kind: str = "l2") -> float:
    """The distance a verifier compares with epsilon: ``distance_parts``, except that cosine
    also counts the relative difference of the norms (cosine alone is scale-blind)."""
    pairs = list(pairs)
    d = distance_parts(pairs, kind)
    if kind != "cosine" or d != d or d == 0.0 and all(np.array_equal(a, b) for a, b in pairs):
        return d
    na = math.sqrt(sum(_sq(a) for a, _ in pairs))
    nb = math.sqrt(sum(_sq(b) for _, b in pairs))
    rel = abs(na - nb) / nb if nb > 0 else (0.0 if na == 0 else 1.0)
    return max(d, rel)
