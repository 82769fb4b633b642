"""The data files a torchvision user holds, read as untrusted input.

* CIFAR-10 from its binary version (``data_batch_1.bin`` ...: 1 label byte and 3072 pixel bytes
  per record) or its Python version, the folder torchvision downloads (``cifar-10-batches-py``:
  ``data_batch_1`` ... ``data_batch_5``, ``test_batch``); CIFAR-100 from ``cifar-100-python``
  (``train``, ``test``; the fine labels, as torchvision's ``CIFAR100``). Each folder may be
  given itself or by its parent, torchvision's ``root``.
* MNIST's IDX files (``train-images-idx3-ubyte[.gz]`` ...) in the given folder, in
  ``<root>/MNIST/raw`` or in ``<root>/raw``.

The Python version is pickled, and unpickling runs whatever the file names. Here it is read by
an unpickler that knows four names: numpy's ``_reconstruct``, ``ndarray`` and ``dtype`` (how
numpy pickles an array) and ``_codecs.encode`` (how Python 3 writes bytes at protocol 2). None
of them is the real callable: each builds an inert record, and an array is made from a record
only after its dtype (integers, never objects), shape and byte count are checked. Every other
name is refused before anything is called.

Files are opened without blocking (a FIFO is refused, not waited on), must be regular files of
bounded size, and gzip is decompressed to a bounded size. Malformed files raise ValueError
starting with ``data_path:`` and naming the file; missing ones FileNotFoundError.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import pickletools
import re
import stat
import warnings
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "MAX_FILE_BYTES",
    "file_kind",
    "open_regular",
    "read_regular",
    "load_cifar",
    "load_mnist_idx",
    "read_cifar_pickle",
]

# The largest real file is CIFAR-100's train (50,000 x 3072 pixels, about 155 MB).
MAX_FILE_BYTES = 256 << 20
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_PIXELS = 3072
_CIFAR = {
    # name: (folder torchvision downloads, train files in torchvision's order, test file, label key, classes)
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "labels", 10),
    "cifar100": ("cifar-100-python", ("train",), "test", "fine_labels", 100),
}


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words, from its ``st_mode``: the one
    wording of every refusal of a FIFO, device, socket, directory or link as a data or trace file."""
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, argument: str = "data_path", max_bytes: Optional[int] = None) -> BinaryIO:
    """The regular file ``path`` (a link to one is followed) opened for binary reading; with
    ``max_bytes``, one of at most that many bytes. A FIFO, socket, device or directory is refused
    before it is opened (opening a FIFO would wait for a writer, reading a device may never end),
    and again by the opened descriptor's fstat, so one swapped in between is refused too
    (O_NONBLOCK: never waits). Refusals are ValueErrors starting with ``argument``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{argument}: {path} not found") from None
    except OSError as exc:
        raise ValueError(f"{argument}: cannot open {path} ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(
            f"{argument}: {path} is {file_kind(st.st_mode)}; data files must be regular files: give the path of the file itself"
        )
    if max_bytes is not None and st.st_size > max_bytes:
        raise ValueError(f"{argument}: {path} has {st.st_size} bytes, more than the {max_bytes} a data file may have")
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    except OSError as exc:
        raise ValueError(f"{argument}: cannot open {path} ({exc.strerror})") from None
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev):
            raise ValueError(f"{argument}: {path} was replaced while being opened")
        if _NONBLOCK:
            os.set_blocking(fd, True)  # a regular file never blocks; buffered readers want plain reads
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str, max_bytes: Optional[int] = None) -> bytes:
    """The bytes of the regular file ``path`` (open_regular's checks), at most ``max_bytes``
    (default MAX_FILE_BYTES)."""
    if max_bytes is None:
        max_bytes = MAX_FILE_BYTES
    with open_regular(path, "data_path", max_bytes) as f:
        try:
            chunks: List[bytes] = []
            got = 0
            while got <= max_bytes:
                b = f.read(min(1 << 24, max_bytes + 1 - got))
                if not b:
                    break
                chunks.append(b)
                got += len(b)
        except OSError as exc:
            raise ValueError(f"data_path: cannot read {path} ({exc.strerror})") from None
    if got > max_bytes:
        raise ValueError(f"data_path: {path} grew past {max_bytes} bytes while being read")
    return b"".join(chunks)


def _read_maybe_gz(path: str) -> bytes:
    raw = read_regular(path)
    if not path.endswith(".gz"):
        return raw
    limit = MAX_FILE_BYTES
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            out = f.read(limit + 1)
    except (OSError, EOFError, ValueError) as exc:
        raise ValueError(f"data_path: {path} is not a readable gzip file ({exc})") from None
    if len(out) > limit:
        raise ValueError(f"data_path: {path} decompresses to more than {limit} bytes")
    return out


def _exists(path: str) -> bool:
    # lexists: a FIFO or a dangling link under a data file's name is that file, refused when read
    return os.path.lexists(path) and not os.path.isdir(path)


# -- MNIST -------------------------------------------------------------------------------------
def _idx_names(stem: str) -> Tuple[str, ...]:
    dotted = stem.replace("-idx", ".idx")
    return (stem, stem + ".gz", dotted, dotted + ".gz")


def _mnist_folder(path: str, stem: str) -> str:
    """The folder among ``path``, ``path/raw`` (torchvision's ``<root>/MNIST``) and
    ``path/MNIST/raw`` (its root) that holds ``stem``, in that order."""
    for folder in (path, os.path.join(path, "raw"), os.path.join(path, "MNIST", "raw")):
        if any(_exists(os.path.join(folder, n)) for n in _idx_names(stem)):
            return folder
    raise FileNotFoundError(
        f"data_path: {stem}[.gz] not found in {path}, {os.path.join(path, 'raw')} "
        f"or {os.path.join(path, 'MNIST', 'raw')} (torchvision's root)"
    )


def _read_idx(folder: str, stem: str, dims_after: Tuple[int, ...]) -> np.ndarray:
    path = next((p for p in (os.path.join(folder, n) for n in _idx_names(stem)) if _exists(p)), None)
    if path is None:
        raise FileNotFoundError(f"data_path: {stem}[.gz] not found in {folder}")
    raw = _read_maybe_gz(path)
    ndim = 1 + len(dims_after)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"data_path: {path} is not an IDX file of unsigned bytes")
    if raw[3] != ndim:
        raise ValueError(f"data_path: {path} has {raw[3]} dimensions, expected {ndim}")
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"data_path: {path} is truncated (its header)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != dims_after:
        raise ValueError(f"data_path: {path} holds items of shape {dims[1:]}, expected {dims_after}")
    want = dims[0] * int(np.prod(dims_after, dtype=np.int64))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != want:
        what = "truncated" if data.size < want else "longer than its header says"
        raise ValueError(f"data_path: {path} is {what} ({data.size} of {want} bytes)")
    return data.reshape(dims)


def load_mnist_idx(path: str, split: str = "train") -> Tuple[np.ndarray, np.ndarray]:
    """MNIST's images (n x 28 x 28 uint8, torchvision's ``.data``) and labels (n, int64)."""
    prefix = "train" if split == "train" else "t10k"
    folder = _mnist_folder(path, f"{prefix}-images-idx3-ubyte")
    imgs = _read_idx(folder, f"{prefix}-images-idx3-ubyte", (28, 28))
    labels = _read_idx(folder, f"{prefix}-labels-idx1-ubyte", ())
    if len(imgs) != len(labels):
        raise ValueError(f"data_path: MNIST images and labels in {folder} differ in count")
    if labels.size and labels.max() > 9:
        raise ValueError(f"data_path: MNIST labels in {folder} must be 0..9, found {int(labels.max())}")
    return imgs, labels.astype(np.int64)


# -- the restricted unpickler ------------------------------------------------------------------
class _NdarrayName:
    """What the name numpy.ndarray stands for: only a marker _reconstruct accepts."""


class _ArrayRecord:
    """An array as the pickle describes it; made into one by _array after every check."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DtypeRecord:
    """A dtype as the pickle describes it (its arguments and state), never numpy's own."""

    # class defaults: NEWOBJ makes an instance without calling __init__
    args: Tuple[Any, ...] = ()
    state: Any = None

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _reconstruct(cls: Any, *args: Any) -> _ArrayRecord:
    if cls is not _NdarrayName:
        raise pickle.UnpicklingError("_reconstruct builds numpy arrays only")
    return _ArrayRecord()


def _latin1(text: Any, encoding: Any = "utf-8", *args: Any) -> bytes:
    # Python 3 writes bytes at protocol 2 as _codecs.encode(text, "latin1"); nothing else is meant
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or args not in ((), ("strict",)):
        raise pickle.UnpicklingError("_codecs.encode is allowed only as Python's latin-1 encoding of bytes")
    return text.encode("latin-1")


_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): _DtypeRecord,
    ("_codecs", "encode"): _latin1,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it names {module[:60]}.{name[:60]}, which a CIFAR pickle never needs")
        return found


# A CIFAR-100 train file (50,000 images, 100,000 labels and 50,000 file names) is about 600,000
# opcodes when Python 3 writes it at protocol 2; the files torchvision downloads fewer.
MAX_PICKLE_OPS = 2_000_000
_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")
# persistent ids, the extension registry and out-of-band buffers: no CIFAR pickle uses them
_NEVER = ("PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER")


def _prescan(raw: bytes) -> None:
    """Walks the opcodes without running them and refuses what would make the unpickler itself
    allocate far beyond the file: a memo index the file has not reached (CPython's unpickler grows
    its memo to the index and clears it, gigabytes for one opcode) or a length past the end."""
    puts = 0
    with warnings.catch_warnings():
        # pickletools decodes protocol 0's escaped strings and warns about bad escapes in them
        warnings.simplefilter("ignore", DeprecationWarning)
        for n, (op, arg, _) in enumerate(pickletools.genops(io.BytesIO(raw))):
            if n >= MAX_PICKLE_OPS:
                raise pickle.UnpicklingError(f"more than {MAX_PICKLE_OPS} opcodes, more than a CIFAR batch has")
            if op.name in _PUTS:
                # Python 2's cPickle numbers its memo from 1, Python 3 from 0
                if not isinstance(arg, int) or not 0 <= arg <= puts + 1:
                    raise pickle.UnpicklingError(f"{op.name} to memo index {str(arg)[:20]} after {puts} entries")
                puts += 1
            elif op.name == "MEMOIZE":
                puts += 1
            elif op.name in _NEVER:
                raise pickle.UnpicklingError(f"opcode {op.name}, which a CIFAR pickle never holds")


def _text(v: Any) -> Optional[str]:
    if isinstance(v, bytes):
        return v.decode("latin-1")
    return v if isinstance(v, str) else None


_INT_CODE = re.compile(r"^[|<>=]?[iu][1248]$")


def _dtype(rec: Any, where: str) -> np.dtype:
    if not isinstance(rec, _DtypeRecord) or not rec.args:
        raise ValueError(f"{where}: its array has no dtype")
    code = _text(rec.args[0])
    if code is None:
        raise ValueError(f"{where}: its array's dtype is not named")
    if code.lstrip("|<>=").startswith("O") or code == "object":
        raise ValueError(f"{where}: its array has object dtype (objects are never unpickled)")
    if not _INT_CODE.match(code):
        raise ValueError(f"{where}: its array has dtype {code[:20]!r}; only integer dtypes are read")
    order = "|"
    if rec.state is not None:
        s = rec.state
        # (version, byte order, subarray, names, fields, ...): a plain dtype has no subarray or fields
        if not isinstance(s, tuple) or len(s) < 5 or any(v is not None for v in s[2:5]):
            raise ValueError(f"{where}: its array's dtype is not a plain integer type")
        order = _text(s[1]) or ""
        if order not in ("|", "<", ">", "="):
            raise ValueError(f"{where}: its array's dtype has byte order {order[:5]!r}")
    dt = np.dtype(code)
    if dt.itemsize > 1 and order in ("<", ">"):
        dt = dt.newbyteorder("<" if order == "<" else ">")
    return dt


def _array(rec: Any, where: str) -> np.ndarray:
    """The array an _ArrayRecord describes, after checking its parts against each other."""
    if not isinstance(rec, _ArrayRecord):
        raise ValueError(f"{where}: not a numpy array")
    s = rec.state
    if isinstance(s, tuple) and len(s) == 5 and type(s[0]) is int:
        s = s[1:]
    if not isinstance(s, tuple) or len(s) != 4:
        raise ValueError(f"{where}: not a numpy array's state")
    shape, dt, fortran, raw = s
    if type(fortran) not in (bool, int):
        raise ValueError(f"{where}: the array's memory order is not a flag")
    if not (isinstance(shape, tuple) and 1 <= len(shape) <= 2 and all(type(d) is int and d >= 0 for d in shape)):
        raise ValueError(f"{where}: an array whose shape is not one or two sizes")
    dtype = _dtype(dt, where)
    if not isinstance(raw, (bytes, bytearray)):
        raise ValueError(f"{where}: the array's data is not bytes")
    count = 1
    for d in shape:
        count *= d
    if count * dtype.itemsize != len(raw):
        raise ValueError(f"{where}: the array's data has {len(raw)} bytes, its shape and dtype say otherwise")
    flat = np.frombuffer(raw if isinstance(raw, bytes) else bytes(raw), dtype=dtype)
    return flat.reshape(shape, order="F") if fortran else flat.reshape(shape)


def read_cifar_pickle(path: str, label_key: str, classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """A CIFAR batch of the Python version: its pixels (n x 3072 uint8, each row the R, G and B
    32x32 planes) and labels (n, int64, each in 0..classes-1)."""
    raw = read_regular(path)
    try:
        _prescan(raw)
        obj = _Unpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - hostile bytes reach every opcode's own error; each means "not a CIFAR pickle"
        raise ValueError(f"data_path: {path} is not a CIFAR pickle: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"data_path: {path} does not hold a dict (a CIFAR batch is one)")
    entries = {}
    for k, v in obj.items():
        key = _text(k)
        if key is not None:
            entries[key] = v
    where = f"data_path: {path}"
    if "data" not in entries or label_key not in entries:
        raise ValueError(f"{where} has no 'data' and '{label_key}' (keys: {sorted(entries)[:8]})")
    data = _array(entries["data"], f"{where} 'data'")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS or not data.shape[0]:
        raise ValueError(f"{where} 'data' is {data.dtype} {data.shape}, expected uint8 (n, {_PIXELS})")
    labels = entries[label_key]
    if isinstance(labels, _ArrayRecord):
        y = _array(labels, f"{where} '{label_key}'")
        if y.ndim != 1:
            raise ValueError(f"{where} '{label_key}' is not one label per image")
    elif isinstance(labels, list) and all(type(v) is int for v in labels):
        if any(not 0 <= v < classes for v in labels):
            raise ValueError(f"{where} '{label_key}' must be 0..{classes - 1}")
        y = np.array(labels, dtype=np.int64)
    else:
        raise ValueError(f"{where} '{label_key}' is not a list of integers")
    if len(y) != len(data):
        raise ValueError(f"{where} has {len(data)} images and {len(y)} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"{where} '{label_key}' must be 0..{classes - 1}")
    return data, y.astype(np.int64)


# -- CIFAR folders -----------------------------------------------------------------------------
def _read_cifar_bin(files: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for fn in files:
        raw = np.frombuffer(read_regular(fn), dtype=np.uint8)
        if raw.size % (_PIXELS + 1):
            raise ValueError(f"data_path: {fn} is not a whole number of 3073-byte records")
        rec = raw.reshape(-1, _PIXELS + 1)
        ys.append(rec[:, 0].astype(np.int64))
        xs.append(rec[:, 1:])
        if ys[-1].size and ys[-1].max() > 9:
            raise ValueError(f"data_path: {fn}: CIFAR-10 labels must be 0..9")
    return np.concatenate(xs), np.concatenate(ys)


def _locate(path: str, name: str, split: str) -> Tuple[str, str, List[str]]:
    """(format, folder, files): the binary batches in ``path`` or in ``cifar-10-batches-bin``
    below it, or the pickles in ``path`` or in the folder torchvision downloads below it."""
    folder_py, train, test, _, _ = _CIFAR[name]
    pickles = list(train) if split == "train" else [test]
    candidates: List[Tuple[str, str]] = []
    if name == "cifar10":
        candidates.append(("bin", path))
    candidates += [("py", path), ("py", os.path.join(path, folder_py))]
    if name == "cifar10":
        candidates.append(("bin", os.path.join(path, "cifar-10-batches-bin")))
    for fmt, folder in candidates:
        names = [n + ".bin" for n in pickles] if fmt == "bin" else pickles
        present = [os.path.join(folder, n) for n in names if _exists(os.path.join(folder, n))]
        if present:
            if fmt == "py" and split == "train" and not _exists(os.path.join(folder, pickles[0])):
                # a subset is read in torchvision's order, which starts with data_batch_1
                found = ", ".join(os.path.basename(p) for p in present)
                raise FileNotFoundError(
                    f"data_path: {os.path.join(folder, pickles[0])} not found (the folder holds {found}); "
                    f"the training batches are read from {pickles[0]} on"
                )
            return fmt, folder, present
    if name == "cifar10":
        want = (
            f"the binary batches ({'data_batch_1' if split == 'train' else 'test_batch'}.bin, ...), "
            f"or the Python version's {folder_py} folder ({pickles[0]}, ...) or its parent"
        )
    else:
        want = f"the Python version's {folder_py} folder ({pickles[0]}, ...) or its parent"
    raise FileNotFoundError(f"data_path: no {name.upper().replace('CIFAR', 'CIFAR-')} files in {path}; expected {want}")


def load_cifar(path: str, name: str = "cifar10", split: str = "train") -> Tuple[np.ndarray, np.ndarray]:
    """A CIFAR split as (pixels n x 3072 uint8, labels n int64) from the batches present, in
    torchvision's order (data_batch_1 ... data_batch_5): a subset of the batches loads as it is,
    but data_batch_1 must be among them."""
    if name not in _CIFAR:
        raise ValueError(f"dataset: expected one of {sorted(_CIFAR)}, got {name!r}")
    fmt, _, files = _locate(path, name, split)
    if fmt == "bin":
        return _read_cifar_bin(files)
    _, _, _, key, classes = _CIFAR[name]
    parts = [read_cifar_pickle(f, key, classes) for f in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
