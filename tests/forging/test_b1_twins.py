"""b = 1 exactly: every single-example twin (x', one-hot y') with the gradient of (x, e_y),
checked against a brute-force solver (a scan of the scaling c and of every label, refined)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from exactforge.forging import solvers as E
from exactforge.models import native as M


def brute_force(spec, params, x, y):
    """(c, label) with c != 1 or label != y whose gradient equals (x, y)'s to 1e-9 relative:
    x' = c x is forced by the outer product, so for every label a signed component of the
    gradient difference is scanned over c (both signs) for sign changes, each refined by brentq
    and kept when the whole gradient agrees."""
    from scipy.optimize import brentq

    g = E.gradient(spec, params, x[None, :], np.array([y]))
    scale = max(float(np.max(np.abs(g))), 1e-300)
    k = int(np.argmax(np.abs(g)))

    def diff(c, lab):
        return E.gradient(spec, params, (c * x)[None, :], np.array([lab])) - g

    grid = np.concatenate([-np.geomspace(200, 1e-3, 500), np.geomspace(1e-3, 200, 500)])
    found = []
    for lab in range(spec.num_classes):
        vals = np.array([diff(c, lab)[k] for c in grid])
        for i in range(len(grid) - 1):
            if np.sign(grid[i]) != np.sign(grid[i + 1]) or vals[i] * vals[i + 1] > 0:
                continue
            c = (
                grid[i]
                if vals[i] == 0
                else brentq(lambda t: diff(t, lab)[k], grid[i], grid[i + 1], xtol=1e-300, rtol=1e-15)
            )
            if np.max(np.abs(diff(c, lab))) / scale < 1e-9 and not (lab == y and abs(c - 1) < 1e-6):
                found.append((float(c), lab))
    return found


def matches(found, twins):
    return all(any(lab == t["label"] and abs(c - t["c"]) < 1e-5 * max(1, abs(c)) for t in twins) for c, lab in found)


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(["logreg", "fcn"]),
    st.booleans(),
    st.integers(2, 5),
    st.integers(2, 4),
    st.integers(0, 10_000),
)
def test_b1_twins_are_every_exact_single_example_forgery(kind, bias, d, n, seed):
    hidden = (4,) if kind == "fcn" else ()
    spec = M.ModelSpec(kind, d, n, hidden, bias=bias, dtype="float64")
    params = M.init_params(spec, seed)
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(d) * 2, int(rng.integers(0, n))
    if kind == "fcn":  # every ReLU dead: the degenerate case b1_analysis states apart (a whole set of twins)
        assume(np.any(x @ params["W1"] + (params["b1"] if bias else 0) > 0))
    twins = E.b1_twins(spec, params, x, y)
    g = E.gradient(spec, params, x[None, :], np.array([y]))
    for t in twins:  # each is exact
        assert t["gradient_difference"] <= 1e-12 * max(1.0, float(np.max(np.abs(g)) * abs(t["c"])))
    found = brute_force(spec, params, x, y)
    assert matches(found, twins), (found, twins)
    assert len(found) >= len(twins) or not twins  # the scan sees each twin within its range
    a = E.b1_analysis(spec, params, x, y)
    assert a.distinct_onehot_forgery_exists == bool(twins)


def test_two_classes_without_bias_always_have_the_mirror_twin_and_often_a_second_scaling():
    spec = M.ModelSpec("logreg", 5, 2, bias=False, dtype="float64")
    params = M.init_params(spec, 0)
    x = np.random.default_rng(0).standard_normal(5)
    twins = E.b1_twins(spec, params, x, 0)
    assert any(t["c"] == -1.0 and t["label"] == 1 for t in twins)


@pytest.mark.slow
def test_more_classes_have_a_twin_exactly_when_the_other_logits_tie():
    spec = M.ModelSpec("logreg", 4, 3, bias=False, dtype="float64")
    W = np.random.default_rng(1).standard_normal((4, 3))
    W[:, 2] = W[:, 1]  # classes 1 and 2 tie for every input
    twins = E.b1_twins(spec, {"W1": W}, np.array([1.0, -0.5, 0.3, 2.0]), 0)
    x = np.array([1.0, -0.5, 0.3, 2.0])
    found = brute_force(spec, {"W1": W}, x, 0)
    assert matches(found, twins)
    W[:, 2] += 0.1  # no tie: only c = 1
    assert E.b1_twins(spec, {"W1": W}, x, 0) == []
