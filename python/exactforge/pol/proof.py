"""A proof of the Proof-of-Learning reference implementation, read as hostile input.

The reference (``train.py`` of cleverhans-lab/Proof-of-Learning) writes a folder holding
``indices.npy`` (steps x batch size: the data indices of every step), ``hash.txt`` (SHA-256 of
the training set's elements' text) and ``model_step_<i>`` for i = 0, k, 2k, ... and the last
step: each a ``torch.save`` of ``{'net': state_dict, 'optimizer': state_dict, 'scheduler':
state_dict}``, where ``model_step_i`` holds the weights after i steps.

``torch.save`` files are pickles, and unpickling runs whatever code the file names. A
checkpoint is read here with torch's restricted unpickler (``weights_only=True``: tensors,
numbers, strings and containers, no other object is ever constructed, so a file that would run
code is refused before anything runs), then its structure is checked: a state dict of finite
tensors, an optimizer state of tensors and numbers, a scheduler state of numbers. Every file is
opened as the trace reader opens its own (no links, no devices, bounded sizes); a checkpoint is
streamed from the file into its tensors, so reading it takes about its own size in memory.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..trace.limits import DEFAULT_LIMITS, Limits
from ..trace.safeio import TraceError, open_checked, read_file

__all__ = [
    "Proof",
    "read_proof",
    "read_checkpoint",
    "ProofError",
    "checkpoint_steps",
    "checkpoint_files",
    "save_frequency",
]

_NAMES = re.compile(r"^(indices\.npy|hash\.txt|model_step_[0-9]{1,9})$")
_STEP_NAME = re.compile(r"^model_step_(0|[1-9][0-9]{0,8})$")  # as the reference writes them: no leading zeros
_MAX_INDICES = 1 << 28  # bytes of indices.npy (32M int64 indices)
_MAX_INDEX = 1 << 62  # beyond any data set; keeps every index an int64 without wrapping


class ProofError(TraceError):
    """The folder is not a readable Proof-of-Learning proof (missing, malformed or hostile)."""


@dataclass(frozen=True)
class Proof:
    """What a proof folder holds besides its checkpoints."""

    directory: str
    indices: np.ndarray  # (steps, batch_size) int64
    data_hash: Optional[str]  # hash.txt, if present

    @property
    def steps(self) -> int:
        return int(self.indices.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.indices.shape[1])


def checkpoint_steps(steps: int, save_freq: int) -> List[int]:
    """The steps the reference saves: every ``save_freq``-th step before training on it, and
    the last."""
    return sorted(set(range(0, steps, save_freq)) | {steps})


def read_proof(directory: str, limits: Limits = DEFAULT_LIMITS) -> Proof:
    """``indices.npy`` (no pickle: an integer array of two dimensions) and ``hash.txt``."""
    raw = read_file(directory, "indices.npy", _MAX_INDICES, "proof", names=_NAMES)
    assert raw is not None  # missing_ok is False
    idx = _npy(raw)
    if idx.ndim != 2 or idx.size == 0:
        raise ProofError(f"proof: indices.npy must be an array (steps, batch size), got shape {list(idx.shape)}")
    if idx.shape[1] > limits.max_batch:
        raise ProofError(f"proof: indices.npy holds batches of {idx.shape[1]}, over the {limits.max_batch} allowed")
    # compared as Python integers: a uint64 index past 2^63 would wrap negative as an int64
    low, high = int(idx.min()), int(idx.max())
    if low < 0 or high > _MAX_INDEX:
        raise ProofError(f"proof: indices.npy holds the index {low if low < 0 else high}, not a data set position")
    text = read_file(directory, "hash.txt", 1024, "proof", missing_ok=True, names=_NAMES)
    data_hash = None
    if text is not None:
        data_hash = bytes(text).decode("ascii", "replace").strip()
        if not re.fullmatch(r"[0-9a-f]{64}", data_hash):
            raise ProofError("proof: hash.txt must hold one SHA-256 hex digest")
    return Proof(directory, np.ascontiguousarray(idx.astype(np.int64)), data_hash)


def _npy(raw: bytearray) -> np.ndarray:
    """The integer array of a ``.npy`` file, read from its header and the bytes after it only
    (``np.load`` would allocate whatever size a hostile header declares, and returns an
    archive, not an array, for an ``.npz`` file)."""
    if bytes(raw[:4]) == b"PK\x03\x04":
        raise ProofError("proof: indices.npy is a zip archive (an .npz of several arrays), not one .npy array")
    f = io.BytesIO(bytes(raw[:70000]))  # the header only: at most 65,535 bytes after the magic
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"format version {version[0]}.{version[1]} is not 1.0 or 2.0")
    except Exception as exc:  # noqa: BLE001  (numpy's header parser raises many kinds on hostile text)
        raise ProofError(f"proof: indices.npy is not a numpy array file ({_first_line(exc)})") from None
    if dtype.hasobject or dtype.kind not in "iu":
        raise ProofError(f"proof: indices.npy must hold integers, not {dtype} (a pickled array is never loaded)")
    count = math.prod(int(s) for s in shape)
    offset = f.tell()
    if count * dtype.itemsize != len(raw) - offset:
        raise ProofError(
            f"proof: indices.npy declares {list(shape)} {dtype} ({count * dtype.itemsize} bytes), its file holds "
            f"{len(raw) - offset} bytes after the header"
        )
    return np.frombuffer(raw, dtype, count, offset).reshape(shape, order="F" if fortran else "C")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _torch_reason(exc: BaseException) -> str:
    """What torch's refusal says about the file: its weights-only unpickler's line (the global
    the file names), in full, without the advice around it (reloading with
    ``weights_only=False`` or allowlisting the global would run the proof's code); otherwise
    its first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(" Please use ", 1)[0]
    return _first_line(exc)


def checkpoint_files(directory: str, limits: Limits = DEFAULT_LIMITS) -> Tuple[List[int], List[str]]:
    """The steps of the folder's ``model_step_<i>`` files, and the other names that start with
    ``model_step_`` (a leading zero, a suffix: nothing the reference writes, never read)."""
    steps: List[int] = []
    other: List[str] = []
    try:
        with os.scandir(directory) as entries:
            for n, entry in enumerate(entries):
                if n >= limits.max_directory_entries:
                    raise ProofError(f"proof: the folder holds more than {limits.max_directory_entries} entries")
                if _STEP_NAME.match(entry.name):
                    steps.append(int(entry.name[len("model_step_") :]))
                elif entry.name.startswith("model_step_"):
                    other.append(entry.name)
    except OSError as exc:
        raise ProofError(f"proof: cannot list the folder {directory} ({exc.strerror})") from None
    return sorted(steps), sorted(other)


def save_frequency(found: List[int], steps: int, given: Optional[int] = None) -> int:
    """The checkpoint interval k the names ``found`` were saved with (0, k, 2k, ..., ``steps``):
    ``given`` if it is the same; ProofError naming the files where no k fits them, ValueError
    naming save_freq where ``given`` is another."""

    def names(xs: Any) -> str:
        xs = sorted(xs)
        return ", ".join(f"model_step_{s}" for s in xs[:6]) + (f" and {len(xs) - 6} more" if len(xs) > 6 else "")

    have = set(found)
    ends = [s for s in (0, steps) if s not in have]
    if ends:
        raise ProofError(
            f"proof: {names(ends)} is missing (the reference saves one before the first step and one after the last)"
        )
    inner = sorted(s for s in have if 0 < s < steps)
    k = inner[0] if inner else max(steps, 1)
    want = set(checkpoint_steps(steps, k))
    if have != want:
        missing, extra = sorted(want - have), sorted(have - want)
        parts = [f"{names(missing)} {'is' if len(missing) == 1 else 'are'} missing"] if missing else []
        parts += [f"{names(extra)} {'does' if len(extra) == 1 else 'do'} not fit it"] if extra else []
        raise ProofError(
            f"proof: its checkpoints are not those of one save frequency: model_step_{k} says every {k} steps, "
            f"but {' and '.join(parts)}"
        )
    if given is not None and set(checkpoint_steps(steps, given)) != have:
        absent = sorted(set(checkpoint_steps(steps, given)) - have)
        raise ValueError(
            f"save_freq: {given} given, but the proof's checkpoints are every {k} steps"
            + (f" ({names(absent)} {'does' if len(absent) == 1 else 'do'} not exist)" if absent else "")
            + "; leave it out to use the proof's"
        )
    return k


def read_checkpoint(directory: str, step: int, limits: Limits = DEFAULT_LIMITS) -> Dict[str, Any]:
    """``model_step_<step>``: ``{'net': {name: tensor}, 'optimizer': {...}, 'scheduler': {...}}``
    with a DataParallel model's ``module.`` prefix removed. Refused (ProofError) if it names
    anything but tensors, numbers, strings and containers, has another structure, or holds a
    weight that is NaN or infinite."""
    import torch

    name = f"model_step_{step}"
    with _open(directory, name, limits.max_checkpoint_bytes + (1 << 20)) as f:
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)  # type: ignore[arg-type]  # a file object
        except Exception as exc:  # noqa: BLE001  (a hostile file fails in any of torch's parsers: all are refusals)
            raise ProofError(
                f"proof: {name} is not a checkpoint of tensors and numbers; it was not unpickled "
                f"(torch's weights-only reader refused it: {_torch_reason(exc)})"
            ) from None
    return _checked(obj, name)


class _Stream(io.RawIOBase):
    """An opened checkpoint that torch reads each tensor from straight into the tensor (a
    buffer of the whole file would double the memory a checkpoint takes), never past the size
    it had when it was checked (a file that grows meanwhile is read as it was)."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self._fd, self._size, self._pos = fd, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = max(0, pos if whence == 0 else self._pos + pos if whence == 1 else self._size + pos)
        return self._pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        os.lseek(self._fd, self._pos, os.SEEK_SET)
        got = os.readv(self._fd, [memoryview(b).cast("B")[:n]])
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _open(directory: str, name: str, max_bytes: int) -> _Stream:
    """``directory/name`` opened as the trace reader opens a file (safeio.open_checked: no link,
    FIFO, device or folder, one name only, at most ``max_bytes``), as a stream torch can read."""
    opened = open_checked(
        directory,
        name,
        max_bytes,
        "proof",
        names=_NAMES,
        error=ProofError,
        irregular="a link, device, FIFO or folder; a proof holds regular files only",
    )
    assert opened is not None  # missing_ok is False
    return _Stream(*opened)


def _checked(obj: Any, name: str) -> Dict[str, Any]:
    import torch

    if not isinstance(obj, dict) or "net" not in obj or not set(obj) <= {"net", "optimizer", "scheduler"}:
        raise ProofError(f"proof: {name} must be a dict of 'net', 'optimizer' and 'scheduler'")
    net = obj["net"]
    if not isinstance(net, dict) or not net:
        raise ProofError(f"proof: {name}: 'net' must be a state dict")
    state: Dict[str, Any] = {}
    for k, v in net.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise ProofError(f"proof: {name}: 'net' must map names to tensors")
        _finite(v, f"{name}: the tensor {k!r}")
        state[k[7:] if k.startswith("module.") else k] = v
    out: Dict[str, Any] = {"net": state}
    opt = obj.get("optimizer")
    if opt is not None:
        if not isinstance(opt, dict) or set(opt) != {"state", "param_groups"} or not isinstance(opt["state"], dict):
            raise ProofError(f"proof: {name}: 'optimizer' must be an optimizer state dict")
        for i, st in opt["state"].items():
            if not isinstance(i, int) or not isinstance(st, dict):
                raise ProofError(f"proof: {name}: the optimizer's state must map parameter positions to tensors")
            for key, v in st.items():
                if not isinstance(key, str) or not isinstance(v, (torch.Tensor, int, float)):
                    raise ProofError(f"proof: {name}: the optimizer's state holds {type(v).__name__}")
                if isinstance(v, torch.Tensor):
                    _finite(v, f"{name}: the optimizer's {key} of parameter {i}")
        _plain(opt["param_groups"], f"{name}: the optimizer's param_groups")
        out["optimizer"] = opt
    if obj.get("scheduler") is not None:
        _plain(obj["scheduler"], f"{name}: 'scheduler'")
        out["scheduler"] = obj["scheduler"]
    return out


def _finite(v: Any, what: str) -> None:
    """Weights that are NaN or infinite replay to NaN, whose distances compare as neither
    over nor under epsilon: refused before any replay."""
    import torch

    if not v.numel() or not (v.is_floating_point() or v.is_complex()):
        return
    if v.is_complex():
        v = torch.view_as_real(v)
    # the extremes propagate NaN and hold any infinity, without a temporary of the tensor's size
    try:
        low, high = (float(x) for x in torch.aminmax(v.reshape(-1)))
    except RuntimeError:  # a dtype without the reduction (float8): checked in float32
        low = high = 0.0 if bool(torch.isfinite(v.float()).all()) else math.nan
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ProofError(f"proof: {what} holds NaN or infinite values")


def _plain(v: Any, what: str, depth: int = 0) -> None:
    """Numbers, strings, booleans, None, and lists and dicts of them (bounded nesting)."""
    if depth > 8:
        raise ProofError(f"proof: {what} is nested too deep")
    if v is None or isinstance(v, (bool, int, str)):
        return
    if isinstance(v, float):
        if math.isnan(v):
            raise ProofError(f"proof: {what} holds NaN")
        return
    if isinstance(v, (list, tuple)):
        for x in v:
            _plain(x, what, depth + 1)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            _plain(k, what, depth + 1)
            _plain(x, what, depth + 1)
        return
    raise ProofError(f"proof: {what} holds {type(v).__name__}, not numbers")
