"""The exact product and sum over a reduced axis split among the processes of a
``torch.distributed`` group, with the bits of ``reduce.matmul(mode="exact")`` and
``reduce.sum(mode="exact")`` on one process over the whole axis.

Why this works: the exact mode slices every term into integers with a power-of-two scale taken
from the maxima over the reduced axis, sums the slices' products as integers, and rounds once.
Each process holds part of the axis. If every process slices with the maxima over *all* parts
(the maximum of every process's maxima first, from one all-gather), its integer level sums are
those of its terms in the one-process computation, and integer sums add up the same in any
grouping: an all-reduce of the levels gives
the one-process levels, for any world size and any split. What travels is the scale and the
integers, never a rounded partial sum.

Non-finite terms are left out of the levels; where a row or column has one, each process reports
what its non-finite products were (NaN, +Inf, -Inf), the reports are combined, and the output is
what one process's special case gives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from .. import reduce as R
from .._backend.native import _core

__all__ = ["exact_matmul", "exact_sum", "ReductionBytes"]

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


@dataclass
class ReductionBytes:
    """Bytes one process contributes to the collectives of reductions: the maxima, the length of
    its part, the integer levels, and the non-finite reports (only when there are non-finite
    terms); ``float32_bytes`` is what an all-reduce of the float results would send, and
    ``seconds`` the time spent in the collectives. ``add`` accumulates another's counts."""

    maxima: int = 0
    lengths: int = 0
    levels: int = 0
    special: int = 0
    float32_bytes: int = 0
    seconds: float = 0.0
    calls: int = 0

    def add(self, other: "ReductionBytes") -> None:
        for f in ("maxima", "lengths", "levels", "special", "float32_bytes", "seconds", "calls"):
            setattr(self, f, getattr(self, f) + getattr(other, f))

    @property
    def total(self) -> int:
        return self.maxima + self.lengths + self.levels + self.special

    def to_json(self) -> dict:
        return {
            "maxima": self.maxima,
            "lengths": self.lengths,
            "levels": self.levels,
            "special": self.special,
            "total": self.total,
            "float32_bytes": self.float32_bytes,
            "seconds": self.seconds,
            "calls": self.calls,
        }


def _numpy(t: Any, name: str) -> np.ndarray:
    if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
        raise TypeError(f"{name}: expected a CPU torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {t.dtype}; cast it, e.g. {name}.float()")
    return t.detach().contiguous().numpy()


def _timed(clock: list, collective: Any, *args: Any, **kwargs: Any) -> None:
    """Runs one collective, adding its time to clock[0]."""
    t0 = time.perf_counter()
    collective(*args, **kwargs)
    clock[0] += time.perf_counter() - t0


def _agree(maxima: np.ndarray, bad: bool, k: int, group: Optional[Any], limit: int, clock: list) -> tuple:
    """The maxima over every process (and whether any process has a non-finite term), and the
    whole axis' length, from one all-gather of every process's (maxima, flag, length): one point
    where the processes wait for each other instead of two (the collectives inside a backward
    pass cost their waiting more than their bytes). Lengths up to 2^22 are exact in float64."""
    mine = torch.from_numpy(np.concatenate([maxima, [1.0 if bad else 0.0, float(k)]]))
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    _timed(clock, dist.all_gather, parts, mine, group=group)
    every = torch.stack(parts)
    head = every[:, :-1].max(dim=0).values
    k_total = int(every[:, -1].sum().item())
    if k_total < 1:
        raise ValueError("the reduced axis is empty on every process")
    if k_total > limit:
        raise ValueError(f"the reduced axis has {k_total} terms over all processes, more than {limit}")
    return head[:-1].numpy(), bool(head[-1].item() > 0), k_total


def _or_flags(flags: np.ndarray, group: Optional[Any], clock: list) -> np.ndarray:
    """Bitwise OR of every process's NaN/+Inf/-Inf reports, as the maximum of each bit."""
    planes = torch.from_numpy(np.stack([(flags >> b) & 1 for b in range(3)]).astype(np.uint8))
    _timed(clock, dist.all_reduce, planes, op=dist.ReduceOp.MAX, group=group)
    p = planes.numpy()
    return (p[0] | (p[1] << 1) | (p[2] << 2)).astype(np.uint8)


def exact_matmul(
    a: torch.Tensor, b: torch.Tensor, group: Optional[Any] = None, *, stats: Optional[ReductionBytes] = None
) -> torch.Tensor:
    """``a @ b`` summed over every process's part of the reduced axis: this process holds
    ``a`` (m x k_p) and ``b`` (k_p x n), its k_p terms (k_p may be 0); every process gets the
    bits ``reduce.matmul(A, B, mode="exact")`` gives on one process for the whole axis, in any
    order of the parts. Every process of ``group`` must call it with the same m, n and dtype.
    ``stats``, if given, is filled with the bytes this process sent."""
    an, bn = _numpy(a, "a"), _numpy(b, "b")
    if an.ndim != 2 or bn.ndim != 2 or an.shape[1] != bn.shape[0] or an.dtype != bn.dtype:
        raise ValueError(
            f"a, b: expected m x k and k x n of one dtype, got {an.shape} {an.dtype} and {bn.shape} {bn.dtype}"
        )
    m, k, n = an.shape[0], an.shape[1], bn.shape[1]
    clock = [0.0]
    rm, cm, bad = _core.exact_maxima(an, bn)
    maxima, any_bad, k_total = _agree(np.concatenate([rm, cm]), bad, k, group, R.EXACT_MATMUL_MAX_K, clock)
    rm, cm = np.ascontiguousarray(maxima[:m]), np.ascontiguousarray(maxima[m:])
    levels = torch.from_numpy(_core.matmul_exact_levels(an, bn, k_total, rm, cm))
    _timed(clock, dist.all_reduce, levels, op=dist.ReduceOp.SUM, group=group)
    flags = _or_flags(_core.exact_special_flags(an, bn), group, clock) if any_bad else None
    out = _core.round_exact_levels(levels.numpy(), k_total, rm, cm, flags, str(an.dtype))
    if stats is not None:
        stats.add(
            ReductionBytes(8 * (m + n + 1), 8, levels.numel() * 8, 3 * m * n if any_bad else 0, 4 * m * n, clock[0], 1)
        )
    return torch.from_numpy(out)


def exact_sum(x: torch.Tensor, group: Optional[Any] = None, *, stats: Optional[ReductionBytes] = None) -> torch.Tensor:
    """The sum over axis 0 of ``x`` (k_p x n on this process) and every other process's rows:
    the bits of ``reduce.sum(X, axis=0, mode="exact")`` on one process over all the rows."""
    xn = _numpy(x, "x")
    if xn.ndim != 2:
        raise ValueError(f"x: expected a 2-D (rows, columns) tensor, got shape {xn.shape}")
    k, n = xn.shape
    clock = [0.0]
    cm, bad = _core.sum_maxima(xn)
    cm, any_bad, k_total = _agree(cm, bad, k, group, R.EXACT_SUM_MAX_K, clock)
    cm = np.ascontiguousarray(cm)
    levels = torch.from_numpy(_core.sum_exact_levels(xn, k_total, cm))
    _timed(clock, dist.all_reduce, levels, op=dist.ReduceOp.SUM, group=group)
    flags = _or_flags(_core.sum_special_flags(xn), group, clock) if any_bad else None
    out = _core.round_sum_levels(levels.numpy(), cm, flags, str(xn.dtype))
    if stats is not None:
        stats.add(ReductionBytes(8 * (n + 1), 8, levels.numel() * 8, 3 * n if any_bad else 0, 4 * n, clock[0], 1))
    return torch.from_numpy(out)
