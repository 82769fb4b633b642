"""Traces written before the package was split into subpackages verify after it, bit for bit:
the native and reproducible ones at epsilon = 0 under a shuffled batch order and one thread
(their bits do not depend on either), the plain-torch ones at epsilon = 0 in the logged order on
the CPU kind that wrote them and within float32 noise on others.

They were recorded with torch's own arithmetic, before the portable one: the Adam trace's update
took MKL's square root on an AMD CPU (a Zen 4), whose MKL branch is COMPATIBLE. On an Intel CPU
MKL runs another branch; there the trace replays exactly under MKL_CBWR=COMPATIBLE, and a
verifier without it is told so in the rejection's reason."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

from exactforge.trace.writer import mkl_branch
from exactforge.verify import verify_trace

from conftest import verify_elsewhere

HERE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "traces_before_subpackages")


def _maker():
    spec = importlib.util.spec_from_file_location("make_old_traces", os.path.join(HERE, "make.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# name -> (model factory or None, reproducible: bits independent of order, threads and CPU)
TRACES = {
    "logreg_fixed": (None, True),
    "fcn_exact": (None, True),
    "fcn_f64": (None, True),
    "lenet_nn": (None, True),
    "cnn_adam_dropout": ("cnn", True),
    "fcn_torch": (None, False),
    "lenet_torch": (None, False),
    "mlp_sgd_momentum": ("mlp", False),
}


@pytest.mark.parametrize("name", sorted(TRACES))
def test_old_trace_verifies(name, tmp_path):
    factory, reproducible = TRACES[name]
    trace = str(tmp_path / name)
    shutil.copytree(os.path.join(HERE, name), trace)  # a private copy: verification reads, never writes
    model = getattr(_maker(), factory)() if factory else None
    if reproducible:
        rep = verify_trace(trace, model=model, epsilon=0.0, permute_batches=7, threads=1)
        if name in MKL_BOUND and mkl_branch() not in (None, "COMPATIBLE") and not rep.accepted:
            # MKL's branch here is not the recording machine's: the replay under it is checked
            # in a process of its own below; the rejection must say how to get it
            assert rep.reason and "MKL_CBWR=COMPATIBLE" in rep.reason, rep.reason
            return
        assert rep.valid and rep.accepted and rep.max_error == 0.0, (rep.reason, rep.max_error)
    else:
        rep = verify_trace(trace, model=model, epsilon=1e-5)
        assert rep.valid and rep.accepted, (rep.reason, rep.max_error)
    assert len(rep.steps) == rep.total_segments > 0


# traces whose torch arithmetic went through MKL (Adam's square root)
MKL_BOUND = ("cnn_adam_dropout",)


@pytest.mark.slow
def test_old_reproducible_traces_verify_under_mkls_compatible_branch(tmp_path):
    """In a process started with MKL_CBWR=COMPATIBLE (the branch MKL gives every AMD CPU, the
    same bits on any x86 CPU), every reproducible old trace verifies at epsilon 0: on an Intel
    CPU too, where MKL's own branch gives the Adam trace's square roots other bits."""
    traces = []
    for name, (factory, reproducible) in sorted(TRACES.items()):
        if reproducible:
            trace = str(tmp_path / name)
            shutil.copytree(os.path.join(HERE, name), trace)
            traces.append((trace, factory or ""))
    verdicts = verify_elsewhere({"MKL_CBWR": "COMPATIBLE"}, os.path.join(HERE, "make.py"), traces)
    for trace, (accepted, error, reason) in verdicts.items():
        assert accepted and error == 0.0, (trace, error, reason)


def test_a_schema_2_trace_keeps_its_own_top_level_fields_as_declared(tmp_path):
    """Schema 2 put a recorder's extra fields at the top level: such a trace still verifies,
    and the fields are reported as the prover's word; schema 3 refuses them."""
    import json

    from hostile import rechain

    trace = str(tmp_path / "t")
    shutil.copytree(os.path.join(HERE, "logreg_fixed"), trace)
    assert json.load(open(os.path.join(trace, "manifest.json")))["schema_version"] == 2
    rechain(trace, manifest_edit=lambda m: m.update(note="recorded by the old TraceRecorder(extra=)"))
    rep = verify_trace(trace)
    assert rep.accepted and "note" in rep.declared
    rechain(trace, manifest_edit=lambda m: m.update(schema_version=3))
    rep = verify_trace(trace)
    assert not rep.valid and "unknown field 'note'" in rep.reason
