"""Proofs of the Proof-of-Learning reference: read without running code, imported as traces,
verified both ways."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from exactforge.data import Dataset, load_dataset
from exactforge.models.zoo import build_model
from exactforge.pol import ProofError, TrainingArgs, import_proof, reference_data_hash, write_reference_proof
from exactforge.verify import verify_trace

DATA = load_dataset("digits")
ARGS = TrainingArgs(
    lr=0.05, momentum=0.9, weight_decay=1e-4, save_freq=5, milestones=[6, 10], gamma=0.1, normalize=[[0.5], [0.5]]
)


@pytest.fixture(scope="module")
def proof(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pol") / "proof")
    model = build_model("lenet", DATA.shape, 10, seed=0)
    return write_reference_proof(
        out,
        model,
        DATA,
        steps=12,
        batch_size=16,
        save_freq=5,
        lr=0.05,
        momentum=0.9,
        weight_decay=1e-4,
        milestones=[6, 10],
        gamma=0.1,
        normalize=[[0.5], [0.5]],
    )


def test_an_imported_proof_verifies_at_epsilon_0_and_the_reference_agrees(proof, tmp_path):
    rep = import_proof(proof, str(tmp_path / "t"), model="lenet", data=DATA, args=ARGS)
    assert (rep.steps, rep.batch_size, rep.checkpoints) == (12, 16, 4)  # theta at 0, 5, 10, 12
    assert rep.data_hash_checked is None and "unchecked" in rep.data_hash_note
    v = verify_trace(str(tmp_path / "t"))
    assert v.valid and v.accepted and v.max_error == 0.0, v.reason
    assert v.learning_rates["follows"] and "imported" in v.declared
    ref = v.reference
    assert ref["accepted"] and ref["policy"] == "all" and ref["max_distance"]["l2"] == 0.0
    assert ref["agreement"].startswith("both accept")
    assert ref["thresholds"]["cos"] == 0.01 and ref["thresholds_commit"] == "c286c7c"
    top = verify_trace(str(tmp_path / "t"), reference_q=1)
    t = top.reference
    assert t["policy"] == "top-q" and set(t["segments"]) <= {0, 5} and t["segments"]
    # 12 steps of 16 over 1,797 examples: one epoch of 12 / 5 = 2.4 checkpoints, which the
    # reference rounds to 2: the last segment (10..12) is in no epoch, so never recomputed
    assert t["epochs"] == 1 and t["epochs_source"].startswith("inferred")
    assert t["per_epoch"] == [{"epoch": 1, "steps": [0, 10], "segments": 2, "chosen": t["segments"]}]
    assert any("never recomputes them" in n for n in t["notes"])
    two = verify_trace(str(tmp_path / "t"), reference_q=1, reference_epochs=2, reference_thresholds="51909cc")
    t = two.reference
    assert t["segments"] == [0, 5] and [e["steps"] for e in t["per_epoch"]] == [[0, 5], [5, 10]]
    assert t["epochs_source"] == "given" and t["thresholds"]["cos"] == 0.001 and t["thresholds_commit"] == "51909cc"
    bad = verify_trace(str(tmp_path / "t"), reference_thresholds="1,2,3")
    assert not bad.valid and "reference_thresholds" in bad.reason


def test_a_perturbed_checkpoint_is_rejected_by_exactforge_and_accepted_by_the_reference(proof, tmp_path):
    bad = str(tmp_path / "proof")
    shutil.copytree(proof, bad)
    ck = torch.load(os.path.join(bad, "model_step_10"), weights_only=True)
    with torch.no_grad():
        for v in ck["net"].values():
            if v.is_floating_point():
                v.add_(1e-5)  # far below the reference's thresholds
    torch.save(ck, os.path.join(bad, "model_step_10"))
    import_proof(bad, str(tmp_path / "t"), model="lenet", data=DATA, args=ARGS)
    v = verify_trace(str(tmp_path / "t"))
    assert v.valid and not v.accepted
    assert v.reference["accepted"] and "exactforge rejects" in v.reference["agreement"]


def test_data_parallel_keys_are_accepted(proof, tmp_path):
    dp = str(tmp_path / "proof")
    shutil.copytree(proof, dp)
    for name in os.listdir(dp):
        if name.startswith("model_step_"):
            ck = torch.load(os.path.join(dp, name), weights_only=True)
            ck["net"] = {"module." + k: v for k, v in ck["net"].items()}
            torch.save(ck, os.path.join(dp, name))
    import_proof(dp, str(tmp_path / "t"), model="lenet", data=DATA, args=ARGS)
    assert verify_trace(str(tmp_path / "t")).accepted


class _Writes:
    """Unpickling this runs open(path, 'w'): what a hostile proof would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_whose_unpickling_would_run_code_is_refused_without_running(proof, tmp_path):
    bad = str(tmp_path / "proof")
    shutil.copytree(proof, bad)
    marker = str(tmp_path / "pwned")
    torch.save({"net": {"x": torch.zeros(1)}, "optimizer": _Writes(marker)}, os.path.join(bad, "model_step_0"))
    with pytest.raises(ProofError, match="was not unpickled"):
        import_proof(bad, str(tmp_path / "t"), model="lenet", data=DATA, args=ARGS)
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "t")
    cli = subprocess.run(
        [sys.executable, "-m", "exactforge.cli", "import-pol", bad, "--out", str(tmp_path / "t2"), "--model", "lenet"],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2 and "was not unpickled" in cli.stderr and not os.path.exists(marker)


def _edit(proof, tmp_path, fn):
    bad = str(tmp_path / "proof")
    shutil.copytree(proof, bad)
    fn(bad)
    return bad


@pytest.mark.parametrize(
    "name,edit,match",
    [
        ("pickled indices", lambda d: np.save(os.path.join(d, "indices.npy"), np.array([[object()]])), "indices.npy"),
        ("indices of one dimension", lambda d: np.save(os.path.join(d, "indices.npy"), np.arange(5)), "indices.npy"),
        ("indices past the data", lambda d: np.save(os.path.join(d, "indices.npy"), np.full((12, 16), 10**6)), "data"),
        ("a bad hash", lambda d: open(os.path.join(d, "hash.txt"), "w").write("xyz"), "hash.txt"),
        ("a missing checkpoint", lambda d: os.remove(os.path.join(d, "model_step_5")), "model_step_5"),
        (
            "a checkpoint linked elsewhere",
            lambda d: (
                os.remove(os.path.join(d, "model_step_5")),
                os.symlink("/dev/zero", os.path.join(d, "model_step_5")),
            ),
            "model_step_5",
        ),
        (
            "a theta_0 of another model",
            lambda d: torch.save(
                {"net": build_model("fcn", DATA.shape, 10).state_dict()}, os.path.join(d, "model_step_0")
            ),
            "model_step_0",
        ),
        (
            "a checkpoint of another model",
            lambda d: torch.save(
                {"net": build_model("fcn", DATA.shape, 10).state_dict()}, os.path.join(d, "model_step_10")
            ),
            "model_step_10",
        ),
        (
            "not a checkpoint",
            lambda d: open(os.path.join(d, "model_step_10"), "wb").write(b"\x80\x04junk"),
            "model_step_10",
        ),
    ],
)
def test_a_malformed_proof_is_refused_and_leaves_nothing(proof, tmp_path, name, edit, match):
    bad = _edit(proof, tmp_path, edit)
    with pytest.raises(ValueError, match=match):
        import_proof(bad, str(tmp_path / "t"), model="lenet", data=DATA, args=ARGS)
    assert not os.path.exists(tmp_path / "t")


def test_arguments_that_are_not_the_proofs_are_refused(proof, tmp_path):
    wrong = TrainingArgs(
        lr=0.05, momentum=0.9, weight_decay=1e-4, save_freq=5, milestones=[7], normalize=ARGS.normalize
    )
    with pytest.raises(ValueError, match="milestones"):
        import_proof(proof, str(tmp_path / "t"), model="lenet", data=DATA, args=wrong)
    with pytest.raises(ValueError, match="batch_size"):
        import_proof(proof, str(tmp_path / "t"), model="lenet", data=DATA, args=TrainingArgs(batch_size=8))


@pytest.mark.slow
def test_the_cli_imports_and_verifies(proof, tmp_path):
    out = str(tmp_path / "t")
    base = [sys.executable, "-m", "exactforge.cli"]
    imp = subprocess.run(
        base
        + ["import-pol", proof, "--out", out, "--model", "lenet", "--normalize", "0.5,0.5", "--lr", "0.05"]
        + ["--momentum", "0.9", "--weight-decay", "1e-4", "--save-freq", "5", "--milestones", "6,10"],
        capture_output=True,
        text=True,
    )
    assert imp.returncode == 0, imp.stderr
    ver = subprocess.run(base + ["verify", out, "--quiet"], capture_output=True, text=True)
    assert ver.returncode == 0 and "Proof-of-Learning reference ACCEPTS" in ver.stdout, ver.stdout + ver.stderr
    top = [out, "--quiet", "--pol-reference", "topq", "--pol-q", "1", "--pol-epochs", "2"]
    report = str(tmp_path / "report.json")
    ver = subprocess.run(
        base + ["verify", *top, "--pol-thresholds", "51909cc", "--json", report], capture_output=True, text=True
    )
    assert ver.returncode == 0, ver.stdout + ver.stderr
    with open(report) as f:
        ref = json.load(f)["reference"]
    assert ref["thresholds_commit"] == "51909cc" and ref["epochs"] == 2 and ref["segments"] == [0, 5]
    bad = subprocess.run(
        base + ["import-pol", proof, "--out", out + "2", "--model", "nope"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "model" in bad.stderr


def test_the_reference_data_hash_is_the_text_of_each_image():
    from exactforge.pol.importer import text_hash

    u8 = (np.arange(3 * 784, dtype=np.int64).reshape(3, 784) * 7 % 256).astype(np.uint8)
    m = hashlib.sha256()
    for img in torch.from_numpy(u8.reshape(3, 28, 28)):
        m.update(str(img).encode("utf-8"))
    assert text_hash(u8, "mnist") == m.hexdigest()
    c = (np.arange(2 * 3072) % 256).astype(np.uint8).reshape(2, 3, 32, 32)
    m = hashlib.sha256()
    for img in c.transpose(0, 2, 3, 1):  # torchvision's CIFAR .data is height x width x channel
        m.update(str(img).encode("utf-8"))
    assert text_hash(c, "cifar10") == m.hexdigest() and "..." in str(c[0].transpose(1, 2, 0))
    assert reference_data_hash(DATA) is None  # digits: not a data set the reference hashes
    part = Dataset("mnist", (u8 / 255.0).astype(np.float32), np.zeros(3, np.int64), 10, 255, (1, 28, 28))
    assert reference_data_hash(part) == text_hash(u8, "mnist")  # any number of images: the hash of those loaded


def _cifar(tmp_path, n=24):
    from exactforge.data import load_cifar10

    rng = np.random.default_rng(0)
    rec = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], axis=1).astype(np.uint8)
    rec.tofile(str(tmp_path / "data_batch_1.bin"))
    return load_cifar10(str(tmp_path))


def test_a_resnet20_proof_on_cifar_format_data_imports_and_verifies(tmp_path):
    data = _cifar(tmp_path)
    torch.manual_seed(0)
    norm = [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]  # the reference's CIFAR-10 normalisation
    write_reference_proof(
        str(tmp_path / "proof"),
        build_model("resnet20", data.shape, 10, seed=0),
        data,
        steps=3,
        batch_size=8,
        save_freq=2,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        milestones=[2],
        normalize=norm,
        random_crop_flip=True,  # as the reference's CIFAR-10 loop: recovered from theta_0 at import
    )
    args = TrainingArgs(lr=0.1, momentum=0.9, weight_decay=1e-4, save_freq=2, milestones=[2], normalize=norm)
    rep = import_proof(str(tmp_path / "proof"), str(tmp_path / "t"), model="resnet20", data=data, args=args)
    # one batch file is hashed as the reference hashes a folder holding it, against whatever hash.txt the writer left
    assert rep.data_hash_checked is (rep.data_hash == reference_data_hash(data))
    v = verify_trace(str(tmp_path / "t"), dataset=data)
    assert v.accepted and v.max_error == 0.0, v.reason
    assert v.reference["accepted"] and v.reference["initialization"]["passed"]


@pytest.mark.slow
def test_an_imported_proof_verifies_on_ray_at_the_serial_bits(proof, tmp_path):
    pytest.importorskip("ray")
    from exactforge.verify.ray import RayExecutor

    import_proof(proof, str(tmp_path / "t"), model="lenet", data=DATA, args=ARGS)
    serial = verify_trace(str(tmp_path / "t"))
    ray = verify_trace(str(tmp_path / "t"), executor=RayExecutor(address="local", num_cpus=2))
    assert ray.valid and ray.accepted, ray.reason
    assert [(s.step, s.error, s.reference) for s in ray.steps] == [(s.step, s.error, s.reference) for s in serial.steps]
    assert ray.reference == serial.reference


@pytest.mark.slow
def test_a_proof_trained_with_unlogged_crops_is_reported_with_the_tolerance_it_needs(tmp_path):
    from exactforge.verify.reference import augmentation_tolerance

    torch.manual_seed(0)
    write_reference_proof(
        str(tmp_path / "proof"),
        build_model("lenet", DATA.shape, 10, seed=0),
        DATA,
        steps=6,
        batch_size=16,
        save_freq=3,
        lr=0.05,
        random_crop_flip=True,
    )
    import_proof(
        str(tmp_path / "proof"), str(tmp_path / "t"), model="lenet", data=DATA, args=TrainingArgs(lr=0.05, save_freq=3)
    )
    v = verify_trace(str(tmp_path / "t"))
    assert v.valid and not v.accepted  # the crops were not logged: no replay reproduces them
    tol = augmentation_tolerance(str(tmp_path / "t"), draws=3, segments=2)
    assert tol.segments == [0, 3] and 0 < tol.l2["min"] <= tol.l2["max"] == tol.epsilon_needed
    again = augmentation_tolerance(str(tmp_path / "t"), draws=3, segments=2)
    assert again.l2 == tol.l2  # seeded draws: the measurement repeats
    out = subprocess.run(
        [sys.executable, "-m", "exactforge.cli", "verify", str(tmp_path / "t"), "--pol-augmentation", "crop-flip"]
        + ["--pol-draws", "2", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "an honest replay needs epsilon >=" in out.stdout, out.stdout + out.stderr


def test_epsilon_auto_is_this_machines_benign_error_and_says_how_it_was_set(proof, tmp_path):
    import_proof(proof, str(tmp_path / "t"), model="lenet", data=DATA, args=ARGS)
    v = verify_trace(str(tmp_path / "t"), epsilon="auto")
    assert v.accepted and v.epsilon > 0 and v.epsilon_source.startswith("auto: 10 x")
    assert "not measured here" in v.epsilon_source
    assert verify_trace(str(tmp_path / "t")).epsilon_source == "given"
    rep = str(tmp_path / "rep")
    from exactforge.cli import main

    assert main(["train", "--model", "lenet", "--dataset", "digits", "--steps", "4", "--batch-size", "16"] + [
        "--checkpoint-every", "2", "--out", rep, "--quiet"]) == 0  # fmt: skip
    r = verify_trace(rep, epsilon="auto")
    assert r.accepted and r.epsilon == 0.0  # the reproducible path: no benign error to allow for
