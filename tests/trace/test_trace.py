"""Trace format: integrity (hash chain, single-byte changes), atomicity and resume, and the
verifier's decisions through the CLI's exit codes."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from exactforge import trace as T
from exactforge.cli import main
from exactforge.data import load_digits
from exactforge.models import native as M
from exactforge.trace import writer as TW
from exactforge.trace.record import TraceRecorder, record_native, record_torch_fcn
from exactforge.verify import verify_trace

DIGITS = load_digits()
SPEC = M.ModelSpec("fcn", 64, 10, (16,))


@pytest.fixture(scope="module")
def native_trace(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tr") / "native")
    record_native(d, SPEC, DIGITS, steps=12, batch_size=32, lr=0.05, checkpoint_every=1)
    return d


def _copy(src, tmp_path, name="t"):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


def _verify_cli(path, *extra, tmp_path=None):
    out = os.path.join(os.path.dirname(path), "report.json")
    code = main(["verify", path, "--quiet", "--json", out, *extra])
    with open(out) as f:
        return code, json.load(f)


def test_honest_native_trace_verifies_at_epsilon_zero(native_trace):
    for extra in ([], ["--permute-batches", "7"], ["--threads", "1"], ["--permute-batches", "1", "--threads", "2"]):
        code, rep = _verify_cli(native_trace, "--epsilon", "0", *extra)
        assert code == 0 and rep["accepted"] and rep["max_error"] == 0.0
        assert len(rep["steps"]) == 12 and all(s["passed"] and s["error"] == 0.0 for s in rep["steps"])


def test_exact_mode_trace_also_verifies_at_zero(tmp_path):
    d = str(tmp_path / "exact")
    record_native(d, M.ModelSpec("logreg", 64, 10), DIGITS, steps=5, batch_size=100, mode="exact", checkpoint_every=2)
    rep = verify_trace(d, permute_batches=3, threads=1)
    assert (
        rep.accepted and rep.max_error == 0.0 and [(s.step, s.end_step) for s in rep.steps] == [(0, 2), (2, 4), (4, 5)]
    )


@pytest.mark.parametrize("target", ["checkpoint", "record", "manifest"])
@pytest.mark.parametrize("where", [0.02, 0.3, 0.5, 0.77, 0.99])
def test_any_single_byte_change_is_detected(native_trace, tmp_path, target, where):
    d = _copy(native_trace, tmp_path)
    path = {
        "checkpoint": os.path.join(d, "checkpoints", "00000005.safetensors"),
        "record": os.path.join(d, "records", "00000004.json"),
        "manifest": os.path.join(d, "manifest.json"),
    }[target]
    data = bytearray(open(path, "rb").read())
    pos = int(where * (len(data) - 1))
    data[pos] ^= 0x01
    open(path, "wb").write(bytes(data))
    code, rep = _verify_cli(d, "--epsilon", "0")
    assert code == 2 and not rep["accepted"] and rep["reason"]


def test_changed_batch_index_is_rejected_even_when_the_chain_is_rebuilt(native_trace, tmp_path):
    d = _copy(native_trace, tmp_path)
    # A forger rewrites record 3 with one different example and rebuilds every later hash.
    recs = [json.load(open(os.path.join(d, "records", f"{i:08d}.json"))) for i in range(12)]
    batch = recs[3]["batch"]
    batch[0] = next(i for i in range(len(DIGITS)) if i not in batch)
    prev = recs[2]["hash"]
    for r in recs[3:]:
        r["prev"] = prev
        r["hash"] = T._record_hash(r)
        prev = r["hash"]
        T.atomic_write(os.path.join(d, "records", f"{r['step']:08d}.json"), T.canonical_json(r))
    code, rep = _verify_cli(d, "--epsilon", "0")
    assert code == 1 and not rep["accepted"]
    failed = [s["step"] for s in rep["steps"] if not s["passed"]]
    assert failed == [3]
    # ... while changing the record alone breaks the chain: invalid
    d2 = _copy(native_trace, tmp_path, "t2")
    r = json.load(open(os.path.join(d2, "records", "00000003.json")))
    r["batch"][0] = batch[0]
    T.atomic_write(os.path.join(d2, "records", "00000003.json"), T.canonical_json(r))
    assert main(["verify", d2, "--quiet"]) == 2


def test_truncated_and_corrupt_files_are_invalid(native_trace, tmp_path, capsys):
    d = _copy(native_trace, tmp_path)
    ck = os.path.join(d, "checkpoints", "00000003.safetensors")
    open(ck, "r+b").truncate(100)
    assert main(["verify", d, "--quiet"]) == 2
    assert "checkpoint 3" in capsys.readouterr().err
    d2 = _copy(native_trace, tmp_path, "t2")
    open(os.path.join(d2, "manifest.json"), "w").write("{not json")
    assert main(["verify", d2, "--quiet"]) == 2
    d3 = _copy(native_trace, tmp_path, "t3")
    os.unlink(os.path.join(d3, "records", "00000005.json"))  # a hole in the middle
    assert main(["verify", d3, "--quiet"]) == 2
    assert main(["verify", str(tmp_path / "nowhere"), "--quiet"]) == 2


def test_wrong_dataset_is_invalid(native_trace):
    from exactforge.data import Dataset

    other = Dataset("digits", DIGITS.X.copy(), DIGITS.y.copy(), 10, 16)
    other.X[0, 0] = 0.5
    rep = verify_trace(native_trace, dataset=other)
    assert not rep.valid and "fingerprint" in rep.reason


def test_nan_weights_are_invalid(tmp_path, capsys):
    d = str(tmp_path / "nan")
    params = M.init_params(SPEC, 0)
    man = {
        "engine": "native",
        "model": SPEC.to_dict(),
        "lr": 0.1,
        "checkpoint_every": 1,
        "batch_size": 4,
        "reduction": "fixed",
        "optimizer": {"name": "sgd", "lr": 0.1},
        "data": {"name": "digits", "fingerprint": DIGITS.fingerprint(), "num_examples": len(DIGITS)},
    }
    w = T.TraceWriter(d, man, params)
    bad = {k: v.copy() for k, v in params.items()}
    bad["W1"][0, 0] = np.nan
    w.append([0, 1, 2, 3], bad, final=True)
    assert main(["verify", d, "--quiet"]) == 2
    assert "NaN" in capsys.readouterr().err


def test_a_crash_mid_write_leaves_a_trace_up_to_the_last_complete_step(tmp_path, monkeypatch):
    d = str(tmp_path / "crash")
    real = T.atomic_write
    calls = {"n": 0}

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] == 16:  # a crash in the middle of a step's writes
            raise KeyboardInterrupt("killed")
        return real(path, data)

    monkeypatch.setattr(TW, "atomic_write", flaky)
    with pytest.raises(KeyboardInterrupt):
        record_native(d, SPEC, DIGITS, steps=10, batch_size=32, checkpoint_every=3)
    monkeypatch.setattr(TW, "atomic_write", real)
    tr = T.Trace.open(d)
    assert 0 < tr.num_steps < 10 and tr.num_steps % 3 == 0 and not tr.complete
    assert not verify_trace(d).valid  # incomplete: refused unless a prefix is asked for
    rep = verify_trace(d, allow_partial=True)
    assert rep.accepted and rep.partial and rep.num_steps == tr.num_steps and rep.declared_steps == 10
    # resuming finishes the run and gives exactly the trace of an uninterrupted run
    record_native(d, SPEC, DIGITS, steps=10, batch_size=32, checkpoint_every=3, resume=True)
    ref = str(tmp_path / "ref")
    record_native(ref, SPEC, DIGITS, steps=10, batch_size=32, checkpoint_every=3)
    a, b = T.Trace.open(d), T.Trace.open(ref)
    assert [a.batch(i).tolist() for i in range(a.num_records)] == [b.batch(i).tolist() for i in range(b.num_records)]
    for s in a.checkpoint_steps:
        assert all(np.array_equal(a.load_checkpoint(s)[k], b.load_checkpoint(s)[k]) for k in SPEC.shapes())
    assert verify_trace(d).accepted


def test_torch_trace_of_a_users_own_loop(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(64, 12)
            self.b = torch.nn.Linear(12, 10)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X, y = torch.from_numpy(DIGITS.X), torch.from_numpy(DIGITS.y)
    d = str(tmp_path / "user")
    rng = np.random.default_rng(0)
    with TraceRecorder(d, model, opt, DIGITS, checkpoint_every=2, batch_size=50, extra={"run": "a"}) as rec:
        for _ in range(5):
            idx = rng.choice(len(DIGITS), 50, replace=False)
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(idx)
    tr = T.Trace.open(d)
    assert tr.checkpoint_steps == [0, 2, 4, 5] and tr.manifest["engine"] == "torch"
    assert tr.manifest["batch_size"] == 50 and tr.manifest["extra"] == {"run": "a"}
    torch.manual_seed(1)
    rep = verify_trace(d, model=Net())
    assert rep.accepted and rep.max_error == 0.0 and "extra" in rep.declared
    rep = verify_trace(d, model=Net(), permute_batches=5)
    assert not rep.accepted and 0 < rep.max_error < 1e-5  # aggregation order alone
    assert not verify_trace(d).valid  # an unknown architecture needs model=


def test_torch_engine_trace_rejected_at_zero_under_permutation_but_accepted_at_calibrated_epsilon(tmp_path):
    d = str(tmp_path / "torch")
    record_torch_fcn(d, M.ModelSpec("fcn", 64, 10, (100,)), DIGITS, steps=4, batch_size=500, lr=0.01)
    assert verify_trace(d).accepted
    rep = verify_trace(d, permute_batches=1)
    assert not rep.accepted and rep.max_error < 1e-6
    assert verify_trace(d, permute_batches=1, epsilon=1e-6).accepted


def test_policies_select_segments(native_trace):
    assert len(verify_trace(native_trace, policy="random", fraction=0.25, seed=3).steps) == 3
    # 1797 // 32 = 56 steps per epoch: all 12 steps are in epoch 0, so top-2 picks two
    rep = verify_trace(native_trace, policy="topq", q=2)
    assert len(rep.steps) == 2 and rep.accepted


def test_distances():
    from exactforge.verify.distances import distance

    a, b = np.array([3.0, 0.0]), np.array([0.0, 4.0])
    assert distance(a, b) == 5.0 and distance(a, b, "l1") == 7.0 and distance(a, b, "linf") == 4.0
    assert distance(a, b, "l2sq") == 25.0 and distance(a, b, "l2sq_dim") == 12.5
    assert distance(a, b, "cosine") == 1.0 and distance(a, a, "cosine") == 0.0
    with pytest.raises(ValueError, match="distance"):
        distance(a, b, "l3")


def test_train_cli_and_bad_arguments(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert (
        main(
            [
                "train",
                "--engine",
                "native",
                "--model",
                "logreg",
                "--dataset",
                "breast-cancer",
                "--batch-size",
                "16",
                "--steps",
                "3",
                "--lr",
                "0.1",
                "--checkpoint-every",
                "2",
                "--out",
                out,
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["verify", out, "--quiet"]) == 0
    assert main(["train", "--out", out, "--steps", "2", "--quiet"]) == 2  # folder already holds a trace
    assert "already holds a trace" in capsys.readouterr().err
    assert main(["train", "--model", "fcn", "--hidden", "a,b", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert main(["train", "--dataset", "mnist", "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "--data-path" in capsys.readouterr().err


def test_verify_reports_the_resolution_of_epsilon_zero(native_trace):
    """ulp(theta_{t+1}) / (2 lr): below it a gradient change can vanish in the rounding."""
    from exactforge.verify import resolution

    rep = verify_trace(native_trace)
    tr = T.Trace.open(native_trace)
    theta = tr.load_checkpoint(1)
    med, mn = resolution(theta, 0.05)
    assert rep.steps[0].resolution == med and rep.steps[0].resolution_min == mn
    w = theta["W1"].ravel()
    j = int(np.argmax(np.abs(w)))
    assert np.isclose(np.spacing(np.abs(w[j])) / 0.1, np.spacing(np.abs(w)).max() / 0.1)
    assert 0 < mn <= med and rep.resolution > 0
    # a gradient change well below it in one coordinate leaves theta_{t+1} unchanged
    x = np.float32(w[j])
    g_change = np.float32(0.25 * np.spacing(np.abs(x)) / 0.05)
    assert np.float32(x - np.float32(0.05) * g_change) == x


@pytest.mark.slow
def test_train_names_the_engine_that_ran_and_a_resnet20_trace_verifies_at_epsilon_0(tmp_path, capsys):
    """--engine native on ResNet-20 runs torch with exactforge.nn's reproducible layers (the
    native engine trains logreg and fcn): the summary and the JSON say so, and the trace
    verifies at epsilon 0 from its seed."""
    rng = np.random.default_rng(0)
    n = 10  # every class once: the manifest counts the classes the labels hold
    labels = np.arange(n).reshape(n, 1)
    rows = np.concatenate([labels, rng.integers(0, 256, (n, 3072))], axis=1).astype(np.uint8)
    rows.tofile(str(tmp_path / "data_batch_1.bin"))
    out, js = str(tmp_path / "t"), tmp_path / "train.json"
    args = ["--dataset", "cifar10", "--data-path", str(tmp_path)]
    assert (
        main(
            ["train", "--engine", "native", "--model", "resnet20", "--steps", "2", "--batch-size", "4"]
            + args
            + ["--out", out, "--json", str(js)]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "engine: torch with exactforge.nn's reproducible layers (exact mode) (--engine native)" in text
    summary = json.loads(js.read_text())
    assert (summary["engine"], summary["engine_requested"], summary["layers"]) == ("torch", "native", "exactforge.nn")
    assert main(["verify", out, "--epsilon", "0", "--quiet"] + args) == 0
    assert main(["verify", out, "--epsilon", "0", "--permute-batches", "3", "--threads", "1", "--quiet"] + args) == 0
    fcn = str(tmp_path / "f")
    assert main(["train", "--model", "logreg", "--steps", "2", "--out", fcn, "--json", str(js), "--quiet"]) == 0
    assert json.loads(js.read_text())["engine"] == "native" and "engine: native" in capsys.readouterr().out
