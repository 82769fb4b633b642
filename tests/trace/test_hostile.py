"""Every hostile case, by name: the verifier and the other commands end with a clear
error (exit 2, valid=False with a reason, the --json report written) or, where a step was
recomputed and differs, exit 1; never a traceback, a hang or a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import exactforge
from exactforge import reduce as R
from exactforge.cli import main
from exactforge.data import load_digits
from exactforge.models import native as M
from exactforge.trace import Limits, Trace, TraceError, TraceWriter, encode_checkpoint
from exactforge.trace.record import record_native
from exactforge.verify import verify_trace
from exactforge.verify.distances import distance, verification_distance

from hostile import REFORMATTED, copy, deadline, dump, load, nan_checkpoint, rechain

DIGITS = load_digits()
SPEC = M.ModelSpec("fcn", 64, 10, (16,))


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("hostile") / "honest")
    record_native(d, SPEC, DIGITS, steps=8, batch_size=32, lr=0.05, checkpoint_every=2)
    return d


@pytest.fixture
def t(honest, tmp_path):
    return copy(honest, str(tmp_path / "t"))


def run_main(argv):
    """main()'s exit code, also when argparse itself refuses a value (SystemExit(2))."""
    try:
        with deadline(60):
            return main(argv)
    except SystemExit as exc:
        return exc.code


def verify_cli(d, *extra):
    """exit code, the JSON report (always written), stderr is checked by the caller via capsys."""
    out = os.path.join(os.path.dirname(d), "report.json")
    if os.path.exists(out):
        os.unlink(out)
    with deadline(30):
        code = main(["verify", d, "--quiet", "--json", out, *extra])
    with open(out) as f:
        rep = json.load(f)
    assert rep["valid"] == (code in (0, 1)) and rep["accepted"] == (code == 0)
    if code == 2:
        assert rep["reason"]
    return code, rep


def test_honest_trace_is_accepted(honest):
    code, rep = verify_cli(honest)
    assert code == 0 and rep["max_error"] == 0.0 and rep["complete"] and rep["initial"] == "seeded"


# -- safe reading ---------------------------------------------------------------------------
def test_fifo_in_place_of_a_record_does_not_block(t):
    p = os.path.join(t, "records", "00000003.json")
    os.unlink(p)
    os.mkfifo(p)
    # in a subprocess as well: a hang there cannot take the test run with it
    r = subprocess.run(
        [sys.executable, "-m", "exactforge.cli", "verify", t, "--quiet"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "FIFO" in r.stderr and "Traceback" not in r.stderr


def test_checkpoint_symlinked_to_dev_zero(t):
    p = os.path.join(t, "checkpoints", "00000004.safetensors")
    os.unlink(p)
    os.symlink("/dev/zero", p)
    code, rep = verify_cli(t)
    assert code == 2 and "symbolic link" in rep["reason"]


@pytest.mark.parametrize("where", ["records", "checkpoints"])
def test_a_symlinked_folder_is_not_followed(t, tmp_path, where):
    real = str(tmp_path / "elsewhere")
    os.rename(os.path.join(t, where), real)
    os.symlink(real, os.path.join(t, where))
    code, rep = verify_cli(t)
    assert code == 2 and "symbolic link" in rep["reason"]


def test_a_huge_record_is_refused_before_parsing(t):
    # 33 MB of batch indices (with the chain rebuilt): refused by its size, never parsed
    rechain(t, record_edit=lambda i, r: r.update(batch=list(range(1797)) * 2000) if i == 2 else None)
    assert os.path.getsize(os.path.join(t, "records", "00000002.json")) > 10 << 20
    code, rep = verify_cli(t)
    assert code == 2 and "bytes" in rep["reason"] and "record 2" in rep["reason"]


def test_record_batch_size_must_match_the_manifest(t):
    rechain(t, record_edit=lambda i, r: r.update(batch=r["batch"] + [5]) if i == 1 else None)
    code, rep = verify_cli(t)
    assert code == 2 and "batch_size" in rep["reason"]


def test_a_checkpoint_larger_than_the_model_is_refused_by_its_size(t):
    p = os.path.join(t, "checkpoints", "00000002.safetensors")
    with open(p, "ab") as f:
        f.write(b"\0" * (4 << 20))
    rechain(t)
    code, rep = verify_cli(t)
    assert code == 2 and "checkpoint 2" in rep["reason"] and "bytes" in rep["reason"]


def test_a_declared_model_beyond_the_limits_is_refused_before_anything_is_read(t):
    def edit(m):
        m["tensors"][0][2] = [1 << 20, 1 << 20]

    rechain(t, manifest_edit=edit)
    code, rep = verify_cli(t)
    assert code == 2 and "--max-model-mb" in rep["reason"]


def test_a_sparse_theta0_declaring_a_large_model_is_bounded_by_the_verifier(t, monkeypatch):
    """A sparse file of 5 MiB, a 4.7 MiB model declared (hashes rebuilt): invalid at its header when the verifier
    allows such a model, refused from the manifest when it does not."""

    def edit(m):
        m["model"]["hidden"] = [16384]
        m["tensors"] = [[n, "F32", s] for n, s in M.ModelSpec("fcn", 64, 10, (16384,)).shapes().items()]

    with open(os.path.join(t, "checkpoints", "00000000.safetensors"), "wb") as f:
        f.truncate(5 << 20)
    rechain(t, manifest_edit=edit)
    code, rep = verify_cli(t)
    assert code == 2 and "checkpoint 0" in rep["reason"]
    opened = []
    monkeypatch.setattr(Trace, "checkpoint_bytes", lambda self, s: opened.append(s))
    code, rep = verify_cli(t, "--max-model-mb", "2")
    assert code == 2 and "--max-model-mb" in rep["reason"] and opened == []


def test_the_verifier_chooses_the_largest_model_it_reads(tmp_path, monkeypatch):
    """A model within the default bound but above the verifier's own is refused from the
    manifest: no checkpoint is opened."""
    big = str(tmp_path / "big")
    record_native(big, M.ModelSpec("fcn", 64, 10, (4096,)), DIGITS, steps=1, batch_size=8)  # 1.2 MiB
    assert verify_cli(big, "--max-model-mb", "2")[0] == 0
    opened = []
    monkeypatch.setattr(Trace, "checkpoint_bytes", lambda self, s: opened.append(s))
    code, rep = verify_cli(big, "--max-model-mb", "1")
    assert code == 2 and "--max-model-mb" in rep["reason"] and opened == []
    assert run_main(["verify", big, "--max-model-mb", "0"]) == 2


def test_random_policy_recomputes_the_sample_and_checks_every_checkpoint_once(honest, monkeypatch):
    loaded = []
    real = Trace.load_checkpoint
    monkeypatch.setattr(Trace, "load_checkpoint", lambda self, s: loaded.append(s) or real(self, s))
    rep = verify_trace(honest, policy="random", fraction=0.25, seed=1)
    assert rep.accepted and len(rep.steps) == 1 and rep.checkpoints_checked == 5
    # every checkpoint read for its integrity, each once (one in memory at a time)
    assert sorted(loaded) == [0, 2, 4, 6, 8]


# -- the trust model: the verifier's data, never a path from the trace ---------------------
def test_manifest_data_path_is_never_opened(t, tmp_path, capsys):
    rechain(t, manifest_edit=lambda m: m["data"].update(name="mnist", path="/etc/passwd"))
    code, rep = verify_cli(t)
    assert code == 2 and "--data-path" in rep["reason"]


def test_data_shipped_by_the_prover_is_not_trusted(tmp_path):
    # the prover trains on random images stored beside the trace and calls them "mnist"
    rng = np.random.default_rng(0)
    X = rng.random((100, 64)).astype(np.float32)
    y = rng.integers(0, 10, 100)
    from exactforge.data import Dataset, fingerprint

    fake = Dataset("mnist", X, y.astype(np.int64), 10)
    d = str(tmp_path / "fake")
    record_native(d, SPEC, fake, steps=2, batch_size=10, data_path=d)
    assert not verify_trace(d).valid  # no verifier data: refused, the trace's path is not followed
    from conftest import write_mnist  # a real-format MNIST folder the verifier owns

    write_mnist(str(tmp_path / "mnist"), n=100)
    rep = verify_trace(d, data_path=str(tmp_path / "mnist"))
    assert not rep.valid and "fingerprint" in rep.reason
    assert fingerprint(X, y.astype(np.int64)) == Trace.open(d).manifest["data"]["fingerprint"]


@pytest.mark.parametrize("file", ["../../etc/passwd", "/etc/passwd", "checkpoints/00000002.safetensors"])
def test_initial_checkpoint_outside_the_trace_is_refused(t, file):
    rechain(t, manifest_edit=lambda m: m["initial_checkpoint"].update(file=file))
    code, rep = verify_cli(t)
    assert code == 2 and "initial_checkpoint" in rep["reason"]


# -- completeness ---------------------------------------------------------------------------
def test_deleting_the_last_records_and_checkpoints_is_detected(t):
    for s in (6, 7):
        os.unlink(os.path.join(t, "records", f"{s:08d}.json"))
    os.unlink(os.path.join(t, "checkpoints", "00000008.safetensors"))
    code, rep = verify_cli(t)
    assert code == 2 and "incomplete" in rep["reason"] and "6 of the 8" in rep["reason"]
    code, rep = verify_cli(t, "--allow-partial")
    assert code == 0 and rep["partial"] and rep["num_steps"] == 6 and rep["declared_steps"] == 8


def test_deleting_records_folder_is_detected(t):
    import shutil

    shutil.rmtree(os.path.join(t, "records"))
    code, rep = verify_cli(t)
    assert code == 2 and "incomplete" in rep["reason"]


def test_truncation_with_a_rewritten_manifest_still_needs_a_final_record(t):
    for s in (6, 7):
        os.unlink(os.path.join(t, "records", f"{s:08d}.json"))
    rechain(t, manifest_edit=lambda m: m.update(steps=6))
    code, rep = verify_cli(t)
    assert code == 2 and "incomplete" in rep["reason"]


def test_steps_appended_after_the_final_step_are_detected(t):
    last = load(os.path.join(t, "records", "00000007.json"))
    extra = dict(last, step=8, prev=last["hash"], checkpoint=None)
    extra.pop("final")
    from exactforge.trace import record_hash

    extra["hash"] = record_hash(extra)
    dump(os.path.join(t, "records", "00000008.json"), extra)
    code, rep = verify_cli(t)
    assert code == 2 and "extended" in rep["reason"]


def test_a_hole_in_the_records_is_detected(t):
    os.unlink(os.path.join(t, "records", "00000003.json"))
    code, rep = verify_cli(t, "--allow-partial")
    assert code == 2 and "missing" in rep["reason"]


def test_theta0_from_another_run_is_not_the_seeded_initialisation(t, tmp_path):
    other = str(tmp_path / "other")
    record_native(other, SPEC, DIGITS, steps=2, batch_size=32, lr=0.05, seed=7)
    params = Trace.open(other).load_checkpoint(2)
    with open(os.path.join(t, "checkpoints", "00000000.safetensors"), "wb") as f:
        f.write(encode_checkpoint(params, 0))
    rechain(t)
    code, rep = verify_cli(t)
    assert code == 2 and "not the initialisation of seed 0" in rep["reason"]
    # calling the weights given changes nothing while the manifest still declares the seed
    rechain(t, manifest_edit=lambda m: m.update(initial="given"))
    code, rep = verify_cli(t)
    assert code == 2 and "not the initialisation of seed 0" in rep["reason"]
    # without a seed, theta_0 is unverified and recomputed from (and fails at step 0's segment)
    rechain(t, manifest_edit=lambda m: m.pop("seed"))
    code, rep = verify_cli(t)
    assert code == 1 and rep["initial"] == "given" and not rep["initial_verified"]
    assert not rep["steps"][0]["passed"]


def test_off_schedule_checkpoints_are_refused(t):
    rechain(t, record_edit=lambda i, r: r.update(checkpoint=None) if i == 3 else None)
    code, rep = verify_cli(t)
    assert code == 2 and "schedule" in rep["reason"]


# -- threads --------------------------------------------------------------------------------
def test_huge_thread_counts_are_refused_not_crashed(honest, capsys):
    with pytest.raises(ValueError, match="1..256"):
        exactforge.set_num_threads(100000)
    with pytest.raises(ValueError, match="threads"):
        R.matmul(np.ones((2, 3), np.float32), np.ones((3, 2), np.float32), threads=100000)
    assert not verify_trace(honest, threads=100000).valid
    code, rep = verify_cli(honest, "--threads", "100000")
    assert code == 2 and "threads" in rep["reason"]
    assert run_main(["search", "--v", "2", "--b", "2", "--threads", "100000", "--quiet"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_native_core_clamps_threads_itself():
    from exactforge._backend.native import _core

    a = np.ones((64, 2048), np.float32)
    out = _core.matmul(a, np.ones((2048, 64), np.float32), "fixed", None, 100000)  # clamped, no crash
    assert out[0, 0] == 2048
    with pytest.raises(ValueError):
        _core.set_num_threads(100000)


# -- malformed traces: exit 2 with a reason, never a traceback ------------------------------
MANIFEST_EDITS = {
    "lr negative": lambda m: m.update(lr=-0.1),
    "lr string": lambda m: m.update(lr="0.1"),
    "missing engine": lambda m: m.pop("engine"),
    "engine wrong type": lambda m: m.update(engine=3),
    "model wrong type": lambda m: m.update(model="fcn"),
    "model spec wrong": lambda m: m["model"].update(hidden="abc"),
    "model negative width": lambda m: m["model"].update(hidden=[-4]),
    "checkpoint_every zero": lambda m: m.update(checkpoint_every=0),
    "checkpoint_every string": lambda m: m.update(checkpoint_every="2"),
    "steps negative": lambda m: m.update(steps=-1),
    "batch_size huge": lambda m: m.update(batch_size=10**30),
    "data not a dict": lambda m: m.update(data=[]),
    "fingerprint wrong": lambda m: m["data"].update(fingerprint="ab" * 32),
    "num_examples wrong": lambda m: m["data"].update(num_examples=5),
    "initial unknown": lambda m: m.update(initial="magic"),
    "seed missing": lambda m: m.pop("seed"),
    "reduction unknown": lambda m: m.update(reduction="fast"),
    "tensors missing": lambda m: m.pop("tensors"),
    "tensor shape wrong": lambda m: m["tensors"][0].__setitem__(2, [64, 17]),
    "tensor dtype wrong": lambda m: m["tensors"][0].__setitem__(1, "F64"),
    "extra tensor declared": lambda m: m["tensors"].append(["extra", "F32", [3]]),
    "optimizer adam": lambda m: m.update(optimizer={"name": "adam", "lr": 0.1}),
    "schema version 1": lambda m: m.update(schema_version=1),
    "schema version huge": lambda m: m.update(schema_version=10**20),
}


@pytest.mark.parametrize("name", sorted(MANIFEST_EDITS))
def test_malformed_manifest_fields(t, name):
    rechain(t, manifest_edit=MANIFEST_EDITS[name])
    code, rep = verify_cli(t)
    assert code == 2, rep


@pytest.mark.parametrize("text", ["Infinity", "NaN", "1e400", "-1e400", "9" * 5000])
def test_non_finite_and_huge_numbers_in_json(t, text):
    p = os.path.join(t, "manifest.json")
    raw = open(p, "rb").read().replace(b'"lr":0.05', b'"lr":' + text.encode())
    assert raw != open(p, "rb").read()
    open(p, "wb").write(raw)
    code, rep = verify_cli(t)
    assert code == 2 and "manifest" in rep["reason"]


def test_deeply_nested_json(t, tmp_path):
    fresh = copy(t, str(tmp_path / "fresh"))
    p = os.path.join(t, "records", "00000001.json")
    open(p, "wb").write(b"[" * 100_000 + b"]" * 100_000)  # refused by its size
    code, rep = verify_cli(t)
    assert code == 2 and "record 1" in rep["reason"]
    open(p, "wb").write(b"[" * 2000 + b"]" * 2000)  # within the size: refused by its depth
    code, rep = verify_cli(t)
    assert code == 2 and "record 1" in rep["reason"] and "nested" in rep["reason"]
    t = fresh
    rechain(t, manifest_edit=lambda m: m.update(extra=json.loads("[" * 40 + "]" * 40)))
    code, rep = verify_cli(t)
    assert code == 2 and "nested" in rep["reason"]


RECORD_EDITS = {
    "NaN index": lambda r: r["batch"].__setitem__(0, float("nan")),
    "negative index": lambda r: r["batch"].__setitem__(0, -1),
    "index past the data": lambda r: r["batch"].__setitem__(0, 1797),
    "float index": lambda r: r["batch"].__setitem__(0, 1.0),
    "bool index": lambda r: r["batch"].__setitem__(0, True),
    "batch not a list": lambda r: r.update(batch="0,1,2"),
    "step wrong": lambda r: r.update(step=5),
    "extra field": lambda r: r.update(note="hi"),
    "final not bool": lambda r: r.update(final=1),
    "checkpoint path escape": lambda r: r.update(checkpoint={"step": 2, "file": "../x", "sha256": "0" * 64}),
}


@pytest.mark.parametrize("name", sorted(RECORD_EDITS))
def test_malformed_record_fields(t, name):
    def edit(i, r):
        if i == 1:
            RECORD_EDITS[name](r)

    from exactforge.trace import canonical_json

    # NaN cannot pass canonical_json: write it as the prover would, by hand
    if name == "NaN index":
        p = os.path.join(t, "records", "00000001.json")
        raw = open(p, "rb").read()
        idx = load(p)["batch"][0]
        open(p, "wb").write(raw.replace(f"[{idx},".encode(), b"[NaN,", 1))
    else:
        rechain(t, record_edit=edit)
    del canonical_json
    code, rep = verify_cli(t)
    assert code == 2 and "record 1" in rep["reason"], rep


def test_wrong_checkpoint_contents_with_a_consistent_chain(t):
    # a checkpoint whose tensors differ from the declared ones (shape, dtype, extra tensor)
    good = Trace.open(t).load_checkpoint(4)
    for bad in (
        {**good, "W1": np.zeros((64, 17), np.float32)},
        {**good, "W1": good["W1"].astype(np.float64)},
        {**good, "extra": np.zeros(3, np.float32)},
    ):
        with open(os.path.join(t, "checkpoints", "00000004.safetensors"), "wb") as f:
            f.write(encode_checkpoint(bad, 4))
        rechain(t)
        code, rep = verify_cli(t)
        assert code == 2 and "checkpoint 4" in rep["reason"], rep


def test_bad_arguments_write_the_report_too(honest, tmp_path):
    for extra in (
        ["--epsilon", "nan"],
        ["--epsilon", "-1"],
        ["--epsilon", "inf"],
        ["--fraction", "0", "--policy", "random"],
        ["--q", "0", "--policy", "topq"],
        ["--permute-batches", "-3"],
    ):
        code, rep = verify_cli(honest, *extra)
        assert code == 2 and rep["reason"], extra
    assert main(["verify", str(tmp_path / "nowhere"), "--quiet"]) == 2


# -- distances ------------------------------------------------------------------------------
def test_cosine_is_zero_for_equal_parameters_and_rejects_a_scaled_checkpoint(t):
    code, rep = verify_cli(t, "--distance", "cosine")
    assert code == 0 and rep["max_error"] == 0.0
    for d in ("l2", "l1", "linf", "cosine", "l2sq", "l2sq_dim"):
        v = np.random.default_rng(0).standard_normal(1000)
        assert distance(v, v.copy(), d) == 0.0
    v = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    assert distance(v, 1.5 * v, "cosine") < 1e-7  # the papers' 1 - cos: scale-blind
    assert verification_distance([(v, 1.5 * v)], "cosine") > 0.3  # the verifier's: not
    ck = Trace.open(t).load_checkpoint(8)
    with open(os.path.join(t, "checkpoints", "00000008.safetensors"), "wb") as f:
        f.write(encode_checkpoint({k: (1.5 * v).astype(v.dtype) for k, v in ck.items()}, 8))
    rechain(t)
    code, rep = verify_cli(t, "--distance", "cosine", "--epsilon", "1e-3")
    assert code == 1 and not rep["steps"][-1]["passed"]


# -- resume ---------------------------------------------------------------------------------
def _unfinished(tmp_path, name="u"):
    d = str(tmp_path / name)
    record_native(d, SPEC, DIGITS, steps=5, batch_size=32, lr=0.05, checkpoint_every=3)
    # make it unfinished: drop the final step, as a killed recorder would leave it
    os.unlink(os.path.join(d, "records", "00000004.json"))
    return d


def test_a_refused_resume_deletes_nothing(tmp_path, capsys):
    d = _unfinished(tmp_path)
    before = sorted(os.listdir(os.path.join(d, "records")))
    assert (
        main(
            [
                "train",
                "--model",
                "fcn",
                "--hidden",
                "16",
                "--batch-size",
                "32",
                "--steps",
                "5",
                "--lr",
                "0.5",
                "--checkpoint-every",
                "3",
                "--out",
                d,
                "--resume",
                "--quiet",
            ]
        )
        == 2
    )
    assert "lr" in capsys.readouterr().err
    assert sorted(os.listdir(os.path.join(d, "records"))) == before


def test_a_kill_during_the_tail_removal_leaves_a_valid_prefix(tmp_path, monkeypatch):
    d = _unfinished(tmp_path)
    real = os.unlink
    calls = []

    def killed(path, *a, **k):
        calls.append(path)
        if len(calls) == 1:
            real(path, *a, **k)
            raise KeyboardInterrupt("killed during the clean-up")
        real(path, *a, **k)

    monkeypatch.setattr(os, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        TraceWriter.resume(d)
    monkeypatch.setattr(os, "unlink", real)
    assert calls[0].endswith("00000003.json")  # the last record first: never a hole
    rep = verify_trace(d, allow_partial=True)
    assert rep.valid and rep.accepted and rep.partial
    record_native(d, SPEC, DIGITS, steps=5, batch_size=32, lr=0.05, checkpoint_every=3, resume=True)
    assert verify_trace(d).accepted


def test_a_verifier_reading_during_a_resume_sees_a_valid_prefix(tmp_path, monkeypatch):
    d = _unfinished(tmp_path)
    seen = []
    real = os.unlink

    def verify_between(path, *a, **k):
        real(path, *a, **k)
        seen.append(verify_trace(d, allow_partial=True))

    monkeypatch.setattr(os, "unlink", verify_between)
    TraceWriter.resume(d)
    monkeypatch.setattr(os, "unlink", real)
    assert seen and all(r.valid and r.accepted for r in seen)


# -- the other commands ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["search", "--max-memory", "inf"],
        ["search", "--max-memory", "0"],
        ["search", "--true-batches", "0"],
        ["search", "--tolerance", "nan"],
        ["search", "--tolerance", "-1"],
        ["search", "--v", "100000"],
        ["search", "--v", "300", "--b", "2"],
        ["search", "--d", "8", "--v", "6", "--b", "5", "--method", "brute"],
        ["search", "--b", "7"],
        ["game", "--rounds", "0"],
        ["game", "--epsilon", "abc"],
        ["game", "--fraction", "2"],
        ["train", "--steps", "0", "--out", "x"],
        ["train", "--lr", "nan", "--out", "x"],
        ["train", "--threads", "0", "--out", "x"],
        ["repro", "--repeats", "0", "--out", "x"],
        ["demo", "--batch-size", "-5"],
    ],
)
def test_bad_arguments_of_every_command_exit_2(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = run_main(argv + ["--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.strip(), (argv, err)


@pytest.mark.parametrize("cmd", ["attack", "forge"])
def test_attack_and_forge_refuse_bad_steps_and_traces(honest, tmp_path, capsys, cmd):
    extra = ["--method", "greedy"] if cmd == "attack" else []
    for step in ("-1", "99"):
        assert run_main([cmd, honest, "--step", step, *extra]) == 2
    bad = copy(honest, str(tmp_path / "bad"))
    rechain(bad, record_edit=lambda i, r: r["batch"].__setitem__(0, -5) if i == 2 else None)
    assert main([cmd, bad, "--step", "2", *extra]) == 2
    assert "record 2" in capsys.readouterr().err


def test_limits_are_declared_in_one_place():
    lim = Limits()
    assert lim.record_bytes(64) < 8192 and lim.max_checkpoint_bytes == 1 << 30
    with pytest.raises(TraceError):
        Trace.open("/nonexistent/trace")


# -- content of a file that is not what it claims is never echoed ------------------------------
CANARY = "TOPSECRET-c4n4ry"


def test_a_hard_linked_file_is_refused_and_never_echoed(t, tmp_path, capsys):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"schema": CANARY, "password": CANARY}))
    os.unlink(os.path.join(t, "manifest.json"))
    os.link(secret, os.path.join(t, "manifest.json"))
    rep = verify_trace(t)
    assert not rep.valid and "hard links" in rep.reason and CANARY not in rep.reason
    assert main(["verify", t, "--quiet"]) == 2
    out = capsys.readouterr()
    assert CANARY not in out.out + out.err and "hard links" in out.err


def test_a_hard_linked_checkpoint_is_refused(t, tmp_path):
    ck = os.path.join(t, "checkpoints", "00000002.safetensors")
    os.link(ck, str(tmp_path / "elsewhere.safetensors"))  # the file now has a second name
    rep = verify_trace(t)
    assert not rep.valid and "hard links" in rep.reason


@pytest.mark.parametrize(
    "content",
    [
        CANARY.encode(),
        f'{{"schema": "{CANARY}"}}'.encode(),
        f'["{CANARY}"]'.encode(),
        f'{{"schema": "exactforge-trace"}} {CANARY}'.encode(),
        b"\xff\xfe" + CANARY.encode(),
        f'{{"a": 1e999, "b": "{CANARY}"}}'.encode(),
        f'{{"schema": {{"x": "{CANARY}"}}}}'.encode(),
    ],
    ids=["text", "other schema", "not an object", "trailing data", "not utf-8", "overflow", "nested"],
)
@pytest.mark.parametrize("where", ["manifest.json", "records/00000001.json"])
def test_content_that_fails_to_parse_is_never_echoed(t, capsys, content, where):
    with open(os.path.join(t, where), "wb") as f:
        f.write(content)
    rep = verify_trace(t)
    assert not rep.valid and CANARY not in rep.reason, rep.reason
    assert main(["verify", t, "--quiet", "--json", "-"]) == 2
    out = capsys.readouterr()
    assert CANARY not in out.out + out.err


# -- integrity is never sampled; a refused resume changes nothing -------------------------------
def _other_traces_checkpoint(d, path, tmp_path):
    other = str(tmp_path / "other")
    record_native(other, SPEC, DIGITS, steps=8, batch_size=32, lr=0.05, checkpoint_every=1, seed=1)
    with open(os.path.join(other, "checkpoints", os.path.basename(path)), "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data)


HOSTILE_CHECKPOINTS = {
    "modified": lambda d, p, tmp: open(p, "r+b").write(b"\x00" * 4) and None,
    "symbolic link to /dev/zero": lambda d, p, tmp: (os.unlink(p), os.symlink("/dev/zero", p)),
    "FIFO": lambda d, p, tmp: (os.unlink(p), os.mkfifo(p)),
    "emptied": lambda d, p, tmp: open(p, "wb").close(),
    "removed": lambda d, p, tmp: os.unlink(p),
    "another trace's checkpoint": lambda d, p, tmp: _other_traces_checkpoint(d, p, tmp),
    "NaN weights, hashes rebuilt": lambda d, p, tmp: nan_checkpoint(d, p),
    "hard link": lambda d, p, tmp: os.link(p, str(tmp / "second-name")),
}


@pytest.mark.parametrize("damage", sorted(HOSTILE_CHECKPOINTS))
@pytest.mark.parametrize("policy", [["--policy", "random", "--fraction", "0.25", "--seed", "3"], ["--policy", "topq"]])
def test_a_sample_recomputes_some_segments_but_checks_every_checkpoint(t, tmp_path, capsys, damage, policy):
    from exactforge.verify import select_segments

    tr = Trace.open(t)
    kw = {"fraction": 0.25, "seed": 3} if policy[1] == "random" else {"q": 1, "update_norms": [1.0] * 4}
    read = {0} | {s for seg in select_segments(tr, policy[1], **kw) for s in seg}
    outside = [s for s in tr.checkpoint_steps if s not in read]
    assert outside  # a checkpoint the recomputation does not need
    HOSTILE_CHECKPOINTS[damage](t, os.path.join(t, "checkpoints", f"{outside[-1]:08d}.safetensors"), tmp_path)
    code, rep = verify_cli(t, *policy)
    assert code == 2 and not rep["valid"], rep["reason"]


def test_the_report_counts_the_checkpoints_checked(t, capsys):
    code, rep = verify_cli(t, "--policy", "random", "--fraction", "0.25")
    assert code == 0 and rep["checkpoints_checked"] == 5 and len(rep["steps"]) == 1
    assert "5 checkpoints checked for integrity, 1 of 4 segments recomputed" in capsys.readouterr().out


def _tree(d):
    """Every entry below d as it is on disk: kind, link target, bytes (FIFOs are not opened)."""
    import hashlib
    import stat as st

    out = {}
    for folder, dirs, files in os.walk(d):
        for name in dirs + files:
            p = os.path.join(folder, name)
            s = os.lstat(p)
            if st.S_ISLNK(s.st_mode):
                out[p] = ("link", os.readlink(p))
            elif st.S_ISREG(s.st_mode):
                with open(p, "rb") as f:
                    out[p] = ("file", hashlib.sha256(f.read()).hexdigest(), s.st_mtime_ns)
            else:
                out[p] = (st.S_IFMT(s.st_mode),)
    return out


HOSTILE_TAILS = {
    **{f"last checkpoint: {k}": ("checkpoints/00000003.safetensors", v) for k, v in HOSTILE_CHECKPOINTS.items()},
    "first checkpoint modified": ("checkpoints/00000000.safetensors", HOSTILE_CHECKPOINTS["modified"]),
    "tail record edited": ("records/00000003.json", lambda d, p, tmp: open(p, "r+b").write(b" ") and None),
    "tail record is a link": ("records/00000003.json", lambda d, p, tmp: (os.unlink(p), os.symlink("/dev/zero", p))),
    "tail record is a FIFO": ("records/00000003.json", lambda d, p, tmp: (os.unlink(p), os.mkfifo(p))),
}


@pytest.mark.parametrize("damage", sorted(HOSTILE_TAILS))
def test_a_refused_resume_leaves_every_byte(tmp_path, capsys, damage):
    d = _unfinished(tmp_path)  # records 0..3; the last checkpoint is theta_3, record 3 is the tail
    rel, edit = HOSTILE_TAILS[damage]
    edit(d, os.path.join(d, rel), tmp_path)
    before = _tree(d)
    argv = ["train", "--model", "fcn", "--hidden", "16", "--batch-size", "32", "--steps", "5", "--lr", "0.05"]
    assert run_main(argv + ["--checkpoint-every", "3", "--out", d, "--resume", "--quiet"]) == 2
    assert _tree(d) == before
    assert capsys.readouterr().err.startswith("exactforge train: invalid trace:")


# -- a record's bytes are what the chain binds: one canonical form, no repeated key -------------
def _raw(path):
    with open(path, "rb") as f:
        return f.read()


def _put(path, data):
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("edit", sorted(REFORMATTED))
def test_a_record_in_another_form_or_with_a_repeated_key_is_invalid(t, capsys, edit):
    path = os.path.join(t, "records", "00000001.json")  # a record with a checkpoint (every 2 steps)
    changed = REFORMATTED[edit](_raw(path))
    assert changed != _raw(path)
    _put(path, changed)
    code, rep = verify_cli(t)
    assert code == 2 and not rep["valid"]
    assert "canonical form" in rep["reason"] or "repeats a key" in rep["reason"], rep["reason"]


@pytest.mark.parametrize(
    "edit",
    [
        lambda raw: json.dumps(json.loads(raw), indent=1, sort_keys=True).encode(),
        lambda raw: b'{"engine":"torch",' + raw[1:],
        lambda raw: b'{"seed":1,' + raw[1:],
        lambda raw: raw.replace(b'"data":{', b'"data":{"name":"mnist",', 1),
    ],
    ids=["pretty-printed", "duplicate engine", "duplicate seed", "duplicate key inside"],
)
def test_a_manifest_in_another_form_or_with_a_repeated_key_is_invalid(t, edit):
    path = os.path.join(t, "manifest.json")
    _put(path, edit(_raw(path)))
    code, rep = verify_cli(t)
    assert code == 2 and ("canonical form" in rep["reason"] or "repeats a key" in rep["reason"]), rep["reason"]


# -- declarations nobody recomputes are checked against the verifier's data and model ------------
@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: m.update(dtype="float64"), "'dtype'"),
        (lambda m: m["data"].update(dim=65), "data.dim"),
        (lambda m: m["data"].update(num_classes=3), "data.num_classes"),
        (lambda m: m["optimizer"].update(lr=0.5), "optimizer's lr"),
        (lambda m: m.update(lr=1e308), "optimizer's lr"),
        (lambda m: m.update(batch_size=1 << 20), "larger than the data set"),
        (lambda m: m.update(note="audited by X"), "unknown field 'note'"),
        (lambda m: m["data"].update(url="https://example.org"), "unknown field 'data.url'"),
        (lambda m: m.update(extra=["not", "an", "object"]), "'extra' must be a JSON object"),
    ],
    ids=[
        "dtype",
        "data.dim",
        "data.num_classes",
        "optimizer.lr",
        "lr 1e308",
        "batch of 2^20 on 1,797 examples",
        "unknown field",
        "unknown data field",
        "extra not an object",
    ],
)
def test_a_declaration_that_disagrees_is_invalid(t, edit, words):
    rechain(t, manifest_edit=edit)
    code, rep = verify_cli(t)
    assert code == 2 and words in rep["reason"], rep["reason"]


def test_declared_fields_are_reported_as_not_verified(t, capsys):
    rechain(t, manifest_edit=lambda m: m.update(extra={"audit": "X"}))
    code, rep = verify_cli(t)
    assert code == 0 and {"created", "environment", "extra", "data.name", "data.path"} <= set(rep["declared"])
    assert "not verified: created, environment, extra" in capsys.readouterr().out


def test_a_writer_refuses_a_field_a_reader_would_refuse(tmp_path):
    with pytest.raises(ValueError, match="unknown field 'note'.*'extra'"):
        TraceWriter(str(tmp_path / "w"), {"engine": "native", "note": 1}, {"w": np.zeros(2, np.float32)})
    assert not os.path.exists(str(tmp_path / "w" / "manifest.json"))


def test_an_open_trace_keeps_the_chain_not_the_batches(t):
    tr = Trace.open(t)
    assert tr.last is not None and tr.last.batch is None
    assert len(tr.batch(3)) == 32 and tr.record(3).batch is not None


def _retained(directory):
    """Bytes an open trace keeps (allocated while opening and still held afterwards)."""
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tr = Trace.open(directory)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert tr.num_records > 0
    return held


@pytest.mark.slow
def test_an_open_trace_holds_memory_per_checkpoint_not_per_step(tmp_path):
    """Records are streamed: ten times the steps between the same number of checkpoints keeps
    the same memory (a chain entry per step would add over 100 KB here)."""
    data = load_digits()
    spec = M.ModelSpec("logreg", data.dim, data.num_classes)
    sizes = {}
    for steps in (40, 400):
        out = str(tmp_path / f"s{steps}")
        record_native(out, spec, data, steps=steps, batch_size=8, checkpoint_every=steps // 4)
        _retained(out)  # the first open fills caches of its own (imports, compiled patterns)
        sizes[steps] = _retained(out)
    assert abs(sizes[400] - sizes[40]) < 8192, sizes


def test_a_record_rechained_after_the_trace_was_opened_is_refused(t):
    """A record replaced by one that is consistent in itself (its own hash, the same link back)
    breaks the link of the next record, or its anchor, before a pass over it ends."""
    from exactforge.trace.format import record_hash

    tr = Trace.open(t)
    path = os.path.join(t, "records", "00000003.json")
    rec = load(path)
    rec["batch"].reverse()
    rec["hash"] = record_hash(rec)
    dump(path, rec)
    with pytest.raises(TraceError, match="record [34]"):
        list(tr.iter_records(0, tr.num_records))


def test_a_record_changed_after_the_trace_was_opened_is_refused(t):
    tr = Trace.open(t)
    other = _raw(os.path.join(t, "records", "00000002.json"))
    _put(os.path.join(t, "records", "00000003.json"), other)
    with pytest.raises(TraceError, match="record 3"):
        tr.batch(3)


def test_a_repeated_example_in_a_batch_sampled_without_replacement_is_invalid(t):
    assert Trace.open(t).manifest["sampling"] == "without-replacement"  # as the native recorder declares
    rechain(t, record_edit=lambda i, r: r["batch"].__setitem__(1, r["batch"][0]) if i == 2 else None)
    code, rep = verify_cli(t)
    assert code == 2 and "repeats in a batch" in rep["reason"]
    rechain(t, manifest_edit=lambda m: m.update(sampling="with-replacement"))  # then a repeat is a batch
    code, rep = verify_cli(t)
    assert code == 1  # recomputed: the repeated example is not what was trained on
