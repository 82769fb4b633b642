"""Loads the private native modules: `_core` always, `_cuda` when it was built."""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Optional

# How exactforge's OpenMP threads wait, set for the moment libgomp is loaded (with _core) and
# then restored, so torch's own OpenMP runtime, loaded apart, keeps whatever the user chose; a
# user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins. Threads that spin without bound steal the other
# core on a busy machine; threads that sleep at once (OMP_WAIT_POLICY=PASSIVE) pay a futex
# wake-up at every barrier, which costs small products more than their arithmetic. A bounded spin
# (GOMP_SPINCOUNT) keeps the wake-ups out of short barriers and still yields the core when the
# other thread is not coming (the measurements: docs/benchmarks/threads.md).
_SPINCOUNT = "1000"
_set_policy = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
if _set_policy:
    os.environ["GOMP_SPINCOUNT"] = _SPINCOUNT
try:
    import exactforge._core as _core  # noqa: F401  (re-exported for the public modules)
finally:
    if _set_policy:
        del os.environ["GOMP_SPINCOUNT"]

_cuda: Optional[Any]
_cuda_import_error: Optional[str] = None
if importlib.util.find_spec("exactforge._cuda") is None:  # built only with EXACTFORGE_CUDA=ON at install time
    _cuda = None
    _cuda_import_error = (
        "built without CUDA (no exactforge._cuda module: it is built only with EXACTFORGE_CUDA=ON at install time)"
    )
else:  # pragma: no cover - depends on the build
    try:
        import exactforge._cuda as _cuda  # type: ignore[no-redef]
    except ImportError as exc:  # built, but its CUDA runtime or driver does not load
        _cuda = None
        _cuda_import_error = str(exc)

__all__ = ["_core", "_cuda", "_cuda_import_error", "require_cuda"]


def require_cuda(argument: str) -> Any:
    """Returns the CUDA module or raises the one clear error for a CUDA array without it."""
    if _cuda is None:
        raise RuntimeError(
            f"{argument}: a CUDA array was given but exactforge was built without CUDA "
            "(exactforge.compile_options()['cuda'] is False). Move it to the CPU "
            "(tensor.cpu() / cupy.asnumpy(array)) or reinstall with the CUDA module: "
            "EXACTFORGE_CUDA=ON pip install . (needs nvcc and the CUDA toolkit)."
        )
    return _cuda
