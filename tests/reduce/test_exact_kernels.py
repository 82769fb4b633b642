"""The float32 exact matmul's kernels give the same bits.

"f64-slices" sums the slice products in float64 tiles; "int8-generic", "int8-amx" and "int8-vnni" sum the same
slices written as int8 digits with int32/int64 integer sums (exactforge/intexact.hpp). The levels
are the same integers, so every output must be bitwise equal, for every shape, magnitude mix,
slice width (3 or 4 digits) and thread count; and within exact mode's documented bound of an
exact rational reference. The AMX rows run where the CPU and OS allow AMX-INT8, the VNNI rows where
the CPU has AVX-512 VNNI; both skip elsewhere.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import exactforge
from exactforge import reduce as R
from exactforge._backend.native import _core

KERNELS = [
    "f64-slices",
    "int8-generic",
    pytest.param(
        "int8-amx", marks=pytest.mark.skipif(not _core.amx_int8_usable(), reason="no AMX-INT8 on this CPU/OS")
    ),
    pytest.param(
        "int8-vnni",
        marks=pytest.mark.skipif(not _core.vnni_int8_usable(), reason="no AVX-512 VNNI on this CPU or build"),
    ),
]


def _bits(x):
    return np.ascontiguousarray(x).view(np.uint32)


def _operands(kind: str, m: int, k: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    if kind == "magnitudes":  # each row's scale from its largest entry: tiny ones lose low bits
        a *= np.exp2(rng.integers(-40, 40, (m, k))).astype(np.float32)
    elif kind == "cancellation":  # every product cancels against another: exact answer 0
        a = np.concatenate([a, a], 1)[:, :k]
        b = np.concatenate([b, -b], 0)[:k]
    elif kind == "subnormal":
        a[:, ::3] = np.float32(1e-41)
        b[::2] *= np.float32(1e-30)
    elif kind == "special":
        a[0, 0] = np.inf
        b[-1, -1] = np.nan
        if m > 1 and n > 1:
            a[1, :] = 0
    elif kind == "ties":  # values on a coarse grid: many outputs land exactly between floats
        a = np.round(a * 8).astype(np.float32) + np.float32(2.0**23)
        b = np.round(b * 4).astype(np.float32)
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


# k picks the slice width: k <= 128 needs 4 digits per slice, k > 128 needs 3.
CASES = [
    (m, k, n, kind)
    for kind in ("normal", "magnitudes", "cancellation", "subnormal", "special", "ties")
    for (m, k, n) in ((1, 1, 1), (17, 63, 5), (33, 100, 16), (5, 129, 40), (64, 1000, 10), (20, 2100, 33))
] + [
    # few outputs over a long axis: on 2 threads the sub-chunks are shared out and the threads'
    # integer levels added at the end (a convolution's weight gradient)
    (m, k, n, kind)
    for kind in ("normal", "magnitudes", "cancellation", "special", "ties")
    for (m, k, n) in ((25, 6000, 6), (3, 50000, 2))
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("m,k,n,kind", CASES)
def test_kernels_give_the_same_bits(kernel, m, k, n, kind):
    a, b = _operands(kind, m, k, n, seed=m * 1000 + k + n)
    ref = _core.matmul_exact_kernel(a, b, "f64-slices", 1)
    for threads in (1, 2):
        out = _core.matmul_exact_kernel(a, b, kernel, threads)
        assert np.array_equal(_bits(out), _bits(ref)), (kernel, threads)
    # and the public entry point (whatever kernel it dispatches to) agrees
    assert np.array_equal(_bits(R.matmul(a, b, mode="exact")), _bits(ref))


@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_kernels_within_the_exact_bound(kernel):
    """Against exact rationals: the documented bound of exact mode holds for every kernel (the
    same bits make this a check of the reference too)."""
    a, b = _operands("magnitudes", 6, 300, 4, seed=3)
    out = _core.matmul_exact_kernel(a, b, kernel, 1)
    bound = R.error_bound(a, b)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            exact = sum(Fraction(float(x)) * Fraction(float(y)) for x, y in zip(a[i], b[:, j]))
            err = abs(Fraction(float(out[i, j])) - exact)
            assert err <= Fraction(float(bound[i, j])) + abs(exact) * Fraction(2) ** -24


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 40),
    k=st.integers(1, 400),
    n=st.integers(1, 40),
    seed=st.integers(0, 2**31),
    spread=st.integers(0, 60),
)
def test_int8_generic_equals_float_slices_property(m, k, n, seed, spread):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((m, k)) * np.exp2(rng.integers(-spread, spread + 1, (m, k)))).astype(np.float32)
    b = (rng.standard_normal((k, n)) * np.exp2(rng.integers(-spread, spread + 1, (k, n)))).astype(np.float32)
    ref = _core.matmul_exact_kernel(a, b, "f64-slices", 1)
    assert np.array_equal(_bits(_core.matmul_exact_kernel(a, b, "int8-generic", 1)), _bits(ref))
    perm = rng.permutation(k)  # order independence of the integer path itself
    out = _core.matmul_exact_kernel(np.ascontiguousarray(a[:, perm]), np.ascontiguousarray(b[perm]), "int8-generic", 2)
    assert np.array_equal(_bits(out), _bits(ref))


def test_kernel_argument_and_report():
    a = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="kernel"):
        _core.matmul_exact_kernel(a, a.T.copy(), "bogus", 1)
    if not _core.amx_int8_usable():
        with pytest.raises(ValueError, match="AMX"):
            _core.matmul_exact_kernel(a, a.T.copy(), "int8-amx", 1)
    opts = exactforge.compile_options()
    assert opts["exact_kernel"] in ("int8-amx", "f64-slices")
    assert opts["exact_kernel"] == ("int8-amx" if opts["amx_built"] and _core.amx_int8_usable() else "f64-slices")
    assert opts["isa"]["cpu"]["amx_int8"] == bool(_core.amx_int8_usable())
