"""Bits never depend on the thread count or on the ISA the kernels were dispatched to."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import exactforge
from exactforge import reduce as R

from conftest import bits

SHAPES = [(784, 1000, 10), (100, 257, 33), (70, 4500, 3)]


@pytest.mark.parametrize("mode", R.MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_thread_count_invariance(mode, dtype, shape, rng):
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    ref = R.matmul(a, b, mode=mode, threads=1)
    for t in (2, 3, 4, 7):
        assert bits(R.matmul(a, b, mode=mode, threads=t)) == bits(ref)
    x = rng.standard_normal((k, 600)).astype(dtype)
    ref = R.sum(x, 0, mode=mode, threads=1)
    for t in (2, 3, 5):
        assert bits(R.sum(x, 0, mode=mode, threads=t)) == bits(ref)


@given(threads=st.integers(1, 8), seed=st.integers(0, 1000))
def test_set_num_threads_never_changes_bits(threads, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((40, 300)).astype(np.float32)
    b = rng.standard_normal((300, 12)).astype(np.float32)
    before = exactforge.get_num_threads()
    try:
        exactforge.set_num_threads(1)
        ref = [R.matmul(a, b, mode=m) for m in R.MODES]
        exactforge.set_num_threads(threads)
        assert exactforge.get_num_threads() == threads
        assert [bits(R.matmul(a, b, mode=m)) for m in R.MODES] == [bits(r) for r in ref]
    finally:
        exactforge.set_num_threads(before)


def test_every_isa_level_gives_the_same_bits(tmp_path, rng):
    """The baseline, AVX2 and AVX-512 levels (EXACTFORGE_ISA caps the dispatch) compute the same
    products and sums bit for bit: shapes off every tile size (the AVX-512 exact tile is 16 x 4, its
    fixed tile 16 x 12), one and several column blocks and sub-chunks of the exact walk, k on both
    sides of the slice-width steps, magnitudes over 2^60 (many outputs off the vectorised
    recombination's fast path), cancellation, subnormal and overflowing outputs, Inf and NaN."""
    cases = {}
    for m, k, n in [
        (100, 3000, 11),
        (33, 100, 17),
        (17, 129, 9),
        (1, 5, 1),
        (70, 257, 40),
        (50, 600, 300),
        (30, 140, 133),
    ]:
        cases[f"n{m}x{k}x{n}"] = (rng.standard_normal((m, k)), rng.standard_normal((k, n)))
    a = rng.standard_normal((40, 300)) * np.exp2(rng.integers(-30, 30, (40, 300)))
    cases["wide"] = (a, rng.standard_normal((300, 21)) * np.exp2(rng.integers(-30, 30, (300, 21))))
    a = rng.standard_normal((24, 64))
    b = rng.standard_normal((64, 12))
    cases["cancel"] = (np.concatenate([a, a], 1), np.concatenate([b, -b * (1 + 2.0**-20)]))
    cases["tiny"] = (rng.standard_normal((19, 50)) * 1e-22, rng.standard_normal((50, 10)) * 1e-22)
    cases["huge"] = (rng.standard_normal((19, 50)) * 1e19, rng.standard_normal((50, 10)) * 1e19)
    # one sub-chunk (k <= 256: the AVX-512 tile rounds in registers) with results from zero and
    # subnormal to overflowing, a zero row, and a NaN and an Inf column
    a = rng.standard_normal((37, 200)) * np.exp2(rng.integers(-75, 70, (37, 200)))
    b = rng.standard_normal((200, 23)) * np.exp2(rng.integers(-75, 70, (200, 23)))
    a[4] = 0.0
    b[3, 5], b[9, 7] = np.nan, np.inf
    cases["extremes"] = (a, b)
    a, b = rng.standard_normal((20, 30)), rng.standard_normal((30, 13))
    a[3, 4], a[5, 6], b[7, 2] = np.inf, np.nan, -np.inf
    cases["special"] = (a, b)
    arrays = {}
    for name, (a, b) in cases.items():
        arrays[name + "_a"], arrays[name + "_b"] = a.astype(np.float32), b.astype(np.float32)
        arrays[name + "_a64"], arrays[name + "_b64"] = a * 1.1, b
    np.savez(tmp_path / "in.npz", **arrays)
    script = (
        "import numpy as np, sys, exactforge; from exactforge import reduce as R\n"
        f"d = np.load(r'{tmp_path / 'in.npz'}')\n"
        f"names = {sorted(cases)!r}\n"
        "outs = {f'{c}{m}{s}': R.matmul(d[c+'_a'+s], d[c+'_b'+s], mode=m) for c in names for m in R.MODES"
        " for s in ('', '64')}\n"
        "outs.update({f'{c}sum{m}{s}': R.sum(d[c+'_a'+s], 0, mode=m) for c in names for m in R.MODES"
        " for s in ('', '64')})\n"
        "outs['isa'] = np.array(exactforge._core.build_info()['kernels'])\n"
        "np.savez(sys.argv[1], **outs)\n"
    )
    results = {}
    for isa in ("default", "avx2", "generic"):
        env = dict(os.environ)
        env.pop("EXACTFORGE_ISA", None)
        if isa != "default":
            env["EXACTFORGE_ISA"] = isa
        out = tmp_path / f"{isa}.npz"
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env)
        results[isa] = np.load(out)
    assert str(results["generic"]["isa"]) == "generic"
    assert "avx512" not in str(results["avx2"]["isa"])
    for key in results["default"].files:
        if key != "isa":
            ref = bits(results["generic"][key])
            assert bits(results["default"][key]) == ref, key
            assert bits(results["avx2"][key]) == ref, key


@pytest.mark.parametrize("user", [None, "OMP_WAIT_POLICY=PASSIVE", "GOMP_SPINCOUNT=5"])
def test_openmp_wait_setting_is_scoped_to_the_core_and_yields_to_the_user(user):
    """exactforge sets GOMP_SPINCOUNT only while its own OpenMP runtime loads (so torch's, or a
    child process's, sees the user's environment), and not at all where the user chose a policy."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if user:
        k, v = user.split("=")
        env[k] = v
    code = "import os, exactforge; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    assert out == [env.get("GOMP_SPINCOUNT", "None"), env.get("OMP_WAIT_POLICY", "None")]
