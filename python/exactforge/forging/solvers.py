"""Exact data forging: constructions of distinct batches with the same gradient.

Notation of the papers (MATH.md section 4): examples are the *columns* of X (d0 x b);
``W1`` is d0 x d1 and ``D1`` is the b x d1 error matrix of the first layer. In the model API
(exactforge.models) examples are rows; the functions here take rows and convert.

* ``fcn_perturbation_basis(W1, D1)``: bases U of null(W1^T) and V of null(D1^T). Every
  P = U C V^T keeps Z1 (so every activation and error matrix) and X D1 (so every gradient):
  one family of exact forgeries, of dimension (d0 - rank W1)(b - rank D1) (Proposition 2,
  sharpened), not all of them: a forgery may change the logits and still keep the gradient
  (for logistic regression such batches can form a larger set near a batch than this family).
  It works for logistic regression too (W1 = W, D1 = the output errors).
* ``kronecker_nullspace(W1, D1)``: the paper's reference construction, K vec(P) = 0.
* ``forge_error_matrix``: logistic regression, error-matrix sampling (Proposition 3).
* ``forge_onehot``: logistic regression with the labels fixed to one-hot vectors; a nonlinear
  least-squares solve for the inputs (not exact in general: its residual is reported).
* ``b1_analysis``, ``b1_twins``: batch size 1 (Proposition 1), in :mod:`.twins`, re-exported.
* ``forgery_report``: distinctness, domain, approximation error against reproduction error.
* ``search_in_domain``: box-constrained LP and on-grid MILP (HiGHS) for small instances.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..models import layout
from ..models import native as M
from .native_gradient import gradient
from .twins import B1Analysis, b1_analysis, b1_twins, b1_underflow_pairs

__all__ = [
    "fcn_perturbation_basis",
    "kronecker_nullspace",
    "kronecker_project",
    "paper_bound",
    "ForgedBatch",
    "forge_nullspace",
    "forge_nullspace_batched",
    "forge_error_matrix",
    "forge_onehot",
    "B1Analysis",
    "b1_analysis",
    "b1_twins",
    "b1_underflow_pairs",
    "ForgeryReport",
    "forgery_report",
    "DomainSearch",
    "search_in_domain",
    "gradient",
]


# -- linear algebra ------------------------------------------------------------------------


def _rank_split(A: np.ndarray, rtol: Optional[float]) -> Tuple[np.ndarray, int]:
    """Left singular vectors of A (full) and its numerical rank. The left basis is complete
    without ``full_matrices`` when A has no more rows than columns, and that skips the
    columns x columns right factor (3 GB for a 64 x 20,000 first layer)."""
    U, s, _ = np.linalg.svd(A, full_matrices=A.shape[0] > A.shape[1])
    tol = (rtol if rtol is not None else max(A.shape) * np.finfo(np.float64).eps) * (s[0] if s.size else 0.0)
    return U, int(np.sum(s > tol))


def fcn_perturbation_basis(
    W1: np.ndarray, D1: np.ndarray, rtol: Optional[float] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Orthonormal bases U (d0 x (d0 - rank W1)) of null(W1^T) and V (b x (b - rank D1)) of
    null(D1^T): X + U C V^T is an exact forgery of the batch for any C (one family of them, not
    every exact forgery). Two SVDs."""
    W1 = np.asarray(W1, dtype=np.float64)
    D1 = np.asarray(D1, dtype=np.float64)
    if W1.ndim != 2 or D1.ndim != 2 or W1.shape[1] != D1.shape[1]:
        raise ValueError(f"W1, D1: expected d0 x d1 and b x d1 matrices, got {W1.shape} and {D1.shape}")
    Uw, rw = _rank_split(W1, rtol)
    Ud, rd = _rank_split(D1, rtol)
    return Uw[:, rw:], Ud[:, rd:]


def paper_bound(d0: int, d1: int, b: int) -> int:
    """The paper's sufficient count d0 b - d1 d0 - d1 b (a forgery exists when positive)."""
    return d0 * b - d1 * d0 - d1 * b


def _kronecker(W1: np.ndarray, D1: np.ndarray) -> np.ndarray:
    d0, d1 = W1.shape
    b = D1.shape[0]
    # vec is column-major: vec(P D1) = (D1^T kron I_d0) vec(P), vec(W1^T P) = (I_b kron W1^T) vec(P)
    return np.vstack([np.kron(D1.T, np.eye(d0)), np.kron(np.eye(b), W1.T)])


def kronecker_nullspace(W1: np.ndarray, D1: np.ndarray, rtol: Optional[float] = None) -> np.ndarray:
    """The paper's construction: an orthonormal basis (d0 b x nullity) of {vec(P): K vec(P) = 0},
    K = [D1^T kron I; I kron W1^T]. Reference only: K has (d1 d0 + d1 b) x d0 b entries."""
    K = _kronecker(np.asarray(W1, np.float64), np.asarray(D1, np.float64))
    _, s, Vt = np.linalg.svd(K, full_matrices=True)
    tol = (rtol if rtol is not None else max(K.shape) * np.finfo(np.float64).eps) * (s[0] if s.size else 0.0)
    r = int(np.sum(s > tol))
    return Vt[r:].T


def kronecker_project(W1: np.ndarray, D1: np.ndarray, F: np.ndarray) -> np.ndarray:
    """vec(P) = (I - K^+ K) vec(F): the paper's forgery perturbation from a d0 x b matrix F."""
    K = _kronecker(np.asarray(W1, np.float64), np.asarray(D1, np.float64))
    f = np.asarray(F, np.float64).reshape(-1, order="F")
    p = f - np.linalg.pinv(K) @ (K @ f)
    return p.reshape(F.shape, order="F")


# -- forgeries ------------------------------------------------------------------------------


@dataclass
class ForgedBatch:
    """A forged batch: inputs X (b x d, rows) and labels Y (b class indices, or b x n vectors)."""

    X: np.ndarray
    Y: np.ndarray
    method: str
    info: Dict[str, Any] = field(default_factory=dict)


def _layer1(spec: M.ModelSpec, params: M.Params, X: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """W1 and the first layer's error matrix D1 (b x d1) of the batch, in float64."""
    spec64 = M.ModelSpec(spec.kind, spec.input_dim, spec.num_classes, spec.hidden, spec.bias, "float64")
    p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    pe = M.per_example(spec64, p64, np.asarray(X, np.float64), np.asarray(y))
    return p64["W1"], pe.errors[0]


def forge_nullspace(
    spec: M.ModelSpec,
    params: M.Params,
    X: np.ndarray,
    y: np.ndarray,
    *,
    target: Any = "random",
    scale: float = 0.1,
    seed: int = 0,
    rtol: Optional[float] = None,
) -> ForgedBatch:
    """An exact forgery of the batch (X rows, labels y unchanged) by a nullspace perturbation.

    ``target``: "random" (C with i.i.d. normal entries, scaled so the largest |P| is ``scale``),
    or a b x d array of real examples X_t: the forgery closest to them,
    X' = X + U U^T (X_t - X) V V^T (in column form)."""
    W1, D1 = _layer1(spec, params, X, y)
    Xc = np.asarray(X, np.float64).T  # d0 x b
    Uw, rw = _rank_split(W1, rtol)
    Ud, rd = _rank_split(D1, rtol)
    d0, b = Xc.shape
    nullity = (d0 - rw) * (b - rd)
    if isinstance(target, str) and target == "random":
        U, V = Uw[:, rw:], Ud[:, rd:]
        C = np.random.default_rng(seed).standard_normal((U.shape[1], V.shape[1]))
        P = U @ C @ V.T
        mx = np.max(np.abs(P)) if P.size else 0.0
        P = P * (scale / mx) if mx > 0 else P
        how = "random"
    else:
        Xt = np.asarray(target, np.float64).T
        if Xt.shape != Xc.shape:
            raise ValueError(f"target: expected a {b} x {d0} batch of examples, got {Xt.T.shape}")
        # U U^T = I - Q Q^T with Q the range of W1 (cheaper than the null basis itself)
        Qw, Qd = Uw[:, :rw], Ud[:, :rd]
        if nullity == 0:
            P = np.zeros_like(Xc)  # no exact forgery exists; projecting would leave only rounding noise
        else:
            E = Xt - Xc
            E = E - Qw @ (Qw.T @ E)
            P = E - (E @ Qd) @ Qd.T
        how = "nearest"
    info = {
        "nullity": int(nullity),
        "paper_bound": int(paper_bound(d0, W1.shape[1], b)),
        "rank_W1": rw,
        "rank_D1": rd,
        "target": how,
    }
    return ForgedBatch((Xc + P).T.copy(), np.asarray(y).copy(), "nullspace", info)


def forge_nullspace_batched(W1s: np.ndarray, D1s: np.ndarray, Xs: np.ndarray, Xts: np.ndarray) -> np.ndarray:
    """The nearest-forgery projection for many (checkpoint, batch) pairs at once, with stacked
    SVDs: W1s (p x d0 x d1), D1s (p x b x d1), Xs and Xts (p x b x d0, rows). Returns the
    forged inputs (p x b x d0)."""
    W1s, D1s = np.asarray(W1s, np.float64), np.asarray(D1s, np.float64)
    Uw, sw, _ = np.linalg.svd(W1s, full_matrices=False)
    Ud, sd, _ = np.linalg.svd(D1s, full_matrices=False)
    out = np.empty(np.asarray(Xs).shape, np.float64)
    for i in range(W1s.shape[0]):
        rw = int(np.sum(sw[i] > max(W1s.shape[1:]) * np.finfo(float).eps * sw[i, 0]))
        rd = int(np.sum(sd[i] > max(D1s.shape[1:]) * np.finfo(float).eps * sd[i, 0]))
        Qw, Qd = Uw[i, :, :rw], Ud[i, :, :rd]
        E = (np.asarray(Xts[i], np.float64) - np.asarray(Xs[i], np.float64)).T
        E = E - Qw @ (Qw.T @ E)
        E = E - (E @ Qd) @ Qd.T
        out[i] = np.asarray(Xs[i], np.float64) + E.T
    return out


def forge_error_matrix(
    spec: M.ModelSpec,
    params: M.Params,
    X: np.ndarray,
    y: np.ndarray,
    *,
    target: Any = None,
    v: Optional[np.ndarray] = None,
    seed: int = 0,
    max_tries: int = 20,
) -> ForgedBatch:
    """Logistic regression, Proposition 3: sample an error matrix D' (b x n) with zero row sums
    (and, with a bias, the same column sums as D, by adding a doubly centred perturbation),
    solve X' D' = b G for the inputs (least norm, or nearest to ``target``, a b x d batch), and
    set the labels Y' = softmax(X' W + b) diag(v) - D' (soft labels, rows summing to v)."""
    if spec.kind != "logreg":
        raise ValueError("spec: error-matrix forging is for logistic regression; use forge_nullspace for FCNs")
    W = np.asarray(params["W1"], np.float64)
    Xr = np.asarray(X, np.float64)
    b, n = Xr.shape[0], spec.num_classes
    _, D = _layer1(spec, params, Xr, y)
    G = Xr.T @ D / b  # d x n (the mean gradient)
    rG = np.linalg.matrix_rank(G)
    rng = np.random.default_rng(seed)
    scale = float(np.std(D)) or 1.0
    for _ in range(max_tries):
        E = rng.standard_normal((b, n)) * scale
        E = E - E.mean(axis=1, keepdims=True)
        if spec.bias:
            E = E - E.mean(axis=0, keepdims=True)  # keeps column sums: bias grad
            Dp = D + E
        else:
            Dp = E
        if np.linalg.matrix_rank(Dp) >= rG:
            break
    else:  # pragma: no cover - a random matrix has full rank with probability 1
        raise RuntimeError("could not sample an error matrix of sufficient rank")
    pinv = np.linalg.pinv(Dp)
    if target is None:
        Xp = (b * G) @ pinv  # d x b, least norm
    else:
        Xt = np.asarray(target, np.float64).T
        Xp = Xt + (b * G - Xt @ Dp) @ pinv
    Xf = Xp.T  # b x d rows
    z = Xf @ W + (np.asarray(params["b1"], np.float64) if spec.bias else 0.0)
    zs = z - z.max(axis=1, keepdims=True)
    S = np.exp(zs) / np.exp(zs).sum(axis=1, keepdims=True)
    vv = np.ones(b) if v is None else np.asarray(v, np.float64)
    Yf = S * vv[:, None] - Dp
    return ForgedBatch(
        Xf,
        Yf,
        "error-matrix",
        {
            "rank_G": int(rG),
            "rank_D": int(np.linalg.matrix_rank(Dp)),
            "target": "least-norm" if target is None else "nearest",
        },
    )


def forge_onehot(
    spec: M.ModelSpec,
    params: M.Params,
    X: np.ndarray,
    y: np.ndarray,
    *,
    labels: Optional[np.ndarray] = None,
    start: Optional[np.ndarray] = None,
    max_nfev: int = 200,
) -> ForgedBatch:
    """Logistic regression with the labels fixed to one-hot ``labels`` (default: the original
    ones): solve the gradient equations for the inputs by nonlinear least squares from ``start``
    (default: the batch itself shifted towards other real data is the caller's choice). The
    equations are nonlinear in X'; the residual is reported and is generally not zero."""
    from scipy.optimize import least_squares

    if spec.kind != "logreg":
        raise ValueError("spec: forge_onehot is for logistic regression")
    spec64 = M.ModelSpec(spec.kind, spec.input_dim, spec.num_classes, (), spec.bias, "float64")
    p64 = M.check_params(spec64, {k: np.asarray(v, np.float64) for k, v in params.items()})
    Xr = np.asarray(X, np.float64)
    lab = np.asarray(y if labels is None else labels)
    g0 = gradient(spec, params, Xr, np.asarray(y))
    x0 = (Xr if start is None else np.asarray(start, np.float64)).ravel()

    def resid(xf: np.ndarray) -> np.ndarray:
        _, g = M.loss_and_grad(spec64, p64, xf.reshape(Xr.shape), lab, np.arange(len(Xr)))
        return layout.flatten(spec64, g) - g0

    sol = least_squares(resid, x0, method="trf", max_nfev=max_nfev, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return ForgedBatch(
        sol.x.reshape(Xr.shape),
        lab.copy(),
        "onehot-lsq",
        {"residual_l2": float(np.linalg.norm(sol.fun)), "nfev": int(sol.nfev)},
    )


# -- the report -----------------------------------------------------------------------------


@dataclass
class ForgeryReport:
    method: str
    distinct: bool
    in_range_fraction: float
    grid_distance_max: float  # largest distance of an input value to the nearest grid point q/levels
    grid_distance_mean: float
    labels_one_hot: bool
    approx_error: float  # ||lr (g' - g)||_2, gradients in float32
    approx_error_f64: float
    repro_error_torch: Optional[float] = None  # torch's update under batch permutations
    ratio_to_torch_repro: Optional[float] = None
    repro_error_native: float = 0.0  # the native path: exactly 0 by construction
    info: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        for k, v in list(d.items()):
            if isinstance(v, float) and not np.isfinite(v):
                d[k] = str(v)
        d.update(self.info)
        return d


def _distinct(X: np.ndarray, y: np.ndarray, Xf: np.ndarray, Yf: np.ndarray) -> bool:
    """Definition 1: some example of B is not in B' (compared exactly, labels included)."""

    def key(x, lab):
        return np.asarray(x, np.float64).ravel().tobytes() + np.asarray(lab, np.float64).ravel().tobytes()

    yl = np.asarray(y)
    n = Yf.shape[1] if np.asarray(Yf).ndim == 2 else None
    orig = [key(X[i], np.eye(n)[yl[i]] if n is not None and yl.ndim == 1 else yl[i]) for i in range(len(X))]
    forged = {key(Xf[i], Yf[i]) for i in range(len(Xf))}
    return any(k not in forged for k in orig)


def torch_repro_error(
    spec: M.ModelSpec, params: M.Params, X: np.ndarray, y: np.ndarray, lr: float, permutations: int = 10, seed: int = 0
) -> float:
    """Largest l2 change of torch's float32 update when the batch is permuted."""
    import torch

    from ..models.torch_fcn import to_torch

    s32 = M.ModelSpec(spec.kind, spec.input_dim, spec.num_classes, spec.hidden, spec.bias, "float32")
    p32 = {k: np.asarray(v, np.float32) for k, v in params.items()}

    def grad(order: np.ndarray) -> np.ndarray:
        model = to_torch(s32, p32)
        loss = torch.nn.functional.cross_entropy(
            model(torch.from_numpy(np.asarray(X, np.float32)[order])), torch.from_numpy(np.asarray(y)[order])
        )
        loss.backward()
        return np.concatenate(
            [
                p.grad.numpy().astype(np.float64).ravel()  # type: ignore[union-attr]
                for p in model.parameters()
            ]
        )

    ref = grad(np.arange(len(X)))
    rng = np.random.default_rng(seed)
    return max(float(np.linalg.norm(lr * (grad(rng.permutation(len(X))) - ref))) for _ in range(permutations))


def forgery_report(
    spec: M.ModelSpec,
    params: M.Params,
    X: np.ndarray,
    y: np.ndarray,
    forged: ForgedBatch,
    *,
    lr: float,
    data_range: Tuple[float, float] = (0.0, 1.0),
    levels: Optional[int] = None,
    torch_permutations: int = 10,
) -> ForgeryReport:
    Xf = np.asarray(forged.X, np.float64)
    lo, hi = data_range
    in_range = float(np.mean((Xf >= lo) & (Xf <= hi))) if Xf.size else 1.0
    if levels:
        grid = np.clip(np.round((Xf - lo) / (hi - lo) * levels), 0, levels) / levels * (hi - lo) + lo
        gd = np.abs(Xf - grid)
        gmax, gmean = float(gd.max()), float(gd.mean())
    else:
        gmax = gmean = float("nan")
    Yf = np.asarray(forged.Y)
    one_hot = Yf.ndim == 1 or bool(np.all((Yf == 0) | (Yf == 1)) and np.all(Yf.sum(axis=1) == 1))
    g32 = gradient(spec, params, X, y, "float32") - gradient(spec, params, Xf, Yf, "float32")
    g64 = gradient(spec, params, X, y, "float64") - gradient(spec, params, Xf, Yf, "float64")
    a32, a64 = float(np.linalg.norm(lr * g32)), float(np.linalg.norm(lr * g64))
    rep = None
    if torch_permutations:
        rep = torch_repro_error(spec, params, X, y, lr, torch_permutations)
    return ForgeryReport(
        forged.method,
        _distinct(np.asarray(X), np.asarray(y), Xf, Yf),
        in_range,
        gmax,
        gmean,
        one_hot,
        a32,
        a64,
        rep,
        (a32 / rep) if rep else None,
        0.0,
        dict(forged.info),
    )


# -- in-domain search -----------------------------------------------------------------------


@dataclass
class DomainSearch:
    """Outcome of a box-constrained (LP) or on-grid (MILP) search for an exact forgery."""

    kind: str  # "box-lp" or "grid-milp"
    status: str  # "found", "infeasible" (proven), "timeout", "error"
    seconds: float
    d0: int
    b: int
    variables: int
    X: Optional[np.ndarray] = None
    residual: Optional[float] = None  # ||grad(B') - grad(B)|| in float64 for a found batch
    message: str = ""

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("X")
        return d


def search_in_domain(
    spec: M.ModelSpec,
    params: M.Params,
    X: np.ndarray,
    y: np.ndarray,
    *,
    kind: str = "box-lp",
    box: Tuple[float, float] = (0.0, 1.0),
    levels: int = 16,
    time_limit: float = 10.0,
    tol: float = 1e-9,
    seed: int = 0,
) -> DomainSearch:
    """Searches the valid domain for a distinct batch with the same gradient, keeping the labels
    (one-hot) and perturbing the inputs within the exact forgery set {P : W1^T P = 0, P D1 = 0}.

    ``box-lp``: X' in [lo, hi]; maximises a random direction of P (a non-zero optimum is a
    distinct forgery; an optimum of 0 both ways means P = 0 is the only one in the box).
    ``grid-milp``: X' = Q / levels with integer Q in [0, levels] and Q != Q0, the equalities
    held within ``tol``. HiGHS answers found, proven infeasible, or timed out."""
    W1, D1 = _layer1(spec, params, X, y)
    Xc = np.asarray(X, np.float64).T  # d0 x b
    d0, b = Xc.shape
    # vec (column-major) of P: rows of the constraint matrix are the Kronecker system
    K = _kronecker(W1, D1)
    pb = _DomainProblem(spec, params, X, y, K, Xc.reshape(-1, order="F"), d0, b, box, time_limit, time.perf_counter())
    if kind == "box-lp":
        return _box_lp(pb, seed)
    if kind != "grid-milp":
        raise ValueError(f"kind: expected 'box-lp' or 'grid-milp', got {kind!r}")
    return _grid_milp(pb, levels, tol)


@dataclass
class _DomainProblem:
    """The exact forgery set of a batch, {X0 + P : K vec(P) = 0}, and the bounds of the search."""

    spec: M.ModelSpec
    params: M.Params
    X: np.ndarray
    y: np.ndarray
    K: np.ndarray  # the Kronecker system of W1^T P = 0, P D1 = 0
    x0: np.ndarray  # vec(X0^T), column-major
    d0: int
    b: int
    box: Tuple[float, float]
    time_limit: float
    t0: float

    def found(self, kind: str, Xf: np.ndarray, variables: int, message: str = "") -> DomainSearch:
        """A forgery found: its gradient's distance to the true batch's, as a check."""
        secs = time.perf_counter() - self.t0  # the search's time, without the check below
        sp, p = self.spec, self.params
        res_g = float(np.linalg.norm(gradient(sp, p, Xf, self.y) - gradient(sp, p, self.X, self.y)))
        return DomainSearch(kind, "found", secs, self.d0, self.b, variables, Xf, res_g, message)


def _box_lp(pb: _DomainProblem, seed: int) -> DomainSearch:
    """X' in the box: maximise a random direction of P and its opposite (a non-zero optimum is
    a distinct forgery)."""
    from scipy.optimize import linprog

    kind, d0, b, (lo, hi), K, x0, t0 = "box-lp", pb.d0, pb.b, pb.box, pb.K, pb.x0, pb.t0
    time_limit = pb.time_limit
    nv = d0 * b
    c = np.random.default_rng(seed).standard_normal(nv)
    best = None
    for sign in (1.0, -1.0):
        res = linprog(
            -sign * c,
            A_eq=K,
            b_eq=np.zeros(K.shape[0]),
            bounds=list(zip(lo - x0, hi - x0)),
            method="highs",
            options={"time_limit": time_limit},
        )
        if res.status == 1:
            return DomainSearch(kind, "timeout", time.perf_counter() - t0, d0, b, nv, message=res.message)
        if res.status == 2:
            return DomainSearch(kind, "infeasible", time.perf_counter() - t0, d0, b, nv, message=res.message)
        if res.status != 0:
            return DomainSearch(kind, "error", time.perf_counter() - t0, d0, b, nv, message=res.message)
        if np.max(np.abs(res.x)) > 1e-9 and best is None:
            best = res.x
    secs = time.perf_counter() - t0
    if best is None:
        return DomainSearch(
            kind,
            "infeasible",
            secs,
            d0,
            b,
            nv,
            message="only P = 0 lies in the box along a random direction and its opposite",
        )
    return pb.found(kind, (x0 + best).reshape((d0, b), order="F").T, nv)


def _grid_milp(pb: _DomainProblem, levels: int, tol: float) -> DomainSearch:
    """X' on the grid lo + Q (hi - lo) / levels with integer Q != Q0, the equalities within tol."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    kind, d0, b, (lo, hi), K, x0, t0 = "grid-milp", pb.d0, pb.b, pb.box, pb.K, pb.x0, pb.t0
    time_limit = pb.time_limit
    nv = d0 * b
    q0 = np.clip(np.round((x0 - lo) / (hi - lo) * levels), 0, levels)
    # variables: Q (nv integers), pos, neg (nv integers >= 0), s (nv binaries)
    n4 = 4 * nv
    scale = (hi - lo) / levels
    I = np.eye(nv)
    Z = np.zeros((nv, nv))
    rows = [
        # K (lo + Q scale - x0) within +-tol
        LinearConstraint(
            np.hstack([K * scale, np.zeros((K.shape[0], 3 * nv))]), K @ (x0 - lo) - tol, K @ (x0 - lo) + tol
        ),
        # Q - pos + neg = q0
        LinearConstraint(np.hstack([I, -I, I, Z]), q0, q0),
        # pos <= levels s, neg <= levels (1 - s)
        LinearConstraint(np.hstack([Z, I, Z, -levels * I]), -np.inf, 0),
        LinearConstraint(np.hstack([Z, Z, I, levels * I]), -np.inf, levels),
        # distinct: sum(pos + neg) >= 1
        LinearConstraint(np.concatenate([np.zeros(nv), np.ones(2 * nv), np.zeros(nv)])[None, :], 1, np.inf),
    ]
    lb = np.concatenate([np.zeros(nv), np.zeros(2 * nv), np.zeros(nv)])
    ub = np.concatenate([np.full(nv, levels), np.full(2 * nv, levels), np.ones(nv)])
    res = milp(
        np.concatenate([np.zeros(nv), np.ones(2 * nv), np.zeros(nv)]),
        constraints=rows,
        integrality=np.ones(n4),
        bounds=Bounds(lb, ub),
        options={"time_limit": time_limit},
    )
    secs = time.perf_counter() - t0
    if res.status == 0 and res.x is not None:
        return pb.found(kind, (lo + np.round(res.x[:nv]) * scale).reshape((d0, b), order="F").T, n4, res.message)
    status = {1: "timeout", 2: "infeasible"}.get(res.status, "error")
    return DomainSearch(kind, status, secs, d0, b, n4, message=res.message)
