"""Thread counts for a block of work: torch's intra-op pool and exactforge's native kernels.

Setting torch's count rebuilds its pool, so it is set once around a whole run and only when it
changes; the previous counts come back however the block ends."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from .native import _core

__all__ = ["threads"]


@contextlib.contextmanager
def threads(n: Optional[int], *, torch: bool = True, native: bool = False) -> Iterator[None]:
    """Runs the block with ``n`` threads in torch (``torch=True``) and in exactforge's native
    kernels (``native=True``); ``n`` of None or 0 leaves both as they are. Bits never depend on
    it: only time does."""
    if not n:
        yield
        return
    n = int(n)
    restore = []
    if torch:
        import torch as _torch

        before = _torch.get_num_threads()
        if before != n:
            _torch.set_num_threads(n)
            restore.append(lambda: _torch.set_num_threads(before))
    if native:
        before_native = int(_core.get_num_threads())
        if before_native != n:
            _core.set_num_threads(n)
            restore.append(lambda: _core.set_num_threads(before_native))
    try:
        yield
    finally:
        for undo in reversed(restore):
            undo()
