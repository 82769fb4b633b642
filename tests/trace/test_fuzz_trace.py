"""Fuzzing the trace reader and the verifier with mutated real traces (hypothesis; the CI
profile bounds the examples, HYPOTHESIS_PROFILE=dev runs more): every mutation ends as an
invalid trace or, for a changed batch or a harmless provenance field, a recomputed verdict;
never an exception, a hang or an accepted forgery. benchmarks/bench_hostile.py runs thousands
of these and reports outcomes, time and peak memory."""

from __future__ import annotations

import os
import random
import shutil
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exactforge.data import load_digits
from exactforge.models import native as M
from exactforge.trace.record import record_native
from exactforge.verify import verify_trace

from hostile import KINDS, allowed, deadline, mutate

DIGITS = load_digits()


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("fuzz") / "honest")
    record_native(d, M.ModelSpec("fcn", 64, 10, (8,)), DIGITS, steps=6, batch_size=16, lr=0.05, checkpoint_every=2)
    secret = str(tmp_path_factory.mktemp("outside") / "secret.bin")
    open(secret, "wb").write(b"not part of the trace")
    return d, secret


def outcome(d: str, **kw) -> str:
    with deadline(30):
        rep = verify_trace(d, **kw)
    assert rep.valid or rep.reason
    return "invalid" if not rep.valid else ("accepted" if rep.accepted else "rejected")


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("EXACTFORGE_FUZZ_EXAMPLES", "150")))
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**32 - 1))
def test_mutated_traces_never_crash_hang_or_pass(honest, kind, seed):
    src, secret = honest
    work = tempfile.mkdtemp()
    try:
        d = shutil.copytree(src, os.path.join(work, "t"), symlinks=True)
        what = mutate(d, kind, random.Random(seed), secret)
        got = outcome(d)
        assert allowed(kind, what, got), (what, got)
        if kind == "truncate":  # an honest prefix: valid when a prefix is asked for
            assert outcome(d, allow_partial=True) in ("accepted", "invalid")
    finally:
        shutil.rmtree(work)


def test_the_honest_trace_passes(honest):
    assert outcome(honest[0]) == "accepted"
