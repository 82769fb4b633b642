"""The one converter between parameter layouts.

Four layouts meet in exactforge:
- a native parameter dict: ``W1, b1, W2, ...`` with ``W_i`` of shape (fan_in, fan_out);
- a flat float64 vector of that dict in its own order (:func:`flatten`), the layout of the
  native attacks' distances and interpolations;
- a torch module's parameters, in ``module.parameters()`` order (``nn.Linear.weight`` is
  ``W_i`` transposed);
- a flat vector of those torch parameters, the layout of the attacks and the studies.

Every conversion is a copy of the same values: no arithmetic, so no bits change."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .native import ModelSpec, Params, check_params

__all__ = [
    "flat_of",
    "flatten",
    "unflatten",
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

    params = list(params)
    with torch.no_grad():
        for p, piece in zip(params, _pieces(flat, [tuple(p.shape) for p in params])):
            p.copy_(torch.from_numpy(np.ascontiguousarray(piece)))


def flatten(spec: ModelSpec, params: Params) -> np.ndarray:
    """All parameters concatenated in the spec's order, as float64 (for distances)."""
    return flat_of((params[k] for k in spec.shapes()), dtype="float64")


def unflatten(spec: ModelSpec, flat: np.ndarray) -> Params:
    """The inverse of :func:`flatten`: consecutive pieces of ``flat`` as native params of the spec's dtype."""
    shapes = spec.shapes()
    return OrderedDict(
        (k, np.asarray(piece, dtype=spec.dtype)) for k, piece in zip(shapes, _pieces(flat, shapes.values()))
    )


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
    return flat_of(native_to_torch_params(spec, params), dtype="float32")


def flat_to_native(spec: ModelSpec, flat: np.ndarray) -> Params:
    """A flat vector in torch order ((weight, bias) per layer, weight = W_i^T) as native params."""
    shapes: List[Tuple[int, ...]] = []
    for i in range(1, spec.num_layers + 1):
        d0, d1 = spec.sizes[i - 1], spec.sizes[i]
        shapes += [(d1, d0), (d1,)] if spec.bias else [(d1, d0)]
    return _native_dict(spec, list(_pieces(flat, shapes)))


def _pieces(flat: np.ndarray, shapes: Iterable[Sequence[int]]) -> Iterator[np.ndarray]:
    """Consecutive pieces of ``flat``, one per shape and reshaped to it (views, no copies): the
    one walk along a flat vector that every layout above shares."""
    flat = np.asarray(flat)
    pos = 0
    for shape in shapes:
        n = int(np.prod(shape))
        yield flat[pos : pos + n].reshape(tuple(shape))
        pos += n


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
