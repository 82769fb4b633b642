"""A Ray address where no cluster answers ends in bounded time with exit 2 naming the address
(in a fresh interpreter: a Ray already running in the test process would be used instead)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("ray")


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_no_cluster_at_the_address(tmp_path, address):
    from exactforge.cli import main

    trace = str(tmp_path / "t")
    assert main(["train", "--model", "logreg", "--steps", "2", "--out", trace, "--quiet"]) == 0
    argv = ["verify", trace, "--ray", address, "--ray-timeout", "3", "--quiet"]
    proc = subprocess.run([sys.executable, "-m", "exactforge.cli", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert address in proc.stderr and "no Ray cluster answers" in proc.stderr, proc.stderr


def test_the_timeout_is_checked():
    from exactforge.verify.ray import RayExecutor

    for bad in (0, -1, float("nan"), True, "10"):
        with pytest.raises(ValueError, match="connect_timeout"):
            RayExecutor("127.0.0.1:1", connect_timeout=bad)
