"""The exact product and sum over a reduced axis split among the processes of a
``torch.distributed`` group, with the bits of ``reduce.matmul(mode="exact")`` and
``reduce.sum(mode="exact")`` on one process over the whole axis.

Why this works: the exact mode slices every term into integers with a power-of-two scale taken
from the maxima over the reduced axis, sums the slices' products as integers, and rounds once.
Each process holds part of the axis. If every process slices with the maxima over *all* parts,
its integer level sums are those of its terms in the one-process computation, and integer sums
add up the same in any grouping: an all-reduce of the levels gives the one-process levels, for
any world size and any split. What travels is the scale and the integers, never a rounded
partial sum.

What travels, per reduction: the scales as exponents (two bytes a row or column: only the
maximum's power of two decides the slicing), this part's length and whether it has a
non-finite term, gathered in one all-gather for every reduction of a batch; then each output's
levels as the one integer they stand for, in int32 fields with room for the sum
(``_core.pack_levels``: three fields where two int64 levels would take four), added in one all-reduce.
Non-finite terms are left out of the levels; where a row or column has one, each process reports
what its non-finite products were (NaN, +Inf, -Inf), the reports are combined, and the output is
what one process's special case gives.

``reduce_all`` reduces a list of reductions with those two collectives in all (three with a
non-finite term): the cost of a collective inside a backward pass is mostly the wait for the
other processes, so a step's weight gradients go together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

import exactforge.reduce as R

from .._backend.native import _core

__all__ = ["exact_matmul", "exact_sum", "ReductionBytes", "Reduction", "Agreement", "LevelSum", "reduce_all"]

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
_NO_MAXIMUM = np.int16(-32768)  # the exponent of a zero maximum: below every finite one


@dataclass
class ReductionBytes:
    """Bytes one process contributes to the collectives of reductions: the scales' exponents,
    the length of its part and its non-finite flag, the packed integer levels, the non-finite
    reports (only when there are non-finite terms), and the rows gathered as they are (a loss's
    per-example values, an embedding's token ids); ``float32_bytes`` is what an
    all-reduce of the float results would send, ``seconds`` the time spent in the collectives,
    ``calls`` the reductions and ``collectives`` the collectives they took. ``add`` accumulates
    another's counts."""

    maxima: int = 0
    lengths: int = 0
    levels: int = 0
    special: int = 0
    gathered: int = 0
    float32_bytes: int = 0
    seconds: float = 0.0
    calls: int = 0
    collectives: int = 0

    _FIELDS = ("maxima", "lengths", "levels", "special", "gathered", "float32_bytes", "seconds", "calls", "collectives")

    def add(self, other: "ReductionBytes") -> None:
        for f in self._FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f))

    @property
    def total(self) -> int:
        return self.maxima + self.lengths + self.levels + self.special + self.gathered

    def to_json(self) -> dict:
        out = {f: getattr(self, f) for f in self._FIELDS}
        out["total"] = self.total
        return out


def _numpy(t: Any, name: str) -> np.ndarray:
    if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
        raise TypeError(f"{name}: expected a CPU torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name}: expected float32 or float64, got {t.dtype}; cast it, e.g. {name}.float()")
    return t.detach().contiguous().numpy()


class Reduction:
    """One reduction of this process's part, for ``reduce_all``: ``a @ b`` over a's columns and
    b's rows (``kind="matmul"``) or the sum of ``a``'s rows (``kind="sum"``, ``b`` None); NumPy
    arrays or CPU tensors, float32 or float64."""

    def __init__(self, kind: str, a: Any, b: Any = None) -> None:
        if isinstance(a, torch.Tensor):
            a = _numpy(a, "a")
        if isinstance(b, torch.Tensor):
            b = _numpy(b, "b")
        a = np.ascontiguousarray(a)
        b = None if b is None else np.ascontiguousarray(b)
        self.kind, self.a, self.b = kind, a, b
        if kind == "matmul":
            assert b is not None
            if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0] or a.dtype != b.dtype:
                raise ValueError(
                    f"a, b: expected m x k and k x n of one dtype, got {a.shape} {a.dtype} and {b.shape} {b.dtype}"
                )
            self.shape: tuple = (a.shape[0], b.shape[1])
            self.k = a.shape[1]
            self.limit = R.EXACT_MATMUL_MAX_K
        elif kind == "sum":
            if a.ndim != 2:
                raise ValueError(f"x: expected a 2-D (rows, columns) tensor, got shape {a.shape}")
            self.shape = (a.shape[1],)
            self.k = a.shape[0]
            self.limit = R.EXACT_SUM_MAX_K
        else:
            raise ValueError(f"kind: expected 'matmul' or 'sum', got {kind!r}")
        self.dtype = str(a.dtype)
        self.outputs = int(np.prod(self.shape))

    def maxima(self) -> tuple:
        """This part's maxima (rows of a then columns of b, or columns of x) and whether a term
        is not finite."""
        if self.b is not None:
            rm, cm, bad = _core.exact_maxima(self.a, self.b)
            return np.concatenate([rm, cm]), bool(bad)
        cm, bad = _core.sum_maxima(self.a)
        return cm, bool(bad)

    def levels(self, k_total: int, maxima: np.ndarray) -> np.ndarray:
        if self.b is not None:
            m = self.shape[0]
            rm, cm = np.ascontiguousarray(maxima[:m]), np.ascontiguousarray(maxima[m:])
            return _core.matmul_exact_levels(self.a, self.b, k_total, rm, cm)
        return _core.sum_exact_levels(self.a, k_total, np.ascontiguousarray(maxima))

    def special_flags(self) -> np.ndarray:
        if self.b is not None:
            return _core.exact_special_flags(self.a, self.b).reshape(-1)
        return _core.sum_special_flags(self.a)

    def round(self, levels: np.ndarray, k_total: int, maxima: np.ndarray, flags: Optional[np.ndarray]) -> np.ndarray:
        if self.kind == "matmul":
            m, n = self.shape
            rm, cm = np.ascontiguousarray(maxima[:m]), np.ascontiguousarray(maxima[m:])
            f = None if flags is None else flags.reshape(m, n)
            return _core.round_exact_levels(levels.reshape(m, n, -1), k_total, rm, cm, f, self.dtype)
        return _core.round_sum_levels(levels, np.ascontiguousarray(maxima), flags, self.dtype)


def _exponents(maxima: np.ndarray) -> np.ndarray:
    """Each maximum's power of two (maximum < 2^e): all the slicing reads of it. The exponents'
    maximum over the processes is the exponent of the maxima's maximum."""
    e = np.frexp(maxima)[1].astype(np.int16)
    e[maxima == 0] = _NO_MAXIMUM
    return e


def _maxima_of(e: np.ndarray) -> np.ndarray:
    """A maximum with exponent e (2^(e-1)): it gives the slicing that any maximum in
    [2^(e-1), 2^e) gives."""
    out = np.ldexp(0.5, e.astype(np.int64))
    out[e == _NO_MAXIMUM] = 0.0
    return out


def _timed(stats: ReductionBytes, collective: Any, *args: Any, **kwargs: Any) -> Any:
    """Runs (or launches, with async_op=True) one collective, adding its time to stats."""
    t0 = time.perf_counter()
    work = collective(*args, **kwargs)
    stats.seconds += time.perf_counter() - t0
    stats.collectives += 1
    return work


def _waited(stats: ReductionBytes, work: Any) -> None:
    t0 = time.perf_counter()
    work.wait()
    stats.seconds += time.perf_counter() - t0


class Agreement:
    """The first collective of a batch of reductions, launched at once: every process's part
    lengths, non-finite flags and scale exponents, in one all-gather. ``wait()`` gives the whole
    reductions' lengths, flags and maxima."""

    def __init__(self, reductions: Sequence[Reduction], group: Optional[Any], stats: ReductionBytes) -> None:
        self.reductions, self.group, self.stats = list(reductions), group, stats
        self.world = dist.get_world_size(group)
        local = [r.maxima() for r in self.reductions]
        self.exps = [_exponents(mx) for mx, _ in local]
        head = np.array([[r.k, int(bad)] for r, (_, bad) in zip(self.reductions, local)], dtype=np.int64)
        self.head_bytes = head.nbytes
        mine = np.concatenate([head.reshape(-1).view(np.uint8), *[e.view(np.uint8) for e in self.exps]])
        self.parts = [torch.empty(mine.size, dtype=torch.uint8) for _ in range(self.world)]
        self.work = _timed(stats, dist.all_gather, self.parts, torch.from_numpy(mine), group=group, async_op=True)
        stats.maxima += sum(e.nbytes for e in self.exps)
        stats.lengths += self.head_bytes

    def wait(self) -> tuple:
        _waited(self.stats, self.work)
        hb = self.head_bytes
        heads = np.stack([p.numpy()[:hb].view(np.int64).reshape(-1, 2) for p in self.parts])
        every = np.stack([p.numpy()[hb:].view(np.int16) for p in self.parts]).max(axis=0)
        k_totals, any_bad = heads[:, :, 0].sum(axis=0), heads[:, :, 1].max(axis=0) > 0
        agreed, off = [], 0
        for r, e, k_total in zip(self.reductions, self.exps, k_totals):
            if k_total < 1:
                raise ValueError("the reduced axis is empty on every process")
            if k_total > r.limit:
                raise ValueError(f"the reduced axis has {k_total} terms over all processes, more than {r.limit}")
            agreed.append(_maxima_of(every[off : off + e.size]))
            off += e.size
        return [int(k) for k in k_totals], [bool(b) for b in any_bad], agreed


class LevelSum:
    """The second collective, launched at once: each reduction's levels with the agreed scales,
    packed, all-reduced together (the reductions of one or more agreements, in order). ``wait()``
    rounds them: the results, in order."""

    def __init__(self, agreements: Sequence[Agreement]) -> None:
        first = agreements[0]
        self.group, self.stats, self.world = first.group, first.stats, first.world
        self.reductions: list = []
        self.k_totals: list = []
        self.any_bad: list = []
        self.agreed: list = []
        for agreement in agreements:
            k_totals, any_bad, agreed = agreement.wait()
            self.reductions += agreement.reductions
            self.k_totals += k_totals
            self.any_bad += any_bad
            self.agreed += agreed
        self.packed = [
            _core.pack_levels(r.levels(k, mx), r.kind, k, r.dtype, self.world)
            for r, k, mx in zip(self.reductions, self.k_totals, self.agreed)
        ]
        self.words = torch.from_numpy(np.concatenate([p.reshape(-1) for p in self.packed]))
        self.work = _timed(
            self.stats, dist.all_reduce, self.words, op=dist.ReduceOp.SUM, group=self.group, async_op=True
        )
        self.stats.levels += self.words.numel() * 4
        self.stats.float32_bytes += 4 * sum(r.outputs for r in self.reductions)
        self.stats.calls += len(self.reductions)

    def wait(self) -> list:
        _waited(self.stats, self.work)
        flags: list = [None] * len(self.reductions)
        bad_ix = [i for i, b in enumerate(self.any_bad) if b]
        if bad_ix:
            reports = _or_flags(
                np.concatenate([self.reductions[i].special_flags() for i in bad_ix]), self.group, self.stats
            )
            off = 0
            for i in bad_ix:
                flags[i] = reports[off : off + self.reductions[i].outputs]
                off += self.reductions[i].outputs
            self.stats.special += 3 * off
        out, off = [], 0
        summed = self.words.numpy()
        for r, k, mx, p, f in zip(self.reductions, self.k_totals, self.agreed, self.packed, flags):
            mine = summed[off : off + p.size].reshape(p.shape)
            off += p.size
            levels = _core.unpack_levels(mine, r.kind, k, r.dtype, self.world)
            out.append(r.round(levels, k, mx, f).reshape(r.shape))
        return out


def reduce_all(
    reductions: Sequence[Reduction], group: Optional[Any] = None, *, stats: Optional[ReductionBytes] = None
) -> list:
    """Every reduction over every process's parts, with one process's bits: the same list of
    reductions (kinds, output shapes, dtypes) on every process of ``group``, each with this
    process's part (any length, 0 included). Two collectives for the whole list (three where a
    term is not finite). Returns the results as NumPy arrays, in order."""
    if not reductions:
        return []
    st = ReductionBytes()
    out = LevelSum([Agreement(reductions, group, st)]).wait()
    if stats is not None:
        stats.add(st)
    return out


def _or_flags(flags: np.ndarray, group: Optional[Any], stats: ReductionBytes) -> np.ndarray:
    """Bitwise OR of every process's NaN/+Inf/-Inf reports, as the maximum of each bit."""
    planes = torch.from_numpy(np.stack([(flags >> b) & 1 for b in range(3)]).astype(np.uint8))
    _timed(stats, dist.all_reduce, planes, op=dist.ReduceOp.MAX, group=group)
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
    (out,) = reduce_all([Reduction("matmul", _numpy(a, "a"), _numpy(b, "b"))], group, stats=stats)
    return torch.from_numpy(out)


def exact_sum(x: torch.Tensor, group: Optional[Any] = None, *, stats: Optional[ReductionBytes] = None) -> torch.Tensor:
    """The sum over axis 0 of ``x`` (k_p x n on this process) and every other process's rows:
    the bits of ``reduce.sum(X, axis=0, mode="exact")`` on one process over all the rows."""
    (out,) = reduce_all([Reduction("sum", _numpy(x, "x"))], group, stats=stats)
    return torch.from_numpy(out)
