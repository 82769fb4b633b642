"""The optimizer update of a reproducible step, the same bits on every machine.

torch's optimizers compute their update with torch's elementwise kernels, whose bits follow the
ISA build (the vectorised builds fuse ``a + alpha * b`` into one FMA, the scalar build does
not) and the MKL branch (``sqrt`` is MKL's, not correctly rounded, and differs between CPU
vendors). A trace recorded on one machine would then be rejected on another at epsilon = 0.

``portable_step(optimizer)`` runs one step of torch's SGD (momentum, dampening, Nesterov,
weight decay, maximize), Adam and AdamW (amsgrad, maximize) and RMSprop (centered, momentum,
weight decay, maximize) through exactforge's native update (``src/core/optim.cpp``): one
written-down rounding per operation, a fused multiply-add where torch's vectorised kernels
fuse, a correctly rounded square root, and scalars (bias corrections, step sizes) from
correctly rounded double operations alone: no C library ``pow``, no vector width. It reads
and writes the optimizer's own state (``optimizer.state``, torch's keys and layout), so the
optimizer can be saved, loaded and stepped by torch afterwards.

``reproducible_optimizer(optimizer)`` makes the user's own ``optimizer.step()`` do that, with
the optimizer's step hooks, so a loop stays as written; the recorder installs it for a
reproducible model, and the verifier replays with it. The arithmetic is named in the trace
(``ARITHMETIC``); a trace without the name was recorded with torch's own kernels.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch

from .. import _core

__all__ = ["ARITHMETIC", "ARITHMETICS", "portable_step", "reproducible_optimizer", "PortableOptimizer", "pow_rn"]

ARITHMETIC = "portable-1"
# what a trace may name: exactforge's portable arithmetic, or torch's own kernels (machine-bound)
ARITHMETICS = (ARITHMETIC, "torch")

_KINDS = ("SGD", "Adam", "AdamW", "RMSprop")
_SPLIT = 134217729.0  # 2^27 + 1: Dekker's split of a double into two 26-bit halves


def _two_prod(a: float, b: float) -> tuple:
    """a * b as hi + lo exactly (Dekker), with plain double operations."""
    p = a * b
    t = _SPLIT * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLIT * b
    bh = t - (t - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _dd_mul(xh: float, xl: float, yh: float, yl: float) -> tuple:
    p, e = _two_prod(xh, yh)
    e += xh * yl + xl * yh
    s = p + e
    return s, e - (s - p)


def pow_rn(x: float, n: int) -> float:
    """x ** n for an integer n >= 0 in double-double arithmetic, then rounded: the nearest
    double (except within about 2^-100 relative of a rounding boundary), from IEEE additions and
    multiplications alone, so the same on every machine. (``x ** n`` calls the C library's pow,
    which is not correctly rounded everywhere.)"""
    if n < 0:
        raise ValueError(f"n: expected a non-negative power, got {n}")
    rh, rl, bh, bl = 1.0, 0.0, float(x), 0.0
    while n:
        if n & 1:
            rh, rl = _dd_mul(rh, rl, bh, bl)
        n >>= 1
        if n:
            bh, bl = _dd_mul(bh, bl, bh, bl)
    return rh + rl


def _kind(optimizer: Any) -> str:
    name = type(optimizer).__name__
    if name not in _KINDS or not type(optimizer).__module__.startswith("torch.optim"):
        raise ValueError(
            f"optimizer: {name} has no portable update; use torch.optim.SGD, Adam, AdamW or RMSprop "
            "(or record it machine-bound with arithmetic='torch')"
        )
    for g in optimizer.param_groups:
        for flag in ("fused", "capturable", "differentiable"):
            if g.get(flag):
                raise ValueError(f"optimizer: {flag}=True has no portable update; leave it off")
        if isinstance(g["lr"], torch.Tensor):
            raise ValueError("optimizer: a tensor learning rate cannot be replayed; use a float")
    return name


def _array(t: torch.Tensor, what: str) -> Any:
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"{what}: the portable update runs on CPU float32/float64 tensors, got {t.dtype} on {t.device}"
        )
    if t.is_sparse:
        raise ValueError(f"{what}: sparse gradients have no portable update")
    return t.detach().numpy()


class _InPlace:
    """A tensor's values as a C-contiguous array written back on exit (a view where it already
    is one, so the usual case copies nothing)."""

    def __init__(self, t: torch.Tensor, what: str) -> None:
        self.t = t.detach()
        self.c = self.t if self.t.is_contiguous() else self.t.contiguous()
        self.a = _array(self.c, what)

    def done(self) -> None:
        if self.c is not self.t:
            self.t.copy_(self.c)


def _zeros(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p, memory_format=torch.preserve_format)


def _step_tensor(state: Dict[str, Any]) -> int:
    """Counts the step in torch's own ``step`` tensor (float32, as torch keeps it) and returns it."""
    if state.get("step") is None:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
    if isinstance(state["step"], torch.Tensor):
        state["step"] += 1
    else:  # a state saved by an older torch keeps a number
        state["step"] = float(state["step"]) + 1
    return int(float(state["step"]))


def portable_step(optimizer: Any) -> None:
    """One step of ``optimizer`` (torch.optim SGD, Adam, AdamW or RMSprop) through the portable
    update, on every parameter with a gradient, in its parameter groups' current settings."""
    kind = _kind(optimizer)
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    _update(kind, optimizer.state[p], group, p, p.grad)


def _update(kind: str, state: Dict[str, Any], group: Dict[str, Any], p: torch.Tensor, grad: torch.Tensor) -> None:
    g = _array(grad if grad.is_contiguous() else grad.contiguous(), "grad")
    if grad.dtype != p.dtype or grad.shape != p.shape:
        raise ValueError("grad: the portable update needs a gradient of the parameter's dtype and shape")
    lr, wd, maximize = float(group["lr"]), float(group.get("weight_decay", 0.0)), bool(group.get("maximize", False))
    held: List[_InPlace] = [_InPlace(p, "parameter")]

    def buffer(key: str) -> Any:
        if key not in state or state[key] is None:
            state[key] = _zeros(p)
        held.append(_InPlace(state[key], f"optimizer state {key}"))
        return held[-1].a

    if kind == "SGD":
        momentum = float(group["momentum"])
        first = momentum != 0.0 and state.get("momentum_buffer") is None
        buf = buffer("momentum_buffer") if momentum != 0.0 else None
        _core.sgd_update(
            held[0].a,
            g,
            buf,
            neg_lr=-lr,
            weight_decay=wd,
            momentum=momentum,
            one_minus_dampening=1.0 - float(group["dampening"]),
            nesterov=bool(group["nesterov"]),
            maximize=maximize,
            first=first,
        )
    elif kind in ("Adam", "AdamW"):
        beta1, beta2 = (float(b) for b in group["betas"])
        amsgrad = bool(group.get("amsgrad", False))
        decoupled = kind == "AdamW" or bool(group.get("decoupled_weight_decay", False))
        n = _step_tensor(state)
        m, v = buffer("exp_avg"), buffer("exp_avg_sq")
        vmax = buffer("max_exp_avg_sq") if amsgrad else None
        bc1, bc2 = 1.0 - pow_rn(beta1, n), 1.0 - pow_rn(beta2, n)
        _core.adam_update(
            held[0].a,
            g,
            m,
            v,
            vmax,
            one_minus_beta1=1.0 - beta1,
            beta2=beta2,
            one_minus_beta2=1.0 - beta2,
            bc2_sqrt=math.sqrt(bc2),
            eps=float(group["eps"]),
            neg_step_size=-(lr / bc1),
            weight_decay=wd,
            decay=1.0 - lr * wd,
            decoupled=decoupled,
            maximize=maximize,
        )
    else:  # RMSprop
        alpha, momentum, centered = float(group["alpha"]), float(group["momentum"]), bool(group["centered"])
        _step_tensor(state)
        sq = buffer("square_avg")
        buf = buffer("momentum_buffer") if momentum > 0 else None
        ga = buffer("grad_avg") if centered else None
        _core.rmsprop_update(
            held[0].a,
            g,
            sq,
            ga,
            buf,
            neg_lr=-lr,
            alpha=alpha,
            one_minus_alpha=1.0 - alpha,
            eps=float(group["eps"]),
            weight_decay=wd,
            momentum=momentum,
            centered=centered,
            maximize=maximize,
        )
    for h in held:
        h.done()


class PortableOptimizer:
    """The handle ``reproducible_optimizer`` returns: ``remove()`` gives the optimizer back
    torch's own update."""

    def __init__(self, optimizer: Any) -> None:
        _kind(optimizer)
        self.optimizer = optimizer
        self._hidden: Optional[List[Any]] = None
        self._handles: List[Any] = []
        self.reinstall()

    def reinstall(self) -> None:
        """Registers the hooks again, after every hook the optimizer has now (a recorder's
        checks of the gradients torch's step would see must run first)."""
        for h in self._handles:
            h.remove()
        self._handles = [
            self.optimizer.register_step_pre_hook(self._before),
            self.optimizer.register_step_post_hook(self._after),
        ]

    def _before(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # torch passes the optimizer itself first, then step()'s own arguments
        if any(a is not None for a in args[1:]) or any(v is not None for v in kwargs.values()):
            raise ValueError("optimizer.step: a closure has no portable update; call step() without arguments")
        portable_step(optimizer)
        # torch's own step then finds no gradient and leaves every parameter as the update left it
        self._hidden = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                self._hidden.append((p, p.grad))
                p.grad = None

    def _after(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        for p, g in self._hidden or []:
            p.grad = g
        self._hidden = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if getattr(self.optimizer, "_exactforge_portable", None) is self:
            delattr(self.optimizer, "_exactforge_portable")


def reproducible_optimizer(optimizer: Any) -> PortableOptimizer:
    """Makes ``optimizer.step()`` run the portable update (``portable_step``) instead of torch's
    kernels, on this instance, until the returned handle's ``remove()``; the user's loop, the
    optimizer's state_dict and its LR scheduler stay as they are. Installing it twice returns
    the handle already installed."""
    have = getattr(optimizer, "_exactforge_portable", None)
    if have is not None:
        return have
    handle = PortableOptimizer(optimizer)
    setattr(optimizer, "_exactforge_portable", handle)
    return handle
