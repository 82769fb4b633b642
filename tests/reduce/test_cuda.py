"""CUDA kernels: the same bits as the CPU, table-driven over dtype x mode x framework.
Skipped when exactforge._cuda was not built or no CUDA device is visible."""

from __future__ import annotations

import numpy as np
import pytest

import exactforge
from exactforge import reduce as R

from conftest import bits

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not exactforge.cuda_is_available(), reason="exactforge._cuda not built or no CUDA device"),
]

SHAPES = [(1, 1, 1), (64, 100, 10), (784, 1000, 10), (100, 4096, 100), (13, 5000, 7)]


def _frameworks():
    out = []
    try:
        import torch

        if torch.cuda.is_available():
            out.append("torch")
    except ImportError:
        pass
    try:
        import cupy  # noqa: F401

        out.append("cupy")
    except ImportError:
        pass
    return out


def _to_device(x, fw):
    if fw == "torch":
        import torch

        return torch.from_numpy(x).cuda()
    import cupy

    return cupy.asarray(x)


def _to_host(x, fw):
    return x.cpu().numpy() if fw == "torch" else x.get()


@pytest.mark.parametrize("fw", _frameworks())
@pytest.mark.parametrize("mode", R.MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_matmul_bits_equal_cpu(fw, mode, dtype, shape, rng):
    m, k, n = shape
    a = (rng.standard_normal((m, k)) * 10.0 ** rng.integers(-3, 4, (m, k))).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    keys = rng.permutation(k)
    cpu = R.matmul(a, b, mode=mode, keys=keys)
    gpu = R.matmul(_to_device(a, fw), _to_device(b, fw), mode=mode, keys=keys)
    assert bits(_to_host(gpu, fw)) == bits(cpu)


@pytest.mark.parametrize("fw", _frameworks())
@pytest.mark.parametrize("mode", R.MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_sum_bits_equal_cpu_and_permutation_invariant(fw, mode, dtype, rng):
    x = (rng.standard_normal((9000, 33)) * 10.0 ** rng.integers(-6, 6, (9000, 33))).astype(dtype)
    x[5, 3] = np.nan
    x[7, 4] = np.inf
    keys = rng.permutation(9000)
    cpu = R.sum(x, 0, mode=mode, keys=keys)
    p = rng.permutation(9000)
    gpu = R.sum(_to_device(x[p], fw), 0, mode=mode, keys=keys[p])
    assert bits(_to_host(gpu, fw)) == bits(cpu)


@pytest.mark.parametrize("fw", _frameworks())
def test_cuda_nan_inf_bits_equal_cpu(fw, rng):
    a = rng.standard_normal((5, 64)).astype(np.float32)
    b = rng.standard_normal((64, 4)).astype(np.float32)
    a[0, 1], a[1, 2], a[2, 3], a[2, 4] = np.nan, np.inf, np.inf, -np.inf
    for mode in R.MODES:
        assert bits(_to_host(R.matmul(_to_device(a, fw), _to_device(b, fw), mode=mode), fw)) == bits(
            R.matmul(a, b, mode=mode)
        )


@pytest.mark.parametrize("fw", _frameworks())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_exp_log_bits_equal_cpu(fw, dtype, rng):
    from exactforge import mathfn

    x = rng.uniform(-700, 700, 10_000).astype(dtype)
    y = np.abs(rng.standard_normal(10_000)).astype(dtype) * dtype(1e3)
    assert bits(_to_host(mathfn.exp(_to_device(x, fw)), fw)) == bits(mathfn.exp(x))
    assert bits(_to_host(mathfn.log(_to_device(y, fw)), fw)) == bits(mathfn.log(y))
