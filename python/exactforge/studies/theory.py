"""The theory part of the main job: Table 4 re-answered with complete certified counts, and
what epsilon = 0 can see on float32 checkpoints (the exact forgeries' gradient differences
beside each coordinate's resolution)."""

from __future__ import annotations

import os
import time
from typing import Any, Dict

import numpy as np

__all__ = ["table4_counts", "resolution_study"]


def table4_counts(max_batches: int, *, seed: int = 0, vs: tuple = (2, 3)) -> Dict[str, Any]:
    """The paper's Table 4 (d = 4, n = 3) re-answered with complete certified counts: every batch
    of each cell of at most ``max_batches`` batches is a true batch (``search --all``), for both
    models with and without bias on the q/(v-1) grid, the levels ``vs`` and b = 1..5."""
    from .._backend.native import _core
    from ..forging.search import Domain, run_search_all

    cells, t0 = [], time.perf_counter()
    for model in ("logreg", "fcn10"):
        for bias in (True, False):
            for v in vs:
                for b in range(1, 6):
                    if _core.choose(Domain(4, 3, v).size, b) > max_batches:
                        continue
                    r = run_search_all(model, 4, 3, v, b, bias=bias, seed=seed)
                    cells.append(
                        {
                            "model": model,
                            "bias": bias,
                            "v": v,
                            "b": b,
                            "batches": r.batches,
                            "with_forgery": r.batches_with_forgery,
                            "nontrivial": r.batches_with_nontrivial_forgery,
                            "certificates": r.certificates,
                        }
                    )
    return {
        "cells": cells,
        "max_batches": max_batches,
        "seconds": time.perf_counter() - t0,
        "larger_cells": "docs/benchmarks/table4.md (python benchmarks/bench_table4.py --all)",
    }


def resolution_study(ver: Any, steps: int, out: str, seed: int = 0) -> Dict[str, Any]:
    """What epsilon = 0 can see on float32 checkpoints: the exact solvers forge ``steps`` steps of
    the native logistic-regression verifier, and each forgery's gradient difference from the true
    batch, computed in float64 per coordinate, is set beside the resolution ulp(theta_{t+1})/(2 lr)
    of that coordinate. A difference below it can vanish when theta_{t+1} is rounded."""
    from dataclasses import replace

    from ..forging.attacks import run_attack
    from ..models.native import loss_and_grad
    from ..report.figures import plot_resolution

    rows, pairs = [], []
    for m in ("nullspace", "error-matrix"):
        for t in range(steps):
            ctx = ver.context(t)
            r = run_attack(m, ctx, list(ctx.batch), seed=seed + t)
            if r.X is None or not r.distinct:
                continue
            st = ctx.stepper()
            spec = replace(st.native_spec(), dtype="float64")
            params = {k: np.asarray(v, np.float64) for k, v in st.to_native(ctx.theta).items()}
            b = len(ctx.batch)
            X = ctx.data.X[ctx.batch].reshape(b, -1).astype(np.float64)
            keys = np.arange(b)
            _, g = loss_and_grad(spec, params, X, ctx.data.y[ctx.batch], keys)
            _, gf = loss_and_grad(spec, params, np.asarray(r.X, np.float64).reshape(b, -1), np.asarray(r.Y), keys)
            diff = np.concatenate([np.abs(gf[k] - g[k]).ravel() for k in g])
            nxt = st.to_native(ctx.theta_next)
            res = np.concatenate(
                [
                    (np.spacing(np.abs(np.asarray(nxt[k], np.float32))).astype(np.float64) / (2 * ctx.lr)).ravel()
                    for k in g
                ]
            )
            below = float(np.mean(diff < res))
            rows.append(
                {
                    "solver": m,
                    "step": t,
                    "max_gradient_difference": float(diff.max()),
                    "median_resolution": float(np.median(res)),
                    "fraction_below_resolution": below,
                    "accepted_at_epsilon_0": bool(r.approx_error == 0.0),
                    "in_domain": r.in_domain,
                }
            )
            pairs.append((m, diff, res))
    fig = plot_resolution(pairs, os.path.join(out, "resolution.png")) if pairs else None
    return {
        "forgeries": rows,
        "figure": fig and os.path.basename(fig),
        "what": "float64 gradient difference of each exact forgery vs ulp(theta_{t+1})/(2 lr), per coordinate",
    }
