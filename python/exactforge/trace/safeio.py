"""Reading a trace directory as hostile input.

Assumptions, stated once:

* The trace *directory* is the verifier's choice (it may itself be a symbolic link); nothing
  below it is trusted. Only fixed names are ever opened (``manifest.json``,
  ``records/NNNNNNNN.json``, ``checkpoints/NNNNNNNN.safetensors``): no name comes from a file.
* Every component below the directory is opened with ``O_NOFOLLOW`` relative to its parent's
  descriptor, so a symbolic link anywhere (``records -> /``, ``00000003.safetensors ->
  /dev/zero``) fails instead of being followed, and an ``lstat`` before the open refuses FIFOs,
  sockets and devices without opening them (opening a FIFO blocks; opening a device may act).
  The opened descriptor is ``fstat``-ed again and must be the same regular file.
* A file is read only after its size is checked against the limit for what it should hold, and
  never past that limit (a file that grows while being read is refused).
* JSON is parsed with finite numbers only (no NaN, Infinity or 1e400), integers of bounded
  length and bounded nesting. A safetensors checkpoint's header is parsed the same way and
  checked against the tensors the manifest declares before any tensor is decoded.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..data_torchvision import file_kind
from .limits import DEFAULT_LIMITS, Limits

__all__ = [
    "is_sha256",
    "TraceError",
    "read_file",
    "read_json",
    "parse_json",
    "list_names",
    "is_entry",
    "SAFETENSORS_DTYPES",
    "decode_safetensors",
    "tensor_nbytes",
    "digest",
]


class TraceError(ValueError):
    """The directory is not a valid trace (corrupt, tampered with, incomplete or hostile)."""


# The only names a trace reader opens; each is checked before use.
_NAME = re.compile(r"^(manifest\.json|records/[0-9]{8}\.json|checkpoints/[0-9]{8}\.safetensors)$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _open_parent(root: str, rel: str, what: str, missing_ok: bool = False) -> Optional[Tuple[int, str]]:
    """A descriptor of rel's parent directory (root itself, or one level below it, opened
    without following a link) and rel's last component; None for an absent parent when
    ``missing_ok``."""
    try:
        rfd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    except OSError as exc:
        raise TraceError(f"trace: cannot open the directory {root} ({exc.strerror})") from None
    parts = rel.split("/")
    if len(parts) == 1:
        return rfd, parts[0]
    try:
        st = os.stat(parts[0], dir_fd=rfd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise TraceError(f"{what}: {parts[0]}/ is {file_kind(st.st_mode)}, not a directory inside the trace")
        dfd = os.open(parts[0], os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=rfd)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise TraceError(f"{what}: {parts[0]}/ is missing") from None
    except OSError as exc:
        raise TraceError(f"{what}: cannot open {parts[0]}/ ({exc.strerror})") from None
    finally:
        os.close(rfd)
    return dfd, parts[1]


def open_checked(
    root: str,
    rel: str,
    max_bytes: int,
    what: str,
    missing_ok: bool = False,
    names: Any = None,
    error: type = TraceError,
    irregular: Optional[str] = None,
) -> Optional[Tuple[int, int]]:
    """Opens the regular file ``root/rel`` (a fixed trace name, or one ``names`` (a compiled
    pattern) allows) as the trace reader does: not a link, FIFO, device or folder (checked before
    it is opened, and again on the descriptor, so one swapped in between is refused), one name
    only, at most ``max_bytes``. Returns (descriptor, size), the caller closing it; None when it
    is absent and ``missing_ok``. Raises ``error`` (a TraceError); ``irregular`` words the refusal
    of a file that is not regular (default: what it is, and that a trace holds regular files)."""
    if not (names or _NAME).match(rel):
        raise error(f"{what}: {rel!r} is not a trace file name")
    opened = _open_parent(root, rel, what, missing_ok)
    if opened is None:
        return None
    dfd, name = opened
    try:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise error(f"{what}: {rel} is missing") from None
        if not stat.S_ISREG(st.st_mode):
            said = irregular or f"{file_kind(st.st_mode)}; a trace holds regular files only"
            raise error(f"{what}: {rel} is {said}")
        if st.st_size > max_bytes:
            raise error(f"{what}: {rel} has {st.st_size} bytes, more than the {max_bytes} it may hold")
        try:
            fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=dfd)
        except OSError as exc:
            reason = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            raise error(f"{what}: cannot open {rel} ({reason})") from None
    finally:
        os.close(dfd)
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev):
            raise error(f"{what}: {rel} was replaced while being opened")
        if fst.st_nlink != 1:
            # another name of the same file may lie outside the trace (a secret the verifier can
            # read): a trace's files have one name, and its writer never links them
            raise error(f"{what}: {rel} has {fst.st_nlink} hard links; a trace's files have exactly one")
        if fst.st_size > max_bytes:
            raise error(f"{what}: {rel} grew past the {max_bytes} bytes it may hold while being opened")
    except BaseException:
        os.close(fd)
        raise
    return fd, int(fst.st_size)


def read_file(
    root: str, rel: str, max_bytes: int, what: str, missing_ok: bool = False, names: Any = None
) -> Optional[bytearray]:
    """The bytes of the regular file ``root/rel`` (opened by :func:`open_checked`), at most
    ``max_bytes``; None when it is absent and ``missing_ok``. Raises TraceError (never blocks on
    a FIFO, never follows a link, never reads a device)."""
    opened = open_checked(root, rel, max_bytes, what, missing_ok, names)
    if opened is None:
        return None
    fd, size = opened
    try:
        buf = bytearray(min(size, max_bytes) + 1)
        view = memoryview(buf)
        got = 0
        while got < len(buf):
            n = os.readv(fd, [view[got:]])
            if n == 0:
                break
            got += n
        if got > max_bytes:
            raise TraceError(f"{what}: {rel} grew past the {max_bytes} bytes it may hold while being read")
        del view
        del buf[got:]
        return buf
    except OSError as exc:
        raise TraceError(f"{what}: cannot read {rel} ({exc.strerror})") from None
    finally:
        os.close(fd)


def is_entry(root: str, rel: str) -> bool:
    """Whether ``root/rel`` exists (as anything: the reader refuses what is not a regular file).
    A parent folder that is a link or not a folder raises TraceError."""
    opened = _open_parent(root, rel, rel.split("/")[0], missing_ok=True)
    if opened is None:
        return False
    dfd, name = opened
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
        return True
    except OSError:
        return False
    finally:
        os.close(dfd)


def list_names(root: str, sub: str, limits: Limits = DEFAULT_LIMITS) -> Iterator[str]:
    """Names in ``root/sub`` (a directory of the trace, not a link); none when it is absent."""
    try:
        rfd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    except OSError as exc:
        raise TraceError(f"trace: cannot open the directory {root} ({exc.strerror})") from None
    try:
        try:
            st = os.stat(sub, dir_fd=rfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise TraceError(f"{sub}: {sub}/ is {file_kind(st.st_mode)}, not a directory inside the trace")
        dfd = os.open(sub, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=rfd)
    except OSError as exc:
        raise TraceError(f"{sub}: cannot open {sub}/ ({exc.strerror})") from None
    finally:
        os.close(rfd)
    try:
        with os.scandir(dfd) as it:
            for n, entry in enumerate(it):
                if n >= limits.max_directory_entries:
                    raise TraceError(f"{sub}: more than {limits.max_directory_entries} entries")
                yield entry.name
    finally:
        os.close(dfd)


def digest(data: Any) -> str:
    """How an error names content it will not show: its size and the start of its SHA-256."""
    import hashlib

    b = bytes(data)
    return f"{len(b)} bytes, sha256 {hashlib.sha256(b).hexdigest()[:16]}"


# -- JSON ------------------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def parse_json(data: bytes, what: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Strict JSON: finite numbers, integers of at most ``json_int_digits`` digits, nesting at
    most ``json_depth``. Raises TraceError with the reason."""

    def parse_int(s: str) -> int:
        if len(s.lstrip("-")) > limits.json_int_digits:
            raise ValueError(f"an integer of {len(s)} digits")
        return int(s)

    def parse_float(s: str) -> float:
        if len(s) > 64:
            raise ValueError(f"a number of {len(s)} characters")
        v = float(s)
        if not np.isfinite(v):
            raise ValueError("a number that overflows a float")
        return v

    # A file that does not parse may not be what it claims (another file under its name): its
    # content is never echoed, only where it failed and a digest to compare it with.
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TraceError(f"{what}: not UTF-8 at byte {exc.start} ({digest(data)})") from None

    def unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        # two readers of one trace must never see two histories: a repeated key (which one
        # wins depends on the reader) makes the file invalid, at any depth
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise ValueError("an object repeats a key")
        return obj

    try:
        obj = json.loads(
            text,
            parse_int=parse_int,
            parse_float=parse_float,
            parse_constant=_reject_constant,
            object_pairs_hook=unique_keys,
        )
    except RecursionError:
        raise TraceError(f"{what}: JSON nested deeper than {limits.json_depth} levels") from None
    except json.JSONDecodeError as exc:
        at = len(text[: exc.pos].encode("utf-8"))
        raise TraceError(f"{what}: not valid JSON at byte {at}: {exc.msg} ({digest(data)})") from None
    except ValueError as exc:  # the number checks above
        raise TraceError(f"{what}: not valid JSON: {exc} ({digest(data)})") from None
    # the decoder recursed within Python's limit; the declared depth is checked here, iteratively
    stack: List[Tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limits.json_depth:
                raise TraceError(f"{what}: JSON nested deeper than {limits.json_depth} levels")
            stack.extend(
                (v, depth + 1)
                for v in (node.values() if isinstance(node, dict) else node)
                if isinstance(v, (dict, list))
            )
    return obj


def read_json(
    root: str, rel: str, max_bytes: int, what: str, limits: Limits = DEFAULT_LIMITS, missing_ok: bool = False
) -> Optional[Tuple[Dict[str, Any], bytes]]:
    """A JSON object from a trace file, with its raw bytes (for hashing); None when the file is
    absent and ``missing_ok``."""
    data = read_file(root, rel, max_bytes, what, missing_ok)
    if data is None:
        return None
    raw = bytes(data)
    obj = parse_json(raw, f"{what} ({rel})", limits)
    if not isinstance(obj, dict):
        raise TraceError(f"{what}: {rel} must hold a JSON object")
    return obj, raw


# -- safetensors -----------------------------------------------------------------------------
SAFETENSORS_DTYPES: Dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
_NUMPY_TO_ST = {np.dtype(v).str if v != "?" else "|b1": k for k, v in SAFETENSORS_DTYPES.items()}


def dtype_name(dtype: Any) -> str:
    """The safetensors name of a NumPy dtype (F32, ...); ValueError when it has none."""
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    key = dt.str if dt.kind != "b" else "|b1"
    if key not in _NUMPY_TO_ST:
        raise ValueError(f"dtype: {dt} cannot be stored in a trace checkpoint")
    return _NUMPY_TO_ST[key]


def tensor_nbytes(shape: Sequence[int], dtype: str) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize


def decode_safetensors(
    data: bytearray, expected: Mapping[str, Tuple[str, Tuple[int, ...]]], what: str, limits: Limits = DEFAULT_LIMITS
) -> Dict[str, np.ndarray]:
    """The tensors of a safetensors file, which must hold exactly ``expected`` (name -> (dtype,
    shape)) with contiguous, non-overlapping data covering the rest of the file. Arrays are
    views of ``data`` (no copy), little-endian, writable."""
    if len(data) < 8:
        raise TraceError(f"{what}: shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > limits.safetensors_header_bytes or 8 + n > len(data):
        raise TraceError(
            f"{what}: safetensors header of {n} bytes does not fit the file (at most {limits.safetensors_header_bytes})"
        )
    header = parse_json(bytes(data[8 : 8 + n]).rstrip(b" "), f"{what} header", limits)
    if not isinstance(header, dict):
        raise TraceError(f"{what}: the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise TraceError(f"{what}: malformed safetensors metadata")
    if set(header) != set(expected):
        extra, missing = sorted(set(header) - set(expected))[:5], sorted(set(expected) - set(header))[:5]
        raise TraceError(
            f"{what}: holds tensors {'+' + str(extra) if extra else ''}"
            f"{' -' + str(missing) if missing else ''} other than the manifest declares"
        )
    body = memoryview(data)[8 + n :]
    spans = []
    out: Dict[str, np.ndarray] = {}
    for name, (dt, shape) in expected.items():
        ent = header[name]
        if not isinstance(ent, dict) or set(ent) != {"dtype", "shape", "data_offsets"}:
            raise TraceError(f"{what}: malformed entry for tensor {name!r}")
        # type() is int, not isinstance: JSON true would otherwise pass as 1 (and false as 0)
        if (
            ent["dtype"] != dt
            or not isinstance(ent["shape"], list)
            or not all(type(v) is int for v in ent["shape"])
            or ent["shape"] != list(shape)
        ):
            raise TraceError(
                f"{what}: tensor {name!r} is {ent['dtype']} {ent['shape']}, the manifest declares {dt} {list(shape)}"
            )
        off = ent["data_offsets"]
        if (
            not isinstance(off, list)
            or len(off) != 2
            or not all(type(o) is int for o in off)
            or not 0 <= off[0] <= off[1] <= len(body)
            or off[1] - off[0] != tensor_nbytes(shape, dt)
        ):
            raise TraceError(f"{what}: tensor {name!r} has invalid data offsets {off}")
        spans.append((off[0], off[1]))
        arr = np.frombuffer(
            body, dtype=SAFETENSORS_DTYPES[dt], count=int(np.prod(shape, dtype=np.int64)), offset=off[0]
        )
        out[name] = arr.reshape(tuple(shape))
    spans.sort()
    pos = 0
    for a, b in spans:
        if a != pos:
            raise TraceError(f"{what}: tensor data overlaps or leaves gaps")
        pos = b
    if pos != len(body):
        raise TraceError(f"{what}: {len(body) - pos} bytes after the last tensor")
    return out


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def is_sha256(v: Any) -> bool:
    """A SHA-256 digest as the trace writes it: 64 lowercase hex digits."""
    return isinstance(v, str) and bool(_HEX64.match(v))
