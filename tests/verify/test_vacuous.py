"""An update below the verifier's resolution rounds to nothing: a trace of such steps passes
any epsilon and proves no training. The report says so (an infinitesimal-update spoof)."""

from __future__ import annotations

from exactforge.cli import main
from exactforge.verify import verify_trace


def _train(out, lr):
    args = ["train", "--model", "fcn", "--steps", "6", "--checkpoint-every", "2", "--lr", lr, "--out", out, "--quiet"]
    assert main(args) == 0


def test_segments_that_change_no_coordinate_are_reported_vacuous(tmp_path, capsys):
    _train(str(tmp_path / "tiny"), "1e-30")
    rep = verify_trace(str(tmp_path / "tiny"))
    assert rep.accepted and rep.max_error == 0.0  # the recomputation rounds to nothing too
    assert rep.vacuous == {
        "passed": False,
        "segments": [0, 2, 4],
        "count": 3,
        "least_moved": 0.0,
        "smallest_update": 0.0,
    }
    assert all(s.moved == 0.0 for s in rep.steps)
    main(["verify", str(tmp_path / "tiny"), "--quiet"])
    assert "vacuous: FAILED: 3 of 3" in capsys.readouterr().out


def test_an_ordinary_trace_moves_its_coordinates(tmp_path):
    _train(str(tmp_path / "t"), "0.05")
    rep = verify_trace(str(tmp_path / "t"))
    assert rep.accepted and rep.vacuous["passed"] and rep.vacuous["least_moved"] > 0.5


def test_a_required_check_rejects_and_an_unrequired_one_only_reports(tmp_path):
    _train(str(tmp_path / "tiny"), "1e-30")
    rep = verify_trace(str(tmp_path / "tiny"), require="vacuous")
    assert rep.valid and not rep.accepted and "vacuous" in rep.reason and rep.required == ["vacuous"]
    rep = verify_trace(str(tmp_path / "tiny"), require=["schedule", "domain", "interval"], max_interval=2)
    assert rep.accepted and rep.schedule["passed"] and rep.domain["passed"] and rep.interval["largest_gap"] == 2
    rep = verify_trace(str(tmp_path / "tiny"), require="interval", max_interval=1)
    assert not rep.accepted and not rep.interval["passed"]
    rep = verify_trace(str(tmp_path / "tiny"), require="known-data")
    assert not rep.valid and "known-data" in rep.reason
    rep = verify_trace(str(tmp_path / "tiny"), require="nonsense")
    assert not rep.valid and "unknown check 'nonsense'" in rep.reason


def test_an_update_no_larger_than_epsilon_is_vacuous_even_where_the_checkpoints_move(tmp_path):
    """Fang et al.'s infinitesimal update against a tolerance: the logged checkpoints move, the
    recomputed update is below epsilon, so any batch passes."""
    _train(str(tmp_path / "t"), "1e-7")
    rep = verify_trace(str(tmp_path / "t"), epsilon=1e-3)
    assert rep.accepted and rep.vacuous["least_moved"] > 0 and not rep.vacuous["passed"]
    assert rep.vacuous["smallest_update"] <= 1e-3


def test_known_data_and_domain_find_examples_that_are_not_the_verifiers(tmp_path):
    import numpy as np

    from exactforge.data import load_digits

    d = load_digits()
    X = d.X.copy()
    X[:300] += 0.01  # off the grid q/16: optimised noise on public data
    path = str(tmp_path / "data.npz")
    np.savez(path, X=X.reshape(len(X), *d.shape), y=d.y, lo=0.0, hi=1.0, levels=d.levels)
    out = str(tmp_path / "t")
    args = ["train", "--model", "fcn", "--steps", "4", "--batch-size", "100", "--out", out, "--quiet"]
    assert main(args + ["--dataset", "npz", "--data-path", path]) == 0
    rep = verify_trace(out, data_path=path, known_data=d)
    assert rep.accepted  # the distances pass: the trace replays its own data
    assert not rep.domain["passed"] and rep.domain["outside"] > 0
    assert not rep.known_data["passed"] and rep.known_data["unknown"] == rep.domain["outside"]
    assert not verify_trace(out, data_path=path, known_data=d, require="known-data").accepted
