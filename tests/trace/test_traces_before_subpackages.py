"""Traces written before the package was split into subpackages verify after it, bit for bit:
the native and reproducible ones at epsilon = 0 under a shuffled batch order and one thread
(their bits do not depend on either, nor on the CPU), the plain-torch ones at epsilon = 0 in the
logged order on the CPU kind that wrote them and within float32 noise on others."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

from exactforge.verify import verify_trace

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
        assert rep.valid and rep.accepted and rep.max_error == 0.0, (rep.reason, rep.max_error)
    else:
        rep = verify_trace(trace, model=model, epsilon=1e-5)
        assert rep.valid and rep.accepted, (rep.reason, rep.max_error)
    assert len(rep.steps) == rep.total_segments > 0


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
