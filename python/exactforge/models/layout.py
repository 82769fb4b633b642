"""The one converter between parameter layouts.

Three layouts meet in exactforge:
- a native parameter dict: ``W1, b1, W2, ...`` with ``W_i`` of shape (fan_in, fan_out);
- a torch module's parameters, in ``module.parameters()`` order (``nn.Linear.weight`` is
  ``W_i`` transposed);
- a flat vector of those torch parameters, the layout of the attacks and the studies.

Every conversion is a copy of the same values: no arithmetic, so no bits change."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional

import numpy as np

from .native import ModelSpec, Params, check_params

__all__ = [
    "flat_of",
    "load_flat",
    "native_to_flat",
    "flat_to_native",
    "native_to_torch_params",
    "torch_params_to_native",
]


def flat_of(params: Iterable[Any], dtype: Optional[str] = "float32") -> np.ndarray:
    """The torch parameters (tensors or arrays) as one flat host vector, in iteration order."""
    parts = [np.asarray(p.detach().cpu().numpy() if hasattr(p, "detach") else p).ravel() for p in params]
    out = np.concatenate(parts)
    return out.astype(dtype) if dtype is not None else out


def load_flat(params: Iterable[Any], flat: np.ndarray) -> None:
    """Copies consecutive pieces of ``flat`` into the torch parameters, in iteration order."""
    import torch

    pos = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(torch.from_numpy(np.ascontiguousarray(flat[pos : pos + n]).reshape(tuple(p.shape))))
            pos += n


def native_to_torch_params(spec: ModelSpec, params: Dict[str, np.ndarray]) -> List[np.ndarray]:
    """A native dict as the arrays of the equivalent torch module, in its parameter order."""
    out: List[np.ndarray] = []
    for i in range(1, spec.num_layers + 1):
        out.append(np.ascontiguousarray(params[f"W{i}"].T))
        if spec.bias:
            out.append(np.asarray(params[f"b{i}"]))
    return out


def torch_params_to_native(spec: ModelSpec, arrays: List[np.ndarray], name: str = "params") -> Params:
    """The inverse of :func:`native_to_torch_params` (copies), checked against ``spec``."""
    return check_params(spec, _native_dict(spec, arrays), name)


def native_to_flat(spec: ModelSpec, params: Dict[str, np.ndarray]) -> np.ndarray:
    """A native dict as the flat float32 vector of the torch module's parameters."""
    return np.concatenate([a.ravel() for a in native_to_torch_params(spec, params)]).astype(np.float32)


def flat_to_native(spec: ModelSpec, flat: np.ndarray) -> Params:
    """A flat vector in torch order ((weight, bias) per layer, weight = W_i^T) as native params."""
    arrays, pos = [], 0
    for i in range(1, spec.num_layers + 1):
        d0, d1 = spec.sizes[i - 1], spec.sizes[i]
        arrays.append(flat[pos : pos + d0 * d1].reshape(d1, d0))
        pos += d0 * d1
        if spec.bias:
            arrays.append(flat[pos : pos + d1])
            pos += d1
    return _native_dict(spec, arrays)


def _native_dict(spec: ModelSpec, arrays: List[np.ndarray]) -> Params:
    """Torch-order arrays ((weight, bias) per layer) as a native dict of contiguous copies."""
    out: Params = OrderedDict()
    k = 0
    for i in range(1, spec.num_layers + 1):
        out[f"W{i}"] = np.ascontiguousarray(np.asarray(arrays[k]).T)
        k += 1
        if spec.bias:
            out[f"b{i}"] = np.array(arrays[k], copy=True)
            k += 1
    return out
