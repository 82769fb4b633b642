"""Known data-forging attacks under one interface, and one set of metrics.

Every attack takes a step of a trace (theta_t, the batch B_t and the logged theta_{t+1}), the
examples U of the batch to remove, the dataset and a budget, and returns a forged batch. Its
approximation error is measured by **recomputing the step** with the forged batch and comparing
with the logged theta_{t+1}, in every distance of the verifier: l2 (default), linf, l1, cosine,
l2sq (Thudi et al.) and l2sq_dim = l2^2/dim (Kong et al.).

* ``greedy`` (Thudi et al.; Kong et al.): sample n points from D \\ U, build M candidate batches
  (the examples of U replaced by random pool points), keep the best. Candidates are scored from
  per-example gradients computed once (torch.func vmap), never one backward pass per candidate.
* ``nearest`` (Zhang et al.): each example of U replaced by its class-wise nearest neighbour in
  D \\ U, by cosine similarity of the raw inputs (``metric="cosine"``, the default: Zhang et al.'s
  choice) or l2 distance (``metric="l2"``).
* ``gradmatch`` (the short paper's Algorithm 1), ``gradmatch-subset``, ``dlg`` (Zhu et al.) and
  ``idlg``: synthetic examples optimised to match the logged update (exactforge.forging.matching).
* ``nullspace`` / ``error-matrix``: the exact solvers of exactforge.forging.solvers (all of B forged).

Every result states its forging fraction (examples of B replaced, over b) and its objective.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..data import Dataset, in_domain
from ..verify.distances import DISTANCES, distance
from .matching import MATCHING, OBJECTIVES, synthesise

__all__ = [
    "ATTACKS",
    "AttackResult",
    "StepContext",
    "budget_for",
    "in_domain",
    "objective",
    "per_example_grads",
    "run_attack",
]

ATTACKS = ("greedy", "nearest", "gradmatch", "gradmatch-subset", "dlg", "idlg", "nullspace", "error-matrix")


def objective(method: str, metric: str = "cosine") -> str:
    """What ``method`` minimises or searches by, as a report row states it."""
    if method == "greedy":
        return "l2 distance of the recomputed update, best of M candidate batches"
    if method == "nearest":
        return f"class-wise nearest neighbour in D minus U, {metric} of raw inputs"
    if method in OBJECTIVES:
        return OBJECTIVES[method]
    return "exact: the same gradient in real arithmetic (all b examples perturbed)"


@dataclass
class StepContext:
    """One step of a trace, as the attacks see it. ``theta`` and ``theta_next`` are flat float32
    parameter vectors in the torch model's parameter order."""

    model: Any  # a torch.nn.Module of the trace's architecture
    data: Dataset
    theta: np.ndarray
    theta_next: np.ndarray
    batch: np.ndarray  # dataset indices of B_t
    lr: float
    engine: str = "torch"  # how the verifier recomputes: "torch" or "native"
    model_name: Optional[str] = None  # zoo name (logreg, fcn, ...) for the native engine and exact solvers
    spec: Any = None  # an exactforge ModelSpec, when the model is a native one of another width

    def stepper(self):
        from ..models.step import Stepper

        return Stepper(self.model_name or "custom", self.model, self.data, self.lr, native_spec=self.spec)


@dataclass
class AttackResult:
    method: str
    replaced: int  # examples of B that were replaced
    fraction: float  # forging fraction |U| / b
    approx_error: float  # l2 distance of the recomputed step to the logged theta_{t+1}
    metrics: Dict[str, float]  # every verifier distance
    distinct: bool
    in_domain: bool
    seconds: float
    forged_indices: List[int] = field(default_factory=list)  # dataset indices (-1: synthesised example)
    X: Optional[np.ndarray] = None  # forged inputs (b x d), kept for synthesised examples
    Y: Optional[np.ndarray] = None
    objective: str = ""  # what the attack minimises or searches by

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("X")
        d.pop("Y")
        return d


def _tensors(ctx: StepContext):
    import torch

    shape = ctx.data.shape or (ctx.data.dim,)
    X = torch.from_numpy(ctx.data.X).reshape(len(ctx.data), *shape)
    return X, torch.from_numpy(ctx.data.y)


def per_example_grads(model: Any, theta: np.ndarray, X: Any, y: Any, chunk: int = 512) -> np.ndarray:
    """N x P per-example gradients (float32, torch parameter order) with torch.func.vmap."""
    import torch
    from torch.func import functional_call, grad, vmap

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    params, pos = {}, 0
    for n, s in zip(names, shapes):
        k = int(np.prod(s))
        params[n] = torch.from_numpy(np.ascontiguousarray(theta[pos : pos + k])).reshape(s)
        pos += k

    def loss(p, x, t):
        out = functional_call(model, p, (x.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(out, t.unsqueeze(0))

    g = vmap(grad(loss), in_dims=(None, 0, 0))
    outs = []
    with torch.no_grad():
        for s in range(0, len(X), chunk):
            gd = g(params, X[s : s + chunk], y[s : s + chunk])
            outs.append(torch.cat([gd[n].reshape(gd[n].shape[0], -1) for n in names], dim=1).numpy())
    return np.concatenate(outs, axis=0)


def _recompute(ctx: StepContext, X: np.ndarray, Y: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """theta_t - lr grad L(B') with the verifier's engine, for a forged batch given as arrays."""
    import torch

    if ctx.engine == "native":
        return ctx.stepper().native_step_arrays(ctx.theta, X, Y, keys)
    st = ctx.stepper()
    st.load(ctx.theta)
    opt = torch.optim.SGD(st.model.parameters(), lr=ctx.lr)
    shape = ctx.data.shape or (ctx.data.dim,)
    xb = (
        torch.from_numpy(np.asarray(X, np.float32)).reshape(len(X), *shape)
        if ctx.data.vocab is None
        else torch.from_numpy(np.asarray(X, np.int64))
    )
    yb = torch.from_numpy(np.asarray(Y)) if np.asarray(Y).ndim == 1 else torch.from_numpy(np.asarray(Y, np.float32))
    loss = torch.nn.functional.cross_entropy(st.model(xb), yb)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return st.flat()


def _result(ctx, method, U, X, Y, forged_idx, t0, keep_arrays=False, metric="cosine") -> AttackResult:
    keys = np.array([i if i >= 0 else len(ctx.data) + j for j, i in enumerate(forged_idx)], dtype=np.int64)
    new = _recompute(ctx, X, Y, keys)
    metrics = {k: distance(new, ctx.theta_next, k) for k in DISTANCES}
    b = len(ctx.batch)
    # Definition 1 on content: some example (x, y) of B is not in B'. (A synthesised batch equal
    # to B, e.g. a nullspace "forgery" when the nullspace is empty, is not distinct.)
    from .solvers import _distinct

    Xo = ctx.data.X[ctx.batch].reshape(b, -1)
    distinct = _distinct(
        Xo,
        ctx.data.y[ctx.batch],
        np.asarray(X, np.float64).reshape(len(X), -1).astype(ctx.data.X.dtype).astype(np.float64),
        np.asarray(Y),
    )
    dom = (
        in_domain(X, Y, ctx.data.levels, ctx.data.num_classes, domain=ctx.data.domain)
        if ctx.data.vocab is None
        else True
    )
    # The forging fraction counts the examples of B that were replaced: a synthesising attack
    # that rewrites all b examples has fraction 1 whatever U was.
    replaced = b if method in ("gradmatch", "dlg") else len(U)
    return AttackResult(
        method,
        replaced,
        replaced / b,
        metrics["l2"],
        metrics,
        bool(distinct),
        bool(dom),
        time.perf_counter() - t0,
        [int(i) for i in forged_idx],
        np.asarray(X) if keep_arrays else None,
        np.asarray(Y) if keep_arrays else None,
        objective(method, metric),
    )


def budget_for(method: str, pool: int = 1000, candidates: int = 300, steps: int = 100) -> Dict[str, Any]:
    """The budget keywords of ``run_attack`` that ``method`` uses."""
    if method == "greedy":
        return {"pool": pool, "candidates": candidates}
    if method in MATCHING:
        return {"steps": steps}
    return {}


def run_attack(
    method: str,
    ctx: StepContext,
    remove: Sequence[int],
    *,
    pool: int = 1000,
    candidates: int = 300,
    metric: str = "cosine",
    steps: int = 100,
    alpha: float = 0.5,
    project: bool = True,
    seed: int = 0,
) -> AttackResult:
    """Forges the batch of ``ctx`` so that the examples ``remove`` (dataset indices, in the batch)
    are absent. Budgets: greedy ``pool`` (n) and ``candidates`` (M); gradient matching ``steps``.
    ``metric`` is nearest neighbour's: "cosine" of the raw inputs (Zhang et al.) or "l2"."""
    if method not in ATTACKS:
        raise ValueError(f"method: expected one of {ATTACKS}, got {method!r}")
    rng = np.random.default_rng(seed)
    batch = np.asarray(ctx.batch, np.int64)
    U = [int(u) for u in remove]
    if not set(U) <= set(batch.tolist()):
        raise ValueError("remove: every example to remove must be in the batch")
    # A batch drawn with replacement (as in the papers' code) can hold an example twice: every
    # occurrence of a removed example is replaced, so the forged batch keeps b examples and the
    # forging fraction counts occurrences.
    removed = np.isin(batch, np.array(U, dtype=np.int64))
    keep = batch[~removed]
    U = [int(u) for u in batch[removed]]
    if metric not in ("l2", "cosine"):
        raise ValueError(f"metric: expected 'l2' or 'cosine' (Zhang et al.'s), got {metric!r}")
    others = np.setdiff1d(np.arange(len(ctx.data)), np.array(U, dtype=np.int64))
    t0 = time.perf_counter()
    g_target = (ctx.theta.astype(np.float64) - ctx.theta_next.astype(np.float64)) / ctx.lr
    b = len(batch)
    if method == "greedy":
        X_t, y_t = _tensors(ctx)
        pool_ids = np.setdiff1d(others, keep)
        P = rng.choice(pool_ids, size=min(pool, len(pool_ids)), replace=False)
        if len(P) < len(U):
            raise ValueError(f"pool: {len(P)} candidate examples cannot replace {len(U)} removed ones")
        need = np.concatenate([keep, P])
        G = per_example_grads(ctx.model, ctx.theta, X_t[need], y_t[need]).astype(np.float64)
        base = G[: len(keep)].sum(axis=0)
        Gp = G[len(keep) :]
        choice = np.stack([rng.choice(len(P), size=len(U), replace=False) for _ in range(candidates)])
        sums = base[None, :] + Gp[choice].sum(axis=1)
        err = np.linalg.norm(ctx.lr * (sums / b - g_target[None, :]), axis=1)
        best = P[choice[int(np.argmin(err))]]
        idx = np.concatenate([keep, best])
        return _result(ctx, method, U, ctx.data.X[idx], ctx.data.y[idx], idx.tolist(), t0)
    if method == "nearest":
        X = ctx.data.X
        repl = []
        taken = set(keep.tolist())
        for u in U:
            cand = np.array([i for i in others if ctx.data.y[i] == ctx.data.y[u] and i not in taken])
            if metric == "cosine":
                a = X[cand] / np.maximum(np.linalg.norm(X[cand], axis=1, keepdims=True), 1e-12)
                s = a @ (X[u] / max(np.linalg.norm(X[u]), 1e-12))
                j = int(cand[np.argmax(s)])
            else:
                j = int(cand[np.argmin(np.linalg.norm(X[cand] - X[u], axis=1))])
            repl.append(j)
            taken.add(j)
        idx = np.concatenate([keep, np.array(repl, dtype=np.int64)])
        return _result(ctx, method, U, ctx.data.X[idx], ctx.data.y[idx], idx.tolist(), t0, metric=metric)
    if method in MATCHING:
        Xf, Yf, forged = synthesise(ctx, method, U, keep, g_target, steps, alpha, project, rng)
        return _result(ctx, method, U, Xf, Yf, forged, t0, keep_arrays=True)
    return _exact(ctx, method, U, t0, seed)


def _exact(ctx, method, U, t0, seed) -> AttackResult:
    """The exact solvers forge the whole batch (every example perturbed)."""
    from . import solvers as E

    st = ctx.stepper()
    spec = st.native_spec()
    params = st.to_native(ctx.theta)
    X = ctx.data.X[ctx.batch].reshape(len(ctx.batch), -1)
    y = ctx.data.y[ctx.batch]
    others = np.setdiff1d(np.arange(len(ctx.data)), ctx.batch)
    Xt = ctx.data.X[np.random.default_rng(seed).choice(others, len(ctx.batch), replace=False)].reshape(
        len(ctx.batch), -1
    )
    if method == "nullspace":
        f = E.forge_nullspace(spec, params, X, y, target=Xt)
    else:
        if spec.kind != "logreg":
            raise ValueError("method: error-matrix forging applies to logistic regression")
        f = E.forge_error_matrix(spec, params, X, y, target=Xt, seed=seed)
    Xf = np.asarray(f.X, np.float32)
    res = _result(ctx, method, list(ctx.batch), Xf, f.Y, [-1] * len(ctx.batch), t0, keep_arrays=True)
    res.replaced, res.fraction = len(ctx.batch), 1.0
    return res
