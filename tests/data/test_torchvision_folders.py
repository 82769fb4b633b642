"""The folders a torchvision user holds (cifar-10-batches-py, cifar-100-python, MNIST/raw),
from tiny files in their formats, and the restricted unpickler against hostile files."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from exactforge import data_torchvision as T
from exactforge.data import DATASETS, load_cifar10, load_cifar100, load_dataset, load_mnist
from exactforge.pol.importer import reference_data_hash, text_hash

from conftest import write_mnist
from hostile import deadline


# -- writers of the formats ----------------------------------------------------------------------
def py2_pickle(obj) -> bytes:
    """``obj`` as Python 2's cPickle writes it at protocol 2, the form of the files torchvision
    downloads: py2 strings (SHORT_BINSTRING / BINSTRING), numpy.core's _reconstruct."""
    out = bytearray(b"\x80\x02")

    def string(b: bytes) -> None:
        out.extend((b"U" + bytes([len(b)])) if len(b) < 256 else (b"T" + struct.pack("<I", len(b))))
        out.extend(b)

    def integer(v: int) -> None:
        if 0 <= v < 256:
            out.extend(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            out.extend(b"M" + struct.pack("<H", v))
        else:
            out.extend(b"J" + struct.pack("<i", v))

    def emit(o) -> None:
        if isinstance(o, bytes):
            string(o)
        elif isinstance(o, int):
            integer(o)
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                emit(v)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        elif isinstance(o, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            integer(0)
            out.extend(b"\x85")
            string(b"b")
            out.extend(b"\x87R(")
            integer(1)
            for d in o.shape:
                integer(d)
            out.extend({1: b"\x85", 2: b"\x86"}[o.ndim])
            out.extend(b"cnumpy\ndtype\n")
            string(o.dtype.str[1:].encode())
            integer(0)
            integer(1)
            out.extend(b"\x87R(")
            integer(3)
            string(o.dtype.str[:1].encode())
            out.extend(b"NNN")
            integer(-1)
            integer(-1)
            integer(0)
            out.extend(b"tb\x89")
            string(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def batch(n: int, seed: int, label_key: bytes = b"labels", classes: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    d = {
        b"batch_label": b"training batch %d of 5" % seed,
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, classes, n)],
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }
    if label_key == b"fine_labels":
        d[b"coarse_labels"] = [v // 5 for v in d[label_key]]
    return d


def write(path, obj, fmt: str = "py2") -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    raw = py2_pickle(obj) if fmt == "py2" else pickle.dumps(obj, protocol=2 if fmt == "py3" else 4)
    with open(path, "wb") as f:
        f.write(raw)


def write_cifar10_root(root, sizes=(3, 4), fmt: str = "py2", batches=None):
    """torchvision's root holding cifar-10-batches-py: the batches (data_batch_i for i in
    ``batches``, default 1..len(sizes)) and test_batch; returns the training batches written."""
    folder = os.path.join(str(root), "cifar-10-batches-py")
    batches = batches or range(1, len(sizes) + 1)
    written = []
    for i, n in zip(batches, sizes):
        b = batch(n, i)
        write(os.path.join(folder, f"data_batch_{i}"), b, fmt)
        written.append(b)
    write(os.path.join(folder, "test_batch"), batch(2, 99), fmt)
    write(os.path.join(folder, "batches.meta"), {b"label_names": [b"airplane"] * 10, b"num_vis": 3072}, fmt)
    return written


def torchvision_data(batches) -> np.ndarray:
    """What torchvision's CIFAR10.__init__ makes of the batches: its ``.data``."""
    return np.vstack([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))


def rebuilt(d) -> np.ndarray:
    return np.rint(d.X * 255).astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


# -- the accepted folders ------------------------------------------------------------------------
def test_py2_writer_makes_what_pickle_reads_back():
    b = batch(2, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy.core, as in the real files
        back = pickle.loads(py2_pickle(b), encoding="bytes")
    assert np.array_equal(back[b"data"], b[b"data"]) and back[b"labels"] == b[b"labels"]


@pytest.mark.parametrize("fmt", ["py2", "py3", "py3-protocol4"])
def test_cifar10_from_every_accepted_folder_equals_the_binary_reader(tmp_path, fmt):
    root = tmp_path / "data"
    batches = write_cifar10_root(root, fmt=fmt)
    binf = tmp_path / "bin"
    binf.mkdir()
    for i, b in enumerate(batches, 1):
        rec = np.concatenate([np.array(b[b"labels"], np.uint8)[:, None], b[b"data"]], axis=1)
        rec.tofile(str(binf / f"data_batch_{i}.bin"))
    ref = load_cifar10(str(binf))
    for path in (root, root / "cifar-10-batches-py"):
        d = load_cifar10(str(path))
        assert (d.name, d.num_classes, d.levels, d.shape) == ("cifar10", 10, 255, (3, 32, 32))
        assert d.X.dtype == np.float32 and d.X.shape == (7, 3072)
        assert d.fingerprint() == ref.fingerprint()
        assert np.array_equal(d.y, np.concatenate([b[b"labels"] for b in batches]))
        assert np.array_equal(rebuilt(d), torchvision_data(batches))
    assert load_dataset("cifar10", str(root)).fingerprint() == ref.fingerprint()
    test = load_cifar10(str(root), split="test")
    assert len(test) == 2
    # the binary version's own folder name under a root is found too
    os.rename(str(binf), str(tmp_path / "cifar-10-batches-bin"))
    assert load_cifar10(str(tmp_path)).fingerprint() == ref.fingerprint()


def test_x_is_torchvision_to_tensor_bit_for_bit_and_rebuilds_data(tmp_path):
    b = batch(3, 1)
    b[b"data"][0, :256] = np.arange(256)  # every pixel value
    write(tmp_path / "cifar-10-batches-py" / "data_batch_1", b)
    d = load_cifar10(str(tmp_path))
    hwc = torchvision_data([b])
    assert np.array_equal(rebuilt(d), hwc)
    # torchvision's ToTensor: HWC uint8 -> CHW, then float32 division by 255
    t = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
    assert np.array_equal(t.reshape(3, -1).numpy().view(np.uint32), d.X.view(np.uint32))


def test_a_subset_of_batches_loads_in_torchvision_order_from_data_batch_1(tmp_path):
    batches = write_cifar10_root(tmp_path, sizes=(2, 3), batches=[1, 3])
    d = load_cifar10(str(tmp_path))
    assert len(d) == 5 and np.array_equal(rebuilt(d), torchvision_data(batches))
    os.unlink(tmp_path / "cifar-10-batches-py" / "data_batch_1")
    with pytest.raises(FileNotFoundError, match="data_batch_1 not found.*data_batch_3"):
        load_cifar10(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="binary.*cifar-10-batches-py"):
        load_cifar10(str(tmp_path / "nothing"))


def test_cifar100_from_its_folder_or_root_with_fine_labels(tmp_path):
    b = batch(5, 1, b"fine_labels", 100)
    b[b"fine_labels"][:2] = [0, 99]
    write(tmp_path / "cifar-100-python" / "train", b)
    write(tmp_path / "cifar-100-python" / "test", batch(2, 2, b"fine_labels", 100))
    write(tmp_path / "cifar-100-python" / "meta", {b"fine_label_names": [b"apple"] * 100})
    for path in (tmp_path, tmp_path / "cifar-100-python"):
        d = load_cifar100(str(path))
        assert (d.name, d.num_classes, d.levels, d.shape, len(d)) == ("cifar100", 100, 255, (3, 32, 32), 5)
        assert np.array_equal(d.y, b[b"fine_labels"]) and np.array_equal(rebuilt(d), torchvision_data([b]))
    assert len(load_cifar100(str(tmp_path), split="test")) == 2
    assert "cifar100" in DATASETS and load_dataset("cifar100", str(tmp_path)).fingerprint() == d.fingerprint()
    with pytest.raises(ValueError, match="--data-path"):
        load_dataset("cifar100")
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_cifar100(str(tmp_path / "nothing"))
    b[b"fine_labels"][0] = 100
    write(tmp_path / "cifar-100-python" / "train", b)
    with pytest.raises(ValueError, match=r"^data_path: .*train.*0\.\.99"):
        load_cifar100(str(tmp_path))


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_torchvision_root_its_mnist_folder_or_raw(tmp_path, gz):
    imgs, labels = write_mnist(str(tmp_path / "MNIST" / "raw"), gz=gz)
    ref = load_mnist(str(tmp_path / "MNIST" / "raw"))
    for path in (tmp_path, tmp_path / "MNIST"):
        assert load_mnist(str(path)).fingerprint() == ref.fingerprint()
    assert np.array_equal(np.rint(ref.X * 255).astype(np.uint8).reshape(-1, 28, 28), imgs)
    assert np.array_equal(ref.y, labels)
    with pytest.raises(FileNotFoundError, match="MNIST"):
        load_mnist(str(tmp_path / "elsewhere"))


def test_mnist_labels_and_image_size_are_checked(tmp_path):
    write_mnist(str(tmp_path))
    p = tmp_path / "train-labels-idx1-ubyte"
    raw = bytearray(p.read_bytes())
    raw[-1] = 10
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="0..9"):
        load_mnist(str(tmp_path))
    write_mnist(str(tmp_path))
    q = tmp_path / "train-images-idx3-ubyte"
    q.write_bytes(struct.pack(">BBBBIII", 0, 0, 8, 3, 40, 28, 27) + b"\0" * (40 * 28 * 27))
    with pytest.raises(ValueError, match="shape"):
        load_mnist(str(tmp_path))
    os.unlink(str(tmp_path / "train-labels-idx1-ubyte"))
    write_mnist(str(tmp_path / "x"))
    os.unlink(str(tmp_path / "x" / "train-labels-idx1-ubyte"))
    with pytest.raises(FileNotFoundError, match="labels"):
        load_mnist(str(tmp_path / "x"))


# -- what the pickles must hold ------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda b: b.pop(b"labels"), "no 'data' and 'labels'"),
        (lambda b: b.__setitem__(b"labels", b[b"labels"][:-1]), "3 images and 2 labels"),
        (lambda b: b.__setitem__(b"labels", [0, 1, 10]), r"0\.\.9"),
        (lambda b: b.__setitem__(b"labels", [0, 1, -1]), r"0\.\.9"),
        (lambda b: b.__setitem__(b"labels", [0, 1, b"2"]), "list of integers"),
        (lambda b: b.__setitem__(b"labels", b"\x00\x01\x02"), "list of integers"),
        (lambda b: b.__setitem__(b"data", b[b"data"][:, :3071].copy()), r"expected uint8 \(n, 3072\)"),
        (lambda b: b.__setitem__(b"data", b[b"data"].reshape(-1)), r"expected uint8 \(n, 3072\)"),
        (lambda b: b.__setitem__(b"data", b[b"data"].astype(np.int16)), r"expected uint8"),
        (lambda b: b.__setitem__(b"data", b"\0" * 9216), "not a numpy array"),
    ],
)
def test_a_batch_that_is_not_cifar_is_refused_naming_the_file(tmp_path, edit, match):
    b = batch(3, 1)
    edit(b)
    write(tmp_path / "data_batch_1", b)
    with pytest.raises(ValueError, match=rf"^data_path: .*data_batch_1.*{match}"):
        load_cifar10(str(tmp_path))


def test_labels_as_an_integer_array_are_read_but_float_arrays_are_not(tmp_path):
    b = batch(3, 1)
    b[b"labels"] = np.array(b[b"labels"], dtype=np.int64)
    write(tmp_path / "data_batch_1", b, "py3")
    assert np.array_equal(load_cifar10(str(tmp_path)).y, b[b"labels"])
    b[b"labels"] = b[b"labels"].astype(np.float64)
    write(tmp_path / "data_batch_1", b, "py3")
    with pytest.raises(ValueError, match="only integer dtypes"):
        load_cifar10(str(tmp_path))


class _Runs:
    """Unpickling this calls ``fn(arg)``: what a hostile batch file does."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("fmt", ["whole", "data", "labels"])
@pytest.mark.parametrize("how", ["os.system", "builtins.eval", "builtins.exec"])
def test_a_pickle_that_names_code_is_refused_without_running(tmp_path, fmt, how):
    marker = tmp_path / "ran"
    fn, arg = {
        "os.system": (os.system, f"touch {marker}"),
        "builtins.eval": (eval, f"open({str(marker)!r}, 'w')"),
        "builtins.exec": (exec, f"open({str(marker)!r}, 'w')"),
    }[how]
    evil = _Runs(fn, arg)
    b = batch(3, 1)
    obj = evil if fmt == "whole" else {**b, (b"data" if fmt == "data" else b"labels"): evil}
    # at protocol 5 numpy pickles the pixels by _frombuffer, refused before the labels are reached
    for protocol in (2, 4, 5) if fmt != "labels" else (2, 4):
        with open(tmp_path / "data_batch_1", "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
        with pytest.raises(ValueError, match=r"^data_path: .*data_batch_1 is not a CIFAR pickle.*(system|eval|exec)"):
            load_cifar10(str(tmp_path))
        assert not marker.exists()


def test_object_arrays_and_other_numpy_names_are_refused(tmp_path):
    b = batch(1, 1)
    obj = np.empty((1, 3072), dtype=object)
    obj[:] = 7
    b[b"data"] = obj
    write(tmp_path / "data_batch_1", b, "py3")
    with pytest.raises(ValueError, match="object dtype"):
        load_cifar10(str(tmp_path))
    b[b"data"] = np.zeros((1, 3072), np.uint8)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump(b, f, protocol=5)  # numpy's protocol-5 form: a pickle buffer and _frombuffer, not allowed
    with pytest.raises(ValueError, match="BYTEARRAY8|_frombuffer"):
        load_cifar10(str(tmp_path))
    b[b"data"] = np.zeros((1,), dtype=[("a", np.uint8, (3072,))])  # a structured dtype
    write(tmp_path / "data_batch_1", b, "py3")
    with pytest.raises(ValueError, match="dtype"):
        load_cifar10(str(tmp_path))


def test_fifos_devices_and_oversized_files_are_refused_without_hanging(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_root(tmp_path, sizes=(2,))
    os.unlink(folder / "data_batch_1")
    os.mkfifo(folder / "data_batch_1")
    with deadline(20):
        with pytest.raises(ValueError, match="data_batch_1 is a FIFO"):
            load_cifar10(str(tmp_path))
        (tmp_path / "b").mkdir()
        os.mkfifo(tmp_path / "b" / "data_batch_1.bin")
        with pytest.raises(ValueError, match="FIFO"):
            load_cifar10(str(tmp_path / "b"))
        (tmp_path / "m").mkdir()
        os.mkfifo(tmp_path / "m" / "train-images-idx3-ubyte")
        with pytest.raises(ValueError, match="FIFO"):
            load_mnist(str(tmp_path / "m"))
    os.unlink(folder / "data_batch_1")
    if os.path.exists("/dev/zero"):
        os.symlink("/dev/zero", folder / "data_batch_1")
        with pytest.raises(ValueError, match="character device"):
            load_cifar10(str(tmp_path))
        os.unlink(folder / "data_batch_1")
    # a link to a regular file is the user's own layout, and is followed
    write(tmp_path / "elsewhere", batch(2, 1))
    os.symlink(tmp_path / "elsewhere", folder / "data_batch_1")
    assert len(load_cifar10(str(tmp_path))) == 2
    monkeypatch.setattr(T, "MAX_FILE_BYTES", 4096)
    with pytest.raises(ValueError, match="more than the 4096"):
        load_cifar10(str(tmp_path))
    write_mnist(str(tmp_path / "gz"), gz=True)
    with gzip.open(tmp_path / "gz" / "train-images-idx3-ubyte.gz", "wb") as f:  # 31 KB of zeros, in 100 bytes
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 40, 28, 28) + bytes(40 * 784))
    with pytest.raises(ValueError, match="decompresses to more than 4096"):
        load_mnist(str(tmp_path / "gz"))


# -- fuzzing: mutated real inputs load as valid data or are refused with a ValueError --------------
def _load_or_refuse(raw: bytes, folder) -> None:
    p = os.path.join(str(folder), "data_batch_1")
    with open(p, "wb") as f:
        f.write(raw)
    try:
        x, y = T.read_cifar_pickle(p, "labels", 10)
    except ValueError as exc:
        assert str(exc).startswith("data_path: ") and "data_batch_1" in str(exc)
        return
    assert x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == 3072 and len(x) == len(y) >= 1
    assert y.dtype == np.int64 and y.min() >= 0 and y.max() <= 9


def _structure(raw: bytes, pixels: bytes) -> list:
    """Offsets of raw outside the pixel bytes: where a mutation changes the structure."""
    if pixels not in raw:  # Python 3 at protocol 2: bytes as the UTF-8 of their latin-1 text
        pixels = pixels.decode("latin-1").encode("utf-8")
    a = raw.index(pixels)
    return list(range(a + 16)) + list(range(a + len(pixels) - 16, len(raw)))


SEEDS = {
    fmt: (py2_pickle(batch(1, 1)) if fmt == "py2" else pickle.dumps(batch(1, 1), protocol=2)) for fmt in ("py2", "py3")
}


@pytest.mark.parametrize("fmt", ["py2", "py3"])
def test_every_truncation_and_byte_flip_of_the_structure_is_refused_or_valid(tmp_path, fmt):
    raw = SEEDS[fmt]
    where = _structure(raw, batch(1, 1)[b"data"].tobytes())
    for i in where:
        _load_or_refuse(raw[:i], tmp_path)
        for x in (0x01, 0xFF):
            _load_or_refuse(raw[:i] + bytes([raw[i] ^ x]) + raw[i + 1 :], tmp_path)


@given(
    fmt=st.sampled_from(["py2", "py3"]),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete", "swap"]),
            st.integers(0, 10**6),
            st.binary(min_size=1, max_size=8),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_pickles_are_refused_or_valid(tmp_path_factory, fmt, edits):
    raw = bytearray(SEEDS[fmt])
    where = _structure(bytes(raw), batch(1, 1)[b"data"].tobytes())
    for op, at, b in edits:
        i = where[at % len(where)] if where[at % len(where)] < len(raw) else len(raw) - 1
        if op == "flip":
            raw[i] ^= b[0] or 1
        elif op == "insert":
            raw[i:i] = b
        elif op == "delete":
            del raw[i : i + len(b)]
        else:  # an opcode from elsewhere in the file
            j = at % len(raw)
            raw[i], raw[j] = raw[j], raw[i]
    _load_or_refuse(bytes(raw), tmp_path_factory.mktemp("fuzz"))


@given(head=st.binary(min_size=0, max_size=24), tail=st.integers(0, 3000))
def test_mutated_idx_headers_are_refused_or_valid(tmp_path_factory, head, tail):
    folder = tmp_path_factory.mktemp("idx")
    imgs, _ = write_mnist(str(folder), n=3)
    p = folder / "train-images-idx3-ubyte"
    raw = p.read_bytes()
    p.write_bytes(head + raw[len(head) :][:tail])
    try:
        d = load_mnist(str(folder))
    except ValueError as exc:
        assert str(exc).startswith("data_path: ")
        return
    assert d.X.shape == (3, 784) and d.X.dtype == np.float32


# -- the reference's hash.txt over what was loaded -----------------------------------------------
def test_the_reference_hash_covers_the_loaded_training_set_whatever_its_size(tmp_path):
    batches = write_cifar10_root(tmp_path / "c10", sizes=(3,))  # data_batch_1 only
    m = hashlib.sha256()
    for d in torchvision_data(batches):  # the reference's train.py over trainset.data
        m.update(str(d).encode("utf-8"))
    assert reference_data_hash(load_cifar10(str(tmp_path / "c10"))) == m.hexdigest()
    b = batch(4, 1, b"fine_labels", 100)
    write(tmp_path / "c100" / "cifar-100-python" / "train", b)
    m = hashlib.sha256()
    for d in torchvision_data([b]):
        m.update(str(d).encode("utf-8"))
    assert reference_data_hash(load_cifar100(str(tmp_path / "c100"))) == m.hexdigest()
    imgs, _ = write_mnist(str(tmp_path / "mn" / "MNIST" / "raw"), n=5)
    m = hashlib.sha256()
    for d in torch.from_numpy(imgs):  # torchvision's MNIST .data is a uint8 tensor
        m.update(str(d).encode("utf-8"))
    assert reference_data_hash(load_mnist(str(tmp_path / "mn"))) == m.hexdigest()
    with pytest.raises(ValueError, match="kind"):
        text_hash(imgs, "digits")


def test_the_file_reader_bounds_what_it_reads(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    assert T.read_regular(str(p), 100) == b"x" * 100
    with pytest.raises(ValueError, match="more than the 99"):
        T.read_regular(str(p), 99)
    with pytest.raises(ValueError, match="a directory"):
        T.read_regular(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="^data_path: "):
        T.read_regular(str(tmp_path / "missing"))
    with gzip.open(tmp_path / "g.gz", "wb") as f:
        f.write(b"\0" * 10)
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="gzip"):
        T._read_maybe_gz(str(tmp_path / "bad.gz"))


def test_the_hash_of_a_folder_equals_what_the_reference_wrote_for_it(tmp_path):
    """The fixture's hash.txt was written by the reference's own train.py (torchvision reading
    write_cifar10_folder's batches): the same folder loaded here hashes to it."""
    from exactforge.pol import write_cifar10_folder

    here = os.path.dirname(os.path.abspath(__file__))
    fixture = os.path.join(here, "..", "fixtures", "pol", "cifar10_resnet20")
    with open(os.path.join(fixture, "reference_verdicts.json")) as f:
        made = json.load(f)["data"]
    write_cifar10_folder(str(tmp_path), n=made["n"], seed=made["seed"])
    with open(os.path.join(fixture, "proof", "hash.txt")) as f:
        assert reference_data_hash(load_cifar10(str(tmp_path))) == f.read().strip()
