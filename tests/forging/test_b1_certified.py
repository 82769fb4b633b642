"""b = 1 at the edges: every twin b1_twins reports is checked here by means of its own, in exact
arithmetic: sympy's rationals and exponentials for a ``rational`` twin (the gradients'
difference times the two softmax denominators expands to 0), mpmath's interval arithmetic for
the bracket of a ``root`` twin. Dead ReLUs, with and without a bias, saturated softmax and the
consistency of exists with the one-hot gap are each a property."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from exactforge.forging import solvers as E
from exactforge.models import native as M

sp = pytest.importorskip("sympy")


def _q(v) -> "sp.Rational":
    f = Fraction(float(v))
    return sp.Rational(f.numerator, f.denominator)


def sym_gradient(spec, params, x, y):
    """(the gradient times the softmax denominator S, S): sympy expressions, written from the
    backpropagation formulas alone (no code shared with exactforge)."""
    L = spec.num_layers
    W = [[[_q(v) for v in row] for row in np.asarray(params[f"W{i}"], np.float64)] for i in range(1, L + 1)]
    B = [
        [_q(v) for v in np.asarray(params[f"b{i}"], np.float64)] if spec.bias else [0] * spec.sizes[i]
        for i in range(1, L + 1)
    ]
    a = [_q(v) for v in x]
    acts, zs = [a], []
    for i in range(L):
        z = [sum(a[j] * W[i][j][k] for j in range(len(a))) + B[i][k] for k in range(len(B[i]))]
        zs.append(z)
        if i < L - 1:
            a = [v if v > 0 else sp.Integer(0) for v in z]
            acts.append(a)
    e = [sp.exp(v) for v in zs[-1]]
    S = sum(e)
    d = [e[j] - (S if j == y else 0) for j in range(len(e))]  # S (p - e_y)
    errs = [d]
    for i in range(L - 1, 0, -1):
        d = [
            sum(W[i][r][k] * d[k] for k in range(len(d))) if zs[i - 1][r] > 0 else sp.Integer(0)
            for r in range(len(W[i]))
        ]
        errs.insert(0, d)
    g = []
    for i in range(L):
        g += [u * v for u in acts[i] for v in errs[i]]
        if spec.bias:
            g += errs[i]
    return g, S


def equal_in_sympy(spec, params, x, y, x2, y2) -> bool:
    g, S = sym_gradient(spec, params, x, y)
    g2, S2 = sym_gradient(spec, params, x2, y2)
    return all(sp.expand(u * S2 - v * S) == 0 for u, v in zip(g, g2))


def root_bracket_holds(spec, params, x, y, t) -> bool:
    """A ``root`` twin: no bias, the other classes' logits tie exactly, and g(s) = (e^delta + k) s
    - k - e^(s delta) takes opposite signs at the bracket's ends (interval arithmetic), away
    from 1. The mirror twin (two classes, the other label) solves the same equation."""
    from mpmath import iv

    assert not spec.bias
    Ws = [np.asarray(params[f"W{i}"], np.float64) for i in range(1, spec.num_layers + 1)]
    a = [Fraction(float(v)) for v in x]
    for i, W in enumerate(Ws):
        a = [sum((a[j] * Fraction(float(W[j, k])) for j in range(len(a))), Fraction(0)) for k in range(W.shape[1])]
        if i < len(Ws) - 1:
            a = [v if v > 0 else Fraction(0) for v in a]
    others = [j for j in range(len(a)) if j != y]
    if any(a[j] != a[others[0]] for j in others):
        return False
    delta, k = a[y] - a[others[0]], len(others)
    lo, hi = sorted(abs(v) for v in t["c_interval"])
    iv.prec = 300
    d = iv.mpf(delta.numerator) / delta.denominator

    def g_of(s):
        ss = iv.mpf(s.numerator) / s.denominator
        return (iv.exp(d) + k) * ss - k - iv.exp(ss * d)

    glo, ghi = g_of(lo), g_of(hi)
    opposite = (glo.b < 0 and ghi.a > 0) or (glo.a > 0 and ghi.b < 0)
    right_side = (t["label"] == y and t["c"] >= 0) or (t["label"] != y and t["c"] <= 0)
    return opposite and right_side and 0 < lo < hi and not lo <= 1 <= hi


def certified(spec, params, x, y, t) -> bool:
    if t["certificate"] == "rational":
        return equal_in_sympy(spec, params, x, y, t["x"], t["label"])
    return t["certificate"] == "root" and root_bracket_holds(spec, params, x, y, t)


def model(kind, bias, d, n, seed, hidden=(4,)):
    spec = M.ModelSpec(kind, d, n, hidden if kind == "fcn" else (), bias=bias, dtype="float64")
    return spec, M.init_params(spec, seed)


def kill_first_layer(spec, params, x):
    """Flip each first-layer unit's weights so that it is dead at x (and keep biases <= 0)."""
    W1 = params["W1"]
    W1 *= np.where(x @ W1 > 0, -1.0, 1.0)
    if spec.bias:
        params["b1"] = -np.abs(params["b1"]) - 0.1
    assume(np.all(x @ W1 + (params["b1"] if spec.bias else 0) < 0))


instances = st.tuples(
    st.sampled_from(["logreg", "fcn"]),
    st.booleans(),
    st.integers(2, 4),
    st.integers(2, 3),
    st.integers(0, 10_000),
    st.sampled_from([1.0, 1.0, 40.0, 400.0]),  # 400: logits in the hundreds, softmax saturated in float64
    st.sampled_from(["random", "zero", "dead"]),
)


def build(inst):
    kind, bias, d, n, seed, scale, shape = inst
    spec, params = model(kind, bias, d, n, seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d) * scale
    if shape == "zero":
        x[:] = 0.0
    elif shape == "dead" and kind == "fcn":
        kill_first_layer(spec, params, x)
    return spec, params, x, int(rng.integers(0, n))


@settings(max_examples=30, deadline=None)
@given(instances)
def test_every_reported_twin_is_equal_in_exact_arithmetic(inst):
    spec, params, x, y = build(inst)
    for t in E.b1_twins(spec, params, x, y):
        assert certified(spec, params, x, y, t), t
        assert t["x_exact"] == (t["certificate"] == "rational")
        assert t["label"] != y or not np.array_equal(t["x"], x) or t["certificate"] == "root"


@settings(max_examples=20, deadline=None)
@given(st.booleans(), st.integers(2, 4), st.integers(2, 3), st.integers(0, 10_000), st.integers(0, 3))
def test_a_constructed_dead_unit_twin_is_found(bias, d, n, seed, j):
    """Every first-layer unit dead at x: x' = x with coordinate j moved (still all dead) has
    x's gradient exactly. With a bias only under x's label (the output bias sees the label);
    without one under every label (an all-dead layer makes the whole gradient 0)."""
    spec, params = model("fcn", bias, d, n, seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d)
    kill_first_layer(spec, params, x)
    y = int(rng.integers(0, n))
    z1 = x @ params["W1"] + (params["b1"] if bias else 0)
    j = j % d
    w = params["W1"][j]
    room = np.min(-z1[w > 0] / w[w > 0]) if np.any(w > 0) else 1.0
    xp = x.copy()
    xp[j] += min(room / 2, 1.0)
    assume(xp[j] != x[j])
    assert equal_in_sympy(spec, params, x, y, xp, y)  # the constructed twin is one
    assert bias == (not equal_in_sympy(spec, params, x, y, x, (y + 1) % n))
    twins = E.b1_twins(spec, params, x, y)
    others = [t for t in twins if not np.array_equal(t["x"], x)]
    assert others and all(t["certificate"] == "rational" for t in others)
    labels = {t["label"] for t in twins}
    assert labels == ({y} if bias else set(range(n)))
    a = E.b1_analysis(spec, params, x, y)
    assert a.distinct_onehot_forgery_exists and a.min_onehot_gap == 0.0


@settings(max_examples=15, deadline=None)
@given(st.booleans(), st.integers(3, 4), st.integers(2, 3), st.integers(0, 10_000))
def test_a_unit_dead_at_both_inputs_is_no_twin_while_another_lives(bias, d, n, seed):
    """Coordinate 0 feeds only unit 0, dead at x; unit 1 lives. Moving coordinate 0 keeps every
    activation, yet grad W1's row 0 is x_0 d1^T with d1 != 0 on the live unit: no twin."""
    spec, params = model("fcn", bias, d, n, seed, hidden=(2,))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d)
    W1 = params["W1"]
    W1[0, 1] = 0.0
    W1[:, 0] *= -1.0 if x @ W1[:, 0] > 0 else 1.0
    W1[:, 1] *= -1.0 if x @ W1[:, 1] < 0 else 1.0
    if bias:
        params["b1"][:] = [-abs(params["b1"][0]), abs(params["b1"][1])]
    z1 = x @ W1 + (params["b1"] if bias else 0)
    assume(z1[0] < 0 < z1[1] and x[0] != 0)
    y = int(rng.integers(0, n))
    xp = x.copy()
    xp[0] += 0.5 * (-z1[0] / W1[0, 0]) if W1[0, 0] > 0 else 0.5
    assert not equal_in_sympy(spec, params, x, y, xp, y)
    for t in E.b1_twins(spec, params, x, y):
        assert not np.array_equal(t["x"], xp)
        assert certified(spec, params, x, y, t)


@pytest.mark.slow
@settings(max_examples=20, deadline=None)
@given(st.sampled_from(["logreg", "fcn"]), st.booleans(), st.integers(2, 4), st.integers(2, 3), st.integers(0, 10_000))
def test_saturated_softmax_pairs_are_never_twins(kind, bias, d, n, seed):
    """Logits in the thousands: float64 rounds the probabilities to 0 and 1, so scalings of x
    have x's float gradient. They are underflow pairs, and none is a twin in exact arithmetic."""
    spec, params = model(kind, bias, d, n, seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d) * 3000
    y = int(rng.integers(0, n))
    z = M.forward(spec, params, x[None, :]).Z[-1][0]
    top = np.sort(z)
    assume(top[-1] - top[-2] > 800)
    y = int(np.argmax(z))  # the saturated class: p = e_y exactly in float64, so the gradient rounds to 0
    a = E.b1_analysis(spec, params, x, y)
    for t in a.twins:
        assert certified(spec, params, x, y, t), t
    assert a.underflow_pairs, "the float64 coincidences are reported"
    for u in a.underflow_pairs[:3]:
        assert u["saturated"]
        for c in {u["c_min"], u["c_max"]}:
            assert not equal_in_sympy(spec, params, x, y, c * x, u["label"]), (u, c)
        assert not any(t["label"] == u["label"] and u["c_min"] <= t["c"] <= u["c_max"] for t in a.twins)


@settings(max_examples=30, deadline=None)
@given(instances)
def test_exists_and_the_onehot_gap_agree(inst):
    spec, params, x, y = build(inst)
    a = E.b1_analysis(spec, params, x, y)
    assert a.distinct_onehot_forgery_exists == bool(a.twins)
    assert not math.isnan(a.min_onehot_gap)
    assert (a.min_onehot_gap == 0.0) == a.distinct_onehot_forgery_exists
    assert a.min_onehot_gap >= 0.0


def test_the_saturated_two_class_example_of_the_old_report():
    """Two classes, no bias, logits about 900 apart: float64 had every scaling c >= 1 as an
    exact twin (h(c) = 0 - 0). In exact arithmetic there are three: (-x, other label), and the
    second root c* ~ 2 e^-900 with both labels, far below float64's range."""
    spec = M.ModelSpec("logreg", 3, 2, bias=False, dtype="float64")
    W = np.array([[1.0, -1.0], [0.5, 0.25], [-2.0, 1.0]])
    x = np.array([1.0, 0.5, -0.25]) * 300
    a = E.b1_analysis(spec, {"W1": W}, x, 0)
    assert sorted((t["label"], t["certificate"]) for t in a.twins) == [(0, "root"), (1, "rational"), (1, "root")]
    root = next(t for t in a.twins if t["label"] == 0)
    lo, hi = root["c_interval"]
    assert 0 < lo < hi < Fraction(1, 10**300) and root["c"] == 0.0 and not root["x_exact"]
    assert sum(u["points"] for u in a.underflow_pairs) > 1000
    assert a.distinct_onehot_forgery_exists and a.min_onehot_gap == 0.0


def test_no_twin_means_a_positive_gap_even_where_float64_rounds_it_to_zero():
    """Three classes whose other logits do not tie: no twin; the soft-label family comes within
    e^-(hundreds) of a one-hot label, which float64 computes as exactly 0."""
    spec = M.ModelSpec("logreg", 3, 3, bias=False, dtype="float64")
    W = np.array([[1.0, -1.0, -1.5], [0.5, 0.25, 0.25], [-2.0, 1.0, 1.0]])
    x = np.array([1.0, 0.5, -0.25]) * 300
    a = E.b1_analysis(spec, {"W1": W}, x, 0)
    assert not a.twins and not a.distinct_onehot_forgery_exists
    assert 0.0 < a.min_onehot_gap < 1e-100
