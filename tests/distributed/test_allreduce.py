"""The exact product and sum over a reduced axis split among processes (Gloo on CPU) give the
bits of one process over the whole axis: for world sizes 1, 2 and 3, every split of the rows
(empty parts included), float32 and float64, and inputs with infinities and NaN."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from exactforge._backend.native import _core

from conftest import spawn_group

CASES = [
    # (m, k, n, dtype, special, seed)
    (5, 37, 3, np.float32, False, 1),
    (17, 300, 9, np.float32, False, 2),
    (4, 1000, 20, np.float64, False, 3),
    (3, 64, 4, np.float32, True, 4),
    (6, 513, 5, np.float64, True, 5),
]


def _case(m, k, n, dtype, special, seed):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((m, k)) * np.exp2(rng.integers(-30, 31, (m, k)))).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    if special:
        a[1, 3] = np.inf
        b[7, 2] = np.nan
        b[9, 0] = -np.inf
    return a, b


def _cuts(k, world, seed):
    """Split points of k terms into `world` parts: random, one part empty where world > 1."""
    rng = np.random.default_rng(seed + 100 * world)
    cuts = np.sort(rng.integers(0, k + 1, world - 1))
    if world > 1:
        cuts[0] = 0  # the first process holds no terms
    return [0, *cuts.tolist(), k]


def _worker(rank, world, out):
    from exactforge.distributed import Reduction, ReductionBytes, exact_matmul, exact_sum, reduce_all

    results, together = {}, []
    for i, (m, k, n, dtype, special, seed) in enumerate(CASES):
        a, b = _case(m, k, n, dtype, special, seed)
        cuts = _cuts(k, world, seed)
        lo, hi = cuts[rank], cuts[rank + 1]
        stats = ReductionBytes()
        p = exact_matmul(torch.from_numpy(a[:, lo:hi].copy()), torch.from_numpy(b[lo:hi].copy()), stats=stats)
        s = exact_sum(torch.from_numpy(b[lo:hi].copy()))
        results[f"p{i}"], results[f"s{i}"] = p.numpy(), s.numpy()
        results[f"bytes{i}"] = np.array([stats.total, stats.float32_bytes])
        together += [Reduction("matmul", a[:, lo:hi], b[lo:hi]), Reduction("sum", b[lo:hi])]
    # every case at once: two collectives (three with the non-finite reports) for all of them
    for i, r in enumerate(reduce_all(together)):
        results[f"{'ps'[i % 2]}{i // 2}_together"] = r
    np.savez(os.path.join(out, f"rank{rank}.npz"), **results)


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2, 3])
def test_a_split_reduction_has_one_processs_bits(world, tmp_path):
    spawn_group(world, tmp_path, _worker, str(tmp_path))
    for i, (m, k, n, dtype, special, seed) in enumerate(CASES):
        a, b = _case(m, k, n, dtype, special, seed)
        ref_p = _core.matmul(a, b, "exact")
        ref_s = _core.sum_rows(b, "exact")
        u = np.uint32 if dtype == np.float32 else np.uint64
        for rank in range(world):
            got = np.load(tmp_path / f"rank{rank}.npz")
            assert np.array_equal(got[f"p{i}"].view(u), ref_p.view(u)), (i, rank)
            assert np.array_equal(got[f"s{i}"].view(u), ref_s.view(u)), (i, rank)
            assert np.array_equal(got[f"p{i}_together"].view(u), ref_p.view(u)), (i, rank)
            assert np.array_equal(got[f"s{i}_together"].view(u), ref_s.view(u)), (i, rank)


def test_packed_levels_are_checked():
    """Levels outside the reduction's bound, a wrong kind, dtype or world, and summed fields that
    no packing makes are refused with the argument's name, never wrapped."""
    p = _core.level_packing("matmul", 100, "float32", 2)
    assert (p["slices"], p["words"]) == (2, 3)  # 12 bytes where two int64 levels took 16
    far = np.array([[1 << 62, 0]], dtype=np.int64)
    with pytest.raises(ValueError, match="bound"):
        _core.pack_levels(far, "matmul", 100, "float32", 2)
    with pytest.raises(ValueError, match="kind"):
        _core.pack_levels(far, "product", 100, "float32", 2)
    with pytest.raises(ValueError, match="dtype"):
        _core.level_packing("sum", 100, "float16", 2)
    with pytest.raises(ValueError, match="world"):
        _core.level_packing("sum", 100, "float32", 0)
    with pytest.raises(ValueError, match="levels"):
        _core.pack_levels(np.zeros((3, 4), dtype=np.int64), "matmul", 100, "float32", 2)
    with pytest.raises(ValueError, match="negative"):
        _core.unpack_levels(np.array([[-1, 0, 0]], dtype=np.int32), "matmul", 100, "float32", 2)
