"""The trace format (schema version 3): file names, hashing, and the manifest's schema.

A trace is a directory::

    manifest.json                        what was trained, on what data, how; declares the steps,
                                         the checkpoint schedule and the tensors of a checkpoint
    checkpoints/NNNNNNNN.safetensors     theta_0, then theta_t every k steps and after the last step
    records/NNNNNNNN.json                one record per SGD step t, in order

A record is ``{"step": t, "batch": [dataset indices in order], "prev": H_{t-1}, "checkpoint":
null | {"step": t+1, "file": ..., "sha256": ...}, "final": true (last step only), "hash": H_t}``.
``H_t`` is the SHA-256 of the record's canonical JSON without "hash"; ``H_{-1}`` is the SHA-256
of manifest.json's bytes, which carry theta_0's hash. A trace is *complete* when its last record
is final (and, where the manifest declares ``steps``, is step ``steps - 1``): deleting records
from the end, or adding some after the final one, is detected.

Every manifest field is one of three kinds (``FIELDS``): *checked* (recomputed and compared,
or checked against the verifier's model and data), *declared* (the prover's word, hashed into
the chain but not verifiable: when it was recorded, on what machine, the name of the data, and
the free ``extra`` object a recorder's caller fills), or unknown, which schema 3 refuses.
Schema 2 put a caller's extra fields at the top level; such traces still verify, and their
unknown top-level fields are reported as declared, not verified.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .limits import DEFAULT_LIMITS, Limits
from .manifest import TraceSpec
from .safeio import SAFETENSORS_DTYPES, TraceError, digest, is_sha256, tensor_nbytes

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "FIELDS",
    "DATA_FIELDS",
    "declared_fields",
    "INITIAL_KINDS",
    "canonical_json",
    "sha256_bytes",
    "record_hash",
    "checkpoint_name",
    "record_name",
    "validate_manifest",
    "Manifest",
]

SCHEMA = "exactforge.trace"
SCHEMA_VERSION = 3
READ_VERSIONS = (2, 3)  # 2: before unknown manifest fields were refused
INITIAL_KINDS = ("seeded", "given")


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sha256_bytes(data: Union[bytes, bytearray, memoryview]) -> str:
    return hashlib.sha256(data).hexdigest()


def record_hash(rec: Mapping[str, Any]) -> str:
    return sha256_bytes(canonical_json({k: v for k, v in rec.items() if k != "hash"}))


def checkpoint_name(step: int) -> str:
    return f"checkpoints/{step:08d}.safetensors"


def record_name(step: int) -> str:
    return f"records/{step:08d}.json"


# "checked": recomputed and compared, or checked against the verifier's model and data;
# "declared": the prover's word, bound by the chain and reported as not verified.
FIELDS: Dict[str, str] = {
    "schema": "checked",
    "schema_version": "checked",
    "engine": "checked",
    "model": "checked",
    "optimizer": "checked",
    "lr": "checked",
    "dtype": "checked",
    "seed": "checked",
    "initial": "checked",
    "initial_checkpoint": "checked",
    "tensors": "checked",
    "steps": "checked",
    "batch_size": "checked",
    "checkpoint_every": "checked",
    "reduction": "checked",
    "reduction_plan": "checked",
    "loss": "checked",
    "dropout": "checked",
    "eval_modules": "checked",
    "input_shape": "checked",
    "sampling": "checked",
    "clip_grad": "checked",
    "augment": "checked",
    "accumulate": "checked",
    "normalize": "checked",
    "scheduler": "checked",
    "arithmetic": "checked",
    "data": "checked",
    "created": "declared",
    "environment": "declared",
    "extra": "declared",
    "imported": "declared",
}
DATA_FIELDS: Dict[str, str] = {
    "fingerprint": "checked",
    "num_examples": "checked",
    "dim": "checked",
    "num_classes": "checked",
    "name": "declared",
    "path": "declared",  # never opened: the verifier supplies its own copy of the data
    "synthetic": "declared",
}


def declared_fields(man: Mapping[str, Any]) -> List[str]:
    """The manifest's fields that no verifier can check (the prover's word), in order: the
    declared ones, and a schema 2 trace's own top-level fields."""
    top = [k for k in sorted(man) if FIELDS.get(k, "declared") == "declared"]
    data = man.get("data")
    data = data if isinstance(data, dict) else {}
    model = man.get("model")
    # the class name of a user's own torch model: the verifier brings its own instance, checked
    # tensor by tensor, so the name is only the prover's label
    label = ["model.torch_class"] if isinstance(model, dict) and "torch_class" in model else []
    return top + [f"data.{k}" for k in sorted(data) if DATA_FIELDS.get(k) == "declared"] + label


class Manifest(dict):
    """A manifest whose every field the readers use has been type- and range-checked.
    ``tensors`` maps each checkpoint tensor's name to (safetensors dtype, shape), in order."""

    tensors: "Dict[str, Tuple[str, Tuple[int, ...]]]"
    checkpoint_bytes: int
    spec: TraceSpec  # the typed view of the training fields (exactforge.trace.manifest)

    @property
    def steps(self) -> Optional[int]:
        return self.get("steps")


def validate_manifest(man: Dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> Manifest:
    """Checks a parsed manifest against the schema; raises TraceError naming the field (the
    first wrong field, in the order below)."""
    _check_schema(man)
    spec = TraceSpec.parse(man, limits)
    _check_origin(man, spec)
    _check_imported(man)
    out = Manifest(man)
    out.spec = spec
    out.tensors, out.checkpoint_bytes = _tensor_table(man["tensors"], limits)
    return out


def _check_schema(man: Dict[str, Any]) -> None:
    """An exactforge trace of the schema version this exactforge reads, with every required key."""
    if man.get("schema") != SCHEMA:
        # not a trace: nothing of it is echoed (it may be another file under the manifest's name)
        shown = digest(json.dumps(man.get("schema"), sort_keys=True).encode())
        raise TraceError(f"manifest: not an exactforge trace (its 'schema' is not {SCHEMA!r}: {shown})")
    ver = man.get("schema_version")
    if type(ver) is not int or ver not in READ_VERSIONS:
        hint = (
            " (schema 1 traces do not declare their steps or tensors, so truncation cannot be detected; "
            "record the run again with this exactforge)"
            if ver == 1
            else ""
        )
        raise TraceError(
            f"manifest: schema_version {str(ver)[:20]} is not supported; this exactforge reads "
            f"{', '.join(map(str, READ_VERSIONS))}{hint}"
        )
    _check_fields(man, ver)
    for key in (
        "engine",
        "model",
        "lr",
        "checkpoint_every",
        "data",
        "initial_checkpoint",
        "initial",
        "tensors",
        "optimizer",
    ):
        if key not in man:
            raise TraceError(f"manifest: missing {key!r}")


def _check_fields(man: Dict[str, Any], version: int) -> None:
    """No field the format does not name (schema 3), and the declared ones of plain types."""
    unknown = [k for k in man if k not in FIELDS]
    if unknown and version >= 3:
        raise TraceError(
            f"manifest: unknown field {sorted(unknown)[0][:40]!r}: a verifier cannot check it (a recorder's own "
            "fields go under 'extra')"
        )
    data = man.get("data")
    if isinstance(data, dict):
        other = [k for k in data if k not in DATA_FIELDS]
        if other:
            raise TraceError(f"manifest: unknown field 'data.{sorted(other)[0][:40]}'")
    for key, kind in (("created", str), ("environment", dict), ("extra", dict)):
        if key in man and not isinstance(man[key], kind):
            raise TraceError(f"manifest: {key!r} must be a JSON {'string' if kind is str else 'object'}")


def _check_origin(man: Dict[str, Any], spec: TraceSpec) -> None:
    """Where the run starts and on what: theta_0's kind and file, and a batch the data can fill."""
    if man["initial"] not in INITIAL_KINDS:
        raise TraceError(f"manifest: 'initial' must be one of {INITIAL_KINDS}, got {str(man['initial'])[:40]!r}")
    if man["initial"] == "seeded" and man.get("seed") is None:
        raise TraceError("manifest: 'initial' is 'seeded' but no 'seed' is given")
    if spec.batch_size is not None and spec.batch_size > spec.data.num_examples:
        raise TraceError(
            f"manifest.batch_size: {spec.batch_size} is larger than the data set ({spec.data.num_examples} examples)"
        )
    ini = man["initial_checkpoint"]
    if (
        not isinstance(ini, dict)
        or type(ini.get("step")) is not int
        or ini["step"] != 0
        or ini.get("file") != checkpoint_name(0)
        or not is_sha256(ini.get("sha256"))
        or set(ini) != {"step", "file", "sha256"}
    ):
        raise TraceError(
            f"manifest: 'initial_checkpoint' must be {{'step': 0, 'file': '{checkpoint_name(0)}', 'sha256': ...}}"
        )


IMPORTED_FIELDS = (
    "format",
    "proof",
    "data_hash",
    "data_hash_checked",
    "dataset",
    "data_path",
    "data_fingerprint",
    "augmentation",
)
_IMPORTED_AUGMENTATION = {"transforms": list, "padding": int, "workers": int, "recovered": bool, "note": str}


def _check_imported(man: Dict[str, Any]) -> None:
    """An imported proof's provenance: short strings, digests and the data path of the import.
    The path is the prover's word: a verifier opens it only where its user lets it (``exactforge
    verify`` without --dataset/--data-path, which says so), and the data read there must have the
    trace's fingerprint."""
    imp = man.get("imported")
    if imp is None:
        return
    if not isinstance(imp, dict) or not set(imp) <= set(IMPORTED_FIELDS):
        raise TraceError(f"manifest: 'imported' must be an object of {', '.join(IMPORTED_FIELDS)}")

    def text(key: str, most: int) -> bool:
        v = imp.get(key)
        return v is None or (isinstance(v, str) and 0 < len(v) <= most and "\x00" not in v)

    if not (text("format", 64) and text("proof", 200) and text("dataset", 64) and text("data_path", 4095)):
        raise TraceError(
            "manifest: 'imported' holds format, proof and dataset (names of at most 64, 200 and 64 characters) "
            "and data_path (a path under 4096 characters)"
        )
    if imp.get("data_path") is not None and not os.path.isabs(imp["data_path"]):
        raise TraceError("manifest: 'imported.data_path' must be an absolute path")
    for key in ("data_hash", "data_fingerprint"):
        if imp.get(key) is not None and not is_sha256(imp[key]):
            raise TraceError(f"manifest: 'imported.{key}' must be a SHA-256 hex digest")
    if imp.get("data_hash_checked") not in (None, True, False):
        raise TraceError("manifest: 'imported.data_hash_checked' must be true, false or null")
    if imp.get("data_fingerprint") not in (None, man["data"]["fingerprint"]):
        raise TraceError("manifest: 'imported.data_fingerprint' is not the trace's data fingerprint")
    aug = imp.get("augmentation")
    if aug is not None and (
        not isinstance(aug, dict)
        or set(aug) != set(_IMPORTED_AUGMENTATION)
        or not all(type(aug[k]) is t for k, t in _IMPORTED_AUGMENTATION.items())
        or len(aug["note"]) > 400
        or not 0 <= aug["padding"] <= 64
        or not 0 <= aug["workers"] <= 1024
        or not 0 < len(aug["transforms"]) <= 8
        or not all(isinstance(t, str) and len(t) <= 32 for t in aug["transforms"])
        or aug["recovered"] != (man.get("augment") is not None)
    ):
        raise TraceError(
            "manifest: 'imported.augmentation' must be {transforms, padding, workers, recovered, note}, recovered "
            "exactly when the trace replays an augment"
        )


def _tensor_table(tensors: Any, limits: Limits) -> Tuple[Dict[str, Tuple[str, Tuple[int, ...]]], int]:
    """The declared checkpoint tensors (name -> (dtype, shape)) and their bytes, within the limits."""
    if not isinstance(tensors, list) or not 1 <= len(tensors) <= limits.max_tensors:
        raise TraceError(f"manifest: 'tensors' must list 1..{limits.max_tensors} tensors")
    table: Dict[str, Tuple[str, Tuple[int, ...]]] = {}
    total = 0
    for ent in tensors:
        if (
            not isinstance(ent, list)
            or len(ent) != 3
            or not isinstance(ent[0], str)
            or not ent[0]
            or len(ent[0]) > 256
            or ent[1] not in SAFETENSORS_DTYPES
            or not isinstance(ent[2], list)
            or len(ent[2]) > 8
            or not all(type(s) is int and 0 <= s <= 2**40 for s in ent[2])
        ):
            raise TraceError(f"manifest: malformed tensor entry {str(ent)[:80]} (expected [name, dtype, shape])")
        if ent[0] in table or ent[0] == "__metadata__":
            raise TraceError(f"manifest: tensor {ent[0][:40]!r} is declared twice or reserved")
        table[ent[0]] = (ent[1], tuple(ent[2]))
        total += tensor_nbytes(ent[2], ent[1])
        if total > limits.max_checkpoint_bytes:
            raise TraceError(
                f"manifest: a checkpoint would hold more than {limits.max_checkpoint_bytes} bytes of tensors, "
                "this verifier's bound (raise --max-model-mb, or Limits.max_checkpoint_bytes, to verify a larger model)"
            )
    return table, total


def tensor_table(tensors: Mapping[str, Any]) -> List[List[Any]]:
    """The manifest's 'tensors' entry for a checkpoint (name -> array), in the mapping's order."""
    import numpy as np

    from .safeio import dtype_name

    return [[k, dtype_name(np.asarray(v).dtype), [int(s) for s in np.shape(v)]] for k, v in tensors.items()]
