"""The tensor method: a batch from the output-layer gradient of a wide two-layer network
(Wang, Lee and Lei, "Reconstructing Training Data from Model Gradient, Provably";
../shared/papers/reconstructing-training-data-from-gradients-slides.md).

For f(x) = sum_j a_j sigma(w_j^T x) with w_j ~ N(0, I_d), the gradient with respect to a_j is
g_j = sum_i c_i sigma(w_j^T x_i), with c_i the loss derivative of example i. Stein's identity,
E[h(w) H_p(w)] = E[h^(p)] for h(w) = sigma(w^T x), turns the Hermite-weighted average of the
observations into moment tensors of the batch:

    T_p = (1/m) sum_j g_j H_p(w_j)  ~  sum_i c_i E[sigma^(p)(w^T x_i)] x_i^(tensor p),

with error O(sqrt(d/m)) per entry. The method:

1. the span of the x_i: the top-b eigenvectors of T_2 (ReLU), or of sum_k T_3(., ., theta_k)^2
   over random theta_k when E[sigma''] = 0 (tanh, sigmoid: sigma'' is odd);
2. the projected tensor, computed from the projected Gaussians u_j = V^T w_j (still N(0, I_b),
   since V is orthonormal), never forming a d^p tensor: T_3(V, V, V) for tanh and sigmoid,
   T_4(V, V, V, V) for ReLU, whose E[sigma'''] = 0;
3. Jennrich's algorithm: two random contractions M_1, M_2 of the projected tensor share the
   eigenvectors of M_1 M_2^+, the coordinates of the x_i in V (up to scale);
4. sign and scale from g itself by least squares (ReLU is positively homogeneous: only the
   sign is identifiable, each x_i is returned with unit norm); an optional refinement matches
   the gradient directly (``refine``).

Conditions (``conditions``): w_j ~ N(0, I), m >= d (error O(sqrt(d/m))), b <= d, linearly
independent x_i, nonzero c_i. Where they fail the batch is not identified by this gradient.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np

__all__ = ["ACTIVATIONS", "TensorReconstruction", "tensor_reconstruct", "tensor_reconstruct_details", "conditions"]

ACTIVATIONS = ("relu", "tanh", "sigmoid")


def _sigma(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic sigmoid, without overflow


@dataclass
class TensorReconstruction:
    """A reconstruction and what it rests on."""

    X: np.ndarray  # (b, d) estimates
    coefficients: np.ndarray  # (b,) the fitted c_i (loss derivatives, times |x_i| for ReLU)
    activation: str
    order: int  # the moment tensor decomposed (3, or 4 for ReLU)
    span_eigenvalues: List[float]  # |eigenvalues| of the span matrix, largest first (b + 1 of them)
    span_gap: float  # the b-th over the (b+1)-th: near 1, the span is not identified
    residual: float  # ||g - fit|| / ||g - mean(g)||
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["X"] = self.X.tolist()
        d["coefficients"] = self.coefficients.tolist()
        return d


def conditions(m: int, d: int, b: int) -> List[str]:
    """Why the method's guarantee does not apply to (m hidden units, d inputs, batch b); empty
    when it does (the Gaussian weights and independent inputs are the caller's to check)."""
    out = []
    if b > d:
        out.append(f"b = {b} > d = {d}: more examples than dimensions, they cannot be linearly independent")
    if m < d:
        out.append(f"m = {m} < d = {d}: fewer hidden units than input dimensions (the error is O(sqrt(d/m)))")
    return out


def _check(W: Any, g: Any, b: Any, activation: str) -> Tuple[np.ndarray, np.ndarray, int]:
    W = np.asarray(W, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64).reshape(-1)
    if W.ndim != 2:
        raise ValueError(f"W: expected the (m, d) first-layer weights, got shape {W.shape}")
    if g.shape[0] != W.shape[0]:
        raise ValueError(f"g: expected one gradient entry per hidden unit ({W.shape[0]}), got {g.shape[0]}")
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(g))):
        raise ValueError("W, g: NaN or infinite entries")
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= int(b) <= W.shape[1]:
        raise ValueError(f"b: expected a batch size in 1..d = {W.shape[1]}, got {b!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    return W, g, int(b)


def _span(W: np.ndarray, g: np.ndarray, b: int, order: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """An orthonormal (d, b) basis of the batch's span and the |eigenvalues| behind it."""
    m, d = W.shape
    if order == 4:  # ReLU: T_2 = sum_i c_i E[sigma''] x_i x_i^T, with E[sigma''] = phi(0) / |x_i|
        M = (W.T * g) @ W / m - g.mean() * np.eye(d)
    else:  # E[sigma''] = 0: contractions T_3(., ., theta) = sum_i c_i mu_3 (x_i . theta) x_i x_i^T
        M = np.zeros((d, d))
        gw = W.T @ g / m
        for _ in range(b + 4):
            th = rng.standard_normal(d)
            th /= np.linalg.norm(th)
            s = g * (W @ th)
            A = (W.T * s) @ W / m - s.mean() * np.eye(d) - np.outer(th, gw) - np.outer(gw, th)
            M += A @ A
    vals, vecs = np.linalg.eigh((M + M.T) / 2)
    order_ = np.argsort(-np.abs(vals))
    return vecs[:, order_[:b]], np.abs(vals[order_[: min(b + 1, d)]])


def _projected_tensor(U: np.ndarray, g: np.ndarray, order: int) -> np.ndarray:
    """(1/m) sum_j g_j H_p(u_j) for p = order, with the Hermite corrections of N(0, I_b)."""
    m, b = U.shape
    I = np.eye(b)
    UU = (U[:, :, None] * U[:, None, :]).reshape(m, b * b)
    if order == 3:
        T = ((UU * g[:, None]).T @ U).reshape(b, b, b) / m
        v = U.T @ g / m
        T -= np.einsum("a,bc->abc", v, I) + np.einsum("b,ac->abc", v, I) + np.einsum("c,ab->abc", v, I)
        return T
    T = ((UU * g[:, None]).T @ UU).reshape(b, b, b, b) / m
    S = (U.T * g) @ U / m
    for p in ("ab,cd->abcd", "ac,bd->abcd", "ad,bc->abcd", "bc,ad->abcd", "bd,ac->abcd", "cd,ab->abcd"):
        T -= np.einsum(p, S, I)
    gm = g.mean()
    T += gm * (np.einsum("ab,cd->abcd", I, I) + np.einsum("ac,bd->abcd", I, I) + np.einsum("ad,bc->abcd", I, I))
    return T


def _contract(T: np.ndarray, vecs: List[np.ndarray]) -> np.ndarray:
    for v in vecs:
        T = T @ v
    return T


def _jennrich(T: np.ndarray, rng: np.random.Generator, tries: int = 32) -> List[np.ndarray]:
    """Candidate (b, b) component matrices (columns, up to scale) of a symmetric rank-b
    tensor: one per random pair of contractions M_1, M_2, from the eigenvectors of M_1 M_2^+.
    With estimated tensors the pairs differ in quality; the caller picks by fit to g."""
    b = T.shape[0]
    out = []
    for _ in range(1 if b == 1 else tries):
        extra = T.ndim - 2
        M1 = _contract(T, [np.asarray(rng.standard_normal(b)) for _ in range(extra)])
        M2 = _contract(T, [np.asarray(rng.standard_normal(b)) for _ in range(extra)])
        M1, M2 = (M1 + M1.T) / 2, (M2 + M2.T) / 2
        vecs = np.real(np.linalg.eig(M1 @ np.linalg.pinv(M2))[1])
        out.append(vecs)
    return out


def _lstsq(cols: List[np.ndarray], g: np.ndarray) -> Tuple[np.ndarray, float]:
    """g by least squares on the columns and a constant: (coefficients, constant last; residual norm)."""
    A = np.concatenate(cols + [np.ones((len(g), 1))], axis=1)
    coef = np.linalg.lstsq(A, g, rcond=None)[0]
    return coef, float(np.linalg.norm(A @ coef - g))


def _linear_residual(W: np.ndarray, g: np.ndarray, D: np.ndarray, activation: str) -> float:
    """How well unit directions D explain g with one coefficient per direction (and per sign
    for ReLU): the quick score that picks among Jennrich's candidates."""
    Z = W @ D.T
    return _lstsq([np.maximum(Z, 0), np.maximum(-Z, 0)] if activation == "relu" else [_sigma(activation, Z)], g)[1]


def _fit(W: np.ndarray, g: np.ndarray, D: np.ndarray, activation: str) -> Tuple[np.ndarray, np.ndarray, float]:
    """Signs and scales of the unit directions D (b, d) from g by least squares: (X, c, residual)."""
    Z = W @ D.T  # (m, b)
    gc = g - g.mean()
    denom = float(np.linalg.norm(gc)) or 1.0
    if activation == "relu":  # sigma(s z) = |s| sigma(sign(s) z): a column for each sign, keep the stronger
        coef, _ = _lstsq([np.maximum(Z, 0), np.maximum(-Z, 0)], g)
        b = D.shape[0]
        signs = np.where(np.abs(coef[:b]) >= np.abs(coef[b : 2 * b]), 1.0, -1.0)
        coef, res = _lstsq([np.maximum(Z * signs, 0)], g)
        return D * signs[:, None], coef[:-1], res / denom
    from scipy.optimize import least_squares

    b = D.shape[0]

    def resid(p: np.ndarray) -> np.ndarray:
        s, c, c0 = p[:b], p[b : 2 * b], p[-1]
        return _sigma(activation, Z * s) @ c + c0 - g

    best: Any = None
    for s0 in (0.5, 1.0, 2.0):  # the scale is identifiable through the curvature; start from a few
        c_init, _ = _lstsq([_sigma(activation, Z * s0)], g)
        p0 = np.concatenate([np.full(b, s0), c_init[:-1], c_init[-1:]])
        r = least_squares(resid, p0, method="lm" if len(g) > 2 * b + 1 else "trf", max_nfev=200)
        if best is None or r.cost < best.cost:
            best = r
    s, c = best.x[:b], best.x[b : 2 * b]
    return D * s[:, None], c, float(np.linalg.norm(best.fun)) / denom


def _refine(
    W: np.ndarray, g: np.ndarray, X: np.ndarray, c: np.ndarray, activation: str, steps: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Gradient matching from the tensor estimate: min ||g - sum_i c_i sigma(W x_i) - c0||^2."""
    import torch

    Wt, gt = torch.from_numpy(W), torch.from_numpy(g)
    Xt = torch.tensor(np.ascontiguousarray(X), requires_grad=True)
    ct = torch.tensor(np.ascontiguousarray(c), requires_grad=True)
    c0 = torch.tensor(
        [float(g.mean() - (_sigma(activation, W @ X.T) @ c).mean())], dtype=torch.float64, requires_grad=True
    )
    act = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[activation]
    opt = torch.optim.LBFGS([Xt, ct, c0], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ((ct @ act(Xt @ Wt.T) + c0 - gt) ** 2).mean()  # X W^T: the gradient of X stays contiguous
        loss.backward()
        return loss

    opt.step(closure)
    return Xt.detach().numpy(), ct.detach().numpy()


def tensor_reconstruct_details(
    W: Any, g: Any, b: int, *, activation: str = "relu", refine: int = 0, seed: int = 0
) -> TensorReconstruction:
    """``tensor_reconstruct`` with what the estimate rests on (see TensorReconstruction)."""
    W, g, b = _check(W, g, b, activation)
    rng = np.random.default_rng(seed)
    order = 4 if activation == "relu" else 3
    gc = g - g.mean()  # E[H_p] = 0 for p >= 1: a constant in g only adds variance
    V, eig = _span(W, gc, b, order, rng)
    T = _projected_tensor(W @ V, gc, order)
    best: Any = None
    for comps in _jennrich(T, rng):  # (b, b): coordinates in V, as columns
        D = (V @ comps).T
        D /= np.linalg.norm(D, axis=1, keepdims=True)
        score = _linear_residual(W, g, D, activation)
        if best is None or score < best[0]:
            best = (score, D)
    D = best[1]
    X, c, res = _fit(W, g, D, activation)
    if refine:
        X, c = _refine(W, g, X, c, activation, int(refine))
        pred = _sigma(activation, W @ X.T) @ c
        res = float(np.linalg.norm(pred - pred.mean() - gc) / (np.linalg.norm(gc) or 1.0))
    if activation == "relu":  # positively homogeneous: |x_i| and c_i cannot be told apart
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
    gap = float(eig[b - 1] / eig[b]) if len(eig) > b and eig[b] > 0 else math.inf
    notes = conditions(W.shape[0], W.shape[1], b)
    if activation == "relu":
        notes.append("ReLU is positively homogeneous: each x_i is returned with unit norm (its scale is in c_i)")
    return TensorReconstruction(X, np.asarray(c), activation, order, [float(v) for v in eig], gap, res, notes)


def tensor_reconstruct(
    W: Any, g: Any, b: int, *, activation: str = "relu", refine: int = 0, seed: int = 0
) -> np.ndarray:
    """(b, d) estimates of the batch x_1..x_b from the gradient g (m,) of a two-layer network's
    output weights a_j, where W (m, d) holds the first-layer weights w_j ~ N(0, I_d) as rows.
    ``activation``: relu, tanh or sigmoid. ``refine``: L-BFGS iterations of gradient matching
    from the tensor estimate (0: none). Signs and scales come from g (ReLU: sign only, unit
    norm). The order of the rows is arbitrary; compare up to a permutation."""
    return tensor_reconstruct_details(W, g, b, activation=activation, refine=refine, seed=seed).X
