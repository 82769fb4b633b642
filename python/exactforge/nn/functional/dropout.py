"""Dropout keyed to (seed, step, layer, example).

torch draws a dropout mask from one RNG stream in batch order, so the mask an example gets
depends on where it sits in the batch and on everything drawn before. Here each element's
keep bit is a hash of (seed, step, layer, dataset index of the example, element): a pure
function a verifier recomputes from the trace, that follows the example under any batch order
and any thread count. splitmix64 is the mixer (a bijection of 64-bit words, so distinct keys
never collide before the final 53-bit cut)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._common import _npdtype

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _word(v: int) -> np.ndarray:
    return np.asarray([int(v) % (1 << 64)], dtype=np.uint64)


def keep_mask(seed: int, step: int, layer: int, examples: np.ndarray, n: int, p: float) -> np.ndarray:
    """(len(examples), n) booleans: element j of example i is kept. P(kept) = 1 - p to 2^-53."""
    base = _splitmix(_splitmix(_splitmix(_word(seed)) ^ _word(step)) ^ _word(layer))
    ex = _splitmix(base ^ np.asarray(examples, dtype=np.int64).astype(np.uint64))
    h = _splitmix(ex[:, None] ^ np.arange(n, dtype=np.uint64)[None, :])
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return u >= p


def dropout(x: torch.Tensor, p: float, *, seed: int, step: int, layer: int, examples: Any) -> torch.Tensor:
    """Inverted dropout (kept elements scaled by 1/(1-p), as torch) with the mask keyed to
    ``(seed, step, layer, examples[i])`` for example i (the first axis of ``x``)."""
    ex = np.asarray(examples)
    if ex.ndim != 1 or len(ex) != x.shape[0] or not np.issubdtype(ex.dtype, np.integer):
        raise ValueError(f"examples: expected one integer key per example ({x.shape[0]}), got shape {ex.shape}")
    if p >= 1:
        return x * 0
    return x * _scaled_mask(seed, step, layer, ex, tuple(x.shape), float(p), x.dtype)


# NumPy's uint64 hashing is not something torch.compile can trace (its NumPy emulation has no
# uint64 arange): the mask is made outside the graph, a break there instead of a failure
@torch.compiler.disable
def _scaled_mask(seed: int, step: int, layer: int, ex: np.ndarray, shape: tuple, p: float, dtype) -> torch.Tensor:
    n = int(np.prod(shape[1:]))
    keep = keep_mask(seed, step, layer, ex, n, p)
    scale = np.float64(1.0) / (1.0 - p)
    return torch.from_numpy((keep * scale).astype(_npdtype(torch.empty(0, dtype=dtype)))).reshape(shape)
