"""The emulation of the Proof-of-Learning reference's verdict against the reference's own code
(cleverhans-lab/Proof-of-Learning at c286c7c): its thresholds, its per-epoch top-Q choice, its
distances over the parameters only."""

from __future__ import annotations

import json
from functools import reduce
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exactforge.cli import main
from exactforge.verify.reference import (
    METRICS,
    REFERENCE_COMMIT,
    THRESHOLD_SETS,
    THRESHOLDS,
    infer_epochs,
    parse_thresholds,
    reference_distances,
    reference_verdict,
    topq_selection,
)


def reference_topq_steps(dist_full: np.ndarray, num_steps: int, save_freq: int, epochs: int, q: int) -> list:
    """verify.py's verify_topq, its selection as written (the logged distances between checkpoint
    i and i + 1 are read from ``dist_full[:, i]`` instead of the checkpoint files): the first
    step of every segment it replays, in its order."""
    order = ["1", "2", "inf", "cos"]
    sequence_shape_0 = num_steps
    ckpt_per_epoch = sequence_shape_0 / epochs / save_freq
    replayed = []
    for epoch in range(epochs):
        start = np.round(ckpt_per_epoch * epoch).__int__()
        end = np.round(ckpt_per_epoch * (epoch + 1)).__int__()
        dist_list = [[] for i in range(len(order))]
        for i in range(start, end):
            res = list(dist_full[:, i])
            for j in range(len(order)):
                dist_list[j].append(res[j])
        dist_arr = np.array(dist_list)
        topq_steps = np.argpartition(dist_arr, -q, axis=1)[:, -q:]
        if len(order) > 1:
            topq_steps = reduce(np.union1d, list(topq_steps))
        for ind in topq_steps:
            step = int((start + ind) * save_freq)
            replayed.append(step)
    return replayed


@st.composite
def layouts(draw):
    save_freq = draw(st.integers(1, 20))
    num_steps = draw(st.integers(1, 300))
    epochs = draw(st.integers(1, 8))
    q = draw(st.integers(1, 5))
    segments = -(-num_steps // save_freq)
    # few distinct values: ties between segments are common, and argpartition's choice among them must match
    values = draw(st.sampled_from([[0.5, 1.0, 2.0], list(np.linspace(0, 1, 50))]))
    dist = np.array(
        draw(st.lists(st.lists(st.sampled_from(values), min_size=segments, max_size=segments), min_size=4, max_size=4))
    )
    return num_steps, save_freq, epochs, q, dist


@given(layouts())
def test_the_per_epoch_top_q_is_the_references_choice(layout):
    num_steps, save_freq, epochs, q, dist = layout
    updates = {i: dict(zip(METRICS, dist[:, i])) for i in range(dist.shape[1])}
    chosen, per_epoch, notes = topq_selection(updates, num_steps, save_freq, epochs, q)
    try:
        expected = reference_topq_steps(dist, num_steps, save_freq, epochs, q)
    except ValueError:  # an epoch with fewer than q checkpoints: argpartition's kth is out of bounds
        assert any("raises there" in n for n in notes)
        return
    assert [i * save_freq for i in chosen] == expected
    assert [s for e in per_epoch for s in e["chosen"]] == expected
    assert not any("raises there" in n for n in notes)


@pytest.mark.parametrize(
    "num_steps, save_freq, epochs, bounds",
    [
        # np.round rounds half to even: 2.5 checkpoints per epoch end the first at 2, the second at 5
        (500, 100, 2, [[0, 200], [200, 500]]),
        (250, 100, 1, [[0, 200]]),  # round(2.5) = 2: the last segment (200..250) is in no epoch
        (350, 100, 1, [[0, 350]]),  # round(3.5) = 4
        (1000, 100, 3, [[0, 300], [300, 700], [700, 1000]]),  # 3.33: 0, 3, 7, 10
        (12, 5, 1, [[0, 10]]),  # the fixture proof of test_pol: 2.4 checkpoints
    ],
)
def test_epoch_bounds_follow_the_references_rounding(num_steps, save_freq, epochs, bounds):
    segments = -(-num_steps // save_freq)
    updates = {i: dict.fromkeys(METRICS, float(i)) for i in range(segments)}
    _, per_epoch, notes = topq_selection(updates, num_steps, save_freq, epochs, 1)
    assert [e["steps"] for e in per_epoch] == bounds
    assert [e["epoch"] for e in per_epoch] == list(range(1, epochs + 1))
    left_out = bounds[-1][1] < num_steps
    assert any("never recomputes them" in n for n in notes) == left_out


def test_the_thresholds_are_the_current_code_and_say_where_they_come_from():
    assert REFERENCE_COMMIT == "c286c7c"
    assert THRESHOLDS == {"l1": 1000.0, "l2": 10.0, "linf": 0.1, "cos": 0.01}
    assert parse_thresholds(None) == (THRESHOLDS, "current", "c286c7c")
    assert THRESHOLD_SETS["current"]["since"] == "99463ed"
    old = {"l1": 1000.0, "l2": 10.0, "linf": 0.1, "cos": 0.001}
    for spec in ("51909cc", "2021-02-27", "1000,10,0.1,0.001", [1000, 10, 0.1, 0.001], old):
        assert parse_thresholds(spec) == (old, "51909cc", "51909cc")
    for spec in ("c286c7c", "99463ed", "1000, 10, 0.1, 0.01"):
        assert parse_thresholds(spec)[1:] == ("current", "c286c7c")
    assert parse_thresholds("1,2,3,inf") == ({"l1": 1.0, "l2": 2.0, "linf": 3.0, "cos": float("inf")}, "given", None)
    for bad in ("1,2,3", "a,b,c,d", "nan,1,1,1", "-1,1,1,1", "", "head", {"l1": 1.0}):
        with pytest.raises(ValueError):
            parse_thresholds(bad)


def test_epochs_are_inferred_as_the_references_train_py_cuts_its_sequence():
    def steps_of(epochs, n, b):  # utils.create_sequences
        return int(epochs * n // b)

    for n, b, epochs in [(50000, 128, 200), (1797, 16, 3), (100, 7, 5), (60000, 32, 1), (10, 10, 4)]:
        assert infer_epochs(steps_of(epochs, n, b), b, n) == epochs
    assert infer_epochs(12, 16, 1797) == 1


def _row(step, end, update, recomputed):
    return SimpleNamespace(
        step=step,
        end_step=end,
        passed=True,
        reference={"update": dict(zip(METRICS, update)), "recomputed": dict(zip(METRICS, recomputed))},
    )


def test_the_verdict_records_its_thresholds_epochs_and_choice():
    # 4 segments of 10 steps, 2 epochs; in each epoch the second segment has the larger update
    rows = [_row(10 * i, 10 * i + 10, [1.0 + i % 2] * 4, [0.0, 0.0, 0.0, 0.005]) for i in range(4)]
    now = reference_verdict(rows, exactforge_accepted=True, epsilon=0.0, q=1, epochs=2, num_steps=40, save_freq=10)
    assert now.accepted and now.segments == [10, 30]  # cosine 0.005 is within today's 0.01
    d = json.loads(json.dumps(now.to_dict()))
    assert d["thresholds"]["cos"] == 0.01 and d["thresholds_commit"] == "c286c7c" and d["thresholds_set"] == "current"
    assert d["epochs"] == 2 and d["epochs_source"] == "given"
    assert [(e["steps"], e["chosen"]) for e in d["per_epoch"]] == [([0, 20], [10]), ([20, 40], [30])]
    old = reference_verdict(rows, exactforge_accepted=True, epsilon=0.0, q=1, epochs=2, thresholds="51909cc")
    assert not old.accepted and old.above["cos"] == 2 and old.thresholds_commit == "51909cc"
    every = reference_verdict(rows, exactforge_accepted=True, epsilon=0.0)
    assert every.policy == "all" and every.segments == [0, 10, 20, 30] and every.per_epoch is None
    # the reference's --q 0 verifies every segment
    assert reference_verdict(rows, exactforge_accepted=True, epsilon=0.0, q=0).policy == "all"
    # a threshold of 0 (the caller's) is exceeded by any positive distance, and the text says so
    zero = reference_verdict(rows, exactforge_accepted=False, epsilon=0.0, thresholds="1000,10,0.1,0")
    assert not zero.accepted and zero.thresholds_commit is None and "cos" in zero.agreement


def test_the_distances_cover_the_parameters_only():
    """utils.parameter_distance concatenates net.parameters(): BatchNorm's running statistics and
    the optimizer's state are not in it, and the verifier asks for the parameters' names only."""
    import torch

    from exactforge.verify.verifier import SegmentJob, _settled_job

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    job = _settled_job(
        SegmentJob(None, "l2", 0.0, None),
        SimpleNamespace(manifest={"engine": "torch"}),
        SimpleNamespace(model=net),
        True,
        None,
    )
    assert job.reference_names == tuple(n for n, _ in net.named_parameters())
    state = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    moved = dict(state, **{"1.running_mean": state["1.running_mean"] + 1.0, "optimizer.momentum.0": np.ones(3)})
    # equal to the distances between equal states (float32's dot and norm round differently: cos need not be 0)
    assert reference_distances(state, moved, job.reference_names) == reference_distances(
        state, state, job.reference_names
    )
    assert reference_distances(state, moved, job.reference_names)["l1"] == 0.0


def run_main(argv):
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("value", ["1,2,3", "1,2,3,x", "1,2,3,-1", "latest"])
def test_bad_pol_thresholds_exit_2_naming_the_flag(value, tmp_path, capsys):
    assert run_main(["verify", str(tmp_path), "--pol-thresholds", value, "--quiet"]) == 2
    assert "--pol-thresholds" in capsys.readouterr().err


def test_bad_pol_epochs_exit_2_naming_the_flag(tmp_path, capsys):
    assert run_main(["verify", str(tmp_path), "--pol-epochs", "0", "--quiet"]) == 2
    assert "--pol-epochs" in capsys.readouterr().err
