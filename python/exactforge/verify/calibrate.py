"""epsilon from this machine's benign reproduction error: what ``verify --epsilon auto`` uses.

The first segments are recomputed several ways that an honest verifier may differ from the
prover in (each batch in other orders; one thread instead of several), and epsilon is a safety
factor times the largest distance between those recomputations. It measures only what one
machine can show: on a reproducible trace it is 0; on a plain torch trace it is the rounding of
torch's sums under another order or thread count. Errors across devices (published up to 4e-4
across GPUs) are not measured here, and the report says so.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, List, Tuple

import numpy as np

from .distances import verification_distance
from .replay import pairs, permuted, replay_segment

__all__ = ["calibrate_epsilon", "SAFETY"]

SAFETY = 10.0


def _reordered(idx: np.ndarray, t: int, *, seed: int, parts: int) -> np.ndarray:
    return permuted(idx, seed, t, parts)


def calibrate_epsilon(
    trace: Any, load: Callable, step: Callable, *, segments: int = 2, draws: int = 3, safety: float = SAFETY
) -> Tuple[float, str]:
    """(epsilon, how it was set) from the first ``segments`` segments of ``trace``."""
    import torch

    parts = trace.spec.accumulate
    segs: List[Tuple[int, int]] = list(trace.segments())[: max(1, segments)]
    worst = 0.0
    for s, e in segs:
        start = load(s)
        base = replay_segment(trace, step, start, s, e)
        for r in range(draws):
            other = replay_segment(trace, step, start, s, e, functools.partial(_reordered, seed=1_000 + r, parts=parts))
            worst = max(worst, float(verification_distance(pairs(other, base), "l2")))
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            one = replay_segment(trace, step, start, s, e)
        finally:
            torch.set_num_threads(before)
        worst = max(worst, float(verification_distance(pairs(one, base), "l2")))
    how = (
        f"auto: {safety:g} x the largest l2 difference between recomputations of the first {len(segs)} segment(s) "
        f"with each batch in {draws} other orders and on one thread ({worst:.3g}); this machine's benign "
        "reproduction error only, errors across devices are not measured here"
    )
    return safety * worst, how
