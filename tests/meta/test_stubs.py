"""The type stubs of the native modules are generated from the built modules
(pybind11-stubgen); a stub that no longer matches the module fails here. Compared by name and
parameter names (the text of type annotations depends on the pybind11 version that built it)."""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys

import pytest

PKG = os.path.join(os.path.dirname(__file__), "..", "..", "python", "exactforge")


def _signatures(text: str) -> dict:
    out = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            args = [a.arg for a in node.args.args] if isinstance(node, ast.FunctionDef) else []
            out.setdefault(node.name, []).append(args)
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.parametrize("module", ["_core", "_cuda"])
def test_stub_matches_the_built_module(module, tmp_path):
    try:
        importlib.import_module(f"exactforge.{module}")
    except ImportError:
        pytest.skip(f"exactforge.{module} is not built here")
    stubgen = shutil.which("pybind11-stubgen") or pytest.skip("pybind11-stubgen is not installed")
    subprocess.run(
        [stubgen, f"exactforge.{module}", "-o", str(tmp_path)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    fresh = (tmp_path / "exactforge" / f"{module}.pyi").read_text()
    with open(os.path.join(PKG, f"{module}.pyi")) as f:
        committed = f.read()
    assert _signatures(committed) == _signatures(fresh), (
        f"python/exactforge/{module}.pyi is stale: regenerate it with "
        f"`pybind11-stubgen exactforge.{module} -o /tmp/stubs` and copy /tmp/stubs/exactforge/{module}.pyi"
    )
