"""Optimizers a trace can replay, and their state inside checkpoints.

A checkpoint is the model's state_dict plus, for an optimizer with state, that state: tensors
``optimizer.<i>.<key>`` for the i-th parameter (``momentum_buffer`` of SGD with momentum;
``step``, ``exp_avg``, ``exp_avg_sq`` of Adam and AdamW) and ``optimizer.steps``, the number of
steps taken (before the first one the state is torch's empty one). A verifier replays a segment
from its first checkpoint's parameters *and* state, and compares both with the next checkpoint,
so ε = 0 covers the optimizer too. Plain SGD (weight decay allowed) has no state tensors.

Supported: torch.optim.SGD (momentum, dampening, nesterov, weight_decay, maximize, foreach),
Adam and AdamW (betas, eps, weight_decay, amsgrad, maximize, foreach), RMSprop (alpha, eps,
weight_decay, momentum, centered, maximize, foreach), with any number of
parameter groups (each its own hyperparameters: no weight decay on biases and norms, another
rate for the head). Refused when recording: other optimizers, fused, capturable and
differentiable, and groups that leave out a parameter of the model.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, List

import numpy as np

__all__ = ["spec_of", "check_spec", "build", "state_keys", "state_tensors", "load_state", "expected_table"]

_KINDS = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw", "RMSprop": "rmsprop"}
_BOOLEAN = ("nesterov", "centered")


# hyperparameters of each kind that a group may set, besides lr
GROUP_KEYS = {
    "sgd": ("momentum", "dampening", "nesterov", "weight_decay"),
    "adam": ("betas", "eps", "weight_decay"),
    "adamw": ("betas", "eps", "weight_decay"),
    "rmsprop": ("alpha", "eps", "weight_decay", "momentum", "centered"),
}
# options recorded only where they differ from torch's default (so a plain loop's manifest names
# none of them), each a boolean the verifier passes back to torch
OPTIONS = {
    "sgd": ("maximize", "foreach"),
    "adam": ("maximize", "foreach", "amsgrad"),
    "adamw": ("maximize", "foreach", "amsgrad"),
    "rmsprop": ("maximize", "foreach"),
}
MAX_GROUPS = 64


def _group_values(kind: str, g: Dict[str, Any]) -> Dict[str, Any]:
    import torch

    if isinstance(g["lr"], torch.Tensor):
        raise ValueError("optimizer: a tensor learning rate cannot be replayed; use a float")
    out: Dict[str, Any] = {"lr": float(g["lr"])}
    for k in GROUP_KEYS[kind]:
        v = g[k]
        out[k] = [float(b) for b in v] if k == "betas" else (bool(v) if k in _BOOLEAN else float(v))
    return out


def spec_of(optimizer: Any, model: Any) -> Dict[str, Any]:
    """The manifest's ``optimizer``: its kind, the first group's hyperparameters at the top
    level, ``groups`` (each group's parameters, by their position in ``model.parameters()``,
    and hyperparameters) where there are several or they hold the parameters in another
    order, and the options that differ from torch's defaults."""
    kind = _KINDS.get(type(optimizer).__name__) if type(optimizer).__module__.startswith("torch.optim") else None
    if kind is None:
        raise ValueError(
            f"optimizer: {type(optimizer).__name__} cannot be replayed from a trace; use torch.optim.SGD, Adam, AdamW "
            "or RMSprop"
        )
    position = {id(p): i for i, p in enumerate(model.parameters())}
    groups = optimizer.param_groups
    members = [[position.get(id(p), -1) for p in g["params"]] for g in groups]
    flat = sorted(i for m in members for i in m)
    if flat != list(range(len(position))):
        raise ValueError(
            "optimizer: its parameter groups must hold every parameter of the model exactly once (the verifier "
            "rebuilds them from the model)"
        )
    if len(groups) > MAX_GROUPS:
        raise ValueError(f"optimizer: at most {MAX_GROUPS} parameter groups can be replayed")
    for g in groups:
        if g.get("differentiable") or g.get("capturable") or g.get("fused"):
            raise ValueError("optimizer: differentiable, capturable and fused cannot be replayed; leave them off")
        for k in OPTIONS[kind]:
            if bool(g.get(k)) != bool(groups[0].get(k)):
                raise ValueError(f"optimizer: {k} differs between parameter groups; use one setting")
    spec: Dict[str, Any] = {"name": kind, **_group_values(kind, groups[0])}
    for k in OPTIONS[kind]:
        if groups[0].get(k):
            spec[k] = True
    if len(groups) > 1 or members[0] != list(range(len(position))):
        spec["groups"] = [{"params": m, **_group_values(kind, g)} for m, g in zip(members, groups)]
    return spec


def _num(spec: Dict[str, Any], key: str, lo: float, hi: float) -> None:
    v = spec.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"'optimizer': {key} must be a number in [{lo}, {hi}]")


def _check_values(kind: str, spec: Dict[str, Any]) -> None:
    _num(spec, "lr", 1e-300, 1e6)
    _num(spec, "weight_decay", 0.0, 1e6)
    if kind == "sgd":
        _num(spec, "momentum", 0.0, 1.0)
        _num(spec, "dampening", 0.0, 1.0)
        if not isinstance(spec["nesterov"], bool):
            raise ValueError("'optimizer': nesterov must be true or false")
    elif kind == "rmsprop":
        _num(spec, "alpha", 0.0, 1.0)
        _num(spec, "eps", 0.0, 1.0)
        _num(spec, "momentum", 0.0, 1.0)
        if not isinstance(spec["centered"], bool):
            raise ValueError("'optimizer': centered must be true or false")
    else:
        b = spec["betas"]
        if not isinstance(b, list) or len(b) != 2:
            raise ValueError("'optimizer': betas must be two numbers")
        for i in range(2):
            _num({"beta": b[i]}, "beta", 0.0, 1.0 - 1e-12)
        _num(spec, "eps", 0.0, 1.0)


def check_spec(spec: Any) -> None:
    """For the verifier: a spec from an untrusted manifest (exact keys, bounded numbers)."""
    if not isinstance(spec, dict) or spec.get("name") not in GROUP_KEYS:
        raise ValueError("'optimizer' must name sgd, adam, adamw or rmsprop")
    kind = spec["name"]
    keys = {"name", "lr", *GROUP_KEYS[kind]}
    if not keys <= set(spec) <= keys | set(OPTIONS[kind]) | {"groups"}:
        raise ValueError(
            f"'optimizer': {kind} takes exactly {sorted(keys)} (and {', '.join(OPTIONS[kind])}, groups where set)"
        )
    _check_values(kind, spec)
    for k in OPTIONS[kind]:
        if k in spec and spec[k] is not True:
            raise ValueError(f"'optimizer': {k} is written only when true")
    if "groups" in spec:
        groups = spec["groups"]
        if not isinstance(groups, list) or not 1 <= len(groups) <= MAX_GROUPS:
            raise ValueError(f"'optimizer': groups must list 1..{MAX_GROUPS} parameter groups")
        seen: List[int] = []
        for g in groups:
            if not isinstance(g, dict) or set(g) != {"params", "lr", *GROUP_KEYS[kind]}:
                raise ValueError(f"'optimizer': each group holds exactly params, lr and {', '.join(GROUP_KEYS[kind])}")
            _check_values(kind, g)
            ps = g["params"]
            if not isinstance(ps, list) or not all(type(i) is int and i >= 0 for i in ps):
                raise ValueError("'optimizer': a group's params are positions in the model's parameters")
            seen += ps
        if sorted(seen) != list(range(len(seen))):
            raise ValueError("'optimizer': the groups must hold each parameter position exactly once")
        top = {k: spec[k] for k in ("lr", *GROUP_KEYS[kind])}
        if {k: groups[0][k] for k in top} != top:
            raise ValueError("'optimizer': the top-level hyperparameters must be the first group's")


def num_groups(spec: Dict[str, Any]) -> int:
    return len(spec["groups"]) if "groups" in spec else 1


def group_rates(spec: Dict[str, Any]) -> List[float]:
    """Each group's learning rate as the manifest declares it."""
    return [float(g["lr"]) for g in spec["groups"]] if "groups" in spec else [float(spec["lr"])]


def build(spec: Dict[str, Any], params: List[Any]) -> Any:
    import torch

    kind = spec["name"]
    options = {k: bool(spec.get(k, False)) for k in OPTIONS[kind]}
    if "groups" in spec:
        if sorted(i for g in spec["groups"] for i in g["params"]) != list(range(len(params))):
            raise ValueError(f"'optimizer': its groups do not hold the model's {len(params)} parameters")
        groups: List[Dict[str, Any]] = [
            {**_torch_values(kind, g), "params": [params[i] for i in g["params"]]} for g in spec["groups"]
        ]
    else:
        groups = [{**_torch_values(kind, spec), "params": list(params)}]
    cls = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "rmsprop": torch.optim.RMSprop,
    }[kind]
    return cls(groups, lr=spec["lr"], **options)


def _torch_values(kind: str, g: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: g[k] for k in ("lr", *GROUP_KEYS[kind])}
    if "betas" in out:
        out["betas"] = tuple(out["betas"])
    return out


def state_keys(spec: Dict[str, Any]) -> List[str]:
    moving = spec.get("momentum") or any(g.get("momentum") for g in spec.get("groups", []))
    if spec["name"] == "sgd":
        return ["momentum_buffer"] if moving else []
    if spec["name"] == "rmsprop":
        centered = spec["centered"] or any(g["centered"] for g in spec.get("groups", []))
        return ["step", "square_avg"] + (["momentum_buffer"] if moving else []) + (["grad_avg"] if centered else [])
    return ["step", "exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if spec.get("amsgrad") else [])


def expected_table(spec: Dict[str, Any], params: List[Any]) -> Dict[str, tuple]:
    """name -> (safetensors dtype, shape) of the state tensors, for the checkpoint table."""
    keys = state_keys(spec)
    if not keys:
        return {}
    # scalars are stored as 1-element vectors: safetensors has no 0-d tensors everywhere
    out: Dict[str, tuple] = {"optimizer.steps": ("I64", (1,))}
    dt = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16"}
    for i, p in enumerate(params):
        for k in keys:
            out[f"optimizer.{i}.{k}"] = (
                ("F32", (1,)) if k == "step" else (dt[str(p.dtype).replace("torch.", "")], tuple(p.shape))
            )
    return out


def state_tensors(optimizer: Any, spec: Dict[str, Any], params: List[Any], steps: int) -> Dict[str, np.ndarray]:
    """The optimizer's state as named arrays (zeros before the first step)."""
    keys = state_keys(spec)
    if not keys:
        return OrderedDict()
    out: Dict[str, np.ndarray] = OrderedDict((("optimizer.steps", np.asarray([steps], np.int64)),))
    for i, p in enumerate(params):
        st = optimizer.state.get(p, {})
        for k in keys:
            v = st.get(k)
            if k == "step":
                out[f"optimizer.{i}.{k}"] = np.asarray([float(v) if v is not None else 0.0], np.float32)
            else:
                out[f"optimizer.{i}.{k}"] = (
                    v.detach().cpu().numpy().copy()
                    if v is not None
                    else np.zeros(tuple(p.shape), p.detach().cpu().numpy().dtype)
                )
    return out


def load_state(optimizer: Any, spec: Dict[str, Any], params: List[Any], tensors: Dict[str, np.ndarray]) -> int:
    """Puts the recorded state into a fresh optimizer; returns the number of steps taken."""
    import torch

    keys = state_keys(spec)
    if not keys:
        return 0
    steps = int(np.asarray(tensors["optimizer.steps"]).reshape(-1)[0])
    if steps < 0:
        raise ValueError("optimizer.steps: negative")
    if steps == 0:
        return 0  # torch's empty state: the first step initialises it
    for i, p in enumerate(params):
        st = optimizer.state[p]
        for k in keys:
            v = torch.from_numpy(np.array(tensors[f"optimizer.{i}.{k}"]))
            st[k] = v.reshape(()) if k == "step" else v.to(p.device)
    return steps
