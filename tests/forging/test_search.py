"""Exhaustive search: brute force and meet in the middle agree; planted equal-gradient
batches are found; structural collisions are told apart; the memory bound is enforced."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exactforge.cli import main
from exactforge.forging.search import Domain, format_table, model_for, per_example_gradients, run_search, run_table

SMALL = [(2, 1), (2, 2), (2, 3), (2, 4), (3, 1), (3, 2), (3, 3), (4, 2), (4, 3), (5, 2)]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["logreg", "fcn10"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("v,b", SMALL)
def test_brute_and_mitm_agree_on_every_small_cell(model, bias, v, b):
    kw = dict(seed=1, bias=bias, true_batches=3)
    r1 = run_search(model, 4, 3, v, b, method="brute", **kw)
    r2 = run_search(model, 4, 3, v, b, method="mitm", **kw)
    assert (r1.found, r1.structural, r1.forgeries, r1.structural_examples) == (
        r2.found,
        r2.structural,
        r2.forgeries,
        r2.structural_examples,
    )
    assert r1.batches == r2.batches


def test_structural_collisions_without_bias():
    # The all-zero image (examples 0, 1, 2: labels 0..2) has a zero gradient without a bias:
    # a true batch holding it collides with the batches holding it under another label.
    r = run_search("logreg", 4, 3, 2, 2, bias=False, planted=[[0, 7]], method="brute")
    assert r.found == 0 and r.structural == 2
    assert sorted(r.structural_examples) == [[1, 7], [2, 7]]
    r = run_search("logreg", 4, 3, 2, 2, bias=True, planted=[[0, 7]], method="mitm")
    assert r.found == 0 and r.structural == 0


@settings(max_examples=15)
@given(seed=st.integers(0, 1000), v=st.integers(2, 3), b=st.integers(2, 4), d=st.integers(2, 3))
def test_planted_equal_gradient_batch_is_found(seed, v, b, d):
    dom = Domain(d, 2, v)
    rng = np.random.default_rng(seed)
    # integer-valued gradients: the fixed-point conversion (a power-of-two scale) is exact, so
    # the planted equality holds exactly (a float-rounded one would be a tolerance-mode case)
    G = rng.integers(-1000, 1000, (dom.size, 5)).astype(np.float64)
    truth = sorted(rng.choice(dom.size, b, replace=False).tolist())
    # plant: a different batch whose last example's gradient is adjusted to match the sum
    others = [i for i in range(dom.size) if i not in truth]
    forged = sorted(rng.choice(others, b, replace=False).tolist())
    G[forged[-1]] = G[truth].sum(axis=0) - G[forged[:-1]].sum(axis=0)
    for method in ("brute", "mitm"):
        r = run_search(d=d, n=2, v=v, b=b, seed=seed, method=method, planted=[truth], gradients=G)
        assert forged in r.forgeries and r.found >= 1


@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), b=st.integers(1, 4), model=st.sampled_from(["logreg", "fcn10"]), bias=st.booleans())
def test_hypothesis_random_small_domains_agree(seed, b, model, bias):
    d = 3
    r1 = run_search(model, d, 2, 3, b, seed=seed, bias=bias, method="brute", true_batches=2)
    r2 = run_search(model, d, 2, 3, b, seed=seed, bias=bias, method="mitm", true_batches=2)
    assert (r1.found, r1.structural) == (r2.found, r2.structural)


def test_tolerance_mode_finds_near_equal_batches():
    dom = Domain(2, 2, 3)
    rng = np.random.default_rng(0)
    G = rng.standard_normal((dom.size, 4))
    truth, near = [0, 5, 9], [1, 6, 11]
    G[11] = G[truth].sum(0) - G[[1, 6]].sum(0) + 1e-7  # equal within 1e-6, not exactly
    exact = run_search(d=2, n=2, v=3, b=3, planted=[truth], gradients=G)
    tol = run_search(d=2, n=2, v=3, b=3, planted=[truth], gradients=G, tolerance=1e-6)
    assert near not in exact.forgeries and near in tol.forgeries


def test_per_example_gradients_sum_to_the_batch_gradient():
    from exactforge.models import layout
    from exactforge.models import native as M

    dom = Domain(4, 3, 3)
    X, y = dom.examples()
    spec, params = model_for("fcn10", dom, True, 0)
    G = per_example_gradients(spec, params, X, y)
    idx = np.array([3, 50, 100, 200])
    _, g = M.loss_and_grad(spec, params, X[idx], y[idx], idx)
    assert np.allclose(G[idx].sum(0) / 4, layout.flatten(spec, g), atol=1e-12)


def test_memory_bound_refuses_with_a_clear_message(capsys):
    with pytest.raises(ValueError, match="memory"):
        run_search("logreg", 4, 3, 6, 5, max_memory_mib=10)
    assert main(["search", "--v", "6", "--b", "5", "--max-memory", "10", "--quiet"]) == 2
    assert "--max-memory" in capsys.readouterr().err


def test_search_cli_json_and_table(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert (
        main(
            [
                "search",
                "--model",
                "logreg",
                "--d",
                "4",
                "--n",
                "3",
                "--v",
                "3",
                "--b",
                "3",
                "--seed",
                "0",
                "--method",
                "mitm",
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rep = json.loads(out.read_text())
    for key in ("batches", "found", "structural", "seconds"):
        assert key in rep
    assert rep["batches"] == 2362041 and rep["found"] == 0
    res = run_table(("logreg",), (True,), (2, 3), (1, 2, 3), true_batches=1)
    text = format_table(res)
    assert "| 3 |" in text and len(res) == 6


def test_search_all_cli(tmp_path):
    out = tmp_path / "all.json"
    assert main(["search", "--all", "--bias", "no", "--v", "2", "--b", "3", "--json", str(out), "--quiet"]) == 0
    d = json.loads(out.read_text())
    assert d["batches"] == 17296 and d["true_batches"] == 17296
    assert d["batches_with_forgery"] == 3255 and d["trivial"] == 3105 and d["certificates"]["exact"] == 75
    assert main(["search", "--all", "--v", "4", "--b", "5", "--quiet"]) == 2  # 2.2e12 batches: refused
