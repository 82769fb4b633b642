"""Own data everywhere: `--dataset npz --data-path FILE.npz` for every
command that reads data, arrays to verify_trace, and a domain declared with the data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exactforge.cli import main
from exactforge.data import load_dataset, load_npz
from exactforge.forging.attacks import in_domain
from exactforge.verify import verify_trace


@pytest.fixture(scope="module")
def standardised(tmp_path_factory):
    """Real tabular data (wine), standardised: negative values are in its domain."""
    w = load_dataset("wine")
    X = (w.X - w.X.mean(0)) / w.X.std(0)
    path = tmp_path_factory.mktemp("npz") / "wine_std.npz"
    np.savez(path, X=X.astype(np.float32), y=w.y)
    return str(path)


def test_npz_declares_its_domain(tmp_path, standardised):
    tab = load_npz(standardised)
    assert tab.domain is None and tab.levels is None and tab.shape is None
    assert in_domain(tab.X[:5], tab.y[:5], tab.levels, tab.num_classes, domain=tab.domain)  # negatives are fine
    img = tmp_path / "img.npz"
    np.savez(img, X=np.zeros((4, 5, 5), np.uint8), y=np.arange(4))
    d = load_npz(str(img))
    assert d.domain == (0.0, 1.0) and d.levels == 255 and d.shape == (1, 5, 5) and d.X.shape == (4, 25)
    raw = tmp_path / "raw.npz"
    np.savez(raw, X=np.full((3, 2, 2), 255, np.uint8), y=np.arange(3), lo=0, hi=255, levels=255)
    d = load_npz(str(raw))
    assert d.domain == (0.0, 255.0) and in_domain(d.X, d.y, d.levels, d.num_classes, domain=d.domain)
    assert not in_domain(d.X + 0.5, d.y, d.levels, d.num_classes, domain=d.domain)  # off the grid


@pytest.mark.parametrize(
    "arrays,why",
    [
        ({"X": np.zeros((3, 2))}, "X and y"),
        ({"X": np.zeros((3, 2)), "y": np.zeros(3, np.int64), "evil": np.zeros(1)}, "X and y"),
        ({"X": np.zeros((3, 2)), "y": np.zeros(2, np.int64)}, "one example"),
        ({"X": np.zeros((3, 2)), "y": np.array([0.5, 1, 2])}, "integer"),
        ({"X": np.full((3, 2), np.nan), "y": np.zeros(3, np.int64)}, "NaN"),
        ({"X": np.zeros((3, 2)), "y": np.zeros(3, np.int64), "lo": 1.0}, "both"),
        ({"X": np.zeros((3, 2)), "y": np.zeros(3, np.int64), "levels": 4}, "range"),
    ],
)
def test_bad_npz_files_are_refused(tmp_path, arrays, why):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=why):
        load_npz(str(path))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="npz"):
        load_npz(str(tmp_path / "junk.npz"))
    obj = tmp_path / "obj.npz"
    np.savez(obj, X=np.array([object()], dtype=object), y=np.zeros(1, np.int64))
    with pytest.raises(ValueError):  # pickled objects are never loaded
        load_npz(str(obj))


def test_every_command_takes_own_data(tmp_path, standardised):
    own = ["--dataset", "npz", "--data-path", standardised]
    tr = str(tmp_path / "t")
    assert (
        main(
            [
                "train",
                "--model",
                "logreg",
                "--steps",
                "3",
                "--batch-size",
                "16",
                "--out",
                tr,
                "--quiet",
                "--json",
                str(tmp_path / "train.json"),
                *own,
            ]
        )
        == 0
    )
    assert json.load(open(tmp_path / "train.json"))["dataset"] == "npz"
    assert main(["verify", tr, "--quiet", *own]) == 0
    assert main(["verify", tr, "--quiet", "--data-path", standardised]) == 0  # the trace names npz
    assert main(["verify", tr, "--quiet", "--dataset", "wine"]) == 2  # other data: refused
    js = str(tmp_path / "forge.json")
    assert (
        main(["forge", tr, "--step", "1", "--method", "error-matrix", "--permutations", "0", "--json", js, *own]) == 0
    )
    assert json.load(open(js))["in_range_fraction"] == 1.0  # no declared range: nothing is out of it
    assert (
        main(
            [
                "attack",
                tr,
                "--step",
                "1",
                "--method",
                "nearest",
                "--fraction",
                "0.2",
                "--json",
                str(tmp_path / "a.json"),
                *own,
            ]
        )
        == 0
    )
    assert json.load(open(tmp_path / "a.json"))["in_domain"] is True  # real standardised rows are in domain
    assert (
        main(
            [
                "game",
                "--attack",
                "nearest",
                "--rounds",
                "1",
                "--model",
                "logreg",
                "--steps",
                "2",
                "--batch-size",
                "16",
                "--quiet",
                "--json",
                str(tmp_path / "g.json"),
                *own,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "repro",
                "--model",
                "logreg",
                "--batch-sizes",
                "16",
                "--conditions",
                "permute",
                "--repeats",
                "1",
                "--steps",
                "2",
                "--matrix-steps",
                "0",
                "--out",
                str(tmp_path / "r"),
                "--quiet",
                *own,
            ]
        )
        == 0
    )
    assert main(["train", "--model", "logreg", "--out", str(tmp_path / "x"), "--dataset", "npz"]) == 2  # no file


def test_verify_trace_takes_arrays(tmp_path):
    d = load_dataset("digits")
    assert main(["train", "--model", "logreg", "--steps", "2", "--out", str(tmp_path / "t"), "--quiet"]) == 0
    r = verify_trace(str(tmp_path / "t"), dataset=(d.X, d.y))
    assert r.valid and r.accepted
    r = verify_trace(str(tmp_path / "t"), dataset=(d.X.astype(np.float64), d.y))
    assert not r.valid and "fingerprint" in r.reason
