"""Public API: kinds and dtypes in and out, and a clear exception for every bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import exactforge
from exactforge import reduce as R

from conftest import bits


def test_compile_options_reports_the_build():
    opts = exactforge.compile_options()
    for key in ("version", "compiler", "cxx_flags", "openmp", "fp_contract", "fast_math", "cuda", "isa"):
        assert key in opts
    assert opts["fp_contract"] == "off" and opts["fast_math"] is False
    assert "-ffp-contract=off" in opts["cxx_flags"]
    assert isinstance(opts["cuda"], bool)
    import json

    json.dumps(opts)


def test_the_package_root_binds_only_its_api():
    """What ``dir(exactforge)`` shows besides ``__all__`` and the subpackages is private: no typing
    helpers (Any, Dict), no ``annotations`` feature, no alias machinery for old import paths."""
    import subprocess
    import sys
    import types
    import typing

    extra = []
    for name in dir(exactforge):
        value = getattr(exactforge, name)
        if name in exactforge.__all__ or (name.startswith("__") and name.endswith("__")):
            continue
        if isinstance(value, types.ModuleType) and value.__name__ == f"exactforge.{name}":
            continue  # a submodule
        if not name.startswith("_") or value is typing or getattr(value, "__module__", None) == "typing":
            extra.append(name)
    assert not extra, f"the package root leaks {extra}"
    # the old import paths are gone: no finder of exactforge's is left on sys.meta_path
    assert not [f for f in sys.meta_path if type(f).__module__.startswith("exactforge")]
    code = "import exactforge, importlib.util; print(importlib.util.find_spec('exactforge.record'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None"


@pytest.mark.parametrize("mode", R.MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_torch_cpu_tensors_round_trip_kind_and_dtype(mode, dtype, rng):
    a = torch.from_numpy(rng.standard_normal((6, 40))).to(dtype)
    b = torch.from_numpy(rng.standard_normal((40, 3))).to(dtype)
    out = R.matmul(a, b, mode=mode)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (6, 3)
    ref = (a.float() @ b.float()).to(dtype)
    tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5
    assert torch.allclose(out.float(), ref.float(), rtol=tol, atol=tol)
    s = R.sum(a, 1, mode=mode)
    assert isinstance(s, torch.Tensor) and s.dtype == dtype and s.shape == (6,)


def test_torch_and_numpy_give_the_same_bits(rng):
    a = rng.standard_normal((9, 77)).astype(np.float32)
    b = rng.standard_normal((77, 5)).astype(np.float32)
    for mode in R.MODES:
        assert bits(R.matmul(torch.from_numpy(a), torch.from_numpy(b), mode=mode).numpy()) == bits(
            R.matmul(a, b, mode=mode)
        )


def test_tensors_requiring_grad_are_accepted(rng):
    a = torch.randn(3, 8, requires_grad=True)
    b = torch.randn(8, 2)
    assert R.matmul(a, b).shape == (3, 2)


def test_float16_accumulates_in_float32(rng):
    x = np.full(4096, 1.0, np.float16)
    x[0] = 2048.0  # fp16 accumulation stalls: 2048 + 1 rounds back to 2048
    # accumulated in float32 (6143 exactly), then rounded once to float16
    assert float(R.sum(x, mode="fixed")) == float(np.float16(2048.0 + 4095.0)) == 6144.0
    assert R.sum(x).dtype == np.float16


def test_non_contiguous_inputs_are_copied(rng):
    a = rng.standard_normal((50, 30)).astype(np.float32)
    b = rng.standard_normal((50, 4)).astype(np.float32)
    at = a.T  # 30 x 50, Fortran order
    assert bits(R.matmul(at, b)) == bits(R.matmul(np.ascontiguousarray(at), b))
    assert bits(R.sum(a[:, ::2], 0)) == bits(R.sum(np.ascontiguousarray(a[:, ::2]), 0))


def test_sum_any_axis_and_ndim(rng):
    x = rng.standard_normal((4, 5, 6)).astype(np.float64)
    for axis in (0, 1, 2, -1):
        got = R.sum(x, axis)
        assert got.shape == np.sum(x, axis).shape
        assert np.allclose(got, np.sum(x, axis))
    assert R.sum(x[0, 0]).shape == ()


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda a, b: R.matmul(a.astype(np.int32), b), TypeError, ["a:", "int32", "astype"]),
        (lambda a, b: R.matmul(a, b.astype(np.float64)), TypeError, ["dtypes differ"]),
        (lambda a, b: R.matmul(a, b[:-1]), ValueError, ["reduced axes differ"]),
        (lambda a, b: R.matmul(a[0], b), ValueError, ["2-D"]),
        (lambda a, b: R.matmul(a[:, :0], b[:0]), ValueError, ["empty"]),
        (lambda a, b: R.matmul(a.tolist(), b), TypeError, ["a:", "numpy.asarray"]),
        (lambda a, b: R.matmul(a, b, mode="fast"), ValueError, ["mode"]),
        (lambda a, b: R.matmul(a, b, mode="fixed", keys=[1, 2]), ValueError, ["keys", "10"]),
        (lambda a, b: R.matmul(a, b, mode="fixed", keys=np.linspace(0, 1, 10)), TypeError, ["keys", "int"]),
        (lambda a, b: R.matmul(a, b, threads=0), ValueError, ["threads"]),
        (lambda a, b: R.matmul(a, torch.from_numpy(b)), TypeError, ["same place"]),
        (lambda a, b: R.sum(b, axis=2), ValueError, ["axis"]),
        (lambda a, b: R.sum(b[:0], 0), ValueError, ["empty"]),
        (lambda a, b: R.sum(np.float32(1.0)), TypeError, ["x:"]),
        (lambda a, b: exactforge.set_num_threads(0), ValueError, ["n:"]),
    ],
)
def test_bad_input_names_the_argument_and_the_fix(call, exc, words, rng):
    a = rng.standard_normal((3, 10)).astype(np.float32)
    b = rng.standard_normal((10, 2)).astype(np.float32)
    with pytest.raises(exc) as info:
        call(a, b)
    for w in words:
        assert w in str(info.value)


@pytest.mark.slow
def test_exact_refuses_more_terms_than_its_accumulators_hold():
    a = np.zeros((1, R.EXACT_MATMUL_MAX_K + 1), np.float32)
    b = np.zeros((R.EXACT_MATMUL_MAX_K + 1, 1), np.float32)
    with pytest.raises(ValueError, match="mode='fixed'"):
        R.matmul(a, b)
    assert R.matmul(a, b, mode="fixed")[0, 0] == 0.0


def test_native_core_rejects_bad_order_without_crashing():
    from exactforge import _core

    a = np.ones((2, 3), np.float32)
    b = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="permutation"):
        _core.matmul(a, b, "fixed", np.array([0, 0, 5]), 0)
    with pytest.raises(ValueError):
        _core.matmul(np.asfortranarray(np.ones((3, 3), np.float32)), b, "fixed", None, 0)


def test_cuda_array_without_cuda_module_gives_one_clear_error(monkeypatch):
    from exactforge._backend import native as _native

    monkeypatch.setattr(_native, "_cuda", None)
    with pytest.raises(RuntimeError, match="built without CUDA"):
        _native.require_cuda("a")


def test_import_works_without_a_gpu():
    assert isinstance(exactforge.cuda_is_available(), bool)


def test_empty_outputs_are_fine_only_the_reduced_axis_must_not_be_empty():
    for mode in R.MODES:
        assert R.matmul(np.zeros((0, 5), np.float32), np.ones((5, 3), np.float32), mode=mode).shape == (0, 3)
        assert R.matmul(np.ones((2, 5), np.float32), np.ones((5, 0), np.float32), mode=mode).shape == (2, 0)
        assert R.sum(np.ones((4, 0)), 0, mode=mode).shape == (0,)


@pytest.mark.parametrize("mode", ["fixed", "exact"])
def test_unpickled_arrays_are_float32_too(mode, rng):
    # An array that crossed a process boundary (multiprocessing, Ray's object store) carries its
    # own dtype object; the core once compared dtypes by identity and refused it.
    import pickle

    a = rng.standard_normal((5, 7)).astype(np.float32)
    b = rng.standard_normal((7, 3)).astype(np.float32)
    pa, pb = pickle.loads(pickle.dumps(a, protocol=5)), pickle.loads(pickle.dumps(b))
    assert pa.dtype is not a.dtype  # the case in question
    assert bits(R.matmul(pa, pb, mode=mode)) == bits(R.matmul(a, b, mode=mode))
    assert bits(exactforge._core.matmul(pa, pb, mode, None, 0)) == bits(R.matmul(a, b, mode=mode))
    with pytest.raises(TypeError, match=">f4"):  # a byte-swapped float32 is still not a native one
        exactforge._core.matmul(a.astype(">f4"), b, mode, None, 0)
