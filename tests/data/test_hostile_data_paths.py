"""A data path that is not a regular file (a FIFO, a directory, a device) is refused before it
is opened, naming the argument: opening a FIFO would wait for a writer that never comes. Each
run that could hang runs in a subprocess with a timeout, so a regression fails instead of
stalling the suite."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from exactforge.cli import main
from exactforge.data import load_adult, load_dataset, load_npz

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")


@pytest.fixture(scope="module")
def trace_and_data(tmp_path_factory):
    """A short trace recorded on an .npz data set, and that file."""
    d = tmp_path_factory.mktemp("hostile_data")
    rng = np.random.default_rng(0)
    data = d / "own.npz"
    np.savez(data, X=rng.standard_normal((64, 5)).astype(np.float32), y=rng.integers(0, 3, 64))
    tr = str(d / "t")
    argv = ["train", "--model", "logreg", "--steps", "2", "--batch-size", "16", "--out", tr, "--quiet"]
    assert main([*argv, "--dataset", "npz", "--data-path", str(data)]) == 0
    return tr, str(data)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "data.npz"
    os.mkfifo(path)
    return str(path)


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exactforge.cli", *argv], capture_output=True, text=True, timeout=60)


def test_verify_refuses_a_fifo_as_the_data_path(trace_and_data, fifo):
    trace, _ = trace_and_data
    res = _cli("verify", trace, "--quiet", "--dataset", "npz", "--data-path", fifo)
    assert res.returncode == 2, res.stderr
    assert "data-path" in res.stderr and "FIFO" in res.stderr


def test_verify_refuses_a_fifo_as_the_known_data(trace_and_data, fifo):
    trace, data = trace_and_data
    res = _cli(
        "verify", trace, "--quiet", "--dataset", "npz", "--data-path", data, "--known-data", "npz",
        "--known-data-path", fifo,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "--known-data" in res.stderr and "FIFO" in res.stderr


_API = """
import sys
from exactforge.data import load_npz
from exactforge.verify import verify_trace
try:
    load_npz(sys.argv[1])
except ValueError as exc:
    print("load_npz:", exc)
rep = verify_trace(sys.argv[2], data_path=sys.argv[1], threads=1)
print("verify_trace:", rep.accepted, rep.reason)
"""


def test_the_python_api_refuses_a_fifo(trace_and_data, fifo):
    trace, _ = trace_and_data
    res = subprocess.run([sys.executable, "-c", _API, fifo, trace], capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "load_npz: data-path: " + fifo + " is a FIFO" in out, out
    assert "verify_trace: False data-path: " + fifo + " is a FIFO" in out, out  # a rejection, with the reason


@pytest.mark.parametrize("kind", ["directory", "device"])
def test_directories_and_devices_are_refused_too(tmp_path, kind):
    path = str(tmp_path) if kind == "directory" else os.devnull
    word = "a directory" if kind == "directory" else "a character device"
    with pytest.raises(ValueError, match=f"data-path: .* is {word}"):
        load_npz(path)
    with pytest.raises(ValueError, match=f"data-path: .* is {word}"):
        load_dataset("npz", path)


def test_csv_and_text_readers_refuse_a_fifo(tmp_path, fifo):
    with pytest.raises(ValueError, match="data_path: .* is a FIFO"):
        load_adult(fifo)
    imdb = tmp_path / "aclImdb" / "train"
    (imdb / "neg").mkdir(parents=True)
    (imdb / "pos").mkdir()
    os.mkfifo(imdb / "neg" / "0_1.txt")
    with pytest.raises(ValueError, match="data_path: .* is a FIFO"):
        load_dataset("imdb", str(tmp_path / "aclImdb"))


def test_a_regular_npz_still_reads(trace_and_data):
    _, data = trace_and_data
    d = load_npz(data)
    assert d.X.shape == (64, 5) and d.num_classes == 3
