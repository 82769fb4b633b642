"""Forensics on a logged step: reconstruct the batch from the update, and compare it with the
batch the trace claims and with the data set.

For plain SGD the update gives the gradient, g = (theta_t - theta_{t+1}) / lr. ``dlg`` works
for any exactforge model. The tensor method applies only to a network with one hidden layer
whose first-layer weights (with their biases, as an extra input coordinate fixed at 1) are
Gaussian. Its report says which condition fails when they are not; exactforge's own models
start from torch's uniform law, so their steps get that explanation unless ``force``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from .dlg import dlg
from .match import cosines, match
from .tensor import conditions, tensor_reconstruct_details

__all__ = ["InversionReport", "identifiability", "invert_step", "tensor_applicability"]

METHODS = ("tensor", "dlg")


@dataclass
class InversionReport:
    method: str
    step: int
    batch: List[int]  # the claimed batch (dataset indices)
    applicable: bool  # the method's conditions hold (tensor) or it runs (dlg)
    reasons: List[str] = field(default_factory=list)  # why the tensor method's guarantee does not apply
    labels: Optional[List[int]] = None  # iDLG's labels (dlg)
    matched: List[int] = field(default_factory=list)  # per reconstruction: the claimed example it matches
    matched_cos: List[float] = field(default_factory=list)
    nearest: List[int] = field(default_factory=list)  # per reconstruction: the nearest example of the data set
    nearest_cos: List[float] = field(default_factory=list)
    nearest_in_batch: int = 0  # reconstructions whose nearest example is in the claimed batch
    example: Optional[int] = None  # a disputed example, if one was asked about
    example_cos: Optional[float] = None  # its best |cos| with a reconstruction
    example_consistent: Optional[bool] = None  # it is the nearest example of some reconstruction
    identifiability: Optional[Dict[str, Any]] = None  # the link with nullspace forging (one hidden layer)
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _kurtosis(v: np.ndarray) -> float:
    v = v - v.mean()
    s2 = float(np.mean(v**2))
    return float(np.mean(v**4) / s2**2) if s2 > 0 else float("nan")


def tensor_applicability(W1: np.ndarray, b1: Optional[np.ndarray], batch_size: int) -> List[str]:
    """Why the tensor method's guarantee does not hold for these first-layer weights (empty:
    it does). The biases join the weights as the coefficient of a constant input."""
    Wt = W1 if b1 is None else np.concatenate([W1, b1[:, None]], axis=1)
    m, d = Wt.shape
    out = conditions(m, d, batch_size)
    flat = Wt.ravel().astype(np.float64)
    k = _kurtosis(flat)
    if not 2.7 <= k <= 3.3:  # a Gaussian's is 3; torch's uniform law gives 1.8
        out.append(
            f"the first-layer weights are not Gaussian (kurtosis {k:.2f}, a Gaussian's is 3): Stein's "
            "identity, on which the method rests, needs w ~ N(0, s^2 I)"
        )
    if abs(flat.mean()) > 4 * flat.std() / np.sqrt(flat.size):
        out.append(f"the first-layer weights do not have mean 0 (mean {flat.mean():.3g})")
    return out


def identifiability(model: Any, X: np.ndarray, y: np.ndarray) -> Optional[Dict[str, Any]]:
    """The two sides of one question for a network with one hidden layer (d inputs, m hidden
    units) on a batch: the nullspace forgeries X + U C V^T of exactforge.exact exist when both
    null(W1^T) (dimension d - rank W1, nonzero only when m < d) and null(D1^T) (b - rank of the
    first layer's error matrix) are nontrivial; the tensor method's conditions ask m >= d and
    b <= d, where null(W1^T) is empty. None for other architectures."""
    import torch

    from ..forging.solvers import fcn_perturbation_basis

    linears = [mod for mod in model.modules() if isinstance(mod, torch.nn.Linear)]
    if len(linears) != 2:
        return None
    W1 = linears[0].weight.detach().to(torch.float64)
    b1 = None if linears[0].bias is None else linears[0].bias.detach().to(torch.float64)
    xb = torch.as_tensor(np.asarray(X, np.float64).reshape(len(X), -1))
    z1 = xb @ W1.T + (b1 if b1 is not None else 0.0)
    z1.requires_grad_(True)
    act = next(
        (mod for mod in model.modules() if isinstance(mod, (torch.nn.ReLU, torch.nn.Tanh, torch.nn.Sigmoid))),
        torch.nn.ReLU(),
    )
    W2 = linears[1].weight.detach().to(torch.float64)
    b2 = 0.0 if linears[1].bias is None else linears[1].bias.detach().to(torch.float64)
    out = act(z1) @ W2.T + b2
    # summed, not averaged: each row of D1 is one example's error (the scale does not change ranks)
    torch.nn.functional.cross_entropy(out, torch.as_tensor(np.asarray(y), dtype=torch.long), reduction="sum").backward()
    assert z1.grad is not None
    U, V = fcn_perturbation_basis(W1.numpy().T, z1.grad.numpy())
    d, m, b = W1.shape[1], W1.shape[0], len(X)
    nu, nv = U.shape[1], V.shape[1]
    return {
        "d": int(d),
        "m": int(m),
        "b": int(b),
        "null_W1T": nu,
        "null_D1T": nv,
        "nullspace_forgery_exists": bool(nu > 0 and nv > 0),
        "tensor_conditions_hold": bool(m >= d and b <= d),
    }


def invert_step(
    ctx: Any,
    step: int,
    method: str = "tensor",
    *,
    activation: str = "relu",
    force: bool = False,
    example: Optional[int] = None,
    steps: int = 100,
    seed: int = 0,
) -> "tuple[InversionReport, np.ndarray]":
    """Reconstructs the batch of a logged step (ctx: exactforge.attacks.StepContext) and matches
    it with the claimed batch and the data set. Returns (report, reconstructions as (b, d))."""
    import time

    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    t0 = time.perf_counter()
    data = ctx.data
    batch = [int(i) for i in ctx.batch]
    b = len(batch)
    params, grads = _step_gradients(ctx)
    rep = InversionReport(method, int(step), batch, True)
    if method == "dlg":
        shape = tuple(data.shape or (data.dim,))
        lo, hi = float(np.min(data.X)), float(np.max(data.X))
        res = dlg(ctx.model, grads, b, input_shape=shape, steps=steps, seed=seed, bounds=(lo, hi))
        R = res.X.reshape(b, -1)
        rep.labels = res.labels
        rep.notes.append(f"gradient distance after {steps} L-BFGS iterations: {res.gradient_distance:.3g}")
    else:
        found = _tensor_inversion(ctx, rep, params, grads, b, activation, force, seed)
        if found is None:  # not applicable, and not forced
            rep.identifiability = identifiability(ctx.model, data.X[batch], data.y[batch])
            rep.seconds = time.perf_counter() - t0
            return rep, np.zeros((0, data.dim))
        R = found
    _compare(rep, R, ctx.model, data, batch, example)
    rep.seconds = time.perf_counter() - t0
    return rep, R


def _step_gradients(ctx: Any) -> "tuple[list, list]":
    """The model's parameters and the step's gradient, (theta_t - theta_{t+1}) / lr, cut into
    tensors shaped as they are."""
    import torch

    g_flat = (ctx.theta.astype(np.float64) - ctx.theta_next.astype(np.float64)) / ctx.lr
    params = list(ctx.model.parameters())
    grads, pos = [], 0
    for p in params:
        n = p.numel()
        grads.append(torch.from_numpy(g_flat[pos : pos + n].reshape(p.shape)).to(p.dtype))
        pos += n
    return params, grads


def _tensor_inversion(
    ctx: Any, rep: InversionReport, params: list, grads: list, b: int, activation: str, force: bool, seed: int
) -> Optional[np.ndarray]:
    """The tensor method on a one-hidden-layer network: the reconstructions, or None where its
    conditions fail (``rep.reasons``) and ``force`` is not given."""
    import torch

    linears = [m for m in ctx.model.modules() if isinstance(m, torch.nn.Linear)]
    if len(linears) != 2:
        raise ValueError(
            f"method: the tensor method needs a network with one hidden layer (2 linear layers); "
            f"this one has {len(linears)} (use --method dlg)"
        )
    W1 = linears[0].weight.detach().numpy().astype(np.float64)
    b1 = None if linears[0].bias is None else linears[0].bias.detach().numpy().astype(np.float64)
    rep.reasons = tensor_applicability(W1, b1, b)
    rep.applicable = not rep.reasons
    if rep.reasons and not force:
        return None
    wi = next(i for i, p in enumerate(params) if p is linears[1].weight)
    G2 = grads[wi].numpy().astype(np.float64)  # (classes, m): sum_i c_ik sigma(w_j . x_i + b_j)
    beta = np.linalg.svd(G2, full_matrices=False)[0][:, 0]  # the class combination with the most energy
    g = G2.T @ beta
    Wt = W1 if b1 is None else np.concatenate([W1, b1[:, None]], axis=1)
    s = float(Wt.std()) or 1.0
    det = tensor_reconstruct_details(Wt / s, g, min(b, Wt.shape[1]), activation=activation, seed=seed)
    R = det.X
    # the estimates are of s * (x, 1): the constant coordinate fixes sign and scale where there is one
    if b1 is not None:
        last = R[:, -1:]
        ok = np.abs(last) > 1e-8
        R = np.where(ok, R[:, :-1] / np.where(ok, last, 1.0), R[:, :-1] / s)
    else:
        R = R / s
    rep.notes += det.notes + [f"span gap {det.span_gap:.3g}, fit residual {det.residual:.3g}"]
    return R


def _compare(rep: InversionReport, R: np.ndarray, model: Any, data: Any, batch: list, example: Optional[int]) -> None:
    """The reconstructions against the claimed batch (matched) and the whole data set (nearest),
    and against one ``example`` where given."""
    b = len(batch)
    rep.identifiability = identifiability(model, data.X[batch], data.y[batch])
    claimed = data.X[batch].reshape(b, -1)
    rep.matched, cos = match(R, claimed) if len(R) else ([], np.zeros(0))
    rep.matched = [batch[i] for i in rep.matched]
    rep.matched_cos = [float(c) for c in cos]
    C = np.abs(cosines(R, data.X.reshape(len(data), -1)))
    rep.nearest = [int(i) for i in C.argmax(axis=1)]
    rep.nearest_cos = [float(C[r, i]) for r, i in enumerate(rep.nearest)]
    rep.nearest_in_batch = int(sum(i in set(batch) for i in rep.nearest))
    if example is not None:
        if not 0 <= example < len(data):
            raise ValueError(f"example: expected a data set index in 0..{len(data) - 1}, got {example}")
        rep.example = int(example)
        rep.example_cos = float(C[:, example].max())
        rep.example_consistent = bool(example in rep.nearest)
