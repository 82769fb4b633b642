"""The `exactforge` command line: demo and info."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from exactforge.cli import main
from exactforge.studies.demo import run_demo


def test_demo_exactforge_rows_are_bitwise_reproducible():
    r = run_demo(batch_size=200, permutations=3)
    rows = {row.path: row for row in r.rows}
    for name in ("exactforge fixed", "exactforge exact"):
        assert rows[name].bitwise and rows[name].permutation_l2 == 0.0 and rows[name].threads_l2 == 0.0
    torch_row = rows["torch (BLAS, autograd)"]
    assert np.isfinite(torch_row.permutation_l2) and torch_row.permutation_l2 < 1e-4


def test_demo_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--batch-size", "100", "--permutations", "2", "--quiet", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exactforge fixed" in text and "bitwise reproducible" in text
    data = json.loads(out.read_text())
    assert data["batch_size"] == 100 and len(data["rows"]) == 3


def test_cli_bad_argument_is_a_clean_error(capsys):
    assert main(["demo", "--batch-size", "1"]) == 2
    assert "batch_size" in capsys.readouterr().err


def test_console_script_info():
    res = subprocess.run([sys.executable, "-m", "exactforge.cli", "info"], capture_output=True, text=True, check=True)
    assert json.loads(res.stdout)["fp_contract"] == "off"


def test_every_command_shares_the_conventions(capsys):
    """--json FILE and --quiet everywhere, defaults and exit codes in --help, --dataset and
    --data-path wherever data is read."""
    from exactforge.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    reads_data = {"train", "verify", "forge", "repro", "attack", "invert", "game", "reevaluate", "import-pol", "spoof"}
    for name, p in sub.choices.items():
        opts = {o for a in p._actions for o in a.option_strings}
        assert {"--json", "--quiet"} <= opts, name
        assert (name in reads_data) == ({"--dataset", "--data-path"} <= opts), name
        text = p.format_help()
        assert "exit codes: 0" in text, name
        fmt = p._get_formatter()
        for a in p._actions:
            if a.option_strings and a.default is not None and a.default is not False and a.dest != "help":
                assert "%(default)" in fmt._get_help_string(a), (name, a.dest)
    assert main(["verify", "--help"]) == 0
    assert "(default: 0.0)" in capsys.readouterr().out


def test_info_json_reports_the_dispatched_isa(tmp_path):
    import json

    js = tmp_path / "info.json"
    assert main(["info", "--json", str(js)]) == 0
    isa = json.load(open(js))["isa"]
    assert isa["kernels"] in ("avx512+avx2+fma", "avx2+fma", "generic")
    assert isa["avx2"] == (isa["kernels"] != "generic") and isa["avx2"] <= isa["cpu"]["avx2"]
    assert isa["avx512"] == isa["kernels"].startswith("avx512") and isa["avx512"] <= isa["cpu"]["avx512f"]


def test_json_numbers_are_never_strings(tmp_path):
    import json

    from exactforge.report import jsonio as _json

    text = _json.dumps({"a": float("nan"), "b": [float("inf"), 1.5], "c": np.float32(2), "d": np.arange(2)})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": 2.0, "d": [0, 1]}
    js = tmp_path / "v.json"
    assert main(["verify", str(tmp_path / "missing"), "--json", str(js)]) == 2
    rep = json.load(open(js))
    assert rep["max_error"] is None and not rep["valid"]


def test_search_table_prints_cells_as_they_finish(tmp_path, monkeypatch, capsys):
    """Each cell is printed (with the time so far and an estimate of what is left) and --json
    rewritten as it finishes; a smaller grid stands in for Table 4's."""
    import json

    import exactforge.forging.search as S

    monkeypatch.setattr(S, "TABLE_V", (2,))
    monkeypatch.setattr(S, "TABLE_B", (1, 2))
    seen = []
    real_write = __import__("exactforge.report.jsonio", fromlist=["write"]).write

    def spy(path, obj):
        seen.append(obj.get("complete"))
        real_write(path, obj)

    monkeypatch.setattr("exactforge.report.jsonio.write", spy)
    js = tmp_path / "t.json"
    assert main(["search", "--table", "--model", "logreg", "--bias", "yes", "--json", str(js), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[1/2, " in out and "min left" in out and "[2/2, " in out
    assert seen[:2] == [False, True] and json.load(open(js))["complete"] is True


def _recorded_torch_trace(out: str) -> None:
    """Two steps of a plain torch MLP on the bundled digits, recorded: a trace whose model only
    the verifier's own code can build."""
    import torch

    from exactforge.data import load_dataset
    from exactforge.trace.record import TraceRecorder

    data = load_dataset("digits")
    X, y = torch.from_numpy(data.X), torch.from_numpy(data.y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.ReLU(), torch.nn.Linear(12, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TraceRecorder(out, model, opt, data, steps=2, batch_size=8) as rec:
        for t in range(2):
            idx = np.arange(8 * t, 8 * t + 8)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
            rec.step(idx)


FACTORY = """
import torch


def make():
    return torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.ReLU(), torch.nn.Linear(12, 10))


def not_a_model():
    return 3


def broken():
    raise RuntimeError("no weights here")
"""


def test_verify_builds_the_model_with_model_factory(tmp_path, capsys, monkeypatch):
    trace = str(tmp_path / "t")
    _recorded_torch_trace(trace)
    (tmp_path / "factories.py").write_text(FACTORY)
    js = tmp_path / "r.json"
    assert main(["verify", trace, "--model-factory", f"{tmp_path / 'factories.py'}:make", "--json", str(js)]) == 0
    assert "ACCEPTED" in capsys.readouterr().out
    assert json.loads(js.read_text())["max_error"] == 0.0
    monkeypatch.syspath_prepend(str(tmp_path))  # the module form: MODULE:FUNCTION
    assert main(["verify", trace, "--model-factory", "factories:make", "--quiet"]) == 0
    capsys.readouterr()
    for bad in (
        "factories",
        "factories:missing",
        "no_such_module_here:make",
        f"{tmp_path / 'nofile.py'}:make",
        "factories:not_a_model",
        "factories:broken",
    ):
        assert main(["verify", trace, "--model-factory", bad, "--quiet"]) == 2, bad
        err = capsys.readouterr().err
        assert "--model-factory" in err and err.startswith("exactforge verify:"), (bad, err)
        assert "no weights here" in err if bad.endswith("broken") else "MODULE:FUNCTION" in err, (bad, err)


def test_a_rejection_prints_its_reason(tmp_path, capsys):
    """The terminal says why a trace was rejected, not only that it was."""
    from hostile import move_weight

    trace = str(tmp_path / "t")
    argv = ["train", "--engine", "native", "--model", "fcn", "--hidden", "8", "--steps", "2", "--batch-size", "12"]
    assert main([*argv, "--out", trace, "--quiet"]) == 0
    move_weight(trace, 1)
    capsys.readouterr()
    assert main(["verify", trace, "--epsilon", "0"]) == 1
    out = capsys.readouterr().out
    assert "REJECTED" in out and "reason: step" in out, out
