"""A proof of the Proof-of-Learning reference implementation, read as hostile input.

The reference (``train.py`` of cleverhans-lab/Proof-of-Learning) writes a folder holding
``indices.npy`` (steps x batch size: the data indices of every step), ``hash.txt`` (SHA-256 of
the training set's elements' text) and ``model_step_<i>`` for i = 0, k, 2k, ... and the last
step: each a ``torch.save`` of ``{'net': state_dict, 'optimizer': state_dict, 'scheduler':
state_dict}``, where ``model_step_i`` holds the weights after i steps.

``torch.save`` files are pickles, and unpickling runs whatever code the file names. A
checkpoint is read here with torch's restricted unpickler (``weights_only=True``: tensors,
numbers, strings and containers, no other object is ever constructed, so a file that would run
code is refused before anything runs), then its structure is checked: a state dict of tensors,
an optimizer state of tensors and numbers, a scheduler state of numbers. Every file is opened as
the trace reader opens its own (no links, no devices, bounded sizes).
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from ..trace.limits import DEFAULT_LIMITS, Limits
from ..trace.safeio import TraceError, read_file

__all__ = ["Proof", "read_proof", "read_checkpoint", "ProofError", "checkpoint_steps"]

_NAMES = re.compile(r"^(indices\.npy|hash\.txt|model_step_[0-9]{1,9})$")
_MAX_INDICES = 1 << 28  # bytes of indices.npy (32M int64 indices)


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
    try:
        idx = np.load(io.BytesIO(bytes(raw)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ProofError(f"proof: indices.npy is not a numpy array file ({str(exc)[:80]})") from None
    if idx.ndim != 2 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ProofError(
            f"proof: indices.npy must be an integer array (steps, batch size), got {idx.dtype} {list(idx.shape)}"
        )
    if idx.shape[1] > limits.max_batch or idx.min() < 0:
        raise ProofError(f"proof: indices.npy holds batches over {limits.max_batch} or negative indices")
    text = read_file(directory, "hash.txt", 1024, "proof", missing_ok=True, names=_NAMES)
    data_hash = None
    if text is not None:
        data_hash = bytes(text).decode("ascii", "replace").strip()
        if not re.fullmatch(r"[0-9a-f]{64}", data_hash):
            raise ProofError("proof: hash.txt must hold one SHA-256 hex digest")
    return Proof(directory, np.ascontiguousarray(idx.astype(np.int64)), data_hash)


def read_checkpoint(directory: str, step: int, limits: Limits = DEFAULT_LIMITS) -> Dict[str, Any]:
    """``model_step_<step>``: ``{'net': {name: tensor}, 'optimizer': {...}, 'scheduler': {...}}``
    with a DataParallel model's ``module.`` prefix removed. Refused (ProofError) if it names
    anything but tensors, numbers, strings and containers, or has another structure."""
    import torch

    name = f"model_step_{step}"
    raw = read_file(directory, name, limits.max_checkpoint_bytes + (1 << 20), "proof", names=_NAMES)
    assert raw is not None
    try:
        obj = torch.load(io.BytesIO(bytes(raw)), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (a hostile file fails in any of torch's parsers: all are refusals)
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ProofError(
            f"proof: {name} is not a checkpoint of tensors and numbers; it was not unpickled "
            f"(torch's weights-only reader refused it: {first})"
        ) from None
    return _checked(obj, name)


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
        _plain(opt["param_groups"], f"{name}: the optimizer's param_groups")
        out["optimizer"] = opt
    if obj.get("scheduler") is not None:
        _plain(obj["scheduler"], f"{name}: 'scheduler'")
        out["scheduler"] = obj["scheduler"]
    return out


def _plain(v: Any, what: str, depth: int = 0) -> None:
    """Numbers, strings, booleans, None, and lists and dicts of them (bounded nesting)."""
    if depth > 8:
        raise ProofError(f"proof: {what} is nested too deep")
    if v is None or isinstance(v, (bool, int, str)):
        return
    if isinstance(v, float):
        if not math.isfinite(v) and not math.isinf(v):
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
