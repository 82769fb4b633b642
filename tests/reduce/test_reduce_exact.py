"""Exact mode: order independence, accuracy against exact rationals, adversarial data."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exactforge import reduce as R

from conftest import bits, exact_dot, ulp

DTYPES = [np.float32, np.float64]


def wide_range(rng, shape, dtype, lo=-3, hi=3):
    return (rng.standard_normal(shape) * 10.0 ** rng.integers(lo, hi + 1, shape)).astype(dtype)


@given(
    seed=st.integers(0, 2**32 - 1),
    m=st.integers(1, 9),
    k=st.integers(1, 300),
    n=st.integers(1, 9),
    dtype=st.sampled_from(DTYPES),
)
def test_exact_matmul_bitwise_invariant_under_any_permutation(seed, m, k, n, dtype):
    rng = np.random.default_rng(seed)
    a = wide_range(rng, (m, k), dtype)
    b = wide_range(rng, (k, n), dtype)
    p = rng.permutation(k)
    assert bits(R.matmul(a, b)) == bits(R.matmul(a[:, p], b[p]))


@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 3000), n=st.integers(1, 6), dtype=st.sampled_from(DTYPES))
def test_exact_sum_bitwise_invariant_under_any_permutation(seed, k, n, dtype):
    rng = np.random.default_rng(seed)
    x = wide_range(rng, (k, n), dtype, -8, 8)
    p = rng.permutation(k)
    assert bits(R.sum(x, 0)) == bits(R.sum(x[p], 0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (4, 37, 3), (6, 300, 5), (3, 2500, 2)])
def test_exact_matmul_within_documented_bound(dtype, shape, rng):
    m, k, n = shape
    a = wide_range(rng, (m, k), dtype, -2, 2)
    b = wide_range(rng, (k, n), dtype, -2, 2)
    got = R.matmul(a, b)
    ref = exact_dot(a, b)
    bound = R.error_bound(a, b)
    for i in range(m):
        for j in range(n):
            err = abs(Fraction(float(got[i, j])) - ref[i][j])
            assert err <= Fraction(float(bound[i, j])) + Fraction(ulp(float(got[i, j]), dtype)) / 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_no_worse_than_naive_float32_accumulation(dtype, rng):
    # Realistic data: inputs of one sign pattern and magnitude per row, as activations and
    # error-matrix columns are. The naive bound is (k-1) u sum|a_t b_t|.
    m, k, n = 8, 1000, 4
    a = np.abs(rng.standard_normal((m, k))).astype(dtype)
    b = (rng.standard_normal((k, n)) * 0.1).astype(dtype)
    got = R.matmul(a, b)
    ref = exact_dot(a, b)
    u = 2.0**-24 if dtype == np.float32 else 2.0**-53
    absab = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    naive_seq = np.zeros((m, n), dtype)
    for t in range(k):
        naive_seq = (naive_seq + a[:, t : t + 1] * b[t : t + 1, :]).astype(dtype)
    for i in range(m):
        for j in range(n):
            err = float(abs(Fraction(float(got[i, j])) - ref[i][j]))
            naive_err = float(abs(Fraction(float(naive_seq[i, j])) - ref[i][j]))
            assert err <= (k - 1) * u * absab[i, j]
            assert err <= max(naive_err, ulp(float(got[i, j]), dtype))  # correctly rounded or better than naive


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_sum_is_correctly_rounded_on_moderate_range(dtype, rng):
    x = wide_range(rng, (5000, 3), dtype, -6, 6)
    got = R.sum(x, 0)
    for j in range(3):
        ref = sum((Fraction(float(v)) for v in x[:, j]), Fraction(0))
        assert abs(Fraction(float(got[j])) - ref) <= Fraction(ulp(float(got[j]), dtype)) / 2


# --- adversarial data -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_heavy_cancellation(dtype, rng):
    big = rng.standard_normal(2000).astype(dtype) * dtype(1e6)
    x = np.concatenate([big, -big, np.array([1.0, 2.0**-10], dtype)])
    rng.shuffle(x)
    got = R.sum(x)
    assert float(got) == 1.0 + 2.0**-10  # exact: the big terms cancel exactly
    a = x[None, :]
    b = np.ones((x.size, 1), dtype)
    assert float(R.matmul(a, b)[0, 0]) == 1.0 + 2.0**-10


@pytest.mark.parametrize("dtype", DTYPES)
def test_magnitudes_from_1e_minus30_to_1e30_in_one_reduction(dtype, rng):
    x = (10.0 ** rng.uniform(-30, 30, 4096) * rng.choice([-1, 1], 4096)).astype(dtype)
    got = float(R.sum(x))
    ref = math.fsum(float(v) for v in x)
    naive_bound = (
        (x.size - 1) * (2.0**-24 if dtype == np.float32 else 2.0**-53) * float(np.sum(np.abs(x.astype(np.float64))))
    )
    assert abs(got - ref) <= max(naive_bound * 1e-6, ulp(ref, dtype))
    for _ in range(3):
        assert float(R.sum(rng.permutation(x))) == got


@pytest.mark.parametrize("dtype", DTYPES)
def test_subnormals(dtype, rng):
    tiny = np.finfo(dtype).smallest_subnormal
    x = (rng.integers(-1000, 1000, 3000) * tiny).astype(dtype)
    got = R.sum(x)
    assert float(got) == math.fsum(float(v) for v in x)  # a sum of subnormals is exact
    a = x[None, :]
    b = np.full((x.size, 1), 0.5, dtype)
    exact = Fraction(math.fsum(float(v) for v in x)) / 2
    assert abs(Fraction(float(R.matmul(a, b)[0, 0])) - exact) <= Fraction(float(tiny)) / 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_k_equals_one_is_the_product(dtype, rng):
    a = rng.standard_normal((5, 1)).astype(dtype)
    b = rng.standard_normal((1, 4)).astype(dtype)
    for mode in R.MODES:
        assert bits(R.matmul(a, b, mode=mode)) == bits((a * b).astype(dtype))
    x = rng.standard_normal((1, 6)).astype(dtype)
    for mode in R.MODES:
        assert bits(R.sum(x, 0, mode=mode)) == bits(x[0])


def test_k_65536(rng):
    k = 65536
    a = rng.standard_normal((3, k)).astype(np.float32)
    b = rng.standard_normal((k, 2)).astype(np.float32)
    got = R.matmul(a, b)
    p = rng.permutation(k)
    assert bits(got) == bits(R.matmul(a[:, p], b[p], threads=1))
    ref = a.astype(np.float64) @ b.astype(np.float64)  # products exact, f64 sum error << f32 ulp
    assert np.all(np.abs(got - ref) <= np.abs(ref) * 2.0**-23 + R.error_bound(a, b) + 1e-30)
    x = rng.standard_normal((k, 2)).astype(np.float32)
    assert bits(R.sum(x, 0)) == bits(R.sum(x[p], 0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", R.MODES)
def test_nan_and_inf_propagate_reproducibly(dtype, mode, rng):
    k = 64
    a = rng.standard_normal((4, k)).astype(dtype)
    b = rng.standard_normal((k, 3)).astype(dtype)
    a[0, 5] = np.nan
    a[1, 7] = np.inf
    a[2, 9] = np.inf
    a[2, 10] = -np.inf
    b[9], b[10] = np.abs(b[9]) + 1, np.abs(b[10]) + 1  # +inf meets -inf in every column
    b[11, 2] = 0.0
    a[3, 11] = np.inf  # inf * 0 -> NaN in column 2
    out = R.matmul(a, b, mode=mode)
    assert np.isnan(out[0]).all()
    assert np.isinf(out[1]).all() and np.all(np.sign(out[1]) == np.sign(b[7]))
    assert np.isnan(out[2]).all()
    assert np.isnan(out[3, 2])
    nan_bits = np.array([np.nan], dtype).tobytes()
    assert all(np.asarray(v, dtype).tobytes() == nan_bits for v in out[np.isnan(out)])
    p = rng.permutation(k)
    keys = np.arange(k)
    assert bits(out) == bits(R.matmul(a[:, p], b[p], mode=mode, keys=keys[p]))
    x = rng.standard_normal((k, 3)).astype(dtype)
    x[3, 0], x[4, 1], x[5, 1] = np.inf, np.inf, -np.inf
    s = R.sum(x, 0, mode=mode)
    assert s[0] == np.inf and np.isnan(s[1]) and np.isfinite(s[2])


def test_exact_plan_documents_the_slicing():
    p = R.exact_plan(1000)
    assert p["slices"] == 2 and p["width"] >= 21 and p["chunk"] >= 1000 // 2
    assert R.exact_plan(10**6, "float64")["slices"] == 4


def test_readme_dynamic_range_example():
    """The README's example of the cross dynamic range limit: both products are truncated."""
    import numpy as np

    from exactforge import reduce as R

    for dt in (np.float32, np.float64):
        a = np.array([[1e30, 1e-30]], dt)
        b = np.array([[1e-30], [1e30]], dt)
        assert R.matmul(a, b, mode="exact")[0, 0] == 0.0
        assert R.matmul(a, b, mode="fixed")[0, 0] == 2.0
