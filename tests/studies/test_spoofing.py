"""The spoofing study's sweeps: each moves one variable, every verifier judges every spoof, and the
report's tables and sentences are computed from the rows."""

from __future__ import annotations

import pytest

from exactforge.data import load_digits
from exactforge.studies.spoofing import REFERENCE_VARIANTS, SWEEPS, VERIFIERS, distinct_rows, spoofing_study

DIGITS = load_digits()
KS, COUNTS, BOUNDS, HELD_C, HELD_K = (1, 2), (1, 3), (1, 2), 2, 1


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("spoofing"))
    return spoofing_study(
        out,
        DIGITS,
        steps=3,
        batch=50,
        noise_steps=1,
        checkpoints=HELD_C,
        intervals=KS,
        interval=HELD_K,
        checkpoint_counts=COUNTS,
        max_intervals=BOUNDS,
        max_interval=10,
    )


def test_each_sweep_moves_one_variable_and_every_verifier_judges_every_spoof(study):
    rows = study["rows"]
    assert {r["sweep"] for r in rows} == set(SWEEPS)
    attacks = {r["attack"] for r in rows}
    for sweep, values, key in (("k", KS, "k"), ("spacing", COUNTS, "checkpoints"), ("max_interval", BOUNDS, None)):
        mine = [r for r in rows if r["sweep"] == sweep]
        # one native verdict and the torch one with the reference's four, per attack and point
        assert len(mine) == len(values) * len(attacks) * len(VERIFIERS)
        for r in mine:
            assert r["spoof_steps"] == r["k"] * r["checkpoints"]
            assert r["accepted_with_checks"] == (r["accepted"] and not r["failed_checks"])
            for field in ("attack", "spacing", "verifier", "accepted", "failed_checks", "max_interval"):
                assert field in r
        if key:
            assert sorted({r[key] for r in mine}) == sorted(values)
    assert {r["checkpoints"] for r in rows if r["sweep"] == "k"} == {HELD_C}
    assert {r["k"] for r in rows if r["sweep"] == "spacing"} == {HELD_K}
    held = [r for r in rows if r["sweep"] == "max_interval"]
    assert {(r["k"], r["checkpoints"]) for r in held} == {(max(KS), HELD_C)}
    for r in held:  # the bound moves the interval check and nothing else
        assert ("interval" in r["failed_checks"]) == (r["k"] > r["max_interval"])
    assert {v for v, _, _ in REFERENCE_VARIANTS} <= {r["verifier"] for r in rows}


def test_the_spacing_is_measured_and_follows_the_checkpoints_not_k(study):
    line = [s for s in study["spoofs"] if s["attack"] in ("adversarial", "infinitesimal")]
    for s in line:  # dummy checkpoints on the line from theta_0 to theta_T
        assert s["spacing"] == pytest.approx(s["final_distance"] / s["checkpoints"], rel=1e-4)
    k_sweep = {round(s["spacing"], 4) for s in line if s["checkpoints"] == HELD_C}
    assert len(k_sweep) == 1  # k moved, the spacing did not
    by_count = {s["checkpoints"]: s["spacing"] for s in line if s["engine"] == "native" and s["k"] == HELD_K}
    assert by_count[max(COUNTS)] < by_count[min(COUNTS)]


def test_success_counts_each_spoof_once(study):
    distinct = distinct_rows(study)
    keys = [(r["attack"], r["engine"], r["k"], r["spoof_steps"], r["verifier"]) for r in distinct]
    assert len(keys) == len(set(keys))
    points = len({(k, HELD_C) for k in KS} | {(HELD_K, c) for c in COUNTS})
    for v in VERIFIERS:
        assert study["success"][v]["tried"] == points * len({r["attack"] for r in distinct})


def test_the_reference_verdicts_from_one_report_are_the_verifiers_own(tmp_path):
    """Judging the one report's distances again at each threshold set and policy gives what the
    verifier says when asked for that set and policy."""
    from exactforge.forging.spoof import spoof, verify_spoof
    from exactforge.studies.spoofing import _reference_verdicts, _victims

    victim = _victims(str(tmp_path), DIGITS, 3, 50, 0)["torch"]
    s = spoof(victim, "infinitesimal", str(tmp_path / "s"), dataset=DIGITS, steps=8, checkpoint_every=2)
    rep = verify_spoof(s, DIGITS, epsilon="auto", reference=True)
    ours = {v["verifier"]: v for v in _reference_verdicts(rep, s.out, 2, 2)}
    for name, tset, topq in REFERENCE_VARIANTS:
        own = verify_spoof(
            s, DIGITS, epsilon="auto", reference=True, reference_thresholds=tset, reference_q=2 if topq else None
        ).reference
        assert ours[name]["accepted"] == own["accepted"], name
        assert ours[name]["max_distance"] == pytest.approx(own["max_distance"]), name


def test_the_report_says_where_each_spoof_breaks(study, tmp_path):
    from consistency import check_report

    from exactforge.report.figures import plot_spoofing
    from exactforge.studies.report_md import _spoofing_markdown, _where_accepted

    assert _where_accepted("spacing", [(0.01, True), (0.1, True), (1.0, False)]) == (
        "up to a spacing of 0.1 and rejected it from 1"
    )
    assert _where_accepted("k", [(1, False), (10, True)]) == "from k 10 and rejected it up to 1"
    assert _where_accepted("k", [(1, True), (2, False), (4, True)]) == "at k in [1, 4] and rejected it at [2]"
    assert _where_accepted("k", [(1, True), (2, True)]) == "at every k of the sweep"
    md = "\n".join(_spoofing_markdown(study))
    assert "(a) Checkpoint interval k" in md and "(b) Dummy spacing" in md and "(c) The interval check" in md
    for v in VERIFIERS:
        assert f"| {v} | " in md
    summary = "## Summary\n\n| what |\n|---|\n| x |\n"

    def spoofing_problems(text):  # the stub summary fails the other sections' checks
        return [p for p in check_report(summary + text) if p.startswith("spoofing")]

    assert spoofing_problems(md) == []
    # a summary count edited by hand is caught
    v = VERIFIERS[0]
    s = study["success"][v]
    bad = md.replace(f"| {v} | {s['accepted']}/{s['tried']} |", f"| {v} | {s['accepted'] + 1}/{s['tried']} |")
    assert spoofing_problems(bad)
    png = plot_spoofing(study, str(tmp_path / "s.png"), "t")
    assert open(png, "rb").read(4) == b"\x89PNG"
