"""Fixed mode: the definition (FMA chain in key order) and its invariances."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exactforge import reduce as R

from conftest import bits, fma_chain_reference, round_fraction

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 5), (17, 33, 9), (20, 5, 13)])
def test_matmul_fixed_is_the_fma_chain(dtype, shape, rng):
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    keys = rng.permutation(1000)[:k]
    got = R.matmul(a, b, mode="fixed", keys=keys)
    assert bits(got) == bits(fma_chain_reference(a, b, order=np.argsort(keys, kind="stable")))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_fixed_is_the_sequential_chain(dtype, rng):
    x = (rng.standard_normal((301, 17)) * 10.0 ** rng.integers(-5, 5, (301, 17))).astype(dtype)
    keys = rng.permutation(301)
    acc = np.zeros(17, dtype)
    for t in np.argsort(keys):
        acc = acc + x[t]  # NumPy rounds each elementwise addition once, as the chain does
    assert bits(R.sum(x, 0, mode="fixed", keys=keys)) == bits(acc)


@given(
    seed=st.integers(0, 2**32 - 1),
    m=st.integers(1, 9),
    k=st.integers(1, 70),
    n=st.integers(1, 9),
    dtype=st.sampled_from(DTYPES),
)
def test_fixed_invariant_under_permutation_of_terms_and_keys(seed, m, k, n, dtype):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((m, k)) * 10.0 ** rng.integers(-3, 4, (m, k))).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    keys = rng.choice(10 * k, size=k, replace=False)
    p = rng.permutation(k)
    ref = R.matmul(a, b, mode="fixed", keys=keys)
    got = R.matmul(a[:, p], b[p], mode="fixed", keys=keys[p])
    assert bits(ref) == bits(got)
    x = rng.standard_normal((k, n)).astype(dtype)
    assert bits(R.sum(x, 0, mode="fixed", keys=keys)) == bits(R.sum(x[p], 0, mode="fixed", keys=keys[p]))


def test_fixed_with_duplicate_keys_depends_only_on_the_multiset(rng):
    # A batch drawn with replacement: equal keys, and here different terms under them.
    k = 40
    a = rng.standard_normal((5, k)).astype(np.float32)
    b = rng.standard_normal((k, 3)).astype(np.float32)
    keys = rng.integers(0, 8, k)
    ref = R.matmul(a, b, mode="fixed", keys=keys)
    for _ in range(10):
        p = rng.permutation(k)
        assert bits(R.matmul(a[:, p], b[p], mode="fixed", keys=keys[p])) == bits(ref)
        assert bits(R.sum(b[p], 0, mode="fixed", keys=keys[p])) == bits(R.sum(b, 0, mode="fixed", keys=keys))


def test_fixed_without_keys_uses_the_given_order(rng):
    a = rng.standard_normal((4, 50)).astype(np.float32)
    b = rng.standard_normal((50, 3)).astype(np.float32)
    assert bits(R.matmul(a, b, mode="fixed")) == bits(fma_chain_reference(a, b))
    assert bits(R.matmul(a, b, mode="fixed")) == bits(R.matmul(a, b, mode="fixed", keys=np.arange(50)))


def test_round_fraction_helper_matches_numpy():
    from fractions import Fraction

    for v in [1.0, 1 / 3, 1e-40, 3.4e38, 1e-45, 2.0**-149 * 1.5]:
        assert round_fraction(Fraction(v), np.float32) == float(np.float32(v))


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (16, 8, 4), (17, 9, 5), (64, 100, 10), (33, 515, 7), (48, 1030, 3)])
def test_fixed_panel_transpose_keeps_the_chains(m, k, n):
    """The float32 panel of a is packed by an in-register 8x8 transpose on AVX2; the
    transposed-operand entry point packs element by element. Same chains, so the same bits."""
    from exactforge._backend.native import _core

    rng = np.random.default_rng(m * k + n)
    a = (rng.standard_normal((m, k)) * np.exp2(rng.integers(-10, 10, (m, k)))).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    direct = _core.matmul(a, b, "fixed", None, 0, False)
    via_t = _core.matmul(np.ascontiguousarray(a.T), b, "fixed", None, 0, True)
    assert np.array_equal(direct.view(np.uint32), via_t.view(np.uint32))


@pytest.mark.parametrize("m,k,n", [(200, 16, 48), (97, 8, 33), (64, 40, 64), (1600, 32, 96)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fixed_products_computed_transposed_keep_the_chains(m, k, n, dtype):
    """Products with a short reduced axis run their tiles transposed (lanes along the output's
    rows, each tile stored as whole vectors). Every output is still its chain over the reduced
    axis, so the bits are those of the product taken one column at a time (which keeps the usual
    orientation): with an order of the terms, with a stored transposed, with infinities and NaN,
    on 1 and 2 threads; and on finite values, the FMA chain's."""
    from exactforge._backend.native import _core

    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    if m < 100:
        assert bits(_core.matmul(a, b, "fixed", None, 0, False)) == bits(fma_chain_reference(a, b))
    a.flat[rng.integers(a.size, size=3)] = [np.inf, -np.inf, np.nan]
    b.flat[rng.integers(b.size, size=2)] = [np.nan, -0.0]
    order = rng.permutation(k).astype(np.int64)
    at = np.ascontiguousarray(a.T)
    u = np.uint32 if dtype == np.float32 else np.uint64
    for o in (None, order):
        ref = np.concatenate(
            [_core.matmul(a, np.ascontiguousarray(b[:, j : j + 1]), "fixed", o, 1, False) for j in range(n)], axis=1
        )
        for threads in (1, 2):
            assert np.array_equal(_core.matmul(a, b, "fixed", o, threads, False).view(u), ref.view(u))
            assert np.array_equal(_core.matmul(at, b, "fixed", o, threads, True).view(u), ref.view(u))
