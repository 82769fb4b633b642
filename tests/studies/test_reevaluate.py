"""The main job: `exactforge reevaluate --quick` produces every section, finite numbers and figures."""

from __future__ import annotations

import json
import math
import os

import pytest
from consistency import check_report

from exactforge.cli import main


def _finite_numbers(obj, path="report"):
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        assert math.isfinite(obj), f"{path} is not finite: {obj}"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _finite_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _finite_numbers(v, f"{path}[{i}]")


def _report_tells_the_truth(rep, md):
    """one epsilon per verifier, named and explained, and every game row
    against one of them; no raw floats, no None/nan, no unmeasured constants; each exact
    forgery's domain is stated from the data's declared domain."""
    import re

    names = {v["name"]: v["epsilon"] for v in rep["verifiers"]}
    assert len(names) == len(rep["verifiers"]) and all(v["how"] for v in rep["verifiers"])
    for g in rep["game"]:
        assert g["verifier"] in names and g["epsilon"] == names[g["verifier"]], g
    assert "## Verifiers" in md
    assert not re.search(r"\d\.\d{7,}", md), "a raw float in report.md"
    assert not re.search(r"\b(None|nan|NaN)\b", md), "None/nan in report.md"
    assert "this machine" not in md
    for line in md.splitlines():
        if line.startswith("| exact: ") and "no distinct forgery" not in line:
            assert "NO:" in line or "| yes |" in line, line


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick re-evaluation through the CLI: (folder, what it printed)."""
    import contextlib
    import io

    out = str(tmp_path_factory.mktemp("reeval") / "r")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["reevaluate", "--quick", "--out", out, "--quiet"]) == 0
    return out, buf.getvalue()


@pytest.mark.slow
def test_quick_reevaluation_report_has_every_section(quick):
    out, printed = quick
    assert "benign reproduction" in printed and "attack: greedy" in printed
    rep = json.load(open(os.path.join(out, "report.json")))
    for section in ("traces", "reproduction", "attacks", "exact", "game", "figures", "papers", "environment"):
        assert section in rep, section
    _finite_numbers({k: rep[k] for k in ("reproduction", "attacks", "exact", "game", "traces")})
    assert rep["traces"]["native"]["verified_eps0"] and rep["traces"]["native"]["permuted_1thread_accepted_eps0"]
    assert rep["reproduction"]["epsilon_native"] == 0.0 and rep["reproduction"]["epsilon"] > 0
    for m in ("greedy", "nearest", "gradmatch", "dlg"):
        assert rep["attacks"][m]["median_error"] > rep["reproduction"]["max_benign_torch"]
    assert any(g["verifier"].startswith("native") for g in rep["game"])
    assert all(g["win_rate"] == 0.0 for g in rep["game"] if g["verifier"].startswith("native"))
    md = open(os.path.join(out, "report.md")).read()
    for heading in (
        "## Summary",
        "## Traces",
        "## Benign reproduction errors",
        "## The forging game",
        "## Exact forgeries: domain violations",
        "## Spoofing: a whole trace for a model one did not train",
    ):
        assert heading in md
    _report_tells_the_truth(rep, md)
    assert check_report(md, rep) == []
    for fig in (
        "headline.png",
        "game.png",
        "exact_forgery.png",
        "repro/errors_per_checkpoint.png",
        "repro/batch_size_sweep.png",
        "repro/condition_matrix.png",
    ):
        p = os.path.join(out, fig)
        assert os.path.getsize(p) > 1000 and open(p, "rb").read(4) == b"\x89PNG", fig


@pytest.mark.slow
def test_cnn_reevaluation_has_a_reproducible_trace_and_study(tmp_path):
    """LeNet: the native path is exactforge.nn's, accepted at epsilon 0 under a permuted batch
    and one thread, and its study conditions are exactly 0."""
    from exactforge.studies.reevaluate import Config, reevaluate

    cfg = Config.quick(model="lenet", steps=2, attack_steps=1, rounds=1, batch=32, table4_max_batches=50)
    rep = reevaluate(str(tmp_path / "r"), cfg, progress=False)
    nat = rep["traces"]["native"]
    assert nat["verified_eps0"] and nat["permuted_1thread_accepted_eps0"] and nat["permuted_1thread_max_error"] == 0.0
    conds = rep["reproduction"]["conditions"]
    assert all(conds[c]["max_error"] == 0.0 for c in ("reproducible", "reproducible+permute", "reproducible+threads"))
    assert rep["reproduction"]["epsilon_native"] == 0.0
    md = open(tmp_path / "r" / "report.md").read()
    assert "native path epsilon: None" not in md and "- native path: verified at epsilon 0: accepted" in md


@pytest.mark.slow
def test_reevaluation_on_own_standardised_data_states_its_domain(tmp_path):
    """Tabular data with no declared range: no "pixels off the grid None", nothing called out
    of [0, 1]."""
    import numpy as np

    from exactforge.data import load_dataset
    from exactforge.studies.reevaluate import Config, reevaluate

    w = load_dataset("wine")
    path = tmp_path / "w.npz"
    np.savez(path, X=((w.X - w.X.mean(0)) / w.X.std(0)).astype(np.float32), y=w.y)
    cfg = Config.quick(
        model="logreg",
        dataset="npz",
        data_path=str(path),
        steps=3,
        attack_steps=1,
        rounds=1,
        batch=16,
        batch_sizes=(16,),
        table4_max_batches=50,
    )
    rep = reevaluate(str(tmp_path / "r"), cfg, progress=False)
    md = open(tmp_path / "r" / "report.md").read()
    assert rep["dataset"]["domain"] is None and "no declared value range" in md
    assert "None" not in md and "[0,1]" not in md and "[0, 1]" not in md


def test_the_consistency_check_finds_a_sentence_that_disagrees_with_its_table(quick):
    """Each kind of disagreement the report once had, made by hand, is found."""
    import re

    out, _ = quick
    md = open(os.path.join(out, "report.md")).read()
    rep = json.load(open(os.path.join(out, "report.json")))
    edits = {
        "epsilon": re.sub(r"(\| epsilon of verifier [^|]+\| )([0-9.e+-]+)", r"\g<1>9.99e-01", md, count=1),
        "benign": re.sub(
            r"Largest benign torch error: ([0-9.e+-]+)", "Largest benign torch error: 1.23e-05", md, count=1
        ),
        "resolution": re.sub(
            r"exact forgeries below, (\d+) were", lambda m: f"exact forgeries below, {int(m[1]) + 1} were", md
        ),
        "caption": re.sub(r"\*game\.png: [^*]+\*", "", md),
        "batch": md.replace("*headline.png: fcn on digits, b = 100", "*headline.png: fcn on digits, b = 1000"),
    }
    for what, text in edits.items():
        assert text != md, what
        assert check_report(text, rep), what
    rep2 = dict(rep, figure_markers={"headline.png": []})
    assert any("epsilon marker" in p for p in check_report(md, rep2))
