"""Known attacks, stealth and the forging game on digits with small budgets."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from exactforge.cli import main
from exactforge.data import load_digits
from exactforge.forging.attacks import StepContext, in_domain, per_example_grads, run_attack
from exactforge.forging.game import Verifier, play_game, stealth_study
from exactforge.models.zoo import build_model
from exactforge.studies.repro import Stepper

DIGITS = load_digits()


@pytest.fixture(scope="module")
def native_fcn():
    return Verifier("fcn", "native", DIGITS, batch_size=100, steps=3, seed=0)


@pytest.fixture(scope="module")
def torch_logreg():
    return Verifier("logreg", "torch", DIGITS, batch_size=100, steps=3, seed=0)


def test_greedy_and_nearest_far_above_the_native_paths_zero(native_fcn):
    assert native_fcn.calibrate() == 0.0  # the native path's reproduction error is exactly 0
    ctx = native_fcn.context(1)
    for method in ("greedy", "nearest"):
        r = run_attack(method, ctx, [int(ctx.batch[0])], pool=300, candidates=50)
        assert r.distinct and r.in_domain and r.approx_error > 1e-7
        assert set(r.metrics) == {"l2", "l1", "linf", "cosine", "l2sq", "l2sq_dim"}
        assert r.metrics["l2sq"] == pytest.approx(r.approx_error**2, rel=1e-9)
        assert r.metrics["l2sq_dim"] == pytest.approx(r.metrics["l2sq"] / ctx.theta.size, rel=1e-9)
        assert int(ctx.batch[0]) not in r.forged_indices


def test_exact_solvers_win_without_the_domain_check_and_lose_with_it(torch_logreg):
    for attack in ("nullspace", "error-matrix"):
        off = play_game(attack, 3, "auto", verifier=torch_logreg, domain_check=False)
        on = play_game(attack, 3, "auto", verifier=torch_logreg, domain_check=True)
        assert off.win_rate == 1.0 and on.win_rate == 0.0
        assert all(any("domain" in why for why in r.reasons) for r in on.rounds)


def test_epsilon_zero_on_the_native_path_catches_exact_forgeries():
    v = Verifier("logreg", "native", DIGITS, batch_size=100, steps=2)
    g = play_game("nullspace", 2, 0.0, verifier=v, domain_check=False)
    assert g.win_rate == 0.0 and all("epsilon" in r.reasons[0] for r in g.rounds)


def test_gradient_matching_runs_and_leaves_the_domain(native_fcn):
    ctx = native_fcn.context(0)
    b = len(ctx.batch)
    for method, replaced in (("gradmatch", b), ("gradmatch-subset", 1), ("dlg", b), ("idlg", 1)):
        r = run_attack(method, ctx, [int(ctx.batch[3])], steps=5)
        assert np.isfinite(r.approx_error) and r.distinct and -1 in r.forged_indices
        assert not r.in_domain  # continuous pixels are off the grid q/16
        assert r.replaced == replaced and r.fraction == replaced / b and r.objective


def test_gradmatch_is_algorithm_1_on_all_b_examples_unconstrained(native_fcn):
    """The short paper's Algorithm 1: every example synthesised, the batch's labels, Adam on the
    (unsquared) eta-scaled l2 distance, values not clamped; the objective falls."""
    ctx = native_fcn.context(0)
    first = run_attack("gradmatch", ctx, [int(ctx.batch[0])], steps=1, seed=3)
    later = run_attack("gradmatch", ctx, [int(ctx.batch[0])], steps=60, seed=3)
    assert first.forged_indices == [-1] * len(ctx.batch)
    assert later.approx_error < first.approx_error
    sub = run_attack("gradmatch-subset", ctx, [int(ctx.batch[0])], steps=60, seed=3)
    assert sub.replaced == 1 and "projected to the data" in sub.objective
    assert "unconstrained" in later.objective and "all b" in later.objective


def test_dlg_draws_dummy_labels_from_noise_and_idlg_keeps_the_true_ones(native_fcn):
    from exactforge.forging.matching import synthesise

    ctx = native_fcn.context(0)
    rng = np.random.default_rng(0)
    U = [int(ctx.batch[0])]
    keep = np.asarray(ctx.batch[1:])
    g = (ctx.theta.astype(np.float64) - ctx.theta_next) / ctx.lr
    X, Y, idx = synthesise(ctx, "dlg", U, keep, g, 3, 0.5, True, rng)
    assert Y.shape == (len(ctx.batch), DIGITS.num_classes) and np.allclose(Y.sum(axis=1), 1, atol=1e-5)
    assert idx == [-1] * len(ctx.batch)
    X, Y, idx = synthesise(ctx, "idlg", U, keep, g, 3, 0.5, True, rng)
    assert Y.ndim == 1 and Y[-1] == DIGITS.y[U[0]] and idx[:-1] == keep.tolist()
    with pytest.raises(ValueError, match="method"):
        synthesise(ctx, "greedy", U, keep, g, 3, 0.5, True, rng)


def test_nearest_defaults_to_cosine_of_the_raw_inputs(torch_logreg):
    ctx = torch_logreg.context(0)
    u = int(ctx.batch[0])
    default = run_attack("nearest", ctx, [u])
    cos = run_attack("nearest", ctx, [u], metric="cosine")
    l2 = run_attack("nearest", ctx, [u], metric="l2")
    assert default.forged_indices == cos.forged_indices and "cosine" in default.objective
    assert "l2" in l2.objective
    X = DIGITS.X.astype(np.float64)
    j = default.forged_indices[-1]
    same = [i for i in range(len(DIGITS)) if DIGITS.y[i] == DIGITS.y[u] and i not in set(ctx.batch.tolist())]
    sims = [X[i] @ X[u] / (np.linalg.norm(X[i]) * np.linalg.norm(X[u])) for i in same]
    assert X[j] @ X[u] / (np.linalg.norm(X[j]) * np.linalg.norm(X[u])) == pytest.approx(max(sims))


def test_unlearning_scenario_needs_every_batch_forged():
    v = Verifier("fcn", "torch", DIGITS, batch_size=600, steps=4, seed=1)
    g = play_game("nearest", 2, "auto", verifier=v, scenario="unlearning")
    assert all(len(r.steps) >= 1 for r in g.rounds)
    for r in g.rounds:
        for t in r.steps:
            assert r.target in set(v.batches[t].tolist())
    assert g.win_rate == 0.0


def test_per_example_gradients_average_to_the_batch_gradient():
    net = build_model("lenet", (1, 8, 8), 10)
    st = Stepper("lenet", net, DIGITS, 0.01)
    theta = st.flat()
    X = torch.from_numpy(DIGITS.X[:20]).reshape(20, 1, 8, 8)
    y = torch.from_numpy(DIGITS.y[:20])
    G = per_example_grads(net, theta, X, y)
    loss = torch.nn.functional.cross_entropy(net(X), y)
    g = torch.cat([p.reshape(-1) for p in torch.autograd.grad(loss, list(net.parameters()))]).numpy()
    assert np.allclose(G.mean(axis=0), g, atol=1e-6)


def test_in_domain():
    assert in_domain(np.array([[0.0, 0.5, 1.0]]), np.array([1]), 16, 3)
    assert not in_domain(np.array([[0.03]]), np.array([0]), 16, 3)
    assert not in_domain(np.array([[0.5]]), np.array([[0.5, 0.5]]), 16, 2)
    assert not in_domain(np.array([[1.5]]), np.array([0]), None, 2)


def test_stealth_study_and_figure(tmp_path, native_fcn):
    s = stealth_study("nearest", native_fcn, fractions=(0.01, 0.1), out=str(tmp_path))
    assert [x["replaced"] for x in s.fraction_sweep] == [1, 10]
    assert len(s.across_training) == 3 and s.stealthy_fraction == 0.0 and s.epsilon == 0.0
    assert os.path.getsize(tmp_path / "stealth_nearest.png") > 1000


def test_attack_and_game_cli(tmp_path, capsys):
    tr = str(tmp_path / "tr")
    assert (
        main(
            ["train", "--model", "fcn", "--hidden", "16", "--steps", "3", "--batch-size", "64", "--out", tr, "--quiet"]
        )
        == 0
    )
    out = tmp_path / "a.json"
    assert main(["attack", tr, "--method", "nearest", "--step", "1", "--fraction", "0.05", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    for k in ("approx_error", "l2", "l1", "linf", "cosine", "l2sq", "l2sq_dim", "distinct", "in_domain"):
        assert k in rep
    assert rep["approx_error"] > 0
    gj = tmp_path / "g.json"
    assert (
        main(
            [
                "game",
                "--attack",
                "greedy",
                "--rounds",
                "2",
                "--epsilon",
                "0",
                "--engine",
                "native",
                "--steps",
                "2",
                "--candidates",
                "20",
                "--pool",
                "100",
                "--json",
                str(gj),
                "--quiet",
            ]
        )
        == 0
    )
    g = json.loads(gj.read_text())
    assert g["win_rate"] == 0.0 and len(g["rounds"]) == 2 and all(r["reasons"] for r in g["rounds"])
    assert main(["attack", tr, "--method", "greedy", "--step", "9"]) == 2
    assert main(["game", "--epsilon", "-1", "--quiet", "--rounds", "1", "--steps", "1"]) == 2


def test_batches_with_repeated_examples_keep_their_size():
    """A batch drawn with replacement: every occurrence of a removed example is replaced, and the
    forging fraction counts occurrences (the papers' code samples batches this way)."""
    from exactforge.forging.attacks import run_attack
    from exactforge.forging.game import Verifier

    v = Verifier("logreg", "torch", batch_size=20, steps=1, seed=0)
    ctx = v.context(0)
    batch = ctx.batch.copy()
    batch[1] = batch[0]  # example batch[0] twice
    ctx = StepContext(
        ctx.model, ctx.data, ctx.theta, ctx.theta_next, batch, ctx.lr, engine="torch", model_name="logreg"
    )
    for method in ("greedy", "nearest"):
        r = run_attack(method, ctx, [int(batch[0])], pool=200, candidates=20)
        assert len(r.forged_indices) == len(batch) and r.replaced == 2 and r.fraction == 2 / len(batch)
        assert int(batch[0]) not in r.forged_indices
    c = run_attack("nearest", ctx, [int(batch[2])], metric="cosine")
    assert len(c.forged_indices) == len(batch)
