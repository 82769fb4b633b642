"""Exact forging: every construction's gradient equals the original's (float64, relative
1e-12), the batch is distinct, and the structured nullspace is the Kronecker one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exactforge.cli import main
from exactforge.data import load_digits
from exactforge.forging import solvers as E
from exactforge.models import native as M
from exactforge.trace.record import record_native

DIGITS = load_digits()


def _rel_grad_err(spec, params, X, y, Xf, Yf):
    g0 = E.gradient(spec, params, X, y)
    g1 = E.gradient(spec, params, Xf, Yf)
    return np.linalg.norm(g1 - g0) / max(np.linalg.norm(g0), 1e-300)


@st.composite
def fcn_case(draw):
    d0 = draw(st.integers(3, 12))
    hidden = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=2)))
    n = draw(st.integers(2, 4))
    b = draw(st.integers(2, 12))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 10_000))
    kind = "fcn" if hidden else "logreg"
    spec = M.ModelSpec(kind, d0, n, hidden, bias, "float64")
    rng = np.random.default_rng(seed)
    params = M.init_params(spec, seed)
    X = rng.random((b, d0))
    y = rng.integers(0, n, b)
    return spec, params, X, y, seed


@given(case=fcn_case(), nearest=st.booleans())
def test_nullspace_forgeries_have_the_same_gradient(case, nearest):
    spec, params, X, y, seed = case
    target = np.random.default_rng(seed + 1).random(X.shape) if nearest else "random"
    f = E.forge_nullspace(spec, params, X, y, target=target, seed=seed)
    assert _rel_grad_err(spec, params, X, y, f.X, f.Y) <= 1e-12
    P = f.X - X
    if f.info["nullity"] > 0 and np.abs(P).max() > 1e-9:
        assert E._distinct(X, y, f.X, f.Y)
    assert np.array_equal(f.Y, y)  # labels stay one-hot


@settings(max_examples=15)
@given(case=fcn_case())
def test_structured_nullity_equals_kronecker_nullity(case):
    spec, params, X, y, _ = case
    W1, D1 = E._layer1(spec, params, X, y)
    U, V = E.fcn_perturbation_basis(W1, D1)
    N = E.kronecker_nullspace(W1, D1)
    assert U.shape[1] * V.shape[1] == N.shape[1]
    # and every structured basis element lies in the Kronecker nullspace
    if U.shape[1] and V.shape[1]:
        P = np.outer(U[:, 0], V[:, 0])
        K = E._kronecker(W1, D1)
        assert np.linalg.norm(K @ P.reshape(-1, order="F")) <= 1e-10 * max(1.0, np.linalg.norm(K))


def test_projection_equals_paper_reference():
    spec = M.ModelSpec("fcn", 10, 3, (3,), dtype="float64")
    params = M.init_params(spec, 2)
    rng = np.random.default_rng(0)
    X, y, Xt = rng.random((6, 10)), rng.integers(0, 3, 6), rng.random((6, 10))
    f = E.forge_nullspace(spec, params, X, y, target=Xt)
    W1, D1 = E._layer1(spec, params, X, y)
    P_ref = E.kronecker_project(W1, D1, (Xt - X).T)
    assert np.allclose(f.X - X, P_ref.T, atol=1e-10)


def test_paper_example_sizes():
    spec = M.ModelSpec("fcn", 64, 10, (8,))
    params = M.init_params(spec, 0)
    X, y = DIGITS.X[:32], DIGITS.y[:32]
    f = E.forge_nullspace(spec, params, X, y)
    assert f.info["paper_bound"] == 64 * 32 - 8 * 64 - 8 * 32 == 1280
    assert f.info["nullity"] >= f.info["paper_bound"]


@given(seed=st.integers(0, 10_000), b=st.integers(4, 30), bias=st.booleans(), nearest=st.booleans())
def test_error_matrix_forgeries_have_the_same_gradient(seed, b, bias, nearest):
    spec = M.ModelSpec("logreg", 16, 4, bias=bias, dtype="float64")
    rng = np.random.default_rng(seed)
    params = M.init_params(spec, seed)
    X, y = rng.random((b, 16)), rng.integers(0, 4, b)
    f = E.forge_error_matrix(spec, params, X, y, target=rng.random((b, 16)) if nearest else None, seed=seed)
    assert _rel_grad_err(spec, params, X, y, f.X, f.Y) <= 1e-12
    assert np.allclose(f.Y.sum(axis=1), 1.0)  # label rows sum to v = 1
    assert E._distinct(X, y, f.X, f.Y)


def test_error_matrix_needs_logistic_regression():
    spec = M.ModelSpec("fcn", 64, 10, (4,))
    with pytest.raises(ValueError, match="logistic"):
        E.forge_error_matrix(spec, M.init_params(spec), DIGITS.X[:5], DIGITS.y[:5])


@pytest.mark.slow
def test_onehot_variant_reports_its_residual():
    spec = M.ModelSpec("logreg", 64, 10)
    params = M.init_params(spec, 0)
    X, y = DIGITS.X[:20], DIGITS.y[:20]
    f = E.forge_onehot(spec, params, X, y, start=DIGITS.X[100:120], max_nfev=30)
    assert f.Y.ndim == 1 and np.isfinite(f.info["residual_l2"])
    g_err = np.linalg.norm(E.gradient(spec, params, f.X, f.Y) - E.gradient(spec, params, X, y))
    assert np.isclose(g_err, f.info["residual_l2"], rtol=1e-6, atol=1e-12)
    start_err = np.linalg.norm(E.gradient(spec, params, DIGITS.X[100:120], y) - E.gradient(spec, params, X, y))
    assert f.info["residual_l2"] < start_err


def test_b1_analysis():
    spec = M.ModelSpec("logreg", 64, 10)
    params = M.init_params(spec, 0)
    a = E.b1_analysis(spec, params, DIGITS.X[0], DIGITS.y[0])
    assert not a.distinct_onehot_forgery_exists and "x' = x" in a.family
    nb = M.ModelSpec("logreg", 64, 10, bias=False)
    a = E.b1_analysis(nb, {"W1": params["W1"]}, DIGITS.X[0], DIGITS.y[0])
    assert not a.distinct_onehot_forgery_exists and a.min_onehot_gap > 1e-3
    # the family itself: (c x, softmax(c W^T x) - d / c) has the same gradient with soft labels
    x, yl, W = DIGITS.X[:1].astype(np.float64), DIGITS.y[:1], params["W1"].astype(np.float64)
    nb64 = M.ModelSpec("logreg", 64, 10, bias=False, dtype="float64")
    z = x @ W
    s = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    d = s - np.eye(10)[yl]
    c = 2.5
    zc = c * z
    sc = np.exp(zc - zc.max()) / np.exp(zc - zc.max()).sum()
    assert _rel_grad_err(nb64, {"W1": W}, x, yl, c * x, sc - d / c) < 1e-12


def test_report_distinguishes_domains_and_errors():
    spec = M.ModelSpec("logreg", 64, 10)
    params = M.init_params(spec, 0)
    X, y = DIGITS.X[:50], DIGITS.y[:50]
    f = E.forge_error_matrix(spec, params, X, y, target=DIGITS.X[100:150])
    r = E.forgery_report(spec, params, X, y, f, lr=0.01, levels=16, torch_permutations=5)
    assert r.distinct and not r.labels_one_hot and 0 < r.in_range_fraction < 1
    assert r.approx_error_f64 < 1e-15 < r.approx_error < 1e-6
    assert r.repro_error_torch > 0 and r.ratio_to_torch_repro < 100 and r.repro_error_native == 0.0
    same = E.ForgedBatch(X.copy(), y.copy(), "identity")
    r2 = E.forgery_report(spec, params, X, y, same, lr=0.01, levels=16, torch_permutations=0)
    assert not r2.distinct and r2.in_range_fraction == 1.0 and r2.grid_distance_max < 1e-6 and r2.approx_error == 0.0


@pytest.mark.parametrize("kind", ["box-lp", "grid-milp"])
def test_in_domain_search_answers(kind):
    spec = M.ModelSpec("fcn", 16, 3, (2,))
    params = M.init_params(spec, 1)
    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 3, (8, 16)) / 2.0, rng.integers(0, 3, 8)
    r = E.search_in_domain(spec, params, X, y, kind=kind, levels=2, time_limit=5)
    assert r.status in ("found", "infeasible", "timeout")
    if kind == "box-lp":
        assert r.status == "found" and r.residual < 1e-12
        assert np.all((r.X >= -1e-9) & (r.X <= 1 + 1e-9)) and np.abs(r.X - X).max() > 1e-9
    tiny = E.search_in_domain(
        M.ModelSpec("logreg", 4, 3),
        M.init_params(M.ModelSpec("logreg", 4, 3), 0),
        X[:2, :4],
        y[:2],
        kind=kind,
        levels=2,
        time_limit=5,
    )
    assert tiny.status == "infeasible"  # nullity 0: no distinct batch with this gradient at all


def test_forge_cli(tmp_path):
    tr = str(tmp_path / "tr")
    record_native(tr, M.ModelSpec("fcn", 64, 10, (16,)), DIGITS, steps=3, batch_size=40)
    out, js, fig = str(tmp_path / "forged"), str(tmp_path / "f.json"), str(tmp_path / "f.png")
    assert (
        main(
            [
                "forge",
                tr,
                "--step",
                "1",
                "--method",
                "nullspace",
                "--target",
                "nearest",
                "--out",
                out,
                "--json",
                js,
                "--figure",
                fig,
                "--permutations",
                "3",
            ]
        )
        == 0
    )
    rep = json.load(open(js))
    assert json.load(open(tmp_path / "forged" / "report.json")) == rep  # --out is a folder: batch, report, figure
    assert open(tmp_path / "forged" / "forgery.png", "rb").read(4) == b"\x89PNG"
    for key in ("approx_error", "approx_error_f64", "distinct", "in_range_fraction", "nullity", "paper_bound"):
        assert key in rep
    assert rep["distinct"] and rep["approx_error_f64"] < 1e-15
    from safetensors.numpy import load_file

    f = load_file(str(tmp_path / "forged" / "forgery.safetensors"))
    assert f["X"].shape == (40, 64) and f["Y"].dtype == np.int64
    assert open(fig, "rb").read(4) == b"\x89PNG"
    assert main(["forge", tr, "--step", "1", "--method", "error-matrix"]) == 2  # an FCN trace
    assert main(["forge", tr, "--step", "9"]) == 2
