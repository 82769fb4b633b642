"""Loads the private native modules: `_core` always, `_cuda` when it was built."""
from __future__ import annotations

from typing import Any, Optional

from . import _core  # noqa: F401  (re-exported for the public modules)

_cuda: Optional[Any]
try:  # built only when nvcc worked at install time
    from . import _cuda  # type: ignore[attr-defined,no-redef]
except ImportError as exc:  # pragma: no cover - depends on the build
    _cuda = None
    _cuda_import_error: Optional[str] = str(exc)
else:
    _cuda_import_error = None

__all__ = ["_core", "_cuda", "_cuda_import_error", "require_cuda"]


def require_cuda(argument: str) -> Any:
    """Returns the CUDA module or raises the one clear error for a CUDA array without it."""
    if _cuda is None:
        raise RuntimeError(
            f"{argument}: a CUDA array was given but exactforge was built without CUDA "
            "(exactforge.compile_options()['cuda'] is False). Move it to the CPU "
            "(tensor.cpu() / cupy.asnumpy(array)) or reinstall with nvcc on PATH; set "
            "EXACTFORGE_CUDA=ON at install time to make a missing nvcc a build error."
        )
    return _cuda
