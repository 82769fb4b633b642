"""Golden traces of reproducible loops, recorded on every CPU kind the project's machines have
and under emulated machines (tests/fixtures/golden/make.py), verify at epsilon = 0 here, under
a shuffled batch order and one thread: a prover's trace must verify on the verifier's machine,
whichever CPU each one has. And the other way round: what this machine records verifies on an
emulated other machine (torch's scalar build and exactforge's generic kernels, in a fresh
process), so CI on any machine checks both directions."""

from __future__ import annotations

import glob
import importlib.util
import json
import os

import pytest

from exactforge.verify import verify_trace

from conftest import verify_elsewhere

HERE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "golden")
TRACES = sorted(
    os.path.relpath(os.path.dirname(m), HERE) for m in glob.glob(os.path.join(HERE, "*", "*", "*", "manifest.json"))
)


def _maker():
    spec = importlib.util.spec_from_file_location("golden_make", os.path.join(HERE, "make.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_level_of_this_machines_kind_is_there():
    """The golden set holds at least the CPU kind the fixtures were first made on, with each of
    its emulated levels and every loop."""
    kinds = {t.split(os.sep)[0] for t in TRACES}
    assert kinds, "no golden traces"
    mk = _maker()
    for kind in kinds:
        levels = json.load(open(os.path.join(HERE, kind, "machine.json")))["levels"]
        for level in levels:
            loops = mk.SMALL + (mk.BIG if level in mk.BIG_LEVELS else ())
            for loop in loops:
                assert os.path.join(kind, level, loop) in TRACES


@pytest.mark.parametrize("name", TRACES)
def test_golden_trace_verifies_at_epsilon_0(name, tmp_path):
    import shutil

    trace = str(tmp_path / "t")
    shutil.copytree(os.path.join(HERE, name), trace)
    assert json.load(open(os.path.join(trace, "manifest.json")))["arithmetic"] == "portable-1"
    make = _maker().factory(name.split(os.sep)[-1])
    rep = verify_trace(trace, model=make() if make else None, epsilon=0.0, permute_batches=7, threads=1)
    assert rep.valid and rep.accepted and rep.max_error == 0.0, (name, rep.reason, rep.max_error)
    assert rep.learning_rates["follows"], rep.learning_rates


@pytest.mark.slow
def test_this_machines_traces_verify_on_an_emulated_other_machine(tmp_path):
    """Recorded here natively (the golden loops, recorded afresh), verified in a process that
    runs torch's scalar ATen build and exactforge's generic kernels."""
    mk = _maker()
    outs = []
    for loop in mk.SMALL:
        out = str(tmp_path / loop)
        mk.record(loop, out)
        outs.append(out)
    emulated = {"ATEN_CPU_CAPABILITY": "default", "EXACTFORGE_ISA": "generic"}
    factories = [(out, getattr(mk.factory(os.path.basename(out)), "__name__", "")) for out in outs]
    for t, (accepted, error, reason) in verify_elsewhere(emulated, os.path.join(HERE, "make.py"), factories).items():
        assert accepted and error == 0.0, (t, error, reason)
