"""Batch size 1: the twins of one example, each with a proof (Proposition 1 at its edges).

A *twin* of (x, e_y) is another single example (x', e_y') with the same gradient in real
arithmetic. float64 cannot be the judge: where a softmax probability rounds to 0 or 1, every
scaling of the example has the same float64 gradient, and equal float gradients say nothing.
So a twin is reported only with a certificate, computed in rational arithmetic:

* ``rational``: x' is a float64 vector. Weights and inputs are read as the exact rationals
  they are, so the logits z are rational and an example's gradient is sum_j p_j M_j - M_y,
  with p = softmax(z) and M_j (the gradient when the output error is e_j) rational. The
  difference of two gradients, times the two softmax denominators, is
  sum_{j,k} exp(z_j + z'_k) (M_j - M'_k + M'_y' - M_y). The exponents are rational, and by
  Lindemann-Weierstrass exponentials of distinct algebraic numbers are linearly independent
  over the algebraic numbers. So the gradients are equal exactly when, for each distinct
  exponent, its coefficients sum to 0: an identity of rationals, decided without rounding.
* ``root``: x' = c* x for a model without a bias, with c* the root != 1 of a scalar equation
  (:func:`twins_exact.second_root`). c* is transcendental, so no float c is a twin; the certificate is a
  rational bracket of c* whose endpoints give g opposite signs under rigorous bounds on exp
  (Taylor sums with their remainder, rounded outward), and the concavity of g proves there
  is no other root.

The pairs whose float64 gradients agree bit for bit although they are no twin are listed
apart (:func:`b1_underflow_pairs`).

Where twins come from (the analysis behind the candidates; the certificates are the proof):

* grad W1 = x d1^T. When the first-layer error d1 is not 0, x' = c x. With a bias,
  grad b1 = d1 then forces c = 1 and the output bias forces the label: no twin. Without a bias,
  the models are positively homogeneous (logistic regression for every c, a ReLU FCN for
  c > 0; for c < 0 an FCN's errors live on disjoint units, so none) and the twins are the
  roots of one scalar equation in c, which needs the other classes' logits to tie exactly.
* d1 = 0 (in an FCN: every first-layer unit dead, or a layer above all dead, or an exact
  cancellation; decided exactly by Lindemann-Weierstrass too): the input's gradient is 0
  whatever x is, so every x' with the same first-layer activations is a twin, with the same
  label. A unit dead at both inputs contributes nothing, and neither does its bias. Without a
  bias, an all-dead layer makes the whole gradient 0, and every label is a twin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..models import native as M
from .native_gradient import gradient
from .twins_exact import ExactExample, ExactModel, d1_is_zero, equal_in_reals, second_root

__all__ = ["B1Analysis", "b1_analysis", "b1_twins", "b1_underflow_pairs"]

_C_GRID = np.geomspace(1e-6, 1e6, 2001)  # the scalings b1_underflow_pairs scans, each sign


# -- the twins ------------------------------------------------------------------------------


def _gradient_difference(spec: M.ModelSpec, params: M.Params, g: np.ndarray, xp: np.ndarray, lab: int) -> float:
    with np.errstate(all="ignore"):
        return float(np.max(np.abs(gradient(spec, params, xp[None, :], np.array([lab])) - g)))


def _dead_candidates(spec: M.ModelSpec, params: M.Params, ex: ExactExample, x: np.ndarray) -> List[np.ndarray]:
    """Inputs near x that may share its first-layer activations (exact checks follow): x moved
    along a coordinate that feeds no live first-layer unit, as far as half the room the dead
    units leave; then, when a layer above the first is all dead, x moved a little along each of
    the first coordinates; then, when every first-layer unit is dead, the centre of a box
    around x with the largest margin below every unit's threshold (an LP)."""
    W1 = np.asarray(params["W1"], np.float64)
    b1 = np.asarray(params["b1"], np.float64) if spec.bias else np.zeros(W1.shape[1])
    z1 = x @ W1 + b1
    live = z1 > 0
    out = []
    for j in range(len(x)):
        if np.any(W1[j, live] != 0):
            continue
        for sign in (1.0, -1.0):
            w = sign * W1[j, ~live]
            zd = z1[~live]
            grow = w > 0
            room = np.min(-zd[grow] / w[grow]) if grow.any() else max(1.0, abs(x[j]))
            if room > 0 and np.isfinite(room):
                xp = x.copy()
                xp[j] = x[j] + sign * min(room / 2, max(1.0, abs(x[j])))
                if xp[j] != x[j]:
                    out.append(xp)
    if any(not any(m) for m in ex.masks[1:]):
        for j in range(min(len(x), 4)):
            for sign in (1.0, -1.0):
                xp = x.copy()
                xp[j] += sign * 2.0**-20 * max(1.0, abs(x[j]))
                out.append(xp)
    if not live.any():
        from scipy.optimize import linprog

        d0, d1 = W1.shape
        # variables (x', t): maximise t with W1^T x' + b1 + t <= 0 in a box around x
        A = np.hstack([W1.T, np.ones((d1, 1))])
        bounds = [(xi - 1.0, xi + 1.0) for xi in x] + [(0.0, 1.0)]
        r = linprog(np.r_[np.zeros(d0), -1.0], A_ub=A, b_ub=-b1, bounds=bounds, method="highs")
        if r.status == 0 and r.x[-1] > 0:
            out.append(np.asarray(r.x[:d0], np.float64))
    return out


def b1_twins(spec: M.ModelSpec, params: M.Params, x: np.ndarray, y: int) -> List[Dict[str, Any]]:
    """The single-example twins (x', one-hot y') of (x, e_y), each certified (module doc).

    Each twin is a dict: ``x`` (float64), ``x_exact`` (whether ``x`` is the twin itself; for a
    ``root`` twin it is the rounding of c* x, zero where c* underflows), ``label``,
    ``c`` (x' = c x; NaN when x' is no multiple of x; for a ``root`` twin the float64 nearest
    c*, which may underflow to 0), ``c_interval`` (the rational bracket of c*, or None),
    ``certificate`` (``rational`` or ``root``), ``family`` (the set of twins it stands for)
    and ``gradient_difference`` (the largest float64 gradient difference at ``x``: a
    measurement, not the proof).

    Complete for the scalings and the label changes. Where a whole set of inputs are twins
    (d1 = 0), one certified representative stands for it; a set with no other point that
    float64 can write (an exact cancellation that pins the input to a rational subspace) is
    not searched, nor is a scaling root below exp(-65536) (a logit gap above 2^16)."""
    x = np.asarray(x, np.float64).ravel()
    y = int(y)
    if x.shape != (spec.input_dim,) or not np.all(np.isfinite(x)):
        raise ValueError(f"x: expected {spec.input_dim} finite values, got shape {x.shape}")
    if not 0 <= y < spec.num_classes:
        raise ValueError(f"y: expected a class in 0..{spec.num_classes - 1}, got {y}")
    em = ExactModel(spec, params)
    ex = em.example(x)
    g = gradient(spec, params, x[None, :], np.array([y]))
    out: List[Dict[str, Any]] = []

    def add(xp, lab, c, cert, family, interval=None):
        out.append(
            {
                "x": xp,
                "x_exact": cert == "rational",
                "label": int(lab),
                "c": float(c),
                "c_interval": interval,
                "certificate": cert,
                "family": family,
                "gradient_difference": _gradient_difference(spec, params, g, xp, lab),
            }
        )

    for lab in range(spec.num_classes):
        if lab != y and equal_in_reals(ex, y, ex, lab):
            add(x.copy(), lab, 1.0, "rational", "(x, any label): the gradient at x does not depend on the label")
    if not spec.bias and np.any(x):
        others = [j for j in range(spec.num_classes) if j != y]
        if all(ex.z[j] == ex.z[others[0]] for j in others):
            br = second_root(ex.z[y] - ex.z[others[0]], len(others))
            roots = [] if br is None else [br]
            fam = "x' = c x with the label kept: no bias, and the other classes' logits tie"
            for lo, hi in roots:
                c = float((lo + hi) / 2)
                with np.errstate(all="ignore"):
                    add(c * x, y, c, "root", fam, (lo, hi))
            if spec.kind == "logreg" and spec.num_classes == 2:
                mirror = "x' = -s x with the other label: logistic regression, two classes, no bias"
                if equal_in_reals(ex, y, em.example(-x), 1 - y):
                    add(-x, 1 - y, -1.0, "rational", mirror)
                for lo, hi in roots:
                    c = -float((lo + hi) / 2)
                    with np.errstate(all="ignore"):
                        add(c * x, 1 - y, c, "root", mirror, (-hi, -lo))
    if spec.kind == "fcn" and d1_is_zero(ex, y):
        top_dead = next((i + 1 for i, m in enumerate(ex.masks) if not any(m)), None)
        fam = (
            "x' with the same first-layer activations, the same label: x's first-layer error is 0, so "
            "its input's gradient is 0 and the layers above see only the activations"
            + ("" if top_dead is None else f" (here layer {top_dead}'s ReLUs are all dead)")
        )
        for xp in _dead_candidates(spec, params, ex, x):
            if not np.all(np.isfinite(xp)) or np.array_equal(xp, x):
                continue
            if equal_in_reals(ex, y, em.example(xp), y):
                add(xp, y, float("nan"), "rational", fam)
                break
    return out


def _float_factors(
    s64: M.ModelSpec, p64: M.Params, X: np.ndarray, labels: np.ndarray
) -> Tuple[List[Tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Each layer's (activations, errors), whose products are the float64 gradient of one
    example (a single product each: nothing else is rounded), and the saturated rows."""
    with np.errstate(all="ignore"):
        pe = M.per_example(s64, p64, X, labels)
        z = M.forward(s64, p64, X).Z[-1]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
    return list(zip(pe.activations, pe.errors)), np.any((p == 0.0) | (p == 1.0), axis=1)


def _equal_rows(
    F: List[Tuple[np.ndarray, np.ndarray]], F0: List[Tuple[np.ndarray, np.ndarray]], bias: bool
) -> np.ndarray:
    """Rows whose float64 gradient equals the original's (``F0``) bit for bit: the cheap parts
    (bias gradients, the last layers) first, the outer products only of the rows still equal."""
    rows = np.arange(len(F[0][0]))
    with np.errstate(all="ignore"):
        if bias:
            for (_, d), (_, d0) in zip(F, F0):
                rows = rows[np.all(d[rows] == d0, axis=1)]
        for (a, d), (a0, d0) in list(zip(F, F0))[::-1]:
            if rows.size:
                prod = a[rows][:, :, None] * d[rows][:, None, :]
                rows = rows[np.all(prod == (a0[:, :, None] * d0[:, None, :]), axis=(1, 2))]
    out = np.zeros(len(F[0][0]), bool)
    out[rows] = True
    return out


def _coincidence_runs(idx: np.ndarray, twin_at: Callable[[int], bool]) -> List[np.ndarray]:
    """The runs of neighbouring grid points in ``idx`` that are no twins: each run probed at its
    ends and middle; a run of twins is dropped, a mixed one decided point by point."""
    runs = []
    for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1):
        probes = {twin_at(int(i)) for i in (run[0], run[len(run) // 2], run[-1])}
        if probes == {False}:
            runs.append(run)
        elif probes != {True}:  # mixed: decide every point
            rest = np.array([i for i in run if not twin_at(int(i))], dtype=np.int64)
            if rest.size:
                runs += np.split(rest, np.flatnonzero(np.diff(rest) > 1) + 1)
    return runs


def b1_underflow_pairs(
    spec: M.ModelSpec, params: M.Params, x: np.ndarray, y: int, twins: Optional[List[Dict[str, Any]]] = None
) -> List[Dict[str, Any]]:
    """Scalings (c x, label) whose float64 gradient equals (x, y)'s bit for bit without being a
    twin: c = +-10^-6..10^6 (a log grid), every label. Each run of neighbouring grid points is
    one entry: ``label``, ``c_min``, ``c_max``, ``points``, and ``saturated`` (a softmax
    probability at x or at c x is exactly 0 or 1 in float64: the usual cause, since every
    saturated scaling then has the float gradient of a saturated x). A run is probed in exact
    arithmetic at its ends and middle: runs of twins (a dead input's scalings) are no
    coincidence and are left out, as are the certified twins' own c (within 1e-9: a twin's
    float gradient may round to the original's) and the c with c x = x."""
    x = np.asarray(x, np.float64).ravel()
    twins = b1_twins(spec, params, x, y) if twins is None else twins
    s64 = M.ModelSpec(spec.kind, spec.input_dim, spec.num_classes, spec.hidden, spec.bias, "float64")
    p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    grid = np.concatenate([-_C_GRID[::-1], _C_GRID])
    em = ExactModel(spec, params)
    ex = em.example(x)
    F0, sat0 = _float_factors(s64, p64, x[None, :], np.array([y]))
    out: List[Dict[str, Any]] = []
    for lab in range(spec.num_classes):
        F, sat = _float_factors(s64, p64, grid[:, None] * x[None, :], np.full(len(grid), lab))
        eq = _equal_rows(F, F0, s64.bias)
        eq &= ~np.all(grid[:, None] * x[None, :] == x[None, :], axis=1)  # x itself, under some label
        for t in twins:
            if t["label"] == lab and np.isfinite(t["c"]):
                eq &= ~(np.abs(grid - t["c"]) <= 1e-9 * max(1.0, abs(t["c"])))
        idx = np.flatnonzero(eq)
        if not idx.size:
            continue
        verdict: Dict[int, bool] = {}

        def twin_at(i: int, lab: int = lab, verdict: Dict[int, bool] = verdict) -> bool:
            if i not in verdict:
                verdict[i] = equal_in_reals(ex, y, em.example(grid[i] * x), lab)
            return verdict[i]

        for run in _coincidence_runs(idx, twin_at):
            out.append(
                {
                    "label": lab,
                    "c_min": float(grid[run[0]]),
                    "c_max": float(grid[run[-1]]),
                    "points": int(run.size),
                    "saturated": bool(sat0[0] or sat[run].any()),
                }
            )
    return out


# -- the analysis ---------------------------------------------------------------------------


@dataclass
class B1Analysis:
    """Batch size 1 (Proposition 1), with the edges certified: ``twins`` are the certified
    single-example twins (:func:`b1_twins`), ``distinct_onehot_forgery_exists`` says whether
    there is one, and ``min_onehot_gap`` is 0 exactly when there is. Otherwise it is the
    smallest distance to a one-hot vector of the soft label y'(c) = softmax(c z) - d/c that
    keeps the gradient at x' = c x (no bias), over a grid of c with |c - 1| >= exclude, rounded
    up so that it stays positive where float64 would round it to 0; inf where no soft label
    does (a bias, with a nonzero first-layer error). ``underflow_pairs``: float64 coincidences
    that are no twins (:func:`b1_underflow_pairs`)."""

    statement: str
    family: str
    distinct_onehot_forgery_exists: bool
    min_onehot_gap: float
    c_at_min: float
    twins: List[Dict[str, Any]] = field(default_factory=list)
    underflow_pairs: List[Dict[str, Any]] = field(default_factory=list)


def _onehot_gap(z: List[Fraction], y: int, grid: np.ndarray) -> Tuple[float, float]:
    """min over the grid of the distance of y'(c) to a one-hot vector, and where. float64 first;
    points it puts within 1e-6 of a one-hot vector are recomputed with 256 bits from the exact
    logits and rounded up: a gap float64 cannot resolve is not reported as 0."""
    from mpmath import mp

    zf = np.array([float(v) for v in z])
    n = len(z)
    eye = np.eye(n)

    def soft(zz):
        e = np.exp(zz - zz.max())
        return e / e.sum()

    d = soft(zf)
    d[y] -= 1.0
    best, best_c = math.inf, math.nan
    for c in grid:
        with np.errstate(all="ignore"):
            yp = soft(c * zf) - d / c
            gap = float(np.min(np.linalg.norm(eye - yp, axis=1)))
        if not gap > 1e-6:
            with mp.workprec(256):
                zm = [mp.mpf(v.numerator) / v.denominator for v in z]
                cm = mp.mpf(float(c))

                def soft_mp(w):
                    top = max(w)
                    e = [mp.exp(v - top) for v in w]
                    s = mp.fsum(e)
                    return [v / s for v in e]

                p0, pc = soft_mp(zm), soft_mp([cm * v for v in zm])
                dm = [p0[j] - (1 if j == y else 0) for j in range(n)]
                ypm = [pc[j] - dm[j] / cm for j in range(n)]
                gm = min(mp.sqrt(mp.fsum((int(j == k) - ypm[j]) ** 2 for j in range(n))) for k in range(n))
                gap = float(gm)
                if gap < gm:
                    gap = math.nextafter(gap, math.inf)
        if gap < best:
            best, best_c = gap, float(c)
    return best, best_c


def b1_analysis(
    spec: M.ModelSpec,
    params: M.Params,
    x: np.ndarray,
    y: int,
    c_grid: Optional[np.ndarray] = None,
    exclude: float = 0.05,
) -> B1Analysis:
    """Proposition 1 for one example, edges included: x = 0 without a bias (its gradient is 0
    under every label), dead ReLUs (with a bias: every other input with the same first-layer
    activations and the same label), saturated softmax (float64 coincidences, reported as
    ``underflow_pairs``, never as twins). ``distinct_onehot_forgery_exists`` is True exactly
    when a certified twin exists, and then ``min_onehot_gap`` is 0; otherwise it is positive."""
    x = np.asarray(x, np.float64).ravel()
    y = int(y)
    twins = b1_twins(spec, params, x, y)
    underflow = b1_underflow_pairs(spec, params, x, y, twins)
    ex = ExactModel(spec, params).example(x)
    d1_zero = spec.kind == "fcn" and d1_is_zero(ex, y)
    if twins:
        kinds = sorted({t["family"] for t in twins})
        shown = ", ".join(
            f"(c = {t['c']:.6g}, label {t['label']})" if np.isfinite(t["c"]) else f"(another input, label {t['label']})"
            for t in twins
        )
        if spec.kind == "logreg" and not spec.bias and not np.any(x):
            head = "x = 0 without a bias: the gradient x (p - e_y)^T is 0 for every label"
        elif d1_zero:
            head = (
                "the first-layer error is 0 (dead ReLUs): the input's gradient is 0, and every input with the "
                "same first-layer activations has the same gradient"
                + ("" if spec.bias else "; without a bias an all-dead layer makes it 0 under every label")
            )
        else:
            head = "no bias: positively homogeneous, so a scaling keeps the gradient exactly"
        return B1Analysis(
            f"{head}; certified twins: {shown}", "; ".join(kinds), True, 0.0, twins[0]["c"], twins, underflow
        )
    if spec.bias or d1_zero:
        why = (
            "the first-layer error is 0, but no other input with the same first-layer activations was found"
            if d1_zero
            else "grad b1 = d1 and grad W1 = x d1^T force x' = x, and the output bias the label"
        )
        return B1Analysis(
            f"{why}: no distinct forgery, one-hot or not", "x' = x only", False, math.inf, math.nan, [], underflow
        )
    grid = np.linspace(-5, 5, 2001) if c_grid is None else np.asarray(c_grid, np.float64)
    grid = grid[(grid != 0) & (np.abs(grid - 1) >= exclude)]
    if spec.kind != "logreg":
        grid = grid[grid > 0]  # an FCN is positively homogeneous only
    gap, c_at = _onehot_gap(ex.z, y, grid) if grid.size else (math.inf, math.nan)
    # a grid point at exactly 0 would be a twin the certificates missed; the contract is a
    # positive gap without a certified twin, so the smallest positive float stands for it
    gap = max(gap, math.ulp(0.0))
    return B1Analysis(
        "no bias: x' = c x with soft labels y'(c) = softmax(c z) - d/c; no one-hot label other than at c = 1 "
        "(the other classes' logits differ, or the scalar equation has no other root)",
        "x' = c x, c != 0" if spec.kind == "logreg" else "x' = c x, c > 0",
        False,
        gap,
        c_at,
        [],
        underflow,
    )
