"""Verification and studies on a local Ray cluster (2 CPUs): the reports equal the serial ones,
a lost worker is retried and reported, a task still lost makes the result invalid."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from exactforge.cli import main  # noqa: E402
from exactforge.data import load_digits  # noqa: E402
from exactforge.models import native as M  # noqa: E402
from exactforge.studies.repro import run_study  # noqa: E402
from exactforge.trace import Trace  # noqa: E402
from exactforge.trace.record import TraceRecorder, record_native, record_torch_fcn  # noqa: E402
from exactforge.verify import verify_trace  # noqa: E402
from exactforge.verify.ray import RayExecutor, chunk_segments  # noqa: E402

DIGITS = load_digits()


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray for the module (starting one costs seconds); executors use it as it is."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    # the crashing model below is defined here: workers cannot import this test module by name
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def exact_trace(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("ray") / "exact")
    record_native(
        d, M.ModelSpec("fcn", 64, 10, (24,)), DIGITS, steps=41, batch_size=32, lr=0.05, checkpoint_every=3, mode="exact"
    )
    return d


def _same(a, b):
    """Equal verdicts and per-segment results (times aside); the executor is reported."""
    assert b.executor is not None and b.executor["kind"] == "ray" and a.executor is None
    assert (a.valid, a.accepted, a.reason, a.max_error, a.total_segments) == (
        b.valid,
        b.accepted,
        b.reason,
        b.max_error,
        b.total_segments,
    )
    key = [(s.step, s.end_step, s.error, s.passed, s.resolution, s.resolution_min) for s in a.steps]
    assert key == [(s.step, s.end_step, s.error, s.passed, s.resolution, s.resolution_min) for s in b.steps]


@pytest.mark.slow
@pytest.mark.parametrize("checkpoints", ["shared", "ship"])
@pytest.mark.parametrize("extra", [{}, {"permute_batches": 5}, {"policy": "random", "fraction": 0.4, "seed": 2}])
def test_ray_verification_equals_the_serial_one(exact_trace, checkpoints, extra):
    serial = verify_trace(exact_trace, **extra)
    assert serial.accepted and serial.max_error == 0.0
    rep = verify_trace(exact_trace, executor=RayExecutor(checkpoints=checkpoints, tasks_per_worker=3), **extra)
    _same(serial, rep)
    assert rep.executor["checkpoints"] == checkpoints and rep.executor["retried"] == []
    assert rep.executor["tasks"] == min(6, len(serial.steps)) and rep.executor["attempts"] == rep.executor["tasks"]


@pytest.mark.slow
def test_a_rejected_torch_trace_gets_the_same_errors(tmp_path):
    # plain torch (no reproducible layers): permuting the batch moves the result; one thread on
    # both sides makes the float arithmetic the same, so even the nonzero errors agree bitwise
    d = str(tmp_path / "torch")
    record_torch_fcn(
        d, M.ModelSpec("fcn", 64, 10, (100,)), DIGITS, steps=6, batch_size=300, lr=0.01, checkpoint_every=2
    )
    serial = verify_trace(d, permute_batches=1, threads=1)
    assert not serial.accepted and serial.valid and serial.max_error > 0
    _same(serial, verify_trace(d, permute_batches=1, threads=1, executor=RayExecutor()))


@pytest.mark.slow
@pytest.mark.parametrize("checkpoints", ["shared", "ship"])
def test_a_modified_checkpoint_stops_both_at_the_same_segment(exact_trace, tmp_path, checkpoints):
    d = str(tmp_path / "t")
    shutil.copytree(exact_trace, d)
    path = os.path.join(d, "checkpoints", "00000021.safetensors")
    raw = bytearray(open(path, "rb").read())
    raw[-3] ^= 1
    open(path, "wb").write(bytes(raw))
    serial = verify_trace(d)
    assert not serial.valid and "checkpoint 21" in serial.reason and "hash" in serial.reason
    assert [s.end_step for s in serial.steps] == [3, 6, 9, 12, 15, 18]  # the segments before it
    _same(serial, verify_trace(d, executor=RayExecutor(checkpoints=checkpoints)))


def test_segments_go_out_while_the_chain_is_read(exact_trace):
    rep = verify_trace(exact_trace, executor=RayExecutor(tasks_per_worker=3))
    _same(verify_trace(exact_trace), rep)
    # 41 declared steps over 6 groups: groups of >= 7 steps leave while the records are read
    assert rep.executor["streamed_tasks"] >= 4 and rep.executor["tasks"] >= rep.executor["streamed_tasks"]
    assert (
        verify_trace(exact_trace, policy="random", fraction=0.5, executor=RayExecutor()).executor["streamed_tasks"] == 0
    )


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["late record", "missing record", "data"])
def test_a_trace_that_fails_late_drops_what_was_streamed(exact_trace, tmp_path, damage):
    # the stream has sent the early segments when the driver finds the problem: the report is
    # the serial one (invalid, no segments), whatever the workers computed
    d = str(tmp_path / "t")
    shutil.copytree(exact_trace, d)
    kw = {}
    if damage == "late record":
        path = os.path.join(d, "records", "00000035.json")
        rec = json.load(open(path))
        rec["batch"][0] = (rec["batch"][0] + 1) % len(DIGITS)
        json.dump(rec, open(path, "w"))
    elif damage == "missing record":
        os.remove(os.path.join(d, "records", "00000030.json"))
    else:
        X = DIGITS.X.copy()
        X[0, 0] += 1.0
        kw["dataset"] = (X, DIGITS.y)
    serial = verify_trace(d, **kw)
    assert not serial.valid and serial.steps == []
    rep = verify_trace(d, executor=RayExecutor(), **kw)
    assert (rep.valid, rep.accepted, rep.reason, rep.steps) == (False, False, serial.reason, [])
    # the cluster is left clean: the next verification runs normally
    _same(verify_trace(exact_trace), verify_trace(exact_trace, executor=RayExecutor()))


def test_an_incomplete_trace_is_refused_or_verified_as_a_prefix_as_serially(exact_trace, tmp_path):
    d = str(tmp_path / "t")
    shutil.copytree(exact_trace, d)
    os.remove(os.path.join(d, "records", "00000040.json"))  # the final record: 40 of 41 steps recorded
    for allow in (False, True):
        serial = verify_trace(d, allow_partial=allow)
        rep = verify_trace(d, allow_partial=allow, executor=RayExecutor())
        assert serial.valid is allow and rep.partial is allow
        if allow:
            _same(serial, rep)
            assert rep.unverified_tail == serial.unverified_tail == 1
        else:
            assert (rep.valid, rep.reason, rep.steps) == (False, serial.reason, [])


class _DiesOnce(torch.nn.Module):
    """A model whose first forward pass kills its process: a worker lost mid-task. The marker
    file makes the retry succeed."""

    def __init__(self, marker: str, always: bool = False) -> None:
        super().__init__()
        self.marker, self.always = marker, always
        self.a = torch.nn.Linear(64, 12)
        self.b = torch.nn.Linear(12, 10)

    def forward(self, x):
        if self.always or not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return self.b(torch.tanh(self.a(x)))


def _user_trace(path: str, marker: str) -> None:
    torch.manual_seed(0)
    model = _DiesOnce(marker)
    open(marker, "w").close()  # recording must not die
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X, y = torch.from_numpy(DIGITS.X), torch.from_numpy(DIGITS.y)
    rng = np.random.default_rng(0)
    with TraceRecorder(path, model, opt, DIGITS, checkpoint_every=2, batch_size=50) as rec:
        for _ in range(6):
            idx = rng.choice(len(DIGITS), 50, replace=False)
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(idx)
    os.remove(marker)


@pytest.mark.slow
def test_a_lost_worker_is_retried_and_reported(tmp_path):
    d, marker = str(tmp_path / "user"), str(tmp_path / "died")
    _user_trace(d, marker)
    open(marker, "w").close()
    # plain torch: the float arithmetic depends on the thread count, so both sides use one
    serial = verify_trace(d, model=_DiesOnce(marker), threads=1)
    os.remove(marker)
    rep = verify_trace(d, model=_DiesOnce(marker), threads=1, executor=RayExecutor(max_retries=2, tasks_per_worker=1))
    _same(serial, rep)
    assert rep.executor["attempts"] == rep.executor["tasks"] + 1  # one worker died once
    assert len(rep.executor["retried"]) == 1 and rep.executor["retried"][0]["attempts"] == 2


@pytest.mark.slow
def test_a_task_lost_after_its_retries_makes_the_report_invalid(tmp_path):
    d, marker = str(tmp_path / "user"), str(tmp_path / "died")
    _user_trace(d, marker)
    rep = verify_trace(d, model=_DiesOnce(marker, always=True), executor=RayExecutor(max_retries=1))
    assert not rep.valid and not rep.accepted
    assert "failed after 2 attempt(s)" in rep.reason and "not verified" in rep.reason
    assert rep.executor["failed"] and rep.executor["failed"][0]["segments"][0] == 0


@pytest.mark.slow
def test_cli_verify_on_ray(exact_trace, tmp_path):
    out = str(tmp_path / "v.json")
    assert main(["verify", exact_trace, "--ray", "local", "--permute-batches", "2", "--quiet", "--json", out]) == 0
    rep = json.load(open(out))
    assert rep["accepted"] and rep["max_error"] == 0.0 and rep["executor"]["kind"] == "ray"
    assert len(rep["steps"]) == 14 and rep["executor"]["workers"] == 2


def test_without_ray_the_flag_names_the_install_command(exact_trace, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert main(["verify", exact_trace, "--ray", "local", "--quiet"]) == 2
    assert 'pip install "exactforge[ray]"' in capsys.readouterr().err
    assert main(["repro", "--ray", "local", "--out", "x", "--quiet"]) == 2
    assert 'pip install "exactforge[ray]"' in capsys.readouterr().err
    rep = verify_trace(exact_trace, executor=RayExecutor())
    assert not rep.valid and 'pip install "exactforge[ray]"' in rep.reason


def test_bad_executor_arguments_are_named():
    for kw, word in (
        ({"task_cpus": 0}, "task_cpus"),
        ({"max_retries": -1}, "max_retries"),
        ({"checkpoints": "nfs"}, "checkpoints"),
        ({"num_cpus": 0}, "num_cpus"),
    ):
        with pytest.raises(ValueError, match=word):
            RayExecutor(**kw)
    with pytest.raises(ValueError, match="address"):
        RayExecutor("  ")
    assert "executor" in verify_trace("nowhere", executor=object()).reason


def test_chunks_are_contiguous_balanced_and_cover_every_segment():
    segs = [(i, i + 3) for i in range(0, 30, 3)] + [(30, 31)]
    for parts in range(1, 15):
        chunks = chunk_segments(segs, parts)
        assert [s for c in chunks for s in c] == segs and all(chunks)
        assert len(chunks) == min(parts, len(segs))
        steps = [sum(e - s for s, e in c) for c in chunks]
        assert max(steps) - min(steps) <= 3  # within one segment's steps


def test_chunks_of_a_long_trace_are_cheap():
    segs = [(i, i + 1) for i in range(1_000_000)]
    chunks = chunk_segments(segs, 64)
    assert len(chunks) == 64 and {len(c) for c in chunks} <= {15625}


@pytest.mark.slow
def test_ray_study_equals_the_serial_study():
    kw = dict(
        model="fcn",
        dataset="digits",
        batch_sizes=(32, 100),
        repeats=2,
        steps=4,
        matrix_steps=0,
        conditions=("permute", "threads", "native+permute", "reproducible+permute"),
    )
    a = run_study(**kw)
    b = run_study(**kw, executor=RayExecutor())
    # torch: baseline, permute, threads; native and nn: their own condition; x 2 sizes x 2 repeats
    assert b.executor["tasks"] == 5 * 2 * 2 and b.executor["attempts"] == b.executor["tasks"]
    da, db = a.to_dict(), b.to_dict()
    for k in ("seconds", "executor"):
        da.pop(k), db.pop(k)
    assert da == db
    assert b.conditions["native+permute"].max_error == 0.0 and b.conditions["permute"].max_error > 0


def test_cli_repro_on_ray(tmp_path):
    out = str(tmp_path / "study")
    assert (
        main(
            [
                "repro",
                "--ray",
                "local",
                "--batch-sizes",
                "32",
                "--conditions",
                "native,permute",
                "--repeats",
                "2",
                "--steps",
                "3",
                "--matrix-steps",
                "0",
                "--no-gpu-conditions",
                "--out",
                out,
                "--quiet",
            ]
        )
        == 0
    )
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["executor"]["kind"] == "ray" and rep["conditions"]["native"]["max_error"] == 0.0


def test_a_task_gets_only_its_segments_records(exact_trace):
    from exactforge.verify.ray import _TraceSlice

    tr = Trace.open(exact_trace)
    part = _TraceSlice.of(tr, [(9, 12), (12, 15)])
    assert sorted(part.slice_records) == list(range(9, 15)) and part.num_records == 0
    assert sorted(part.entries) == [9, 12, 15]  # the checkpoints its segments start and end at
    assert np.array_equal(part.batch(10), tr.batch(10))
    assert part.checkpoint_entry(9) == tr.checkpoint_entry(9) and part.checkpoint_entry(0) == tr.checkpoint_entry(0)
    assert part.load_checkpoint(15).keys() == tr.load_checkpoint(15).keys()
    with pytest.raises(ValueError, match="not part of this task"):
        part.batch(20)
    with pytest.raises(ValueError, match="no theta_21"):
        part.load_checkpoint(21)


def test_the_trace_a_worker_gets_checks_shipped_bytes(exact_trace):
    # a shipped checkpoint is checked against the chain exactly as a file is
    tr = Trace.open(exact_trace)
    good = tr.checkpoint_bytes(3)
    assert tr.decode_checkpoint(3, bytes(good)).keys() == tr.load_checkpoint(3).keys()
    bad = bytearray(good)
    bad[-1] ^= 1
    with pytest.raises(ValueError, match="hash"):
        tr.decode_checkpoint(3, bytes(bad))
    with pytest.raises(ValueError, match="at most"):
        tr.decode_checkpoint(3, b"x" * (len(good) + 10**7))
