"""Reproducible reductions over a batch axis: the foundation of exactforge.

Two modes, for float32 and float64 (float16/bfloat16 inputs are accumulated in float32 and
the result is rounded back once):

``"fixed"``
    Terms are reduced in ascending order of caller-given integer ``keys`` (e.g. the dataset
    indices of the examples; without keys, in the given order) as one sequential chain per
    output element, ``acc = acc + a*b`` with the product and the sum each rounded (no FMA),
    starting from +0. Equal keys are ordered by the bytes of their terms, so the result is
    bitwise the same for any permutation of (terms, keys), any thread count and CPU or CUDA.
    Its error is that of naive sequential accumulation in the input precision.

``"exact"``
    Order-independent: a symmetric function of the multiset of terms, no keys needed (keys
    are accepted and ignored). Integer slicing (the Ozaki scheme): each row of ``a`` and each
    column of ``b`` is scaled by a power of two from its largest magnitude, split into
    integer-valued float64 slices whose chunk sums are exact integers below 2^53, the slice
    products are summed exactly, recombined exactly and rounded once. See ``error_bound``.

NaN and Inf propagate reproducibly (an IEEE-style exact result: NaN if any product is NaN or
if +Inf and -Inf meet; every NaN is the canonical quiet NaN). Non-contiguous inputs are
copied. CUDA arrays (torch, CuPy) are reduced on their device when ``exactforge._cuda`` was
built, with the same bits as on the CPU.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from ._backend import device as _device
from ._backend.arrays import ArrayKind, check_dtype, compute_dtype, from_numpy, host_copy, kind_of, shape_of, to_numpy
from ._backend.native import _core

__all__ = ["matmul", "sum", "MODES", "error_bound", "exact_plan", "check_threads"]

MODES = ("fixed", "exact")

#: Longest reduced axis accepted by ``mode="exact"`` (the int64 accumulators' headroom).
EXACT_MATMUL_MAX_K: int = int(_core.EXACT_MATMUL_MAX_K)
EXACT_SUM_MAX_K: int = int(_core.EXACT_SUM_MAX_K)

KeysLike = Union[Sequence[int], np.ndarray, Any]

_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    return mode


def check_threads(threads: Any, name: str = "threads", allow_none: bool = True) -> Optional[int]:
    """None (when allowed), or a thread count in 1..MAX_THREADS: the one check every thread
    count passes (OpenMP ends the process, not with an exception, when it cannot start the
    threads asked for)."""
    if threads is None and allow_none:
        return None
    cap = int(_core.MAX_THREADS)
    if (
        threads is None
        or isinstance(threads, bool)
        or not isinstance(threads, (int, np.integer))
        or not 1 <= threads <= cap
    ):
        raise ValueError(
            f"{name}: expected a thread count in 1..{cap}{' or None' if allow_none else ''}, got {threads!r}"
        )
    return int(threads)


def _check_threads(threads: Optional[int]) -> int:
    """The kernels' argument: 0 means the default thread count."""
    return check_threads(threads) or 0


def _same_kind(ka: ArrayKind, kb: ArrayKind, names: str) -> None:
    if ka != kb:
        raise TypeError(
            f"{names}: both arrays must live in the same place ({ka.framework}"
            f"{' cuda:%s' % ka.device if ka.cuda else ' cpu'} vs {kb.framework}"
            f"{' cuda:%s' % kb.device if kb.cuda else ' cpu'}); convert one of them"
        )


def _keys_order(keys: Optional[KeysLike], k: int, term_bytes) -> Optional[np.ndarray]:
    """Permutation that sorts the terms by key; ties broken by the terms' bytes."""
    if keys is None:
        return None
    if hasattr(keys, "detach"):  # torch tensor
        keys = keys.detach().cpu().numpy()
    elif hasattr(keys, "get") and hasattr(keys, "__cuda_array_interface__"):  # CuPy
        keys = keys.get()
    kz = np.asarray(keys)
    if kz.ndim != 1 or kz.shape[0] != k:
        raise ValueError(
            f"keys: expected a 1-D sequence of {k} integers (one per term of the reduced axis), got shape {kz.shape}"
        )
    if kz.size and not np.issubdtype(kz.dtype, np.integer):
        raise TypeError(
            f"keys: expected integers (e.g. dataset indices), got dtype {kz.dtype}; "
            "convert with numpy.asarray(keys, dtype=numpy.int64)"
        )
    kz = kz.astype(np.int64, copy=False)
    order = np.argsort(kz, kind="stable")
    sk = kz[order]
    dup = np.flatnonzero(sk[1:] == sk[:-1])
    if dup.size:
        # Equal keys (a batch drawn with replacement): order their terms by content, so the
        # result depends only on the multiset of (key, term) pairs.
        start = 0
        while start < k:
            end = start + 1
            while end < k and sk[end] == sk[start]:
                end += 1
            if end - start > 1:
                run = order[start:end]
                order[start:end] = sorted(run.tolist(), key=term_bytes)
            start = end
    if np.array_equal(order, np.arange(k)):
        return None
    return order.astype(np.int64)


def matmul(
    a: Any, b: Any, *, mode: str = "exact", keys: Optional[KeysLike] = None, threads: Optional[int] = None
) -> Any:
    """``a @ b`` with the shared axis reduced reproducibly.

    Parameters
    ----------
    a, b:
        ``a`` is m x k, ``b`` is k x n: NumPy arrays, torch tensors (CPU or CUDA) or CuPy
        arrays of float32, float64, float16 or bfloat16, both of the same kind and dtype.
    mode:
        ``"exact"`` (order-independent, default) or ``"fixed"`` (ordered by ``keys``).
    keys:
        One integer per term of the k axis (e.g. the dataset indices of a batch's examples);
        ``"fixed"`` reduces in ascending key order. Ignored by ``"exact"``.
    threads:
        CPU threads for this call (default: ``exactforge.get_num_threads()``). Never changes bits.

    Returns
    -------
    The m x n product, of the same kind, device and dtype as ``a``.
    """
    if (
        keys is None
        and threads is None
        and type(a) is np.ndarray
        and type(b) is np.ndarray
        and a.ndim == 2
        and b.ndim == 2
        and a.dtype == b.dtype
        and a.dtype in _NATIVE
        and 0 < a.shape[1] == b.shape[0]
        and mode in MODES
        and (mode == "fixed" or a.shape[1] <= EXACT_MATMUL_MAX_K)
    ):
        # Hot path (one call per layer per step): inputs that need no conversion.
        return _core.matmul(np.ascontiguousarray(a), np.ascontiguousarray(b), mode, None, 0)
    _check_mode(mode)
    nt = _check_threads(threads)
    ka, kb = kind_of(a, "a"), kind_of(b, "b")
    _same_kind(ka, kb, "a, b")
    da, db = check_dtype(a, "a"), check_dtype(b, "b")
    if da != db:
        raise TypeError(f"a, b: dtypes differ ({da} vs {db}); cast one, e.g. b.astype(a.dtype)")
    k = _matmul_terms(shape_of(a), shape_of(b), mode)
    order = None
    if mode == "fixed" and keys is not None:
        ha: Dict[str, Any] = {}
        hb: Dict[str, Any] = {}

        def term_bytes(t: int) -> bytes:
            if not ha:
                ha["x"], hb["x"] = host_copy(a, ka), host_copy(b, kb)
            return ha["x"][:, t].tobytes() + hb["x"][t, :].tobytes()

        order = _keys_order(keys, k, term_bytes)
    elif keys is not None:
        _keys_order(keys, k, lambda t: b"")  # validate only: exact mode needs no order
    if ka.cuda:
        return _device.matmul(a, b, ka, da, mode, order)
    cdt = compute_dtype(da)
    out = _core.matmul(to_numpy(a, ka, cdt), to_numpy(b, kb, cdt), mode, order, nt)
    return from_numpy(out, ka, da)


def _matmul_terms(sa: Tuple[int, ...], sb: Tuple[int, ...], mode: str) -> int:
    """k, the terms of the reduced axis of an m x k by k x n product, once the shapes are checked."""
    if len(sa) != 2 or len(sb) != 2:
        raise ValueError(
            f"a, b: expected 2-D arrays (m x k and k x n), got shapes {sa} and {sb}; "
            "reshape them, or use exactforge.reduce.sum for one array"
        )
    if sa[1] != sb[0]:
        raise ValueError(
            f"a, b: the reduced axes differ: a is {sa[0]}x{sa[1]}, b is {sb[0]}x{sb[1]} "
            "(a's columns must match b's rows)"
        )
    k = sa[1]
    if k == 0:
        raise ValueError("a, b: the reduced axis is empty (k = 0); there is nothing to reduce")
    if mode == "exact" and k > EXACT_MATMUL_MAX_K:
        raise ValueError(
            f"a, b: mode='exact' reduces at most {EXACT_MATMUL_MAX_K} terms, got k = {k}; "
            "split the reduction or use mode='fixed'"
        )
    return k


def sum(
    x: Any, axis: int = 0, *, mode: str = "exact", keys: Optional[KeysLike] = None, threads: Optional[int] = None
) -> Any:
    """Reproducible sum of ``x`` along ``axis`` (any number of dimensions).

    ``keys`` labels the entries along ``axis`` (``"fixed"`` mode). Returns an array of the
    same kind and dtype with ``axis`` removed (0-d for a 1-D input).
    """
    _check_mode(mode)
    nt = _check_threads(threads)
    kx = kind_of(x, "x")
    dx = check_dtype(x, "x")
    shape = shape_of(x)
    if len(shape) == 0:
        raise ValueError("x: expected at least one dimension, got a 0-d array")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis: expected an integer in [-{len(shape)}, {len(shape) - 1}], got {axis!r}")
    axis = int(axis) % len(shape)
    k = shape[axis]
    if k == 0:
        raise ValueError(f"x: the reduced axis {axis} is empty; there is nothing to reduce")
    if mode == "exact" and k > EXACT_SUM_MAX_K:
        raise ValueError(
            f"x: mode='exact' sums at most {EXACT_SUM_MAX_K} terms, got {k}; split the reduction or use mode='fixed'"
        )
    rest = tuple(s for i, s in enumerate(shape) if i != axis)
    n = int(np.prod(rest, dtype=np.int64)) if rest else 1
    x2 = kx.adapter.moveaxis_reshape(x, axis, k, n)
    order = None
    if mode == "fixed" and keys is not None:
        hx: Dict[str, Any] = {}

        def term_bytes(t: int) -> bytes:
            if not hx:
                hx["x"] = host_copy(x2, kx)
            return hx["x"][t].tobytes()

        order = _keys_order(keys, k, term_bytes)
    elif keys is not None:
        _keys_order(keys, k, lambda t: b"")
    if kx.cuda:
        out = _device.sum_rows(x2, kx, dx, mode, order)
    else:
        cdt = compute_dtype(dx)
        out = from_numpy(_core.sum_rows(to_numpy(x2, kx, cdt), mode, order, nt), kx, dx)
    return out.reshape(rest)


def exact_plan(k: int, dtype: str = "float32") -> dict:
    """The slicing of ``mode="exact"`` for a reduction of k terms: slices per operand, bits
    per slice (w) and chunk length. Accuracy grows with w; w >= 21 always."""
    if dtype not in ("float32", "float64"):
        raise ValueError("dtype: expected 'float32' or 'float64'")
    if k < 1:
        raise ValueError("k: expected a positive integer")
    return dict(_core.exact_plan(int(k), dtype == "float64"))


def error_bound(a: Any, b: Any) -> np.ndarray:
    """Elementwise a-priori bound on |matmul(a, b, mode="exact") - (a @ b computed exactly)|,
    before the final rounding (which adds at most half an ulp of the result).

    With s slices of w bits (``exact_plan``), row scales 2^E_i > max|a_i.| and column scales
    2^F_j > max|b_.j|: rounding the last kept slice leaves at most 2^(E-s*w-1) of each a and
    2^(F-s*w-1) of each b, and the dropped slice pairs add less than 2^(E+F-s*w), so each
    term is off by less than 2^(E_i+F_j+1-s*w). The bound is relative to the row and column
    maxima, not to each term: see README "Exact mode".
    """
    a_np = np.asarray(a)
    dt = "float64" if a_np.dtype == np.float64 else "float32"
    a64 = a_np.astype(np.float64)
    b64 = np.asarray(b).astype(np.float64)
    k = a64.shape[1]
    plan = exact_plan(k, dt)
    s, w = plan["slices"], plan["width"]
    ea = np.frexp(np.max(np.abs(np.where(np.isfinite(a64), a64, 0.0)), axis=1))[1]
    fb = np.frexp(np.max(np.abs(np.where(np.isfinite(b64), b64, 0.0)), axis=0))[1]
    return k * np.ldexp(1.0, ea[:, None] + fb[None, :] + 1 - s * w)
