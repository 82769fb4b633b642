"""Importing a reference proof with the arguments it stores: hyperparameters read from its
checkpoints, the save frequency from their names, the normalisation from the data set's preset,
the data path kept for verify; arguments that contradict the proof refused, naming them."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import torch

from exactforge.cli import main
from exactforge.data import Dataset, load_dataset
from exactforge.models.zoo import build_model
from exactforge.pol import ProofError, TrainingArgs, import_proof, write_reference_proof
from exactforge.pol.hyper import PRESETS, normalization
from exactforge.pol.proof import save_frequency
from exactforge.trace.format import validate_manifest
from exactforge.trace.safeio import TraceError
from exactforge.verify import verify_trace

DATA = load_dataset("digits")
HALF = [[0.5], [0.5]]
TRAINED = dict(lr=0.05, momentum=0.9, weight_decay=1e-4, milestones=[6], gamma=0.1)


@pytest.fixture(scope="module")
def proof(tmp_path_factory):
    """Saved every 2 steps: the old default interval (100) read none of its inner checkpoints."""
    out = str(tmp_path_factory.mktemp("pol") / "proof")
    model = build_model("lenet", DATA.shape, 10, seed=0)
    return write_reference_proof(out, model, DATA, steps=10, batch_size=16, save_freq=2, normalize=HALF, **TRAINED)


def _copy(proof, tmp_path):
    return shutil.copytree(proof, str(tmp_path / "proof"))


def test_arguments_left_out_are_read_from_the_proof(proof, tmp_path):
    rep = import_proof(proof, str(tmp_path / "t"), model="lenet", data=DATA, args=TrainingArgs(normalize=HALF))
    t = rep.training
    assert (t["optimizer"], t["lr"], t["momentum"], t["weight_decay"]) == ("sgd", 0.05, 0.9, 1e-4)
    assert (t["milestones"], t["gamma"], rep.save_freq, rep.checkpoints) == ([6], 0.1, 2, 6)
    assert rep.sources["lr"].startswith("proof") and rep.sources["save_freq"].startswith("proof")
    assert rep.sources["milestones"] == "proof (model_step_0's scheduler state)"
    assert rep.normalize_source.startswith("normalize") and rep.unused_checkpoints == []
    v = verify_trace(str(tmp_path / "t"))
    assert v.accepted and v.max_error == 0.0, v.reason


def test_a_tampered_checkpoint_that_the_old_default_interval_skipped_is_rejected(proof, tmp_path):
    bad = _copy(proof, tmp_path)
    path = os.path.join(bad, "model_step_8")
    ck = torch.load(path, weights_only=True)
    with torch.no_grad():
        next(v for v in ck["net"].values() if v.is_floating_point()).add_(1e-5)
    torch.save(ck, path)
    import_proof(bad, str(tmp_path / "t"), model="lenet", data=DATA, args=TrainingArgs(normalize=HALF))
    v = verify_trace(str(tmp_path / "t"))
    assert v.valid and not v.accepted
    assert [s.step for s in v.steps if not s.passed] == [6, 8]  # the segments that end and start at it
    with pytest.raises(ValueError, match=r"save_freq: 100 given, but the proof's checkpoints are every 2 steps"):
        import_proof(bad, str(tmp_path / "t2"), model="lenet", data=DATA, args=TrainingArgs(save_freq=100))


@pytest.mark.parametrize(
    "field,given,stored",
    [
        ("lr", 0.1, "0.05"),
        ("momentum", 0.0, "0.9"),
        ("weight_decay", 0.0, "0.0001"),
        ("milestones", [7], "[6]"),
        ("milestones", [], "[6]"),
        ("gamma", 0.2, "0.1"),
        ("optimizer", "adam", "'sgd'"),
        ("save_freq", 3, "every 2 steps"),
        ("batch_size", 8, "16"),
    ],
)
def test_an_argument_that_contradicts_the_proof_is_refused_naming_both_values(proof, tmp_path, field, given, stored):
    args = dataclasses.replace(TrainingArgs(normalize=HALF), **{field: given})
    with pytest.raises(ValueError) as err:
        import_proof(proof, str(tmp_path / "t"), model="lenet", data=DATA, args=args)
    text = str(err.value)
    assert text.startswith(f"{field}: ") and repr(given).replace("'", "") in text.replace("'", "") and stored in text
    assert not os.path.exists(tmp_path / "t")
    agreeing = TrainingArgs(normalize=HALF, save_freq=2, batch_size=16, optimizer="sgd", **TRAINED)
    assert import_proof(proof, str(tmp_path / "ok"), model="lenet", data=DATA, args=agreeing).save_freq == 2


def _rewrite(folder, step, fn):
    path = os.path.join(folder, f"model_step_{step}")
    ck = torch.load(path, weights_only=True)
    fn(ck)
    torch.save(ck, path)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda ck: ck["optimizer"]["param_groups"][0].update(lr=0.5), r"model_step_4's optimizer holds lr 0.5"),
        (lambda ck: ck["optimizer"]["param_groups"][0].update(momentum=0.5), r"model_step_4's momentum is 0.5"),
        (lambda ck: ck["scheduler"].update(last_epoch=3), r"model_step_4's scheduler has taken 3 steps"),
        (lambda ck: ck["scheduler"].update(gamma=0.5), r"model_step_4's gamma is 0.5"),
    ],
)
def test_a_checkpoint_that_disagrees_with_the_proofs_own_schedule_is_refused(proof, tmp_path, edit, match):
    bad = _copy(proof, tmp_path)
    _rewrite(bad, 4, edit)
    with pytest.raises(ProofError, match=match):
        import_proof(bad, str(tmp_path / "t"), model="lenet", data=DATA, args=TrainingArgs(normalize=HALF))
    assert not os.path.exists(tmp_path / "t")


def test_a_schedule_given_for_a_proof_without_scheduler_is_checked_at_every_checkpoint(tmp_path):
    folder = str(tmp_path / "proof")
    write_reference_proof(
        folder, build_model("lenet", DATA.shape, 10, seed=0), DATA, steps=6, batch_size=16, save_freq=2, lr=0.05
    )
    rep = import_proof(folder, str(tmp_path / "t"), model="lenet", data=DATA)
    assert rep.training["milestones"] == [] and rep.sources["milestones"].startswith("none")
    with pytest.raises(ValueError, match=r"^milestones: model_step_4's optimizer holds lr 0.05 for step 4"):
        import_proof(folder, str(tmp_path / "t2"), model="lenet", data=DATA, args=TrainingArgs(milestones=[3]))


@pytest.mark.parametrize(
    "found,steps,given,expect",
    [
        ([0, 2, 4, 6, 8, 10], 10, None, 2),
        ([0, 3, 6, 9, 10], 10, None, 3),
        ([0, 10], 10, None, 10),
        ([0, 10], 10, 100, 10),  # one interval over the whole run: the same files
        ([0, 2, 4, 6, 8, 10], 10, 2, 2),
        ([0, 2, 4, 8, 10], 10, None, "model_step_6 is missing"),
        ([0, 2, 4, 5, 6, 8, 10], 10, None, "model_step_5 does not fit"),
        ([0, 2, 4, 6, 8, 10, 12], 10, None, "model_step_12 does not fit"),
        ([2, 4, 6, 8, 10], 10, None, "model_step_0 is missing"),
        ([0, 2, 4, 6, 8], 10, None, "model_step_10 is missing"),
        ([0, 2, 4, 6, 8, 10], 10, 4, "save_freq: 4 given, but the proof's checkpoints are every 2 steps"),
    ],
)
def test_the_save_frequency_is_inferred_from_the_checkpoint_names(found, steps, given, expect):
    if isinstance(expect, int):
        assert save_frequency(found, steps, given) == expect
    else:
        with pytest.raises(ValueError, match=expect):
            save_frequency(found, steps, given)


def test_names_the_reference_never_writes_are_reported_unused(proof, tmp_path):
    odd = _copy(proof, tmp_path)
    shutil.copy(os.path.join(odd, "model_step_2"), os.path.join(odd, "model_step_02"))
    rep = import_proof(odd, str(tmp_path / "t"), model="lenet", data=DATA, args=TrainingArgs(normalize=HALF))
    assert rep.unused_checkpoints == ["model_step_02"] and rep.save_freq == 2


def _fake(name, channels):
    X = np.zeros((4, channels * 4), np.float32)
    return Dataset(name, X, np.zeros(4, np.int64), 10, 255, (channels, 2, 2))


@pytest.mark.parametrize(
    "data,args,mean,source",
    [
        (_fake("cifar10", 3), TrainingArgs(), PRESETS["cifar10"]["normalize"][0], "preset cifar10 (the reference's"),
        (_fake("cifar100", 3), TrainingArgs(), PRESETS["cifar100"]["normalize"][0], "preset cifar100"),
        (_fake("mnist", 1), TrainingArgs(), [0.5], "preset mnist"),
        (_fake("cifar10", 3), TrainingArgs(preset="none"), None, "none (preset none)"),
        (_fake("digits", 1), TrainingArgs(), None, "none (digits has no reference preset"),
        (_fake("digits", 1), TrainingArgs(preset="mnist"), [0.5], "preset mnist (the argument)"),
        (_fake("cifar10", 3), TrainingArgs(normalize=[[0.1], [0.2]]), [0.1] * 3, "normalize (the argument)"),
    ],
)
def test_the_normalisation_comes_from_the_argument_or_the_data_sets_preset(data, args, mean, source):
    entry, said = normalization(args, data)
    assert (entry["mean"] if entry else None) == mean and said.startswith(source), said


@pytest.mark.parametrize(
    "data,args,match",
    [
        (_fake("mnist", 1), TrainingArgs(preset="cifar10"), "preset: 3 means and 3 deviations for data of 1 channel"),
        (_fake("mnist", 1), TrainingArgs(preset="imagenet"), "preset: expected one of"),
        (_fake("mnist", 1), TrainingArgs(preset="mnist", normalize=HALF), "preset: give a preset or normalize"),
    ],
)
def test_a_preset_that_does_not_fit_is_refused(data, args, match):
    with pytest.raises(ValueError, match=match):
        normalization(args, data)


def _cifar(folder, seed, n=24):
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    rec = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], axis=1).astype(np.uint8)
    rec.tofile(os.path.join(folder, "data_batch_1.bin"))
    return folder


def test_a_cifar_proof_imports_with_its_preset_and_verify_reads_the_stored_data_path(tmp_path, capsys):
    data_dir = _cifar(str(tmp_path / "cifar"), 0)
    data = load_dataset("cifar10", data_dir)
    model = build_model("lenet", data.shape, 10, seed=0)
    norm = [list(v) for v in PRESETS["cifar10"]["normalize"]]
    folder = str(tmp_path / "proof")
    write_reference_proof(
        folder,
        model,
        data,
        steps=3,
        batch_size=8,
        save_freq=2,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        milestones=[2],
        normalize=norm,
    )
    out = str(tmp_path / "t")
    assert (
        main(
            ["import-pol", folder, "--out", out, "--model", "lenet", "--dataset", "cifar10", "--data-path", data_dir]
            + ["--augmentation", "none"]
        )  # written without the reference's crops and flips
        == 0
    )
    said = capsys.readouterr().out
    assert "normalisation: mean [0.485, 0.456, 0.406]" in said and "preset cifar10" in said
    assert f"data path stored in the trace: {os.path.abspath(data_dir)}" in said
    with open(os.path.join(out, "manifest.json")) as f:
        imported = json.load(f)["imported"]
    assert imported["dataset"] == "cifar10" and imported["data_path"] == os.path.abspath(data_dir)
    assert imported["data_fingerprint"] == data.fingerprint()
    assert main(["verify", out, "--quiet"]) == 0
    said = capsys.readouterr().out
    assert f"data: reading cifar10 from {os.path.abspath(data_dir)}" in said and "ACCEPTED" in said
    other = _cifar(str(tmp_path / "other"), 1)
    assert main(["verify", out, "--quiet", "--data-path", other]) == 2
    err = capsys.readouterr().err
    assert "--data-path: the cifar10 data in" in err and "not the data the proof was imported with" in err
    shutil.rmtree(data_dir)
    assert main(["verify", out, "--quiet"]) == 2
    assert "--data-path: the trace was imported with cifar10 from" in capsys.readouterr().err
    assert main(["verify", out, "--quiet", "--dataset", "cifar10", "--data-path", other]) == 2
    assert "--data-path: the cifar10 data in" in capsys.readouterr().err
    with open(os.path.join(out, "manifest.json")) as f:
        man = json.load(f)
    for key, value in [("data_path", "relative/path"), ("data_path", "/" + "x" * 4096), ("data_fingerprint", "0" * 64)]:
        with pytest.raises(TraceError, match="imported"):
            validate_manifest(dict(man, imported=dict(man["imported"], **{key: value})))
    with pytest.raises(TraceError, match="'imported' must be an object of"):
        validate_manifest(dict(man, imported=dict(man["imported"], command="rm -rf /")))
    validate_manifest(dict(man, imported={k: man["imported"][k] for k in ("format", "proof", "data_hash")}))


def _adam_proof(folder, steps=4, save_freq=2):
    """A proof the reference's train.py makes for a data set it has no SGD recipe for: Adam."""
    os.makedirs(folder)
    model = build_model("lenet", DATA.shape, 10, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    indices = np.random.default_rng(0).permutation(len(DATA))[: steps * 16].reshape(steps, 16)
    np.save(os.path.join(folder, "indices.npy"), indices)
    X = torch.from_numpy(DATA.X).reshape(len(DATA), *DATA.shape)
    y = torch.from_numpy(DATA.y)
    for i in range(steps + 1):
        if i % save_freq == 0 or i == steps:
            torch.save(
                {"net": model.state_dict(), "optimizer": opt.state_dict()}, os.path.join(folder, f"model_step_{i}")
            )
        if i < steps:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[indices[i]]), y[indices[i]]).backward()
            opt.step()
    return folder


def test_an_adam_proof_is_read_as_adam(tmp_path):
    folder = _adam_proof(str(tmp_path / "proof"))
    rep = import_proof(folder, str(tmp_path / "t"), model="lenet", data=DATA)
    assert rep.training["optimizer"] == "adam" and rep.training["betas"] == [0.9, 0.999]
    assert "betas" in rep.sources["optimizer"]
    assert verify_trace(str(tmp_path / "t")).accepted
    with pytest.raises(ValueError, match="momentum: 0.9 given, but the proof's optimizer is Adam"):
        import_proof(folder, str(tmp_path / "t2"), model="lenet", data=DATA, args=TrainingArgs(momentum=0.9))
