"""Reproduction-error studies: small configurations in seconds; deterministic conditions give
exactly 0; permutation is non-zero on the torch path and exactly 0 on the native path."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from exactforge.cli import main
from exactforge.data import synthetic_tokens
from exactforge.models.zoo import ZOO, build_model
from exactforge.studies.repro import CONDITIONS, applied, run_study


@pytest.mark.slow
def test_study_conditions_and_outputs(tmp_path):
    out = str(tmp_path / "study")
    r = run_study(
        "fcn",
        "digits",
        (100, 200),
        ("permute", "threads", "deterministic", "bf16", "native", "native+permute", "native+threads"),
        repeats=2,
        steps=3,
        matrix_steps=2,
        out=out,
    )
    c = r.conditions
    assert c["baseline"].max_error == 0.0 and c["deterministic"].max_error == 0.0
    assert c["permute"].max_error > 0.0  # torch: aggregation order matters
    for n in ("native", "native+permute", "native+threads"):
        assert c[n].max_error == 0.0 and c[n].zero_fraction == 1.0
    assert c["bf16"].max_error > 100 * c["permute"].max_error  # mixed precision: orders larger
    benign = max(c[k].max_error for k in ("baseline", "permute", "threads", "deterministic"))
    # calibrated on the first half of the repeats: positive, at most 10x the largest benign error
    assert 0 < r.epsilon <= 10 * benign and r.epsilon_native == 0.0 and 0 <= r.false_reject_rate <= 1
    rep = json.load(open(os.path.join(out, "report.json")))
    for name in ("permute", "threads", "deterministic", "bf16", "native"):
        assert "max_error" in rep["conditions"][name]
    assert "epsilon" in rep and rep["matrix"]["rows"][0] == "baseline"
    m = np.array(rep["matrix"]["max_error"])
    assert m.shape == (len(rep["matrix"]["rows"]), len(rep["matrix"]["cols"]))
    for f in ("report.md", "errors_per_checkpoint.png", "batch_size_sweep.png", "condition_matrix.png"):
        assert os.path.getsize(os.path.join(out, f)) > 100
    # the generating condition is recorded in the trace manifests
    man = json.load(open(os.path.join(out, "traces", "torch-b100", "manifest.json")))
    assert man["extra"]["condition"]["name"] == "baseline" and man["engine"] == "torch"


@pytest.mark.parametrize("model", ["logreg", "lenet", "vggmini"])
def test_image_models_small_study(model):
    r = run_study(model, "digits", (32,), ("permute", "deterministic"), repeats=2, steps=2, matrix_steps=0)
    assert r.conditions["deterministic"].max_error == 0.0
    assert np.isfinite(r.conditions["permute"].max_error)


@pytest.mark.parametrize("model,dataset", [("lenet", "mnist-5k"), ("vggmini", "digits"), ("fcn", "digits")])
def test_reproducible_conditions_are_exactly_zero(model, dataset):
    """exactforge.nn's layers: recomputing an honest step with a permuted batch or one thread
    gives theta_{t+1} bit for bit (torch's own path does not, under permutation)."""
    conds = ("permute", "reproducible", "reproducible+permute", "reproducible+threads")
    r = run_study(model, dataset, (32,), conds, repeats=2, steps=2, matrix_steps=0)
    for c in conds[1:]:
        assert r.conditions[c].max_error == 0.0 and r.conditions[c].zero_fraction == 1.0, c
    assert r.epsilon_native == 0.0


def test_transformer_reproducible_conditions_are_exactly_zero():
    conds = ("permute", "reproducible+permute", "reproducible+threads")
    r = run_study("transformer", "synthetic-tokens", (16,), conds, repeats=1, steps=2, matrix_steps=0)
    assert r.conditions["permute"].max_error > 0
    assert all(r.conditions[c].max_error == 0.0 for c in conds[1:])


def test_transformer_runs_on_synthetic_tokens_and_says_so(tmp_path):
    r = run_study(
        "transformer", "digits", (32,), ("permute",), repeats=1, steps=2, matrix_steps=0, out=str(tmp_path / "t")
    )
    assert r.synthetic and r.dataset == "synthetic-tokens"
    assert "SYNTHETIC" in open(tmp_path / "t" / "report.md").read()


def test_tabular_dataset_and_bad_requests():
    r = run_study("logreg", "wine", (16,), ("permute", "native"), repeats=1, steps=2, matrix_steps=0)
    assert r.dataset == "wine" and r.conditions["native"].max_error == 0.0
    with pytest.raises(ValueError, match="native"):
        run_study("lenet", "digits", (32,), ("native",), repeats=1, steps=1)
    with pytest.raises(ValueError, match="images"):
        run_study("lenet", "wine", (8,), ("permute",), repeats=1, steps=1)
    with pytest.raises(ValueError, match="unknown"):
        run_study("fcn", "digits", (8,), ("warp",), repeats=1, steps=1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            run_study("fcn", "digits", (8,), ("cuda",), repeats=1, steps=1)


def test_conditions_restore_torch_state():
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    with applied(CONDITIONS["threads"]):
        assert torch.get_num_threads() == 1
    with applied(CONDITIONS["deterministic"]):
        assert torch.are_deterministic_algorithms_enabled()
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before


def test_zoo_builds_every_model():
    for m in ZOO:
        if m == "transformer":
            t = synthetic_tokens(10)
            net = build_model(m, t.shape, 2, vocab=t.vocab)
            assert net(torch.from_numpy(t.X)).shape == (10, 2)
        else:
            net = build_model(m, (1, 8, 8), 10)
            assert net(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_repro_cli(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert (
        main(
            [
                "repro",
                "--model",
                "fcn",
                "--dataset",
                "digits",
                "--batch-sizes",
                "50",
                "--conditions",
                "permute,threads,native+permute",
                "--repeats",
                "2",
                "--steps",
                "2",
                "--matrix-steps",
                "0",
                "--out",
                out,
                "--quiet",
            ]
        )
        == 0
    )
    rep = json.load(open(os.path.join(out, "report.json")))
    assert rep["conditions"]["native+permute"]["max_error"] == 0.0 and "epsilon" in rep
    assert main(["repro", "--batch-sizes", "a", "--out", out, "--quiet"]) == 2


def test_local_adult_and_imdb_files(tmp_path):
    from exactforge.data import load_adult, load_imdb

    rows = [
        "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K",
        "50, Self-emp, 83311, Bachelors, 13, Married, Exec, Husband, White, Male, 0, 0, 13, United-States, >50K",
        "38, Private, 215646, HS-grad, 9, Divorced, Handlers, Not-in-family, Black, Female, 0, 0, 40, ?, <=50K",
    ]
    (tmp_path / "adult.data").write_text("\n".join(rows) + "\n")
    a = load_adult(str(tmp_path))
    assert a.X.shape[0] == 2 and list(a.y) == [0, 1] and a.X.min() >= 0 and a.X.max() <= 1
    for lab, sub in ((0, "neg"), (1, "pos")):
        d = tmp_path / "aclImdb" / "train" / sub
        d.mkdir(parents=True)
        for i in range(3):
            (d / f"{i}_1.txt").write_text("a great movie " * (lab + 1) + f"review {i}")
    im = load_imdb(str(tmp_path / "aclImdb"), vocab=20, seq_len=8)
    assert im.X.shape == (6, 8) and im.vocab == 20 and list(im.y) == [0, 0, 0, 1, 1, 1]
