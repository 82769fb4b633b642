"""The native models as ``torch.nn`` modules with the same parameter layout, and conversion
both ways (``nn.Linear.weight`` is ``W_i`` transposed)."""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from torch import nn

from .layout import native_to_torch_params, torch_params_to_native
from .native import ModelSpec, Params, check_params

__all__ = ["TorchFCN", "to_torch", "from_torch"]


class TorchFCN(nn.Module):
    """Linear -> ReLU -> ... -> Linear (logits); logistic regression when there is no hidden layer."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        dt = getattr(torch, spec.dtype)
        self.layers = nn.ModuleList(
            nn.Linear(d0, d1, bias=spec.bias, dtype=dt) for d0, d1 in zip(spec.sizes[:-1], spec.sizes[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def _linear_params(module: nn.Module, bias: bool) -> list:
    """(weight, bias) of each Linear layer in order; biases only where the spec has them."""
    return [
        t for m in module.modules() if isinstance(m, nn.Linear) for t in ((m.weight, m.bias) if bias else (m.weight,))
    ]


def to_torch(spec: ModelSpec, params: Dict[str, np.ndarray], module: "TorchFCN | None" = None) -> TorchFCN:
    """A TorchFCN holding ``params`` (copied)."""
    params = check_params(spec, params)
    module = module if module is not None else TorchFCN(spec)
    with torch.no_grad():
        for p, a in zip(_linear_params(module, spec.bias), native_to_torch_params(spec, params)):
            p.copy_(torch.from_numpy(a))
    return module


def from_torch(spec: ModelSpec, module: nn.Module) -> Params:
    """The parameters of a TorchFCN in exactforge's layout."""
    layers = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if len(layers) != spec.num_layers:
        raise ValueError(f"module: expected {spec.num_layers} Linear layers, found {len(layers)}")
    return torch_params_to_native(spec, [p.detach().cpu().numpy() for p in _linear_params(module, spec.bias)], "module")
