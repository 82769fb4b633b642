"""Bits never depend on the thread count or on the ISA the kernels were dispatched to."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

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


def test_generic_and_avx2_kernels_give_the_same_bits(tmp_path, rng):
    a = rng.standard_normal((100, 3000)).astype(np.float32)
    b = rng.standard_normal((3000, 11)).astype(np.float32)
    a64, b64 = a.astype(np.float64) * 1.1, b.astype(np.float64)
    np.savez(tmp_path / "in.npz", a=a, b=b, a64=a64, b64=b64)
    script = (
        "import numpy as np, sys, exactforge; from exactforge import reduce as R\n"
        f"d = np.load(r'{tmp_path / 'in.npz'}')\n"
        "outs = {f'{m}{s}': R.matmul(d['a'+s], d['b'+s], mode=m) for m in R.MODES for s in ('', '64')}\n"
        "outs['isa'] = np.array(exactforge._core.build_info()['kernels'])\n"
        "np.savez(sys.argv[1], **outs)\n"
    )
    results = {}
    for isa in ("default", "generic"):
        env = dict(os.environ)
        if isa == "generic":
            env["EXACTFORGE_ISA"] = "generic"
        out = tmp_path / f"{isa}.npz"
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env)
        results[isa] = np.load(out)
    assert str(results["generic"]["isa"]) == "generic"
    for key in results["default"].files:
        if key != "isa":
            assert bits(results["default"][key]) == bits(results["generic"][key]), key
