"""The native models as ``torch.nn`` modules with the same parameter layout, and conversion
both ways (``nn.Linear.weight`` is ``W_i`` transposed)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict

import numpy as np
import torch
from torch import nn

from .models import ModelSpec, Params, check_params

__all__ = ["TorchFCN", "to_torch", "from_torch"]


class TorchFCN(nn.Module):
    """Linear -> ReLU -> ... -> Linear (logits); logistic regression when there is no hidden layer."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        dt = getattr(torch, spec.dtype)
        self.layers = nn.ModuleList(nn.Linear(d0, d1, bias=spec.bias, dtype=dt)
                                    for d0, d1 in zip(spec.sizes[:-1], spec.sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def to_torch(spec: ModelSpec, params: Dict[str, np.ndarray], module: "TorchFCN | None" = None) -> TorchFCN:
    """A TorchFCN holding ``params`` (copied)."""
    params = check_params(spec, params)
    module = module if module is not None else TorchFCN(spec)
    with torch.no_grad():
        for i, layer in enumerate(module.layers, start=1):
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(params[f"W{i}"].T)))
            if spec.bias:
                layer.bias.copy_(torch.from_numpy(params[f"b{i}"]))
    return module


def from_torch(spec: ModelSpec, module: nn.Module) -> Params:
    """The parameters of a TorchFCN in exactforge's layout."""
    out: Params = OrderedDict()
    layers = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if len(layers) != spec.num_layers:
        raise ValueError(f"module: expected {spec.num_layers} Linear layers, found {len(layers)}")
    for i, layer in enumerate(layers, start=1):
        out[f"W{i}"] = np.ascontiguousarray(layer.weight.detach().cpu().numpy().T)
        if spec.bias:
            out[f"b{i}"] = layer.bias.detach().cpu().numpy().copy()
    return check_params(spec, out, "module")
