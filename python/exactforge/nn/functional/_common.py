"""What every reproducible layer's functions share: the fixed-order product inside an example,
the batch reductions in a layer's mode (a string, or a mode object whose examples are split
among processes); the rest lives in exactforge.ops."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ... import ops

_NATIVE = (torch.float32, torch.float64)


def _fixed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ops.mm(a, b, "fixed")


def _batch(
    a, b: torch.Tensor, mode: Any, grad_of: Optional[torch.Tensor] = None, finish=None, a_transposed: bool = False
) -> torch.Tensor:
    """A reduction over examples: "exact" or "fixed", or a mode object whose examples are
    split among processes (exactforge.distributed.SharedBatch: its own exact product). ``a`` may
    be a function that makes it (a convolution's im2col), for a reduction that waits.
    ``grad_of`` names the parameter the product is the gradient of, and ``finish`` maps the
    product to its shape: a shared mode may then reduce it when the backward pass ends.
    ``a_transposed``: the product is ``a.T @ b``, read from ``a`` as it lies (a Linear's dy,
    whose transposed copy cost more than its fixed product on the Transformer's layers)."""
    if not isinstance(mode, str):
        return mode.matmul(a.t() if a_transposed else a, b, grad_of=grad_of, finish=finish)
    if not isinstance(a, torch.Tensor):
        a = a()
    out = ops.mm(a, b, mode, a_transposed)
    return finish(out) if finish is not None else out


def _bsum(x: torch.Tensor, mode: Any, grad_of: Optional[torch.Tensor] = None) -> torch.Tensor:
    if not isinstance(mode, str):
        return mode.sum(x.contiguous(), grad_of=grad_of)
    return ops.sum0(x, mode)


def _total(x: torch.Tensor, mode: Any) -> tuple:
    """A loss's sum over the batch of its per-example values (k x 1) and the batch's size: over
    every process's examples for a shared mode (one collective for both)."""
    if not isinstance(mode, str):
        return mode.total(x.contiguous())
    return _bsum(x, mode), len(x)


def _shared_param(t: Optional[torch.Tensor], mode: Any) -> Optional[torch.Tensor]:
    """The tensor a shared mode's reduction names as the one its gradient is of (kept only there:
    the string modes never defer)."""
    return None if isinstance(mode, str) else t


def _count(k: int, mode: Any) -> int:
    """How many terms a batch reduction of k local terms has: k, or their sum over processes."""
    return k if isinstance(mode, str) else mode.rows(k)


def _npdtype(t: torch.Tensor):
    return torch.empty(0, dtype=t.dtype).numpy().dtype


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64)
