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
    assert rep.vacuous == {"passed": False, "segments": [0, 2, 4], "count": 3, "least_moved": 0.0}
    assert all(s.moved == 0.0 for s in rep.steps)
    main(["verify", str(tmp_path / "tiny"), "--quiet"])
    assert "VACUOUS: 3 of 3" in capsys.readouterr().out


def test_an_ordinary_trace_moves_its_coordinates(tmp_path):
    _train(str(tmp_path / "t"), "0.05")
    rep = verify_trace(str(tmp_path / "t"))
    assert rep.accepted and rep.vacuous["passed"] and rep.vacuous["least_moved"] > 0.5
