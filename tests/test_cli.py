"""The `exactforge` command line: demo and info."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from exactforge.cli import main
from exactforge.demo import run_demo


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
