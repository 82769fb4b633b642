"""A rejection always says why: the first segment over epsilon and its distance; and for a trace
of torch's own kernels, whose bits depend on the CPU, where the recording machine (as the trace
declares it) differs from the verifier's, with what to do instead."""

from __future__ import annotations

import json
import os

import pytest

from exactforge.data import load_digits
from exactforge.models import native as M
from exactforge.trace import environment
from exactforge.trace.record import record_native, record_torch_fcn
from exactforge.verify import verify_trace
from exactforge.verify.machines import ADVICE, compare_machines, machine_bound, machine_note

from hostile import copy, move_weight, rechain

DIGITS = load_digits()
SPEC = M.ModelSpec("fcn", 64, 10, (8,))


@pytest.fixture(scope="module")
def native_trace(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("machines") / "native")
    record_native(d, SPEC, DIGITS, steps=3, batch_size=12, lr=0.05, checkpoint_every=1)
    return d


@pytest.fixture(scope="module")
def torch_trace(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("machines") / "torch")
    record_torch_fcn(d, SPEC, DIGITS, steps=3, batch_size=12, lr=0.05, checkpoint_every=1)
    return d


def test_environment_records_the_machine_facts_bits_depend_on(monkeypatch):
    for var in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "EXACTFORGE_ISA"):
        monkeypatch.delenv(var, raising=False)
    env = environment()
    assert {"device", "python", "numpy", "platform", "exactforge", "torch"} <= set(env)  # the keys before
    assert isinstance(env["cpu"], dict) and set(env["cpu"]) == {"vendor", "model"}
    assert all(isinstance(v, str) and v for v in env["cpu"].values())
    assert isinstance(env["torch_cpu_capability"], str) and env["torch_cpu_capability"]
    blas = env["blas"]
    assert isinstance(blas, dict) and isinstance(blas["name"], str) and blas["name"]
    assert blas["version"] is None or isinstance(blas["version"], str)
    assert env["emulation"] == {}
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    assert environment()["emulation"] == {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"}
    json.dumps(environment())  # a manifest field: JSON


def test_an_accepted_trace_has_no_reason(native_trace, torch_trace):
    for d, bound in ((native_trace, False), (torch_trace, True)):
        rep = verify_trace(d)
        assert rep.valid and rep.accepted and rep.reason is None, rep.reason
        assert rep.machines == {"bound": bound, "differences": [], "unrecorded": []}
        assert json.loads(rep.to_json())["machines"] == rep.machines


def test_a_rejection_names_the_first_failing_step(native_trace, tmp_path):
    d = copy(native_trace, str(tmp_path / "t"))
    move_weight(d, 2)
    rep = verify_trace(d, epsilon=0)
    assert rep.valid and not rep.accepted
    assert [s.step for s in rep.steps if not s.passed] == [1, 2]  # the segments into and out of checkpoint 2
    assert rep.reason and rep.reason.startswith("step 1: the segment 1..2 ")
    assert f"distance {rep.steps[1].error:.6g}" in rep.reason and "over epsilon 0" in rep.reason
    assert "2 of 3 recomputed segments" in rep.reason
    # the native engine's arithmetic is exactforge's own: the machine is not the explanation
    assert ADVICE not in rep.reason and rep.machines["bound"] is False


def test_a_plain_torch_rejection_names_the_machines_and_what_to_do(torch_trace, tmp_path):
    d = copy(torch_trace, str(tmp_path / "t"))
    here = environment()
    other_cap = "AVX512" if here["torch_cpu_capability"] != "AVX512" else "AVX2"

    def elsewhere(man):
        man["environment"]["torch_cpu_capability"] = other_cap
        man["environment"]["cpu"] = {"vendor": "SomeOtherVendor", "model": "Another CPU (family 6, model 143)"}
        man["environment"]["emulation"] = {"MKL_CBWR": "COMPATIBLE"}

    rechain(d, elsewhere)
    assert verify_trace(d).accepted  # what a trace declares is not checked: it only explains
    move_weight(d, 1)
    rep = verify_trace(d, epsilon=0)
    assert rep.valid and not rep.accepted and rep.reason.startswith("step 0: the segment 0..1 ")
    r = rep.reason
    assert f"torch_cpu_capability: {other_cap} in the trace, {here['torch_cpu_capability']} here" in r
    assert f"cpu vendor: SomeOtherVendor in the trace, {here['cpu']['vendor']} here" in r
    assert f"cpu model: Another CPU (family 6, model 143) in the trace, {here['cpu']['model']} here" in r
    if "MKL_CBWR" not in os.environ:
        assert "MKL_CBWR (emulation): COMPATIBLE in the trace, unset here" in r
    assert ADVICE in r and "exactforge.nn.reproducible" in r and "--epsilon auto" in r
    facts = {x["fact"] for x in rep.machines["differences"]}
    assert {"cpu vendor", "cpu model", "torch_cpu_capability"} <= facts and rep.machines["bound"]
    # the same rejection through permuted batches, which change torch's bits, not the verdict's why
    rep = verify_trace(d, epsilon=0, permute_batches=3)
    assert not rep.accepted and ADVICE in rep.reason and other_cap in rep.reason


def test_an_older_trace_that_does_not_record_the_facts_says_so(torch_trace, tmp_path):
    d = copy(torch_trace, str(tmp_path / "t"))

    def old(man):
        for key in ("cpu", "torch_cpu_capability", "blas", "emulation"):
            del man["environment"][key]

    rechain(d, old)
    move_weight(d, 2)
    rep = verify_trace(d, epsilon=0)
    assert not rep.accepted and rep.machines["unrecorded"] == [
        "cpu vendor",
        "cpu model",
        "torch_cpu_capability",
        "blas",
        "emulation",
    ]
    assert "does not record cpu vendor, cpu model, torch_cpu_capability, blas, emulation" in rep.reason
    assert ADVICE in rep.reason


def test_which_traces_are_bound_to_their_machine():
    assert machine_bound({"engine": "torch", "reduction": None})
    assert machine_bound({"engine": "torch", "reduction": "fixed"})  # before the arithmetic was named
    assert machine_bound({"engine": "torch", "reduction": "fixed", "arithmetic": "torch"})
    assert not machine_bound({"engine": "torch", "reduction": "fixed", "arithmetic": "portable-1"})
    assert not machine_bound({"engine": "native", "reduction": "fixed"})
    here = environment()
    man = {"engine": "torch", "reduction": "exact", "arithmetic": "portable-1", "environment": {"cpu": {}}}
    assert machine_note(man, compare_machines(man["environment"], here)) is None
    man = {"engine": "torch", "reduction": None, "environment": dict(here)}
    assert machine_note(man, compare_machines(man["environment"], here)) is None  # the same machine


@pytest.mark.parametrize(
    "declared",
    [
        None,
        "a string",
        [],
        {"cpu": "x" * 10_000},
        {"cpu": {"vendor": [1, 2]}},
        {"emulation": "avx"},
        {"emulation": {str(i): i for i in range(1000)}},
        {"exactforge": {"isa": 3}},
        {"blas": {"name": None}},
    ],
)
def test_a_hostile_declaration_is_described_never_trusted(declared):
    here = environment()
    cmp = compare_machines(declared, here)
    assert set(cmp) == {"differences", "unrecorded"} and len(cmp["differences"]) <= 16
    assert all(len(x["trace"]) <= 80 and len(x["here"]) <= 80 for x in cmp["differences"])
    json.dumps(cmp)
    note = machine_note({"engine": "torch", "reduction": None, "environment": declared}, cmp)
    assert note is None or ADVICE in note


def test_an_intel_verifier_is_told_to_replay_under_mkls_compatible_branch(monkeypatch):
    """MKL gives every AMD CPU its COMPATIBLE branch; an Intel verifier (another branch) of a
    trace of torch's arithmetic that was recorded there, or that does not say, is told how to
    replay it exactly."""
    import exactforge.trace.writer as W

    monkeypatch.setattr(W, "mkl_branch", lambda: "AVX512")
    man = {"engine": "torch", "reduction": "exact", "environment": {}}
    here = {"mkl_branch": "AVX512", "cpu": {"vendor": "GenuineIntel", "model": "Xeon"}}
    amd = {"mkl_branch": "COMPATIBLE", "cpu": {"vendor": "AuthenticAMD", "model": "EPYC"}}
    for trace_env in (amd, {}):
        note = machine_note({**man, "environment": trace_env}, compare_machines(trace_env, here))
        assert note is not None and "MKL_CBWR=COMPATIBLE" in note, note
    # a trace recorded on the same branch, or a portable one, gets no such advice
    same = {"mkl_branch": "AVX512", "cpu": {"vendor": "AuthenticAMD", "model": "EPYC"}}
    note = machine_note({**man, "environment": same}, compare_machines(same, here))
    assert note is not None and "MKL_CBWR" not in note
    assert machine_note({**man, "arithmetic": "portable-1"}, compare_machines(amd, here)) is None
