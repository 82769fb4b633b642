"""Products and sums: the fixed-order product inside an example, the batch reductions in a
mode ("exact" or "fixed"), and the row sums of one example, as operators."""

from __future__ import annotations

import torch

from .. import reduce as R
from .._backend.native import _core
from ._library import define

__all__ = ["mm", "bmm", "sum0", "rowsum"]

_NATIVE = (torch.float32, torch.float64)


def _host(a: torch.Tensor):
    return a.detach().contiguous().numpy()


def _mm_impl(a: torch.Tensor, b: torch.Tensor, mode: str, a_transposed: bool = False) -> torch.Tensor:
    if a_transposed and mode == "exact" and a.dim() == 2:
        a, a_transposed = a.t(), False  # the exact kernel reads a row-major a: _host copies it
    k = (a.shape[0] if a_transposed else a.shape[1]) if a.dim() == 2 else -1
    if (
        a.dtype in _NATIVE
        and b.dtype == a.dtype
        and a.device.type == "cpu"
        and b.device.type == "cpu"
        and a.dim() == 2
        and b.dim() == 2
        and 0 < k == b.shape[0]
        and (mode == "fixed" or (mode == "exact" and k <= R.EXACT_MATMUL_MAX_K))
    ):
        # the hot path: no conversion, the kernel reads the tensors' own memory
        return torch.from_numpy(_core.matmul(_host(a), _host(b), mode, None, 0, a_transposed))
    # everything else (CUDA, float16/bfloat16, bad shapes: its errors name the arguments)
    return R.matmul((a.t() if a_transposed else a).contiguous(), b.contiguous(), mode=mode)


def _mm_fake(a, b, mode, a_transposed=False):
    return a.new_empty((a.shape[1] if a_transposed else a.shape[0], b.shape[1]))


def _sum0_impl(x: torch.Tensor, mode: str) -> torch.Tensor:
    k = x.shape[0] if x.dim() else 0  # a 0-d x goes to reduce.sum, whose error names it
    if (
        x.dtype in _NATIVE
        and x.device.type == "cpu"
        and x.dim() >= 2
        and k > 0
        and (mode == "fixed" or (mode == "exact" and k <= R.EXACT_SUM_MAX_K))
    ):
        # the hot path: reduce.sum's kernel call on the tensor's memory, without its conversions
        return torch.from_numpy(_core.sum_rows(_host(x.reshape(k, -1)), mode, None, 0)).reshape(x.shape[1:])
    return R.sum(x.contiguous(), axis=0, mode=mode)


def _sum0_fake(x, mode):
    return x.new_empty(tuple(x.shape[1:]))


def _rowsum_impl(x: torch.Tensor) -> torch.Tensor:
    if x.dtype in _NATIVE and x.device.type == "cpu" and x.shape[1] > 0:
        # the fixed-mode sum's chains, along the rows as they lie (no transposed copy)
        return torch.from_numpy(_core.rowsum_fixed(_host(x)))
    return R.sum(x.t().contiguous(), axis=0, mode="fixed")


def _rowsum_fake(x):
    return x.new_empty((x.shape[0],))


def _bmm_impl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M, K) @ (N, K, P), each output the sum over k = 0..K-1 in that order, no FMA."""
    if a.dtype in _NATIVE and a.dtype == b.dtype and a.device.type == "cpu" and b.device.type == "cpu":
        # the same loop in C++ (exactforge/batched.hpp): the same separately rounded operations
        return torch.from_numpy(_core.bmm_unfused(_host(a), _host(b)))
    acc = a[:, :, 0:1] * b[:, 0:1, :]
    for k in range(1, a.shape[2]):
        acc = acc + a[:, :, k : k + 1] * b[:, k : k + 1, :]
    return acc.contiguous()


def _bmm_fake(a, b):
    return a.new_empty((a.shape[0], a.shape[1], b.shape[2]))


_MM = define("mm(Tensor a, Tensor b, str mode, bool a_transposed=False) -> Tensor", _mm_impl, _mm_fake)
_BMM = define("bmm(Tensor a, Tensor b) -> Tensor", _bmm_impl, _bmm_fake)
_SUM0 = define("sum0(Tensor x, str mode) -> Tensor", _sum0_impl, _sum0_fake)
_ROWSUM = define("rowsum(Tensor x) -> Tensor", _rowsum_impl, _rowsum_fake)


def mm(a: torch.Tensor, b: torch.Tensor, mode: str = "fixed", a_transposed: bool = False) -> torch.Tensor:
    """``a @ b`` (2-D; ``a_transposed``: ``a.T @ b`` read from ``a`` as it lies) with the shared
    axis reduced in ``mode``: the bits of ``exactforge.reduce.matmul``. Eager calls run the
    kernel directly; under ``torch.compile`` this is the operator ``exactforge::mm``, which the
    compiler keeps whole. Not differentiable by itself: the reproducible layers differentiate."""
    return _MM(a, b, mode, a_transposed)


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched product, each output's terms in index order, each product and sum rounded."""
    return _BMM(a, b)


def sum0(x: torch.Tensor, mode: str) -> torch.Tensor:
    """The sum over the first axis in ``mode`` (``exactforge.reduce.sum(x, 0, mode=mode)``)."""
    return _SUM0(x, mode)


def rowsum(x: torch.Tensor) -> torch.Tensor:
    """(R, D) -> (R,): each row summed in index order (the fixed mode's chain)."""
    return _ROWSUM(x)
