"""A logged step of an exactforge trace as the forging tools see it: the trace opened with the
verifier's data, theta_t in the native layout, the attacks' :class:`StepContext`, and an
exact forgery of the step with its report."""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

from ..data import Dataset
from ..models.layout import native_to_flat
from ..models.native import ModelSpec, Params, check_params
from ..trace import Trace, TraceError
from .attacks import StepContext

__all__ = ["open_exactforge_trace", "params_at", "step_context", "forge_step"]


def open_exactforge_trace(
    path: str, dataset: Optional[Dataset] = None, data_path: Optional[str] = None
) -> Tuple[Trace, ModelSpec, Dataset]:
    """An exactforge model's trace (logreg or fcn, either engine) with its checked training
    data: ``dataset`` (the verifier's), else the data the trace names (``data_path`` for files)."""
    from ..verify.replay import open_with_data

    trace, data = open_with_data(path, dataset, None if dataset is not None else data_path)
    if "kind" not in trace.manifest["model"]:
        raise TraceError("model: the trace names no exactforge model (logreg or fcn)")
    return trace, ModelSpec.from_dict(trace.manifest["model"]), data


def params_at(trace: Trace, spec: ModelSpec, step: int) -> Params:
    """theta_step in exactforge's layout, from a native checkpoint or a TorchFCN state_dict."""
    state = trace.load_checkpoint(step)
    if trace.manifest["engine"] == "torch":
        import torch

        from ..models.torch_fcn import TorchFCN, from_torch

        module = TorchFCN(spec)
        module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
        return from_torch(spec, module)
    return check_params(spec, state, f"checkpoint {step}")


def step_context(trace: Trace, spec: ModelSpec, data: Dataset, step: int) -> StepContext:
    """The attacks' view of step ``step`` (needs theta_step and theta_step+1)."""
    from ..models.torch_fcn import to_torch
    from ..models.zoo import FlatInput

    if not (0 <= step and step + 1 in trace.checkpoint_steps and step in trace.checkpoint_steps):
        raise ValueError(
            f"--step: needs theta_T and theta_T+1 (a trace with --checkpoint-every 1); the trace has "
            f"{trace.num_records} steps and checkpoints {trace.checkpoint_steps[:8]}..."
        )
    theta = params_at(trace, spec, step)
    net = FlatInput(to_torch(spec, theta))  # data sets carry image shapes
    return StepContext(
        net,
        data,
        native_to_flat(spec, theta),
        native_to_flat(spec, params_at(trace, spec, step + 1)),
        trace.batch(step),
        float(trace.manifest["lr"]),
        engine=trace.manifest["engine"],
        model_name=spec.kind,
        spec=spec,
    )


def forge_step(
    trace: Trace,
    spec: ModelSpec,
    data: Dataset,
    step: int,
    *,
    method: str = "nullspace",
    target: str = "random",
    scale: float = 0.1,
    seed: int = 0,
    permutations: int = 10,
) -> Tuple[Any, Any]:
    """(forged batch, ForgeryReport) of an exact forgery of logged step ``step``: ``method``
    "nullspace" or "error-matrix" (logistic regression), ``target`` "random" or "nearest"
    (closest to real examples outside the batch)."""
    from . import solvers as E

    if not 0 <= step < trace.num_records:
        raise ValueError(f"--step: the trace has steps 0..{trace.num_records - 1}")
    if step not in trace.checkpoint_steps:
        raise ValueError(
            f"--step: no checkpoint theta_{step} was logged; steps with one: "
            f"{trace.checkpoint_steps[:10]}{'...' if len(trace.checkpoint_steps) > 10 else ''}"
        )
    params = params_at(trace, spec, step)
    idx = trace.batch(step)
    X, y = data.X[idx], data.y[idx]
    rng = np.random.default_rng(seed)
    others = np.setdiff1d(np.arange(len(data)), idx)
    Xt = data.X[rng.choice(others, size=len(idx), replace=len(others) < len(idx))]
    if method == "nullspace":
        forged = E.forge_nullspace(
            spec, params, X, y, target="random" if target == "random" else Xt, scale=scale, seed=seed
        )
    elif method == "error-matrix":
        if spec.kind != "logreg":
            raise ValueError("--method error-matrix: applies to logistic regression traces; use nullspace for an FCN")
        forged = E.forge_error_matrix(spec, params, X, y, target=None if target == "random" else Xt, seed=seed)
    else:
        raise ValueError(f"method: expected 'nullspace' or 'error-matrix', got {method!r}")
    rep = E.forgery_report(
        spec,
        params,
        X,
        y,
        forged,
        lr=float(trace.manifest["lr"]),
        levels=data.levels,
        data_range=data.domain or (-math.inf, math.inf),
        torch_permutations=permutations,
    )
    return forged, rep
