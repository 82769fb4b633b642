"""Gradient inversion: the tensor method recovers random unit inputs from a wide two-layer
network's output-layer gradient, its error shrinks like sqrt(d/m), and iDLG finds the labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exactforge.invert import conditions, match, recover_labels, tensor_reconstruct, tensor_reconstruct_details
from exactforge.invert.tensor import _sigma


def _problem(d, b, m, act, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((b, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    c = rng.choice([-1.0, 1.0], b) * rng.uniform(0.5, 1.5, b)  # loss derivatives of either sign
    W = rng.standard_normal((m, d))
    return X, W, _sigma(act, W @ X.T) @ c


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_random_unit_inputs_are_recovered(act):
    X, W, g = _problem(10, 3, 200_000, act, seed=1)
    est = tensor_reconstruct(W, g, 3, activation=act)
    assert est.shape == (3, 10)
    _, cos = match(est, X)
    assert cos.min() >= 0.9, cos


@pytest.mark.slow
def test_scale_is_recovered_where_it_is_identifiable():
    X, W, g = _problem(10, 3, 200_000, "tanh", seed=2)
    X = X * np.array([[0.6], [1.0], [1.5]])
    g = _sigma("tanh", W @ X.T) @ np.array([1.0, -0.8, 1.2])
    est = tensor_reconstruct(W, g, 3, activation="tanh")
    order, cos = match(est, X)
    assert cos.min() >= 0.95
    ratio = np.linalg.norm(est, axis=1) / np.linalg.norm(X[order], axis=1)
    assert np.all(np.abs(ratio - 1) < 0.15), ratio
    # ReLU is positively homogeneous: unit norm, the right sign (the fit to g picks it)
    Xr, Wr, gr = _problem(10, 3, 200_000, "relu", seed=3)
    est = tensor_reconstruct(Wr, gr, 3, activation="relu")
    order, cos = match(est, Xr)
    assert np.allclose(np.linalg.norm(est, axis=1), 1.0)
    assert np.all(np.sum(est * Xr[order], axis=1) > 0.9)


@pytest.mark.slow
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_error_shrinks_like_sqrt_d_over_m(act):
    """The slides' O(sqrt(d/m)): 16x more hidden units, about 4x less error (a slope of -1/2
    in log-log, fitted over 3 sizes and 4 draws each)."""
    ms = [12_500, 50_000, 200_000]
    errs = []
    for m in ms:
        e = []
        for seed in range(4):
            X, W, g = _problem(10, 3, m, act, seed=10 + seed)
            _, cos = match(tensor_reconstruct(W, g, 3, activation=act), X)
            e.append(np.sqrt(np.mean(1 - cos**2)))  # sine of the angle, the estimate's distance
        errs.append(np.median(e))
    slope = np.polyfit(np.log(ms), np.log(errs), 1)[0]
    assert -0.85 <= slope <= -0.3, (errs, slope)


@pytest.mark.slow
def test_refinement_by_gradient_matching_does_not_lose_the_estimate():
    X, W, g = _problem(10, 3, 50_000, "tanh", seed=4)
    plain = tensor_reconstruct_details(W, g, 3, activation="tanh")
    refined = tensor_reconstruct_details(W, g, 3, activation="tanh", refine=50)
    assert refined.residual <= plain.residual + 1e-9
    assert match(refined.X, X)[1].min() >= match(plain.X, X)[1].min() - 0.01


@pytest.mark.slow
def test_details_say_when_the_conditions_fail():
    assert conditions(200, 10, 3) == []
    assert any("m = 5" in n for n in conditions(5, 10, 3))
    assert any("b = 12" in n for n in conditions(200, 10, 12))
    X, W, g = _problem(10, 3, 20_000, "relu", seed=5)
    det = tensor_reconstruct_details(W, g, 3)
    assert det.span_gap > 2 and 0 <= det.residual < 1 and det.order == 4
    # a batch of 3 read as 5: the gap after the 5th eigenvalue is small, the fit is worse
    assert tensor_reconstruct_details(W, g, 5).span_gap < det.span_gap


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"b": 0}, "b"),
        ({"b": 11}, "b"),
        ({"activation": "gelu"}, "activation"),
        ({"g": np.zeros(7)}, "g"),
        ({"W": np.zeros(10)}, "W"),
    ],
)
def test_bad_input_names_the_argument(kw, word):
    X, W, g = _problem(10, 3, 100, "relu", seed=0)
    args = {"W": W, "g": g, "b": 3, **kw}
    with pytest.raises(ValueError, match=word):
        tensor_reconstruct(args.pop("W"), args.pop("g"), args.pop("b"), **args)


def _net(d=20, k=10, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, 32), torch.nn.ReLU(), torch.nn.Linear(32, k))


def _grads(model, X, y):
    loss = torch.nn.functional.cross_entropy(model(X), y)
    return [t.detach() for t in torch.autograd.grad(loss, list(model.parameters()))]


@pytest.mark.parametrize("seed", range(5))
def test_idlg_recovers_the_label_of_one_example(seed):
    model = _net(seed=seed)
    x = torch.randn(1, 20)
    y = torch.tensor([seed % 10])
    assert recover_labels(model, _grads(model, x, y), 1) == [seed % 10]


def test_idlg_recovers_the_labels_of_a_batch_with_distinct_labels():
    model = _net(seed=3)
    X = torch.randn(4, 20)
    y = torch.tensor([7, 2, 5, 0])
    assert sorted(recover_labels(model, _grads(model, X, y), 4)) == [0, 2, 5, 7]


def test_dlg_reconstructs_one_example_of_a_small_model():
    from exactforge.invert import dlg

    model = _net(seed=1)
    x = torch.rand(1, 20)
    y = torch.tensor([4])
    res = dlg(model, _grads(model, x, y), 1, input_shape=(20,), steps=200, seed=0)
    assert res.labels == [4]
    assert match(res.X, x.numpy())[1][0] > 0.95 and res.gradient_distance < 1e-3


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    from exactforge.cli import main

    d = str(tmp_path_factory.mktemp("inv") / "t")
    assert (
        main(
            [
                "train",
                "--engine",
                "native",
                "--model",
                "fcn",
                "--hidden",
                "32",
                "--batch-size",
                "2",
                "--steps",
                "3",
                "--out",
                d,
                "--quiet",
            ]
        )
        == 0
    )
    return d


def test_cli_invert_dlg_reconstructs_the_claimed_batch(small_trace, tmp_path):
    import json

    from exactforge.cli import main
    from exactforge.trace import Trace

    batch = [int(i) for i in Trace.open(small_trace).batch(1)]
    out, fig = str(tmp_path / "inv.json"), str(tmp_path / "inv.png")
    assert (
        main(
            [
                "invert",
                small_trace,
                "--step",
                "1",
                "--method",
                "dlg",
                "--example",
                str(batch[0]),
                "--json",
                out,
                "--figure",
                fig,
                "--quiet",
            ]
        )
        == 0
    )
    rep = json.load(open(out))
    assert sorted(rep["matched"]) == sorted(batch) and min(rep["matched_cos"]) > 0.95
    assert rep["nearest_in_batch"] == 2 and rep["example_consistent"] is True
    from exactforge.data import load_digits

    assert sorted(rep["labels"]) == sorted(int(load_digits().y[i]) for i in batch)
    import os

    assert os.path.getsize(fig) > 1000


def test_cli_invert_tensor_explains_why_it_does_not_apply(small_trace, tmp_path, capsys):
    import json

    from exactforge.cli import main

    out = str(tmp_path / "inv.json")
    assert main(["invert", small_trace, "--step", "1", "--method", "tensor", "--json", out]) == 2
    err = capsys.readouterr().err
    assert "not Gaussian" in err and "m = 32 < d = 65" in err and "--method dlg" in err
    rep = json.load(open(out))
    assert rep["applicable"] is False and len(rep["reasons"]) == 2 and rep["reconstructions"] == []
    assert main(["invert", small_trace, "--step", "1", "--method", "tensor", "--force", "--json", out, "--quiet"]) == 0
    assert len(json.load(open(out))["reconstructions"]) == 2


def test_tensor_applicability_accepts_a_gaussian_layer():
    from exactforge.invert.forensics import tensor_applicability

    rng = np.random.default_rng(0)
    assert tensor_applicability(rng.standard_normal((5000, 20)), rng.standard_normal(5000), 4) == []
    uniform = tensor_applicability(rng.uniform(-1, 1, (5000, 20)), None, 4)
    assert len(uniform) == 1 and "kurtosis 1.8" in uniform[0]


def test_idlg_counts_repeated_labels_in_a_batch():
    model = _net(seed=5)
    X = torch.randn(12, 20)
    y = torch.tensor([1, 1, 1, 4, 4, 9, 9, 9, 9, 0, 2, 2])
    assert sorted(recover_labels(model, _grads(model, X, y), 12)) == sorted(y.tolist())


@pytest.mark.parametrize("hidden, forgery, tensor", [(32, True, False), (128, False, True)])
def test_where_the_tensor_conditions_hold_the_nullspace_is_empty(hidden, forgery, tensor):
    # digits, d = 64, b = 64: with fewer hidden units than pixels, null(W1^T) has 64 - m
    # dimensions and the error matrix's has b - rank >= b - m, so nullspace forgeries exist; with
    # m >= d the first factor is empty: no nullspace forgery, and the tensor method's m >= d holds
    from exactforge.data import load_digits
    from exactforge.invert import identifiability

    digits = load_digits()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    idx = np.random.default_rng(0).choice(len(digits), 64, replace=False)
    rep = identifiability(net, digits.X[idx], digits.y[idx])
    assert rep["null_W1T"] == max(0, 64 - hidden) and rep["null_D1T"] >= 64 - min(64, hidden)
    assert rep["nullspace_forgery_exists"] is forgery and rep["tensor_conditions_hold"] is tensor


def test_model_spec_init_is_strict_and_old_manifests_are_unchanged():
    from exactforge.models import ModelSpec, init_params

    spec = ModelSpec("fcn", 64, 10, (32,))
    assert "init" not in spec.to_dict()  # a uniform spec writes what it wrote before 'init' existed
    g = ModelSpec("fcn", 64, 10, (32,), init="gaussian")
    assert ModelSpec.from_dict(g.to_dict()) == g and ModelSpec.from_dict(spec.to_dict()) == spec
    for bad in ("normal", 1, None):
        with pytest.raises(ValueError, match="init"):
            ModelSpec.from_dict({**spec.to_dict(), "init": bad})
    w = init_params(ModelSpec("fcn", 64, 4000, (4000,), init="gaussian"), 0)["W1"].astype(np.float64).ravel()
    assert abs(np.mean(w**4) / np.mean(w**2) ** 2 - 3) < 0.05 and abs(w.std() - 1 / 8) < 1e-3


@pytest.mark.slow
def test_on_a_wide_gaussian_trace_the_tensor_method_applies(tmp_path):
    import json

    from exactforge.cli import main
    from exactforge.verify import verify_trace

    d, out = str(tmp_path / "wide"), str(tmp_path / "w.json")
    assert (
        main(
            [
                "train",
                "--engine",
                "native",
                "--model",
                "fcn",
                "--hidden",
                "100000",
                "--init",
                "gaussian",
                "--batch-size",
                "4",
                "--steps",
                "1",
                "--out",
                d,
                "--quiet",
            ]
        )
        == 0
    )
    assert verify_trace(d).accepted  # the seeded Gaussian theta_0 is recomputed by the verifier
    assert main(["invert", d, "--step", "0", "--method", "tensor", "--json", out, "--quiet"]) == 0
    rep = json.load(open(out))
    assert rep["applicable"] and rep["reasons"] == []
    assert rep["identifiability"]["tensor_conditions_hold"] and not rep["identifiability"]["nullspace_forgery_exists"]
    cos = sorted(rep["matched_cos"])
    assert cos[-2] >= 0.95 and cos[0] >= 0.6 and rep["nearest_in_batch"] >= 2, cos


@pytest.mark.parametrize("order", [3, 4])
def test_hermite_moments_match_steins_identity_exactly_in_expectation(order):
    """An independent check of the estimator: for sigma(z) = z^p, E[g(w) H_p(w)] is
    p! sum_i c_i x_i^(tensor p) exactly (Stein's identity, p derivatives of z^p). The Monte
    Carlo estimate from 400,000 Gaussians must sit within a few standard errors of it, and the
    Hermite corrections matter: the raw moment without them is off by O(1)."""
    import math

    from exactforge.invert.tensor import _projected_tensor

    rng = np.random.default_rng(order)
    b, m = 3, 400_000
    X = rng.standard_normal((2, b))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    c = np.array([1.0, -0.5])
    U = rng.standard_normal((m, b))
    g = ((U @ X.T) ** order) @ c
    est = _projected_tensor(U, g - g.mean(), order)
    exact = math.factorial(order) * sum(ci * _outer(x, order) for ci, x in zip(c, X))
    # tolerances: about 3 standard errors of the estimate's largest entry (z^p H_p has heavy tails)
    assert np.max(np.abs(est - exact)) < {3: 0.25, 4: 2.5}[order], np.max(np.abs(est - exact))
    gc = g - g.mean()
    UU = (U[:, :, None] * U[:, None, :]).reshape(m, b * b)
    raw = ((UU * gc[:, None]).T @ (U if order == 3 else UU)).reshape((b,) * order) / m
    assert np.max(np.abs(raw - exact)) > {3: 1.0, 4: 20.0}[order]  # the uncorrected moment is not the tensor


def _outer(x, p):
    t = x
    for _ in range(p - 1):
        t = np.multiply.outer(t, x)
    return t


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(seed=st.integers(0, 10_000), k=st.integers(2, 30), label=st.integers(0, 29), scale=st.floats(0.1, 5.0))
def test_idlg_is_exact_for_one_example_whatever_the_model(seed, k, label, scale):
    """For one example, the bias gradient is p - onehot(y): negative only at y (p_y < 1), so the
    label is recovered for any network and any confidence short of p_y = 1."""
    label %= k
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, k))
    x = scale * torch.randn(1, 6)
    grads = _grads(model, x, torch.tensor([label]))
    if float(torch.softmax(model(x), 1)[0, label].detach()) < 1.0:  # p_y rounds to 1 only at absurd confidence
        assert recover_labels(model, grads, 1) == [label]
