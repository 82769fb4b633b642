"""The searches' inner loops: per-example gradients as fixed-point integers with 64-bit linear
keys, the native brute-force or meet-in-the-middle search over them in blocks (for a progress
bar), the tolerance search over sorted half-batch keys, and the enumeration of every pair of
batches with equal keys."""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Optional, Tuple

import numpy as np

from .._backend.native import _core
from ..report.progress import progress_bar
from .certify import label_residues, projection_keys


def fixed_point(G: np.ndarray, b: int) -> Tuple[np.ndarray, int]:
    """One global power-of-two scale so that b summed entries stay below 2^60."""
    mx = float(np.max(np.abs(G))) if G.size else 0.0
    if mx == 0.0:
        return np.zeros(G.shape, np.int64), 0
    s = int(math.floor(60 - math.log2(b) - math.log2(mx))) - 1
    return np.rint(np.ldexp(G, s)).astype(np.int64), s


def linear_keys(Gi: np.ndarray, seed: int) -> np.ndarray:
    r = np.random.default_rng([seed, 0x5EA7C4]).integers(0, 2**63, Gi.shape[1], dtype=np.uint64) * np.uint64(
        2
    ) + np.uint64(1)
    with np.errstate(over="ignore"):
        return (Gi.astype(np.uint64) * r[None, :]).sum(axis=1, dtype=np.uint64)


def native_search(Gi, keys, truths, b, method, threads, max_memory_mib, progress, key_tol=0, coord_tol=0, shift=0):
    """The native brute-force or meet-in-the-middle search over integer gradients ``Gi`` with
    64-bit keys (exact mode), or integer projection keys within ``key_tol`` (tolerance mode)."""
    targets = np.stack([Gi[t].sum(axis=0) for t in truths])
    with np.errstate(over="ignore"):
        tkeys = np.array([keys[t].sum(dtype=np.uint64) for t in truths], dtype=np.uint64)
    N = len(Gi)
    h1 = b if method == "brute" else b - b // 2
    total = int(_core.choose(N, h1))
    # progress granularity: one block per ~5M probes (a block is a Python call and a parallel region)
    nblocks = int(max(1, min(N, 200, total // 5_000_000)))
    if nblocks > 1:  # blocks of first indices with about equal work: C(N - a - 1, h1 - 1) start at a
        work = np.array([_core.choose(N - a - 1, h1 - 1) for a in range(N)], dtype=np.float64)
        cum = np.cumsum(work)
        bounds = np.unique(
            np.searchsorted(cum, np.linspace(0, cum[-1], nblocks + 1)[1:], side="left").clip(0, N - 1) + 1
        )
    else:
        bounds = np.array([N])
    bar = progress_bar(total, progress, f"{method} b={b}", "probe", unit_scale=True)
    found, visited = [], 0
    t_native = time.perf_counter()
    handle = _core.SearchHandle(
        Gi,
        keys,
        targets,
        tkeys,
        b,
        method,
        int(max_memory_mib * 2**20),
        key_tol=int(key_tol),
        coord_tol=int(coord_tol),
        shift=int(shift),
    )
    a0 = 0
    for a1 in bounds:
        a1 = int(min(a1, N))
        if a1 <= a0:
            continue
        out, vis = handle.run(a0, a1, int(threads or 0))
        found.extend(out)
        visited += vis
        if bar is not None:
            bar.update(vis)
        a0 = a1
    if a0 < N:
        out, vis = handle.run(a0, N, int(threads or 0))
        found.extend(out)
        visited += vis
    t_native = time.perf_counter() - t_native
    if bar is not None:
        bar.close()
    return found, visited, handle.table_bytes / 2**20, t_native


def tolerance_search(G, truths, b, tau, seed, progress):
    """||sum(G[B']) - sum(G[B])|| <= tau: a random unit direction r gives |r . delta| <= tau for
    every candidate, so table keys are sorted (1-D buckets of width tau) and each probe looks at
    the keys within tau of its need; candidates are confirmed on the full vectors."""
    N = len(G)
    r = np.random.default_rng([seed, 7]).standard_normal(G.shape[1])
    r /= np.linalg.norm(r)
    key = G @ r
    h2 = b // 2
    h1 = b - h2
    subs2 = np.array(list(itertools.combinations(range(N), h2)), dtype=np.int64).reshape(-1, h2)
    k2 = key[subs2].sum(axis=1) if h2 else np.zeros(1)
    if h2 == 0:
        subs2 = np.zeros((1, 0), np.int64)
    order = np.argsort(k2, kind="stable")
    k2s, subs2 = k2[order], subs2[order]
    targets = [G[t].sum(axis=0) for t in truths]
    tk = [float(T @ r) for T in targets]
    found, visited = [], 0
    bar = progress_bar(int(_core.choose(N, h1)), progress, f"tolerance b={b}", "probe", unit_scale=True)
    for chunk in _chunks(itertools.combinations(range(N), h1), 100_000):
        P = np.array(chunk, dtype=np.int64)
        kp = key[P].sum(axis=1)
        visited += len(P)
        for t, (T, tkey) in enumerate(zip(targets, tk)):
            lo = np.searchsorted(k2s, tkey - kp - tau, side="left")
            hi = np.searchsorted(k2s, tkey - kp + tau, side="right")
            for i in np.flatnonzero(hi > lo):
                for j in range(lo[i], hi[i]):
                    s2 = subs2[j]
                    if h2 and s2[0] <= P[i, -1]:
                        continue
                    cand = np.concatenate([P[i], s2])
                    if np.linalg.norm(G[cand].sum(axis=0) - T) <= tau:
                        found.append((t, tuple(int(c) for c in cand)))
        if bar is not None:
            bar.update(len(P))
    if bar is not None:
        bar.close()
    return found, visited, (k2s.nbytes + subs2.nbytes) / 2**20, None


def _chunks(it, size):
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def every_pair(eg: Any, b: int, seed: int, max_memory_mib: float, threads: Optional[int]) -> Tuple[dict, Any, Any]:
    """Every pair of batches with equal keys, from the native enumeration (src/search/collide.cpp):
    (what it found, the examples that move the gradient in key order, the zero-influence ones)."""
    zeros = np.flatnonzero(eg.zero)
    rows = np.flatnonzero(~eg.zero)
    keys, tol, _ = projection_keys(eg.G[rows], b, seed)
    order = np.argsort(keys, kind="stable")
    rows = rows[order]
    if _core.pack_bits(len(rows), b) < 0:
        raise ValueError(f"--all: {len(rows)} examples are too many to enumerate every batch")
    keys2, tol2, _ = projection_keys(eg.G[rows], b, seed + 1)
    lab, moduli = label_residues(eg, rows.tolist(), b)
    found = _core.all_pairs(
        keys[order],
        eg.G[rows],
        eg.image[rows].astype(np.int32),
        lab,
        moduli,
        b,
        len(zeros),
        tol,
        b,
        int(max_memory_mib * 2**20),
        1_000_000,
        int(threads or 0),
        keys2=keys2,
        key2_tol=tol2,
    )
    return found, rows, zeros
