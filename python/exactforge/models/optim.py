"""Optimizers a trace can replay, and their state inside checkpoints.

A checkpoint is the model's state_dict plus, for an optimizer with state, that state: tensors
``optimizer.<i>.<key>`` for the i-th parameter (``momentum_buffer`` of SGD with momentum;
``step``, ``exp_avg``, ``exp_avg_sq`` of Adam and AdamW) and ``optimizer.steps``, the number of
steps taken (before the first one the state is torch's empty one). A verifier replays a segment
from its first checkpoint's parameters *and* state, and compares both with the next checkpoint,
so ε = 0 covers the optimizer too. Plain SGD (weight decay allowed) has no state tensors.

Supported: torch.optim.SGD (momentum, dampening, nesterov, weight_decay), Adam and AdamW
(betas, eps, weight_decay), one parameter group holding the model's parameters in order.
Refused when recording: other optimizers, amsgrad, maximize, several groups.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, List

import numpy as np

__all__ = ["spec_of", "check_spec", "build", "state_keys", "state_tensors", "load_state", "expected_table"]

_KINDS = {"SGD": "sgd", "Adam": "adam", "AdamW": "adamw"}


def spec_of(optimizer: Any, model: Any) -> Dict[str, Any]:
    import torch

    kind = _KINDS.get(type(optimizer).__name__) if type(optimizer).__module__.startswith("torch.optim") else None
    if kind is None:
        raise ValueError(
            f"optimizer: {type(optimizer).__name__} cannot be replayed from a trace; use torch.optim.SGD, Adam or AdamW"
        )
    groups = optimizer.param_groups
    if len(groups) != 1 or [id(p) for p in groups[0]["params"]] != [id(p) for p in model.parameters()]:
        raise ValueError("optimizer: replay needs one parameter group holding model.parameters() in order")
    g = groups[0]
    if g.get("maximize") or g.get("amsgrad") or g.get("differentiable") or g.get("capturable"):
        raise ValueError("optimizer: maximize, amsgrad, differentiable and capturable cannot be replayed")
    lr = g["lr"]
    if isinstance(lr, torch.Tensor):
        raise ValueError("optimizer: a tensor learning rate cannot be replayed; use a float")
    if kind == "sgd":
        return {
            "name": "sgd",
            "lr": float(lr),
            "momentum": float(g["momentum"]),
            "dampening": float(g["dampening"]),
            "nesterov": bool(g["nesterov"]),
            "weight_decay": float(g["weight_decay"]),
        }
    return {
        "name": kind,
        "lr": float(lr),
        "betas": [float(b) for b in g["betas"]],
        "eps": float(g["eps"]),
        "weight_decay": float(g["weight_decay"]),
    }


def _num(spec: Dict[str, Any], key: str, lo: float, hi: float) -> None:
    v = spec.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"'optimizer': {key} must be a number in [{lo}, {hi}]")


def check_spec(spec: Any) -> None:
    """For the verifier: a spec from an untrusted manifest (exact keys, bounded numbers)."""
    if not isinstance(spec, dict) or spec.get("name") not in ("sgd", "adam", "adamw"):
        raise ValueError("'optimizer' must name sgd, adam or adamw")
    keys = {
        "sgd": {"name", "lr", "momentum", "dampening", "nesterov", "weight_decay"},
        "adam": {"name", "lr", "betas", "eps", "weight_decay"},
        "adamw": {"name", "lr", "betas", "eps", "weight_decay"},
    }
    if set(spec) != keys[spec["name"]]:
        raise ValueError(f"'optimizer': {spec['name']} takes exactly {sorted(keys[spec['name']])}")
    _num(spec, "lr", 1e-300, 1e6)
    _num(spec, "weight_decay", 0.0, 1e6)
    if spec["name"] == "sgd":
        _num(spec, "momentum", 0.0, 1.0)
        _num(spec, "dampening", 0.0, 1.0)
        if not isinstance(spec["nesterov"], bool):
            raise ValueError("'optimizer': nesterov must be true or false")
    else:
        b = spec["betas"]
        if not isinstance(b, list) or len(b) != 2:
            raise ValueError("'optimizer': betas must be two numbers")
        for i in range(2):
            _num({"beta": b[i]}, "beta", 0.0, 1.0 - 1e-12)
        _num(spec, "eps", 0.0, 1.0)


def build(spec: Dict[str, Any], params: List[Any]) -> Any:
    import torch

    if spec["name"] == "sgd":
        return torch.optim.SGD(
            params,
            lr=spec["lr"],
            momentum=spec["momentum"],
            dampening=spec["dampening"],
            nesterov=spec["nesterov"],
            weight_decay=spec["weight_decay"],
        )
    cls = torch.optim.Adam if spec["name"] == "adam" else torch.optim.AdamW
    return cls(params, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"], weight_decay=spec["weight_decay"])


def state_keys(spec: Dict[str, Any]) -> List[str]:
    if spec["name"] == "sgd":
        return ["momentum_buffer"] if spec["momentum"] else []
    return ["step", "exp_avg", "exp_avg_sq"]


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
