"""Execution traces: a directory that commits to every step of training, safe to load from an
untrusted party (JSON and safetensors only; no pickle anywhere on the load path).

Layout::

    DIR/manifest.json                   what was trained, on what data, how (schema below)
    DIR/checkpoints/00000000.safetensors theta_0, then theta_t every k steps and at the end
    DIR/records/00000000.json            one record per SGD step t, in order

A record is ``{"step": t, "batch": [dataset indices in order], "prev": H_{t-1},
"checkpoint": null | {"step": t+1, "file": ..., "sha256": ...}, "hash": H_t}``. ``H_t`` is the
SHA-256 of the record's canonical JSON without "hash", and ``H_{-1}`` is the SHA-256 of
manifest.json's bytes, whose ``initial_checkpoint`` carries theta_0's hash. Changing one byte
of the manifest, a checkpoint or a batch breaks the chain.

Every file is written atomically (temporary file, fsync, rename, fsync of the directory): a
killed recorder leaves a trace that loads up to its last complete step, and recording can
resume from the last checkpoint.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["SCHEMA", "SCHEMA_VERSION", "TraceError", "Trace", "TraceWriter", "Record", "canonical_json",
           "sha256_bytes", "environment", "atomic_write"]

SCHEMA = "exactforge.trace"
SCHEMA_VERSION = 1
_MAX_JSON = 64 << 20  # a manifest or record larger than this is not a trace


class TraceError(ValueError):
    """The directory is not a valid trace (corrupt, tampered with, or incomplete)."""


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: str, data: bytes) -> None:
    """Write, fsync, rename over ``path``, fsync the directory."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def environment(device: str = "cpu") -> Dict[str, Any]:
    """Where a trace was produced: device, library versions, exactforge's compile options."""
    from . import compile_options

    env: Dict[str, Any] = {"device": device, "python": platform.python_version(), "numpy": np.__version__,
                           "platform": platform.platform(), "exactforge": compile_options()}
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        env["torch"] = None
    return env


def _ckpt_name(step: int) -> str:
    return f"checkpoints/{step:08d}.safetensors"


def _record_name(step: int) -> str:
    return f"records/{step:08d}.json"


def _record_hash(rec: Mapping[str, Any]) -> str:
    return sha256_bytes(canonical_json({k: v for k, v in rec.items() if k != "hash"}))


def encode_checkpoint(tensors: Mapping[str, np.ndarray], step: int) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata={"exactforge_step": str(step)})


def decode_checkpoint(data: bytes, what: str) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise TraceError(f"{what}: not a readable safetensors file ({exc})") from None


@dataclass
class Record:
    step: int
    batch: List[int]
    prev: str
    checkpoint: Optional[Dict[str, Any]]
    hash: str


def _read_json(path: str, what: str) -> Tuple[Dict[str, Any], bytes]:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_JSON + 1)
    except OSError as exc:
        raise TraceError(f"{what}: cannot read {path} ({exc.strerror})") from None
    if len(data) > _MAX_JSON:
        raise TraceError(f"{what}: {path} is larger than {_MAX_JSON} bytes")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceError(f"{what}: {path} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise TraceError(f"{what}: {path} must hold a JSON object")
    return obj, data


@dataclass
class Trace:
    """A validated trace: manifest, the hash-checked chain of records, and checkpoint access."""

    directory: str
    manifest: Dict[str, Any]
    manifest_hash: str
    records: List[Record] = field(default_factory=list)

    @classmethod
    def open(cls, directory: str) -> "Trace":
        """Loads and checks the manifest and the whole chain (no checkpoint is parsed here,
        but every checkpoint named by a record must exist). Raises TraceError."""
        if not os.path.isdir(directory):
            raise TraceError(f"trace: {directory} is not a directory")
        manifest, raw = _read_json(os.path.join(directory, "manifest.json"), "manifest")
        if manifest.get("schema") != SCHEMA:
            raise TraceError(f"manifest: not an exactforge trace (schema {manifest.get('schema')!r})")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise TraceError(f"manifest: schema_version {manifest.get('schema_version')!r} is not supported "
                             f"(this exactforge reads {SCHEMA_VERSION})")
        for key in ("engine", "model", "lr", "checkpoint_every", "data", "initial_checkpoint", "batch_size"):
            if key not in manifest:
                raise TraceError(f"manifest: missing {key!r}")
        t = cls(directory, manifest, sha256_bytes(raw))
        rec_dir = os.path.join(directory, "records")
        names = sorted(n for n in os.listdir(rec_dir) if n.endswith(".json")) if os.path.isdir(rec_dir) else []
        prev = t.manifest_hash
        for i, name in enumerate(names):
            if name != os.path.basename(_record_name(i)):
                raise TraceError(f"records: expected {_record_name(i)}, found records/{name} (a record is missing)")
            obj, _ = _read_json(os.path.join(rec_dir, name), f"record {i}")
            try:
                rec = Record(int(obj["step"]), [int(v) for v in obj["batch"]], str(obj["prev"]),
                             obj.get("checkpoint"), str(obj["hash"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise TraceError(f"record {i}: malformed ({exc})") from None
            if rec.step != i:
                raise TraceError(f"record {i}: claims to be step {rec.step}")
            if rec.hash != _record_hash(obj):
                raise TraceError(f"record {i}: its hash does not match its content (modified)")
            if rec.prev != prev:
                raise TraceError(f"record {i}: does not follow the previous record (hash chain broken)")
            if rec.checkpoint is not None:
                ck = rec.checkpoint
                if not isinstance(ck, dict) or ck.get("step") != i + 1 or ck.get("file") != _ckpt_name(i + 1):
                    raise TraceError(f"record {i}: malformed checkpoint entry")
                if not os.path.exists(os.path.join(directory, ck["file"])):
                    raise TraceError(f"record {i}: checkpoint {ck['file']} is missing")
            t.records.append(rec)
            prev = rec.hash
        return t

    # -- structure --------------------------------------------------------------------------
    @property
    def checkpoint_steps(self) -> List[int]:
        """Steps t with a logged theta_t, in order (0 first)."""
        return [0] + [r.checkpoint["step"] for r in self.records if r.checkpoint is not None]

    @property
    def num_steps(self) -> int:
        """Steps covered by checkpoints: records past the last checkpoint are an unfinished tail."""
        return self.checkpoint_steps[-1]

    def segments(self) -> List[Tuple[int, int]]:
        s = self.checkpoint_steps
        return list(zip(s[:-1], s[1:]))

    def batch(self, step: int) -> np.ndarray:
        return np.asarray(self.records[step].batch, dtype=np.int64)

    def checkpoint_entry(self, step: int) -> Dict[str, Any]:
        if step == 0:
            return self.manifest["initial_checkpoint"]
        rec = self.records[step - 1]
        if rec.checkpoint is None:
            raise TraceError(f"checkpoint: no theta_{step} was logged")
        return rec.checkpoint

    def load_checkpoint(self, step: int) -> Dict[str, np.ndarray]:
        """theta_step, after checking its bytes against the hash the chain commits to."""
        entry = self.checkpoint_entry(step)
        path = os.path.join(self.directory, str(entry.get("file", "")))
        if os.path.basename(path) != os.path.basename(_ckpt_name(step)):
            raise TraceError(f"checkpoint {step}: unexpected file name {entry.get('file')!r}")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise TraceError(f"checkpoint {step}: cannot read {path} ({exc.strerror})") from None
        if sha256_bytes(data) != entry.get("sha256"):
            raise TraceError(f"checkpoint {step}: {entry.get('file')} does not match its hash (modified)")
        return decode_checkpoint(data, f"checkpoint {step}")


class TraceWriter:
    """Writes a trace step by step; every write is atomic. Use a recorder (exactforge.record)
    rather than this class directly."""

    def __init__(self, directory: str, manifest: Dict[str, Any], initial: Mapping[str, np.ndarray]) -> None:
        if os.path.exists(os.path.join(directory, "manifest.json")):
            raise FileExistsError(f"out: {directory} already holds a trace; choose a new folder or resume it")
        os.makedirs(os.path.join(directory, "checkpoints"), exist_ok=True)
        os.makedirs(os.path.join(directory, "records"), exist_ok=True)
        self.directory = directory
        data = encode_checkpoint(initial, 0)
        atomic_write(os.path.join(directory, _ckpt_name(0)), data)
        manifest = dict(manifest)
        manifest.update({"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                         "initial_checkpoint": {"step": 0, "file": _ckpt_name(0), "sha256": sha256_bytes(data)}})
        manifest.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        raw = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False).encode()
        atomic_write(os.path.join(directory, "manifest.json"), raw)
        self.manifest = manifest
        self.prev = sha256_bytes(raw)
        self.next_step = 0
        self.last: Optional[Record] = None

    @classmethod
    def resume(cls, directory: str) -> Tuple["TraceWriter", Trace]:
        """Continues a trace after its last checkpoint: records past it (an unfinished
        segment) are removed, and the caller restarts from that checkpoint."""
        trace = Trace.open(directory)
        last = trace.num_steps
        for rec in trace.records[last:]:
            os.unlink(os.path.join(directory, _record_name(rec.step)))
        trace.records = trace.records[:last]
        self = cls.__new__(cls)
        self.directory = directory
        self.manifest = trace.manifest
        self.prev = trace.records[-1].hash if trace.records else trace.manifest_hash
        self.next_step = last
        self.last = trace.records[-1] if trace.records else None
        return self, trace

    def append(self, batch: Sequence[int], checkpoint: Optional[Mapping[str, np.ndarray]] = None) -> Record:
        """Records step ``next_step`` with its batch; ``checkpoint`` is theta after the step."""
        t = self.next_step
        ck = None
        if checkpoint is not None:
            data = encode_checkpoint(checkpoint, t + 1)
            atomic_write(os.path.join(self.directory, _ckpt_name(t + 1)), data)  # before the record
            ck = {"step": t + 1, "file": _ckpt_name(t + 1), "sha256": sha256_bytes(data)}
        rec = {"step": t, "batch": [int(i) for i in batch], "prev": self.prev, "checkpoint": ck}
        rec["hash"] = _record_hash(rec)
        atomic_write(os.path.join(self.directory, _record_name(t)), canonical_json(rec))
        self.prev = rec["hash"]
        self.next_step = t + 1
        self.last = Record(t, rec["batch"], rec["prev"], ck, rec["hash"])
        return self.last

    def attach_checkpoint(self, checkpoint: Mapping[str, np.ndarray]) -> Record:
        """Rewrites the last record with theta after its step (the final checkpoint of a run whose
        last steps had none). The record file is replaced atomically, never removed."""
        if self.last is None:
            raise ValueError("attach_checkpoint: no step has been recorded")
        last = self.last
        self.next_step, self.prev = last.step, last.prev
        return self.append(last.batch, checkpoint)
