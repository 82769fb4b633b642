"""Spoofed traces (Zhang et al.'s adversarial checkpoints, Fang et al.'s infinitesimal update, a
reordering attempt) are real traces; the verifier's distances and checks answer each."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exactforge.cli import main
from exactforge.data import load_digits
from exactforge.forging.spoof import SPOOFS, spoof
from exactforge.verify import verify_trace

DIGITS = load_digits()


@pytest.fixture(scope="module")
def victims(tmp_path_factory):
    root = tmp_path_factory.mktemp("victims")
    out = {}
    for engine in ("native", "torch"):
        out[engine] = str(root / engine)
        args = ["train", "--model", "fcn", "--engine", engine, "--steps", "10", "--batch-size", "50"]
        assert main(args + ["--out", out[engine], "--quiet"]) == 0
    return out


def _final(path):
    from exactforge.trace import Trace

    t = Trace.open(path)
    return t.load_checkpoint(t.checkpoint_steps[-1])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["native", "torch"])
@pytest.mark.parametrize("attack", SPOOFS)
def test_every_spoof_is_a_trace_that_ends_at_the_victims_model(victims, tmp_path, attack, engine):
    s = spoof(victims[engine], attack, str(tmp_path / "s"), steps=6, checkpoint_every=2, noise_steps=2)
    end, claimed = _final(str(tmp_path / "s")), _final(victims[engine])
    assert all(np.array_equal(end[k], claimed[k]) for k in claimed)
    rep = verify_trace(str(tmp_path / "s"), data_path=s.data_path, known_data=DIGITS)
    assert rep.valid and rep.num_steps == 6 and [r.step for r in rep.steps] == [0, 2, 4]
    assert not rep.accepted  # at epsilon 0 no spoof passes
    if attack == "adversarial":
        assert s.synthesised == 6 * 50 and not rep.domain["passed"] and not rep.known_data["passed"]
    else:
        assert s.data_path is None and rep.known_data["passed"]
    if attack == "infinitesimal":
        assert not rep.vacuous["passed"] and rep.vacuous["count"] == 3
        assert rep.schedule["passed"] == (engine == "native")  # torch: a rate the manifest does not declare
    if attack == "reorder":
        assert [r.error == 0.0 for r in rep.steps] == [True, True, False]  # honest steps, then the claim


@pytest.mark.slow
def test_with_enough_steps_the_reference_thresholds_accept_a_spoof_and_the_checks_do_not(victims, tmp_path):
    """Fang et al.: many short steps put every segment within the reference's thresholds, and the
    rate is chosen to keep them there. The schedule check rejects what its distances accept,
    epsilon 0 rejects it outright, and a verifier as tolerant as the reference's l2 threshold finds
    every update within its epsilon: vacuous."""
    s = spoof(victims["torch"], "infinitesimal", str(tmp_path / "s"), steps=200)
    assert s.within_thresholds and s.step_lr > 0
    rep = verify_trace(str(tmp_path / "s"), reference=True)
    assert rep.reference["accepted"] and not rep.accepted and not rep.schedule["passed"]
    assert s.max_residual == pytest.approx(rep.max_error, rel=1e-5)
    tolerant = verify_trace(str(tmp_path / "s"), epsilon=10.0)
    assert tolerant.accepted and not tolerant.vacuous["passed"] and tolerant.vacuous["count"] == 200


def test_the_cli_builds_a_spoof_that_verify_reads(victims, tmp_path, capsys):
    out = str(tmp_path / "s")
    js = str(tmp_path / "s.json")
    args = ["spoof", victims["native"], "--attack", "adversarial", "--out", out, "--steps", "3", "--noise-steps", "1"]
    assert main(args + ["--json", js]) == 0
    data = json.load(open(js))["data_path"]
    assert f"exactforge verify {out} --dataset npz --data-path {data}" in capsys.readouterr().out
    assert main(["verify", out, "--dataset", "npz", "--data-path", data, "--require", "domain", "--quiet"]) == 1
    assert "domain: FAILED (required)" in capsys.readouterr().out
    assert main(args) == 2  # the folder holds a trace now
    assert "already holds a trace" in capsys.readouterr().err


def test_bad_arguments_are_refused(victims, tmp_path):
    with pytest.raises(ValueError, match="attack"):
        spoof(victims["native"], "gradmatch", str(tmp_path / "a"))
    with pytest.raises(ValueError, match="checkpoint_every"):
        spoof(victims["native"], "reorder", str(tmp_path / "b"), checkpoint_every=0)


@pytest.mark.parametrize(
    "argv, named, fix",
    [
        (["--steps", "1000000000"], "--steps", "1..100000000"),
        (["--steps", "1e9"], "--steps", "integer"),
        (["--checkpoint-every", "1000000000"], "--checkpoint-every", "1..100000000"),
        (["--steps", "3", "--checkpoint-every", "5"], "--checkpoint-every", "at most --steps (3)"),
    ],
)
def test_the_cli_refuses_counts_no_trace_can_hold_before_reading_anything(argv, named, fix, tmp_path, capsys):
    """The counts are refused from the arguments alone: the victim named here does not exist, so
    a check made after reading it (or after sizing the spoof's plan) would fail differently."""
    out = tmp_path / "s"
    args = ["spoof", str(tmp_path / "no-victim"), "--attack", "infinitesimal", "--out", str(out), *argv, "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert named in err and fix in err, err
    assert not out.exists()


def test_the_interval_is_refused_beyond_the_victims_steps(victims, tmp_path, capsys):
    out = tmp_path / "s"
    args = ["spoof", victims["native"], "--attack", "reorder", "--out", str(out), "--checkpoint-every", "11"]
    assert main(args + ["--quiet"]) == 2  # the victim has 10 steps and no --steps was given
    err = capsys.readouterr().err
    assert "checkpoint_every" in err and "at most the spoof's 10 steps" in err, err
    assert not out.exists()
    with pytest.raises(ValueError, match=r"checkpoint_every: expected at most the spoof's 3 steps, got 5"):
        spoof(victims["native"], "reorder", str(out), steps=3, checkpoint_every=5)
    assert not out.exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=10**9), r"steps: expected an integer in 1\.\.100000000"),
        (dict(steps=0), r"steps: expected an integer in 1\.\."),
        (dict(checkpoint_every=10**9), r"checkpoint_every: expected an integer in 1\.\.100000000"),
        (dict(checkpoint_every=True), r"checkpoint_every: expected an integer"),
        (dict(checkpoint_every=2.5), r"checkpoint_every: expected an integer"),
    ],
)
def test_spoof_refuses_counts_before_it_opens_the_victim(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        spoof(str(tmp_path / "no-victim"), "infinitesimal", str(tmp_path / "s"), **kwargs)


@pytest.mark.slow
def test_the_spoofing_game_is_won_only_where_the_verifier_lets_it():
    """A verifier with a generous tolerance and no checks accepts the infinitesimal spoof; the
    vacuous check, or epsilon 0, rejects it."""
    from exactforge.forging.spoof_game import play_spoofing

    kw = dict(model="fcn", engine="native", data=DIGITS, batch_size=50, steps=5, spoof_steps=400, seed=3)
    loose = play_spoofing("infinitesimal", 1, 1.0, require=(), **kw)
    assert loose.win_rate == 1.0 and loose.rounds[0].failed_checks == ["vacuous"]
    checked = play_spoofing("infinitesimal", 1, 1.0, require=("vacuous",), **kw)
    assert checked.win_rate == 0.0 and checked.rounds[0].reasons == ["required check vacuous failed"]
    exact = play_spoofing("infinitesimal", 1, 0.0, require=(), **kw)
    assert exact.win_rate == 0.0 and "over epsilon 0" in exact.rounds[0].reasons[0]


def test_the_game_command_plays_the_spoofing_game(tmp_path, capsys):
    js = str(tmp_path / "g.json")
    args = ["game", "--attack", "reorder", "--rounds", "1", "--model", "logreg", "--engine", "native"]
    args += ["--epsilon", "0", "--steps", "3", "--spoof-steps", "4", "--json", js, "--quiet"]
    assert main(args) == 0
    g = json.load(open(js))
    assert g["attack"] == "reorder" and g["win_rate"] == 0.0 and g["required"] == ["domain", "known-data"]
    assert "round 0: rejected: error" in capsys.readouterr().out
