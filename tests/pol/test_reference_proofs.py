"""Proofs as people hold them: a proof written by the Proof-of-Learning reference's own,
unmodified train.py (unseeded, CIFAR-10, ResNet-20, random crops and flips logged nowhere),
imported with only the model, the data set and torchvision's data folder, verified at
epsilon = 0 because its augmentation is recovered from theta_0; the reference's verdict beside
it matches what the reference's own verify.py printed on the same proof
(tests/fixtures/pol/cifar10_resnet20/reference_verdicts.json)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from exactforge.data import load_dataset
from exactforge.models.zoo import build_model
from exactforge.pol import TrainingArgs, import_proof, write_cifar10_folder, write_reference_proof
from exactforge.verify import verify_trace

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pol" / "cifar10_resnet20"
EXPECTED = json.loads((FIXTURE / "reference_verdicts.json").read_text())


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10_folder(str(root), n=EXPECTED["data"]["n"], seed=EXPECTED["data"]["seed"])
    return root


@pytest.fixture(scope="module")
def imported(data_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("import") / "trace"
    data = load_dataset("cifar10", str(data_folder))
    rep = import_proof(str(FIXTURE / "proof"), str(out), model="resnet20", data=data, data_path=str(data_folder))
    return rep, data


def _verdict(valid: str) -> bool:
    return {"valid": True, "invalid": False}[valid]


def test_the_honest_reference_proof_verifies_at_epsilon_0(imported):
    rep, data = imported
    assert rep.data_hash_checked is True  # hash.txt is the text hash of the same images
    assert "recovered from theta_0" in rep.augmentation and rep.recovery["recovered"]
    assert rep.training["momentum"] == 0.9 and rep.training["weight_decay"] == 1e-4  # read from the proof
    honest = EXPECTED["verdicts"]["honest"]
    v = verify_trace(rep.trace, dataset=data)
    assert v.valid and v.accepted and v.max_error == 0.0 and v.epsilon == 0.0, v.reason
    assert v.augmentation.startswith("recovered")
    ref = v.reference
    assert ref["accepted"] == _verdict(honest["all"])
    assert ref["thresholds"] == EXPECTED["thresholds"] and ref["reference_commit"] == EXPECTED["reference_commit"]
    topq = verify_trace(rep.trace, dataset=data, reference_q=1, reference_epochs=1).reference
    assert topq["policy"] == "top-q" and topq["accepted"] == _verdict(honest["topq_1"])
    assert ref["initialization"]["passed"] == (honest["initialization"] == "passed")


def test_a_weight_moved_by_1e_3_is_rejected_where_the_reference_accepts(data_folder, tmp_path):
    proof = tmp_path / "proof"
    shutil.copytree(FIXTURE / "proof", proof)
    ck = torch.load(proof / "model_step_2", weights_only=True)
    ck["net"]["conv1.weight"][0, 0, 0, 0] += 1e-3  # what the fixture's tampered run changed
    torch.save(ck, proof / "model_step_2")
    data = load_dataset("cifar10", str(data_folder))
    rep = import_proof(str(proof), str(tmp_path / "trace"), model="resnet20", data=data)
    v = verify_trace(rep.trace, dataset=data)
    assert v.valid and not v.accepted and v.max_error > 0
    assert v.reference["accepted"] == _verdict(EXPECTED["verdicts"]["tampered"]["all"])  # as its verify.py said


@pytest.mark.slow
def test_the_walkthrough_from_the_command_line(data_folder, tmp_path):
    trace = tmp_path / "trace"
    cmd = [sys.executable, "-m", "exactforge.cli"]
    imp = subprocess.run(
        cmd + ["import-pol", str(FIXTURE / "proof"), "--out", str(trace), "--model", "resnet20"]
        + ["--dataset", "cifar10", "--data-path", str(data_folder)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert imp.returncode == 0 and "recovered from theta_0" in imp.stdout, imp.stdout + imp.stderr
    ver = subprocess.run(cmd + ["verify", str(trace), "--quiet", "--json", str(tmp_path / "v.json")], text=True)
    assert ver.returncode == 0
    rep = json.loads((tmp_path / "v.json").read_text())
    assert rep["accepted"] and rep["max_error"] == 0.0 and rep["augmentation"].startswith("recovered")


@pytest.mark.slow
def test_an_unrecoverable_proof_falls_back_to_fresh_draws_consistently(data_folder, tmp_path):
    """A proof whose theta_0 pins no stream (torch's default uniform initialisation) replays
    under fresh draws; the epsilon that --pol-augmentation advises is one verify accepts."""
    data = load_dataset("cifar10", str(data_folder))
    torch.manual_seed(5)
    model = build_model("lenet", (3, 32, 32), 10)
    write_reference_proof(str(tmp_path / "proof"), model, data, steps=4, batch_size=20, save_freq=2, lr=0.05,
                          normalize=[[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]], random_crop_flip=True)  # fmt: skip
    rep = import_proof(str(tmp_path / "proof"), str(tmp_path / "trace"), model="lenet", data=data, args=TrainingArgs())
    assert "NOT recovered" in rep.augmentation
    cmd = [sys.executable, "-m", "exactforge.cli", "verify", str(tmp_path / "trace"), "--dataset", "cifar10"]
    cmd += ["--data-path", str(data_folder), "--quiet"]
    out = subprocess.run(
        cmd + ["--pol-augmentation", "crop-flip", "--pol-draws", "2", "--json", str(tmp_path / "a.json")]
    )
    assert out.returncode == 1  # fresh draws: epsilon 0 cannot accept an honest augmented proof
    advised = json.loads((tmp_path / "a.json").read_text())["augmentation_tolerance"]["epsilon_needed"]
    assert advised > 0
    again = subprocess.run(cmd + ["--epsilon", repr(advised)])
    assert again.returncode == 0  # the replay the advice was measured for accepts at the advice


def test_a_tampered_theta0_is_not_recovered(data_folder, tmp_path):
    """A weight of theta_0 moved: the stream reproduces only part of theta_0's draws, so it cannot
    place the augmentation; the import says so and falls back instead of replaying wrong draws."""
    proof = tmp_path / "proof"
    shutil.copytree(FIXTURE / "proof", proof)
    ck = torch.load(proof / "model_step_0", weights_only=True)
    ck["net"]["layer3.2.conv2.weight"][0, 0, 0, 0] += 1e-3
    torch.save(ck, proof / "model_step_0")
    data = load_dataset("cifar10", str(data_folder))
    rep = import_proof(str(proof), str(tmp_path / "trace"), model="resnet20", data=data)
    assert "NOT recovered" in rep.augmentation and "18 of theta_0's 20" in rep.augmentation, rep.augmentation
    v = verify_trace(rep.trace, dataset=data)
    assert v.valid and not v.accepted and v.augmentation.startswith("fresh draws")


def test_the_reference_verdict_includes_its_hash_check(imported, tmp_path):
    other = tmp_path / "other"
    write_cifar10_folder(str(other), n=EXPECTED["data"]["n"], seed=EXPECTED["data"]["seed"] + 1)
    data = load_dataset("cifar10", str(other))
    rep = import_proof(str(FIXTURE / "proof"), str(tmp_path / "trace"), model="resnet20", data=data)
    assert rep.data_hash_checked is False and "DIFFERENT" in rep.data_hash_note
    v = verify_trace(rep.trace, dataset=data)
    assert v.reference["hash"] == "invalid" and not v.reference["accepted"]  # its verify_hash: "Hash doesn't match"
    honest, honest_data = imported
    assert verify_trace(honest.trace, dataset=honest_data).reference["hash"] == "valid"
