"""The spoofs as their papers publish them: Zhang et al.'s objective with its noise term and the
segments it reports against the zero update, Fang et al.'s learning rate chosen from the
verifier's thresholds, and the reference's top-Q verdict on a spoof."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from exactforge.cli import main
from exactforge.data import load_digits
from exactforge.forging.spoof import NOISE_WEIGHT, spoof
from exactforge.trace import Trace
from exactforge.verify import verify_trace
from exactforge.verify.reference import THRESHOLDS, reference_distances

DIGITS = load_digits()
# the reference's cosine threshold scales with the spacing over |theta|: a logistic regression
# needs about a hundred steps to meet 0.01, so the fast tests loosen it
LOOSE = "1000,10,0.1,0.5"
OLD_KEYS = {
    "attack",
    "out",
    "engine",
    "steps",
    "checkpoint_every",
    "lr",
    "step_lr",
    "synthesised",
    "data_path",
    "max_residual",
    "final_distance",
    "seconds",
}


@pytest.fixture(scope="module")
def victims(tmp_path_factory):
    root = tmp_path_factory.mktemp("victims")
    out = {}
    for engine in ("native", "torch"):
        out[engine] = str(root / engine)
        args = ["train", "--model", "logreg", "--engine", engine, "--steps", "5", "--batch-size", "50"]
        assert main(args + ["--out", out[engine], "--quiet"]) == 0
    return out


def _flat(state):
    return np.concatenate([np.asarray(state[k], np.float64).ravel() for k in sorted(state)])


def test_the_adversarial_json_carries_each_segments_error_zero_update_error_and_noise(victims, tmp_path, capsys):
    out, js = str(tmp_path / "s"), str(tmp_path / "s.json")
    args = ["spoof", victims["torch"], "--attack", "adversarial", "--out", out, "--steps", "4"]
    assert main(args + ["--checkpoint-every", "2", "--noise-steps", "2", "--json", js]) == 0
    res = json.load(open(js))
    assert OLD_KEYS <= set(res)
    assert res["noise_weight"] == NOISE_WEIGHT == 1.0
    assert [(s["step"], s["end_step"]) for s in res["segments"]] == [(0, 2), (2, 4)]
    for s in res["segments"]:
        assert {"error", "zero_update_error", "noise_l2"} <= set(s)
        assert s["error"] > 0 and s["zero_update_error"] > 0 and s["noise_l2"] > 0
    assert res["max_residual"] == max(s["error"] for s in res["segments"])
    assert res["max_zero_update_error"] == max(s["zero_update_error"] for s in res["segments"])
    assert res["noise_l2"] == max(s["noise_l2"] for s in res["segments"])
    # the noisy examples leave the digits' grid, and the spoof says so beside the noise norm
    assert res["outside_domain"] == res["synthesised"] == 4 * 50 and res["domain"] == "[0, 1], 16 levels"
    text = capsys.readouterr().out
    assert "segment error" in text and "the zero update's" in text
    assert f"noise: ||R||_2 up to {res['noise_l2']:.3g} per segment (lambda 1); 200 of them outside" in text


@pytest.mark.parametrize("engine", ["native", "torch"])
@pytest.mark.parametrize("attack", ["adversarial", "infinitesimal"])
def test_the_zero_update_error_is_the_gap_between_consecutive_checkpoints(victims, tmp_path, attack, engine):
    """What an update that does nothing would score, read back from the written trace; and each
    segment's error is the verifier's."""
    out = str(tmp_path / "s")
    s = spoof(victims[engine], attack, out, steps=4, checkpoint_every=2, noise_steps=2, pol_thresholds=LOOSE)
    t = Trace.open(out)
    cks = [_flat(t.load_checkpoint(c)) for c in (0, 2, 4)]
    gaps = [float(np.linalg.norm(b - a)) for a, b in zip(cks, cks[1:])]
    assert [g["zero_update_error"] for g in s.segments] == pytest.approx(gaps, rel=1e-9)
    rep = verify_trace(out, data_path=s.data_path, known_data=DIGITS)
    assert [g["error"] for g in s.segments] == pytest.approx([r.error for r in rep.steps], rel=1e-5)
    if attack == "infinitesimal":
        assert [g["noise_l2"] for g in s.segments] == [0.0, 0.0]


def test_a_larger_noise_weight_keeps_the_noise_smaller(victims, tmp_path):
    kw = dict(steps=2, checkpoint_every=2, noise_steps=10, seed=4)
    free = spoof(victims["torch"], "adversarial", str(tmp_path / "a"), noise_weight=0.0, **kw)
    held = spoof(victims["torch"], "adversarial", str(tmp_path / "b"), noise_weight=10.0, **kw)
    assert free.noise_weight == 0.0 and held.noise_weight == 10.0
    assert held.noise_l2 < free.noise_l2
    # without the term the optimisation is free to trade noise for a smaller segment error
    assert free.max_residual < free.max_zero_update_error


def _bounds(out, thr):
    """Per segment (k = 1) the largest rate by Fang et al.'s rule, from the written trace: the
    threshold's room beyond the dummy spacing over the update's size per unit rate."""
    import torch

    from exactforge.models.native import ModelSpec
    from exactforge.models.torch_fcn import TorchFCN

    t = Trace.open(out)
    spec = ModelSpec.from_dict(t.manifest["model"])
    X = torch.from_numpy(DIGITS.X.reshape(len(DIGITS), -1).astype(np.float32))
    y = torch.from_numpy(DIGITS.y)
    out_bounds = []
    for rec in t.iter_records(0, t.num_records):
        start, end = t.load_checkpoint(rec.step), t.load_checkpoint(rec.step + 1)
        model = TorchFCN(spec)
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in start.items()})
        idx = torch.from_numpy(np.array(rec.batch))
        loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
        g = torch.cat([p.reshape(-1) for p in torch.autograd.grad(loss, list(model.parameters()))]).double().numpy()
        gap = reference_distances(end, start, list(end))
        size = {"l1": np.abs(g).sum(), "l2": np.linalg.norm(g), "linf": np.abs(g).max()}
        size["cos"] = size["l2"] / np.linalg.norm(_flat(end))
        out_bounds.append(min((thr[m] - gap[m]) / size[m] for m in thr))
    return out_bounds


def test_the_infinitesimal_rate_is_the_largest_the_thresholds_allow(victims, tmp_path):
    """Fang et al.: the rate is small enough that every segment lands within the verifier's
    thresholds around the next dummy checkpoint, whatever the update's direction."""
    from exactforge.verify.reference import parse_thresholds

    out = str(tmp_path / "s")
    s = spoof(victims["torch"], "infinitesimal", out, steps=12, pol_thresholds=LOOSE)
    thr = parse_thresholds(LOOSE)[0]
    assert s.within_thresholds and s.pol_thresholds == thr and "largest rate" in s.rate_rule
    best = min(_bounds(out, thr))
    halvings = math.log2(best / s.step_lr)  # the replay may halve the bound's rate
    assert halvings > -1e-4 and abs(halvings - round(halvings)) < 1e-4
    t = Trace.open(out)
    assert t.manifest["lr"] == s.lr == 0.01  # torch declares the victim's rate, records its own
    assert {r.lr for r in t.iter_records(0, t.num_records)} == {s.step_lr}
    rep = verify_trace(out, reference=True, reference_thresholds=LOOSE)
    assert rep.reference["accepted"] and rep.reference["above"] == {m: 0 for m in thr}
    assert not rep.accepted and not rep.schedule["passed"]  # epsilon 0, and a rate the manifest does not declare
    # a tighter threshold leaves less room: a smaller rate
    tight = spoof(victims["torch"], "infinitesimal", str(tmp_path / "t"), steps=12, pol_thresholds="1000,10,0.1,0.2")
    assert tight.within_thresholds and tight.step_lr < s.step_lr


def test_a_spacing_over_a_threshold_leaves_no_rate_and_says_how_many_steps_would(victims, tmp_path):
    s = spoof(victims["native"], "infinitesimal", str(tmp_path / "s"), steps=4, lr_scale=1e-10)
    assert s.pol_thresholds == THRESHOLDS and s.within_thresholds is False
    assert "over its 0.01" in s.rate_rule and "steps would bring them within" in s.rate_rule
    assert s.step_lr == s.lr == pytest.approx(0.01 * 1e-10)  # native declares the rate it uses
    assert [g["error"] for g in s.segments] == [g["zero_update_error"] for g in s.segments]


def test_verify_gives_the_references_top_q_per_epoch_on_a_torch_spoof(victims, tmp_path, capsys):
    out = str(tmp_path / "s")
    assert main(["spoof", victims["torch"], "--attack", "infinitesimal", "--out", out, "--steps", "70", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["verify", out, "--pol-reference", "topq", "--pol-q", "2", "--json", "-", "--quiet"]) == 1
    captured = capsys.readouterr()
    ref = json.loads(captured.out)["reference"]
    assert ref["thresholds"] == {"l1": 1000.0, "l2": 10.0, "linf": 0.1, "cos": 0.01}
    assert ref["policy"] == "top-q" and ref["q"] == 2
    assert ref["epochs"] == 2  # 70 steps x 50 / 1797 examples, rounded up
    for epoch in ref["per_epoch"]:
        lo, hi = epoch["steps"]
        # the union of each distance's top 2 of the epoch
        assert 2 <= len(epoch["chosen"]) <= 8 and all(lo <= c < hi for c in epoch["chosen"])
    assert sorted(ref["segments"]) == sorted(c for e in ref["per_epoch"] for c in e["chosen"])
    assert "top-2 per epoch over 2 epoch(s)" in captured.err and "cos" in captured.err


@pytest.mark.parametrize(
    "bad",
    [
        ["--noise-weight", "-1"],
        ["--noise-weight", "nan"],
        ["--noise-weight", "heavy"],
        ["--pol-thresholds", "1,2,3"],
        ["--pol-thresholds", "1000,10,0.1,-0.01"],
        ["--pol-thresholds", "newest"],
    ],
)
def test_bad_option_values_exit_2(victims, tmp_path, capsys, bad):
    args = ["spoof", victims["native"], "--attack", "infinitesimal", "--out", str(tmp_path / "s")]
    assert main(args + bad) == 2
    assert f"argument {bad[0]}" in capsys.readouterr().err


def test_the_api_refuses_bad_values_too(victims, tmp_path):
    for w in (-1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="noise_weight"):
            spoof(victims["native"], "adversarial", str(tmp_path / "a"), noise_weight=w)
    with pytest.raises(ValueError, match="four numbers"):
        spoof(victims["native"], "infinitesimal", str(tmp_path / "b"), pol_thresholds="newest")
