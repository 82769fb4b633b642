"""Dropout whose masks a verifier can recompute: keyed to (seed, step, layer, example).

``dropout_keys(model, seed=, step=, examples=)`` tells every keyed Dropout of the model which
step is running and which dataset examples the batch holds (in the batch's order);
TraceRecorder.begin does it when recording and the verifier when replaying. In training mode
with p > 0 a keyed Dropout refuses to run without keys, so no step can silently draw from
torch's RNG. The keys live on the module instances (no global state) until the next call.
"""

from __future__ import annotations

import types
from typing import Any, List

import numpy as np
from torch import nn

from .._registry import register_layer
from ..functional import dropout

__all__ = ["dropout_keys", "keyed_dropout", "keyed_layers"]


@register_layer(nn.Dropout)
def make_dropout(module: nn.Dropout, mode: str):
    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keys = getattr(self, "_exactforge_keys", None)
        if keys is None:
            raise RuntimeError(
                "Dropout: in training mode its masks are keyed to the step and the batch's examples; "
                "call exactforge.nn.dropout_keys(model, seed=..., step=..., examples=batch_indices) "
                "(TraceRecorder.begin(batch_indices) does) before the forward pass"
            )
        seed, step, layer, examples = keys
        return dropout(x, self.p, seed=seed, step=step, layer=layer, examples=examples)

    return forward


def keyed_layers(model: nn.Module) -> List[nn.Module]:
    """The model's keyed Dropout modules, in the order that numbers them (named_modules)."""
    return [m for m in model.modules() if getattr(m, "_exactforge_keyed", False)]


def keyed_dropout(model: nn.Module) -> nn.Module:
    """Makes every nn.Dropout of ``model`` keyed (as ``reproducible`` does) without touching its
    other layers; returns ``model``. Other dropout types (Dropout2d, AlphaDropout, ...) in
    training mode with p > 0 are refused: their masks are not keyed."""
    for name, m in model.named_modules():
        if type(m) is nn.Dropout:
            if not getattr(m, "_exactforge_keyed", False):
                m.forward = types.MethodType(make_dropout(m, "fixed"), m)  # type: ignore[method-assign]
                setattr(m, "_exactforge_keyed", True)
        elif isinstance(m, nn.MultiheadAttention) and m.dropout > 0 and m.training:
            if not getattr(m, "_exactforge_keyed", False):
                raise ValueError(
                    f"model: {name} (MultiheadAttention, dropout={m.dropout}) draws its attention-weight masks "
                    "from torch's RNG, which a trace does not hold; make the model exactforge.nn.reproducible "
                    "(its masks are keyed), set dropout=0 or call .eval() on it"
                )
        elif isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 and m.training:
            raise ValueError(
                f"model: {name} ({type(m).__name__}, p={m.p}) draws its masks from torch's RNG, which "
                "a trace does not hold; use nn.Dropout, set p=0 or call .eval() on it"
            )
    return model


def dropout_keys(model: nn.Module, *, seed: int, step: int, examples: Any) -> None:
    """Keys the masks of the next forward pass: ``examples`` are the batch's dataset indices in
    the order the batch is fed (one per example), ``step`` the step's index in the trace."""
    ex = np.array(examples.detach().cpu() if hasattr(examples, "detach") else examples)
    if ex.ndim != 1 or not np.issubdtype(ex.dtype, np.integer):
        raise ValueError("examples: expected a 1-D sequence of integer dataset indices")
    for k, name in ((seed, "seed"), (step, "step")):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"{name}: expected an integer, got {k!r}")
    for layer, m in enumerate(keyed_layers(model)):
        setattr(m, "_exactforge_keys", (int(seed), int(step), layer, ex))
