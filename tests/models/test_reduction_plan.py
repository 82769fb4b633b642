"""The native step's reduction plan: exact mode keeps only the reductions
over the batch exact; traces say which plan they were recorded with, so older traces keep
their meaning."""

from __future__ import annotations

import json

import numpy as np
import pytest

import exactforge.models.native as M
from exactforge.data import load_dataset
from exactforge.trace import Trace
from exactforge.trace.record import record_native
from exactforge.verify import verify_trace

DIGITS = load_dataset("digits")
SPEC = M.ModelSpec("fcn", 64, 10, (32,))


def test_plan_2_is_batch_order_and_thread_invariant_and_close_to_plan_1():
    idx = np.random.default_rng(0).choice(len(DIGITS), 50, replace=False)
    p = M.init_params(SPEC, 0)
    g = {}
    for plan in (1, 2):
        ref = M.sgd_step(SPEC, p, DIGITS.X[idx], DIGITS.y[idx], idx, 0.1, mode="exact", plan=plan)
        perm = np.random.default_rng(1).permutation(50)
        for threads in (1, 2):
            got = M.sgd_step(
                SPEC,
                p,
                DIGITS.X[idx[perm]],
                DIGITS.y[idx[perm]],
                idx[perm],
                0.1,
                mode="exact",
                plan=plan,
                threads=threads,
            )
            assert all(np.array_equal(ref[k], got[k]) for k in ref)
        g[plan] = ref
    assert all(np.allclose(g[1][k], g[2][k], rtol=0, atol=1e-6) for k in g[1])
    with pytest.raises(ValueError, match="plan"):
        M.sgd_step(SPEC, p, DIGITS.X[idx], DIGITS.y[idx], idx, 0.1, plan=3)


def test_traces_keep_their_plan(tmp_path, monkeypatch):
    record_native(str(tmp_path / "new"), SPEC, DIGITS, steps=3, batch_size=40, mode="exact")
    assert json.load(open(tmp_path / "new" / "manifest.json"))["reduction_plan"] == 2
    monkeypatch.setattr(M, "REDUCTION_PLAN", 1)  # a trace recorded as before plans existed
    record_native(str(tmp_path / "old"), SPEC, DIGITS, steps=4, batch_size=40, mode="exact")
    monkeypatch.setattr(M, "REDUCTION_PLAN", 2)
    for name in ("new", "old"):
        r = verify_trace(str(tmp_path / name), permute_batches=5, threads=1)
        assert r.valid and r.accepted and r.max_error == 0.0, (name, r.reason)
    a, b = Trace.open(str(tmp_path / "old")).load_checkpoint(3), Trace.open(str(tmp_path / "new")).load_checkpoint(3)
    assert any(not np.array_equal(a[k], b[k]) for k in a)  # the plans are different computations


def test_a_resumed_trace_continues_with_its_own_plan(tmp_path, monkeypatch):
    """An old (plan 1) run killed after two steps and resumed by this exactforge: the steps
    after the resume must use plan 1 too, or the verifier (which reads plan 1) rejects them."""
    real, calls = M.sgd_step, []

    def dies_on_third(*a, **kw):
        calls.append(kw.get("plan"))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(M, "REDUCTION_PLAN", 1)
    monkeypatch.setattr(M, "sgd_step", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        record_native(str(tmp_path / "t"), SPEC, DIGITS, steps=4, batch_size=40, mode="exact")
    monkeypatch.setattr(M, "REDUCTION_PLAN", 2)
    monkeypatch.setattr(M, "sgd_step", real)
    record_native(str(tmp_path / "t"), SPEC, DIGITS, steps=4, batch_size=40, mode="exact", resume=True)
    assert json.load(open(tmp_path / "t" / "manifest.json"))["reduction_plan"] == 1
    r = verify_trace(str(tmp_path / "t"))
    assert r.valid and r.complete and r.accepted and r.max_error == 0.0, r.reason


@pytest.mark.parametrize("plan", [3, 0, "2", True])
def test_hostile_plans_are_refused(tmp_path, plan):
    from hostile import rechain

    record_native(str(tmp_path / "t"), SPEC, DIGITS, steps=2, batch_size=40, mode="exact")
    rechain(str(tmp_path / "t"), manifest_edit=lambda m: m.update(reduction_plan=plan))
    r = verify_trace(str(tmp_path / "t"))
    assert not r.valid and "reduction_plan" in r.reason
