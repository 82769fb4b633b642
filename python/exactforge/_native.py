"""Loads the private native modules: `_core` always, `_cuda` when it was built."""
from __future__ import annotations

from typing import Any, Optional

import os

# OpenMP threads that spin while they wait steal the other core on a busy machine: verifying a
# trace with 2 threads took 1.9x as long as with 1 while another process kept one core busy
# (benchmarks/RESULTS.md, "Threads on a busy machine"); waiting passively, 2 threads cost the
# same as 1 there and 3% more than spinning on an idle machine. libgomp reads the policy once,
# when it is loaded (here, with _core), so it is set for that moment only and restored: torch's
# own OpenMP runtime, loaded apart, keeps whatever the user chose. A user's OMP_WAIT_POLICY wins.
_set_policy = "OMP_WAIT_POLICY" not in os.environ
if _set_policy:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
try:
    from . import _core  # noqa: F401  (re-exported for the public modules)
finally:
    if _set_policy:
        del os.environ["OMP_WAIT_POLICY"]

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
