"""Array interchange: NumPy arrays and torch CPU tensors cross into C++ as NumPy buffers;
CUDA arrays (torch, CuPy) as raw device pointers. Only this module knows the array libraries:
one :class:`Adapter` each (to host, from host, empty, device pointer, stream)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, Iterator, Optional, Tuple

import numpy as np

__all__ = ["Adapter", "ADAPTERS", "ArrayKind", "kind_of", "to_numpy", "from_numpy", "dtype_name"]

_FLOAT_OK = ("float32", "float64")
_WIDENED = ("float16", "bfloat16")


class Adapter:
    """What exactforge needs of one array library: host buffers for the CPU core, contiguous
    device arrays and raw pointers for the CUDA module, and the few array operations the
    reductions apply before either. One instance per library; nothing else in exactforge
    imports torch or CuPy to handle a caller's arrays."""

    name = "numpy"

    def to_host(self, x: Any, dtype: str) -> np.ndarray:
        """A C-contiguous host view or copy of a CPU array in ``dtype``."""
        return np.ascontiguousarray(x, dtype=dtype)

    def from_host(self, out: np.ndarray, dtype: str) -> Any:
        """``out`` as this library's array in ``dtype`` (float16/bfloat16 rounded once)."""
        return out if out.dtype.name == dtype else out.astype(dtype)

    def host_copy(self, x: Any) -> np.ndarray:
        """A host copy of any array of this library (bfloat16 widened: NumPy has none)."""
        return np.asarray(x)

    def moveaxis_reshape(self, x: Any, axis: int, k: int, n: int) -> Any:
        """``x`` with ``axis`` first, as a k x n matrix (a view where the library can)."""
        return np.moveaxis(x, axis, 0).reshape(k, n)

    # -- CUDA arrays: torch and CuPy only ----------------------------------------------------
    def contiguous(self, x: Any, dtype: str) -> Any:
        raise TypeError("a NumPy array lives on the host")

    def empty(self, shape: Tuple[int, ...], dtype: str, device: Optional[int]) -> Any:
        raise TypeError("a NumPy array lives on the host")

    def device_pointer(self, x: Any) -> int:
        raise TypeError("a NumPy array lives on the host")

    def cast(self, x: Any, dtype: str) -> Any:
        return x if dtype_name(x) == dtype else x.astype(dtype)

    def stream(self, device: Optional[int]) -> ContextManager[int]:
        """Makes ``device`` current and yields the library's current CUDA stream handle."""
        raise TypeError("a NumPy array lives on the host")


class _TorchAdapter(Adapter):
    name = "torch"

    def to_host(self, x: Any, dtype: str) -> np.ndarray:
        t = x.detach()
        if dtype_name(t) != dtype:
            t = t.to(getattr(_torch(), dtype))
        return np.ascontiguousarray(t.numpy())

    def from_host(self, out: np.ndarray, dtype: str) -> Any:
        torch = _torch()
        t = torch.from_numpy(out)
        return t if dtype_name(t) == dtype else t.to(getattr(torch, dtype))

    def host_copy(self, x: Any) -> np.ndarray:
        t = x.detach().cpu()
        if dtype_name(t) == "bfloat16":
            t = t.float()
        return t.numpy()

    def moveaxis_reshape(self, x: Any, axis: int, k: int, n: int) -> Any:
        return x.movedim(axis, 0).reshape(k, n)

    def contiguous(self, x: Any, dtype: str) -> Any:
        x = x.detach()
        if dtype_name(x) != dtype:
            x = x.to(getattr(_torch(), dtype))
        return x.contiguous()

    def empty(self, shape: Tuple[int, ...], dtype: str, device: Optional[int]) -> Any:
        torch = _torch()
        return torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=f"cuda:{device}")

    def device_pointer(self, x: Any) -> int:
        return int(x.data_ptr())

    def cast(self, x: Any, dtype: str) -> Any:
        return x if dtype_name(x) == dtype else x.to(getattr(_torch(), dtype))

    @contextmanager
    def stream(self, device: Optional[int]) -> Iterator[int]:
        torch = _torch()
        with torch.cuda.device(device):
            yield int(torch.cuda.current_stream().cuda_stream)


class _CupyAdapter(Adapter):
    name = "cupy"

    def host_copy(self, x: Any) -> np.ndarray:
        return x.get()

    def moveaxis_reshape(self, x: Any, axis: int, k: int, n: int) -> Any:
        import cupy

        return cupy.moveaxis(x, axis, 0).reshape(k, n)

    def contiguous(self, x: Any, dtype: str) -> Any:
        import cupy

        return cupy.ascontiguousarray(x, dtype=dtype)

    def empty(self, shape: Tuple[int, ...], dtype: str, device: Optional[int]) -> Any:
        import cupy

        with cupy.cuda.Device(device):
            return cupy.empty(tuple(shape), dtype=dtype)

    def device_pointer(self, x: Any) -> int:
        return int(x.data.ptr)

    @contextmanager
    def stream(self, device: Optional[int]) -> Iterator[int]:
        import cupy

        with cupy.cuda.Device(device):
            yield int(cupy.cuda.get_current_stream().ptr)


ADAPTERS: Dict[str, Adapter] = {"numpy": Adapter(), "torch": _TorchAdapter(), "cupy": _CupyAdapter()}


@dataclass(frozen=True)
class ArrayKind:
    """Where an array lives and which library owns it."""

    framework: str  # "numpy", "torch" or "cupy"
    cuda: bool
    device: Optional[int] = None

    @property
    def adapter(self) -> Adapter:
        return ADAPTERS[self.framework]


def _torch() -> Any:
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
    return s[len("torch.") :] if s.startswith("torch.") else np.dtype(dt).name


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
    return kind.adapter.to_host(x, dtype)


def from_numpy(out: np.ndarray, kind: ArrayKind, dtype: str) -> Any:
    """Returns `out` as the caller's kind and dtype (float16/bfloat16 rounded once from float32)."""
    return kind.adapter.from_host(out, dtype)


def host_copy(x: Any, kind: ArrayKind) -> np.ndarray:
    """A host copy of any supported array (used for the rare tie-break of equal keys)."""
    return kind.adapter.host_copy(x)


def shape_of(x: Any) -> Tuple[int, ...]:
    return tuple(int(s) for s in x.shape)
