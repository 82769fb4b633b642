"""Array interchange: NumPy arrays and torch CPU tensors cross into C++ as NumPy buffers;
CUDA arrays (torch, CuPy) as raw device pointers. Only this module knows the frameworks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["ArrayKind", "kind_of", "to_numpy", "from_numpy", "dtype_name"]

_FLOAT_OK = ("float32", "float64")
_WIDENED = ("float16", "bfloat16")


@dataclass(frozen=True)
class ArrayKind:
    """Where an array lives and which library owns it."""

    framework: str  # "numpy", "torch" or "cupy"
    cuda: bool
    device: Optional[int] = None


def _torch():
    import torch  # imported lazily: exactforge.reduce works on NumPy alone

    return torch


def kind_of(x: Any, name: str) -> ArrayKind:
    if isinstance(x, np.ndarray):
        return ArrayKind("numpy", False)
    mod = type(x).__module__
    if mod.startswith("torch"):
        torch = _torch()
        if isinstance(x, torch.Tensor):
            if x.is_cuda:
                return ArrayKind("torch", True, x.device.index)
            if x.device.type != "cpu":
                raise TypeError(f"{name}: torch tensors on device '{x.device}' are not supported; use CPU or CUDA")
            return ArrayKind("torch", False)
    if mod.startswith("cupy") and hasattr(x, "__cuda_array_interface__"):
        return ArrayKind("cupy", True, int(x.device.id))
    raise TypeError(
        f"{name}: expected a NumPy array, a torch tensor or a CuPy array, got {type(x).__name__}; "
        f"wrap it with numpy.asarray({name}, dtype=numpy.float32)"
    )


_NAMES: dict = {np.dtype(n): n for n in ("float16", "float32", "float64")}


def dtype_name(x: Any) -> str:
    """'float32', 'bfloat16', ... for NumPy, torch and CuPy arrays alike."""
    dt = x.dtype
    name = _NAMES.get(dt)  # hot path: NumPy's dtype.name is slow
    if name is not None:
        return name
    s = str(dt)
    return s[len("torch."):] if s.startswith("torch.") else np.dtype(dt).name


def check_dtype(x: Any, name: str) -> str:
    d = dtype_name(x)
    if d in _FLOAT_OK or d in _WIDENED:
        return d
    raise TypeError(
        f"{name}: dtype {d} is not supported; exactforge reduces float32 and float64 "
        f"(float16/bfloat16 are accumulated in float32). Cast it first, e.g. {name}.astype(numpy.float32) "
        f"or {name}.float()"
    )


def compute_dtype(d: str) -> str:
    return "float32" if d in _WIDENED else d


def to_numpy(x: Any, kind: ArrayKind, dtype: str) -> np.ndarray:
    """A C-contiguous NumPy view or copy of a CPU array in the compute dtype."""
    if kind.framework == "torch":
        t = x.detach()
        if dtype_name(t) != dtype:
            t = t.to(getattr(_torch(), dtype))
        return np.ascontiguousarray(t.numpy())
    return np.ascontiguousarray(x, dtype=dtype)


def from_numpy(out: np.ndarray, kind: ArrayKind, dtype: str) -> Any:
    """Returns `out` as the caller's kind and dtype (float16/bfloat16 rounded once from float32)."""
    if kind.framework == "torch":
        torch = _torch()
        t = torch.from_numpy(out)
        return t if dtype_name(t) == dtype else t.to(getattr(torch, dtype))
    return out if out.dtype.name == dtype else out.astype(dtype)


def host_copy(x: Any, kind: ArrayKind) -> np.ndarray:
    """A host copy of any supported array (used for the rare tie-break of equal keys)."""
    if kind.framework == "torch":
        t = x.detach().cpu()
        if dtype_name(t) == "bfloat16":
            t = t.float()
        return t.numpy()
    if kind.framework == "cupy":
        return x.get()
    return np.asarray(x)


def shape_of(x: Any) -> Tuple[int, ...]:
    return tuple(int(s) for s in x.shape)
