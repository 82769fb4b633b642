"""Which layers run reproducibly, and ``reproducible(module)`` which switches them over.

Like opacus's grad samplers: one small file per layer type registers how that type runs
(``@register_layer(nn.Linear)``); ``reproducible`` looks every submodule up and refuses a model
with an unknown one, naming it, before anything runs. The user's parameters, buffers and
state_dict stay as they are: only each supported module's ``forward`` is replaced, on that
instance.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Dict, List, Optional, Type

import torch
from torch import nn

from .update import ARITHMETIC, ARITHMETICS

__all__ = [
    "MODES",
    "UnsupportedLayerError",
    "register_layer",
    "supported_layers",
    "reproducible",
    "mode_of",
    "arithmetic_of",
    "shared_batch_of",
]

MODES = ("exact", "fixed")

# type -> make_forward(module, mode) returning the new forward (a function of (self, *inputs))
_LAYERS: Dict[Type[nn.Module], Callable] = {}
# containers: modules whose forward only calls their children (their own forward is kept)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class UnsupportedLayerError(ValueError):
    """A module of the model has no reproducible implementation."""


def register_layer(*types_: Type[nn.Module], owns_children: bool = False):
    """Class decorator-like registration: ``@register_layer(nn.Linear)`` on a function
    ``make_forward(module, mode) -> forward(self, *inputs)``. ``owns_children=True``: the new
    forward computes with the submodules' parameters itself (nn.MultiheadAttention and its
    out_proj), so the submodules are neither looked up nor replaced."""

    def deco(fn: Callable) -> Callable:
        fn.owns_children = owns_children  # type: ignore[attr-defined]
        for t in types_:
            _LAYERS[t] = fn
        return fn

    return deco


def supported_layers() -> List[str]:
    return sorted(t.__name__ for t in _LAYERS)


def _lookup(module: nn.Module):
    for t in type(module).__mro__:
        if t in _LAYERS and (t is type(module) or getattr(_LAYERS[t], "subclasses", False)):
            return _LAYERS[t]
    return None


def reproducible(module: nn.Module, mode: Any = "exact", arithmetic: str = ARITHMETIC) -> nn.Module:
    """The same module, with every supported layer running through exactforge's reproducible
    kernels in forward and backward; returns ``module``.

    ``mode="exact"``: every reduction over the batch (weight and bias gradients, the statistics
    a layer sums over examples) is order-independent, so gradients are bitwise the same for any
    batch order and thread count. Products along the feature axes of one example run in a fixed
    order. ``mode="fixed"``: batch reductions in the batch's own order (thread-invariant, not
    batch-order-invariant). ``mode=exactforge.distributed.SharedBatch(group)``: the exact mode
    over a global batch split among the processes of a torch.distributed group (each process
    runs the model on its examples and gets the one-process gradients bit for bit).

    A submodule of a type without a reproducible implementation raises UnsupportedLayerError
    naming it (its path in the model and its type); containers (Sequential, ModuleList,
    ModuleDict) and modules whose only job is to call their children are walked into. A custom
    module's own forward code runs as written: the guarantee covers the layers, so keep
    arithmetic that mixes examples out of custom forwards.

    ``arithmetic``: how the elementwise steps that torch would run through MKL or its ISA build
    are rounded: ``"portable-1"`` (default: correctly rounded square roots, the same bits on
    every CPU) or ``"torch"`` (torch's own, as traces recorded before exactforge named an
    arithmetic; machine-bound). A recorder names it in the trace, and its optimizer steps
    through the same arithmetic (``exactforge.nn.reproducible_optimizer``)."""
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic: expected one of {ARITHMETICS}, got {arithmetic!r}")
    if isinstance(mode, str):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    elif not all(callable(getattr(mode, f, None)) for f in ("matmul", "sum", "rows")):
        raise TypeError(
            f"mode: expected one of {MODES} or a shared batch (exactforge.distributed.SharedBatch), got {mode!r}"
        )
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t.device.type != "cpu":
            # The layers call the CPU core (im2col, exp, the loss) between the reduction
            # kernels; a CUDA twin with the same bits needs its own col2im order and loss and
            # a device to test them on, which this build has not had.
            raise ValueError(
                f"module: {name} is on {t.device}; exactforge.nn's reproducible layers run on CPU "
                "tensors (move the model with .cpu())"
            )
    plan = []
    owned: List[str] = []  # layers that compute with their children's parameters themselves
    for name, m in module.named_modules():
        if any(name.startswith(o + ".") if o else name for o in owned):  # "" is the root: all below it
            continue
        make = _lookup(m)
        if make is not None:
            plan.append((m, make))
            if getattr(make, "owns_children", False):
                owned.append(name)
            continue
        if isinstance(m, _CONTAINERS):
            continue
        own = [p for p, _ in m.named_parameters(recurse=False)] + [b for b, _ in m.named_buffers(recurse=False)]
        if own or not any(True for _ in m.children()):
            raise UnsupportedLayerError(
                f"module: {name or 'the model'} ({type(m).__name__}) has no reproducible implementation; "
                f"supported layers: {', '.join(supported_layers())}"
            )
    for m, make in plan:
        m.forward = types.MethodType(make(m, mode), m)  # type: ignore[method-assign]
        setattr(m, "_exactforge_mode", mode)
        setattr(m, "_exactforge_arithmetic", arithmetic)
        if isinstance(m, nn.Dropout):
            setattr(m, "_exactforge_keyed", True)
    return module


def owned(out: Any) -> Any:
    """A layer's output that in-place operations may modify (``nn.ReLU(inplace=True)``,
    ``out += identity`` in torchvision's ResNets): a tensor a custom autograd Function returned
    as a view of one it made inside is refused by autograd when modified in place, so such a
    view is copied (same values; the copy's gradient passes through unchanged)."""
    if torch.compiler.is_compiling():
        # whether it is a view is not traceable; the layers that use this return no view made
        # inside their Function (a test modifies each in place under torch.compile)
        return out
    return out.clone() if getattr(out, "_base", None) is not None else out


def _layer_modes(module: nn.Module) -> List[Any]:
    """The modes ``reproducible`` gave the module's layers, one per layer."""
    return [m._exactforge_mode for m in module.modules() if getattr(m, "_exactforge_mode", None) is not None]


def mode_of(module: nn.Module) -> Optional[str]:
    """The mode ``reproducible`` gave the module's layers (a shared batch's: "exact"), or None if
    it was not made reproducible; ValueError if its layers were made reproducible with different
    modes."""
    # a shared batch reports the mode whose bits it gives ("exact")
    modes = {getattr(mode, "name", mode) for mode in _layer_modes(module)}
    if len(modes) > 1:
        raise ValueError(
            f"model: its layers were made reproducible with different modes {sorted(map(str, modes))}; use one"
        )
    return str(modes.pop()) if modes else None


def arithmetic_of(module: nn.Module) -> Optional[str]:
    """The arithmetic ``reproducible`` gave the module's layers, or None if it was not made
    reproducible; ValueError if its layers were given different ones."""
    found = {
        str(getattr(m, "_exactforge_arithmetic"))
        for m in module.modules()
        if getattr(m, "_exactforge_mode", None) is not None
    }
    if len(found) > 1:
        raise ValueError(
            f"model: its layers were made reproducible with different arithmetics {sorted(found)}; use one"
        )
    return found.pop() if found else None


def shared_batch_of(module: nn.Module) -> Any:
    """The shared batch (exactforge.distributed.SharedBatch) the module's layers reduce over, or
    None for layers on one process."""
    return next((mode for mode in _layer_modes(module) if not isinstance(mode, str)), None)
