"""Opening a trace: the manifest, the hash chain of records, the schedule, and checkpoint access.

Every byte comes through ``safeio`` (regular files inside the trace, bounded sizes, strict
JSON). Records are read in step order until the first absent one, so a reader running while a
recorder appends, or while ``resume`` removes an unfinished tail from the end backwards, sees a
contiguous prefix, never a hole.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from .format import (
    Manifest,
    canonical_json,
    checkpoint_name,
    is_sha256,
    record_hash,
    record_name,
    sha256_bytes,
    validate_manifest,
)
from .limits import DEFAULT_LIMITS, Limits
from .manifest import TraceSpec
from .safeio import TraceError, decode_safetensors, is_entry, list_names, read_file, read_json

__all__ = ["Record", "Trace"]

_RECORD_KEYS = {"step", "batch", "prev", "checkpoint", "hash"}


@dataclass
class Record:
    step: int
    # dataset indices in the logged order (int64, read-only); None in Trace.last, which keeps
    # the chain and not the batch: Trace.iter_records / Trace.record read them again when needed
    batch: Optional[np.ndarray]
    prev: str
    checkpoint: Optional[Dict[str, Any]]
    hash: str
    final: bool = False
    # the step's learning rate where a schedule changed it from the manifest's: one number, or
    # one per parameter group where the optimizer has several
    lr: Union[None, float, Tuple[float, ...]] = None


# at most this many parameter groups (exactforge.models.optim.MAX_GROUPS; the reader stays free
# of the model layer, a test keeps the two equal)
MAX_GROUPS = 64


def _parse_record(obj: Dict[str, Any], i: int, spec: TraceSpec, limits: Limits) -> Record:
    keys = set(obj)
    if not (_RECORD_KEYS <= keys <= _RECORD_KEYS | {"final", "lr"}):
        raise TraceError(
            f"record {i}: expected the fields {sorted(_RECORD_KEYS)} (and 'final', 'lr'), got {sorted(keys)[:8]}"
        )
    lr = obj.get("lr")
    if "lr" in obj:
        rates = lr if isinstance(lr, list) and 2 <= len(lr) <= MAX_GROUPS else [lr]
        if spec.engine != "torch" or not all(type(r) is float and math.isfinite(r) and 0 < r <= 1e6 for r in rates):
            raise TraceError(
                f"record {i}: 'lr' must be a positive learning rate, or one per parameter group (torch traces only)"
            )
        lr = tuple(rates) if isinstance(lr, list) else lr
    if type(obj["step"]) is not int or obj["step"] != i:
        raise TraceError(f"record {i}: claims to be step {str(obj['step'])[:24]}")
    if not is_sha256(obj["hash"]) or not is_sha256(obj["prev"]):
        raise TraceError(f"record {i}: 'hash' and 'prev' must be SHA-256 hex digests")
    final = obj.get("final", False)
    if final is not True and final is not False:
        raise TraceError(f"record {i}: 'final' must be true or false")
    batch = obj["batch"]
    n_ex = spec.data.num_examples
    b = spec.batch_size
    if not isinstance(batch, list):
        raise TraceError(f"record {i}: 'batch' must be a list of dataset indices")
    if b is not None and len(batch) != b:
        raise TraceError(f"record {i}: a batch of {len(batch)} examples, the manifest declares batch_size {b}")
    if not 1 <= len(batch) <= min(limits.max_batch, n_ex if b is None else b):
        raise TraceError(f"record {i}: 'batch' must list 1..{min(limits.max_batch, n_ex)} dataset indices")
    if not all(type(v) is int for v in batch):
        raise TraceError(f"record {i}: batch indices must be integers")
    arr = np.array(batch, dtype=object)
    if arr.min() < 0 or arr.max() >= n_ex:
        raise TraceError(f"record {i}: batch index outside the data set (0..{n_ex - 1})")
    if spec.sampling == "without-replacement" and len(set(batch)) != len(batch):
        raise TraceError(f"record {i}: an example repeats in a batch the manifest declares sampled without replacement")
    arr = arr.astype(np.int64)
    arr.setflags(write=False)
    ck = obj["checkpoint"]
    if ck is not None and (
        not isinstance(ck, dict)
        or set(ck) != {"step", "file", "sha256"}
        or type(ck["step"]) is not int
        or ck["step"] != i + 1
        or ck["file"] != checkpoint_name(i + 1)
        or not is_sha256(ck["sha256"])
    ):
        raise TraceError(
            f"record {i}: malformed checkpoint entry (expected step {i + 1}, "
            f"file {checkpoint_name(i + 1)} and a SHA-256)"
        )
    k = spec.checkpoint_every
    due = (i + 1) % k == 0 or final
    if due != (ck is not None):
        raise TraceError(
            f"record {i}: {'no' if due else 'a'} checkpoint where the schedule (every {k} steps "
            f"and after the final step) {'needs one' if due else 'has none'}"
        )
    return Record(i, arr, obj["prev"], ck, obj["hash"], final, lr)


def _canonical(obj: Any, raw: bytes, what: str) -> None:
    """The file's bytes must be the canonical form of what they hold (``canonical_json``: keys
    sorted, no whitespace, ASCII with \\u escapes, numbers as Python writes them), so that the
    hash the chain binds is the hash of the bytes: a record reformatted, its keys reordered or
    escaped differently is another file, and invalid."""
    if canonical_json(obj) != raw:
        raise TraceError(
            f"{what}: not in canonical form (sorted keys, no whitespace, as exactforge writes it); "
            "a trace's files are bound by their bytes"
        )


def finite(state: Dict[str, np.ndarray], step: int) -> Dict[str, np.ndarray]:
    """``state`` when every floating tensor holds finite numbers; TraceError naming the tensor."""
    for k, v in state.items():
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise TraceError(f"checkpoint {step}: {k} holds NaN or infinite weights")
    return state


@dataclass
class Trace:
    """A checked trace: manifest, hash chain of records, schedule; checkpoints are read on
    demand (``load_checkpoint``), one at a time, each against the hash the chain commits to.

    Records are streamed: opening a trace reads and checks every record once and keeps, per
    checkpoint, the hash of the record that logs it (an *anchor*) and the checkpoint's entry;
    nothing is kept per step. A record is read again when its batch is needed
    (``iter_records``, ``record``), from the anchor before it to the anchor at or after it, and
    refused unless it is the record the chain held when the trace was opened. Memory therefore
    follows the number of checkpoints (each of which is a model on disk), never the number of
    steps or the batches' sizes.

    ``complete`` says whether the trace holds every step it declares (its last record is
    final); ``incomplete_reason`` says why not. A verifier refuses an incomplete trace unless
    it asks for a prefix."""

    directory: str
    manifest: Manifest
    manifest_hash: str
    limits: Limits = DEFAULT_LIMITS
    complete: bool = False
    incomplete_reason: Optional[str] = None
    record_limit: int = 0  # the most bytes a record of this trace may hold
    num_records: int = 0
    # the last record read (without its batch): what a recorder appends after, what a streaming
    # verifier looks at as each record joins the chain
    last: Optional[Record] = None
    # record index -> its hash, for every record that logs a checkpoint and for the last record
    anchors: Dict[int, str] = field(default_factory=dict)
    # checkpoint step (>= 1) -> its entry {"step", "file", "sha256"}, in order
    entries: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    # records that carry their own learning rate, counted when the chain was read (an upper
    # bound after truncate): none means no pass over the records is needed to list rates
    rated_records: int = 0

    @classmethod
    def open(
        cls,
        directory: str,
        limits: Limits = DEFAULT_LIMITS,
        *,
        on_manifest: Optional[Callable[["Trace"], None]] = None,
        on_record: Optional[Callable[["Trace"], Any]] = None,
    ) -> "Trace":
        """Loads and checks the manifest and the whole chain; raises TraceError.

        ``on_manifest(trace)`` is called once the manifest is checked, ``on_record(trace)`` after
        each record joins the chain (``trace.last``; a distributed verifier starts on the
        checked prefix while the rest is read). The trace is complete only when this returns: a
        caller must treat what it saw before as provisional, to be dropped if the open fails."""
        raw_obj, raw = read_json(directory, "manifest.json", limits.manifest_bytes, "manifest", limits)  # type: ignore[misc]
        _canonical(raw_obj, raw, "manifest")
        man = validate_manifest(raw_obj, limits)
        t = cls(directory, man, sha256_bytes(raw), limits=limits)
        if on_manifest is not None:
            on_manifest(t)
        b = man.spec.batch_size
        t.record_limit = limits.record_bytes(b if b is not None else min(limits.max_batch, man.spec.data.num_examples))
        declared = man.steps
        prev = t.manifest_hash
        while True:
            i = t.num_records
            if (t.last is not None and t.last.final) or (declared is not None and i >= declared):
                break
            if i >= limits.max_steps:
                raise TraceError(f"records: more than {limits.max_steps} steps")
            rec = t._read_record(i, prev, missing_ok=True)
            if rec is None:  # the first absent record ends the prefix (holes are found below)
                break
            if rec.checkpoint is not None:
                if not is_entry(directory, rec.checkpoint["file"]):
                    raise TraceError(f"record {i}: checkpoint {rec.checkpoint['file']} is missing")
                t.anchors[i] = rec.hash
                t.entries[i + 1] = rec.checkpoint
            rec.batch = None  # the chain is kept, the batch is not
            t.rated_records += rec.lr is not None
            t.last, t.num_records, prev = rec, i + 1, rec.hash
            if on_record is not None:
                on_record(t)
        if t.last is not None:
            t.anchors[t.num_records - 1] = t.last.hash
        t._check_no_extra_records()
        n = t.num_records
        if n and t.last is not None and t.last.final:
            if declared is not None and n != declared:
                raise TraceError(f"records: the final record is step {n - 1}, the manifest declares {declared} steps")
            t.complete = True
        elif declared is not None:
            t.incomplete_reason = (
                f"incomplete: {n} of the {declared} declared steps are recorded (truncated, or still being recorded)"
            )
        else:
            t.incomplete_reason = f"incomplete: {n} steps and no final record (truncated, or still being recorded)"
        if not is_entry(directory, checkpoint_name(0)):
            raise TraceError(f"checkpoint 0: {checkpoint_name(0)} is missing")
        return t

    def _read_record(self, i: int, prev: str, missing_ok: bool = False) -> Optional[Record]:
        """Record ``i`` read and checked: canonical bytes, its fields against the manifest, its
        hash against its content and its link to ``prev`` (the hash of record i-1)."""
        got = read_json(
            self.directory, record_name(i), self.record_limit, f"record {i}", self.limits, missing_ok=missing_ok
        )
        if got is None:
            return None
        obj, raw = got
        _canonical(obj, raw, f"record {i}")
        rec = _parse_record(obj, i, self.manifest.spec, self.limits)
        if rec.hash != record_hash(obj):
            raise TraceError(f"record {i}: its hash does not match its content (modified)")
        if rec.prev != prev:
            raise TraceError(f"record {i}: does not follow the previous record (hash chain broken)")
        return rec

    def _check_no_extra_records(self) -> None:
        """No record past the ones read: a hole, or steps appended after the final record."""
        n = self.num_records
        for name in list_names(self.directory, "records", self.limits):
            if name.startswith(".tmp-"):
                continue  # an atomic write in progress or interrupted; never read
            stem = name[:-5] if name.endswith(".json") else ""
            if len(stem) != 8 or not stem.isdigit():
                raise TraceError(f"records: unexpected entry {name[:60]!r}")
            j = int(stem)
            if j >= n and is_entry(self.directory, record_name(j)):
                declared = self.manifest.steps
                if (self.last is not None and self.last.final) or (declared is not None and n >= declared):
                    raise TraceError(f"records: step {j} is recorded after the last step {n - 1} (extended trace)")
                if is_entry(self.directory, record_name(n)):
                    # written by a recorder since we looked: the prefix we read is still a prefix
                    continue
                raise TraceError(f"records: step {j} is recorded but step {n} is missing (a record was removed)")

    def truncate(self, n: int) -> None:
        """Forgets records n.. (a resume has removed them from disk); record n-1 must be an anchor."""
        if n and n - 1 not in self.anchors:
            raise ValueError(f"truncate: record {n - 1} logs no checkpoint")
        self.anchors = {i: h for i, h in self.anchors.items() if i < n}
        self.entries = {s: e for s, e in self.entries.items() if s <= n}
        self.num_records = n
        self.last = self.record(n - 1) if n else None
        if self.last is not None:
            self.last.batch = None
        self.complete, self.incomplete_reason = False, f"incomplete: {n} steps and no final record"

    # -- structure --------------------------------------------------------------------------
    @property
    def checkpoint_steps(self) -> List[int]:
        """Steps t with a logged theta_t, in order (0 first)."""
        return [0, *self.entries]

    @property
    def num_steps(self) -> int:
        """Steps covered by checkpoints: records past the last checkpoint are an unfinished tail."""
        return self.checkpoint_steps[-1]

    @property
    def spec(self) -> TraceSpec:
        """The manifest's typed view, parsed when the trace was opened."""
        return self.manifest.spec

    @property
    def declared_steps(self) -> Optional[int]:
        return self.manifest.steps

    def segments(self) -> List[Tuple[int, int]]:
        s = self.checkpoint_steps
        return list(zip(s[:-1], s[1:]))

    def iter_records(self, start: int, stop: int) -> Iterator[Record]:
        """Records ``start .. stop-1`` with their batches, read again in one pass from the anchor
        before ``start`` to the anchor at or after ``stop - 1``. Each is checked as when the
        trace was opened and linked to the one before; a record that differs from the chain the
        trace was opened with breaks a link or an anchor, and raises TraceError before the pass
        ends (a caller that acts on a whole pass, as a segment's recomputation does, never acts
        on a changed record)."""
        if not 0 <= start < stop <= self.num_records:
            raise TraceError(f"records {start}..{stop - 1}: the trace has steps 0..{self.num_records - 1}")
        order = sorted(self.anchors)
        k = bisect.bisect_left(order, start)  # the first anchor at or after start
        first = order[k - 1] + 1 if k else 0
        prev = self.anchors[first - 1] if first else self.manifest_hash
        i = first
        while True:
            rec = self._read_record(i, prev)
            assert rec is not None  # missing_ok is off: an absent record raised
            if i in self.anchors and rec.hash != self.anchors[i]:
                raise TraceError(f"record {i}: changed since the trace was opened")
            if start <= i:
                yield rec
            prev = rec.hash
            i += 1
            if i >= stop and i - 1 in self.anchors:
                return

    def batch(self, step: int) -> np.ndarray:
        """The dataset indices of step ``step``, read again and checked against the chain."""
        batch = self.record(step).batch
        assert batch is not None
        return batch

    def record(self, step: int) -> Record:
        """Record ``step`` with its batch, read again and checked against the chain (the records
        from the checkpoint before it to the one after it are read too)."""
        recs = list(self.iter_records(step, step + 1))
        return recs[0]

    def checkpoint_entry(self, step: int) -> Dict[str, Any]:
        if step == 0:
            return self.manifest["initial_checkpoint"]
        entry = self.entries.get(step)
        if entry is None:
            raise TraceError(f"checkpoint: no theta_{step} was logged")
        return entry

    def load_checkpoint(self, step: int) -> Dict[str, np.ndarray]:
        """theta_step, after checking its size against the manifest's tensors, its bytes against
        the hash the chain commits to, and its header against the declared names, dtypes and
        shapes. Arrays are little-endian views of one buffer of the file's size."""
        return self.decode_checkpoint(step, self.checkpoint_bytes(step))

    def check_checkpoints(self, steps: Optional[List[int]] = None) -> int:
        """The integrity of every logged checkpoint (or of ``steps``): a regular file of the
        declared size whose bytes match the chain's hash, whose header names the declared
        tensors, and whose weights are finite; one checkpoint in memory at a time. Hashing a
        checkpoint costs a small fraction of recomputing its segment, so a verifier that
        recomputes a sample still checks every file. Returns how many were checked."""
        n = 0
        for s in self.checkpoint_steps if steps is None else steps:
            finite(self.load_checkpoint(s), s)
            n += 1
        return n

    def checkpoint_bytes(self, step: int) -> bytearray:
        """The file of theta_step as it is on disk, read within the size its tensors allow (not
        yet checked against its hash: ``decode_checkpoint`` does that, wherever it runs)."""
        entry = self.checkpoint_entry(step)
        data = read_file(self.directory, entry["file"], self._checkpoint_limit(), f"checkpoint {step}")
        assert data is not None  # read_file returns None only when asked to tolerate a missing file
        return data

    def _checkpoint_limit(self) -> int:
        """The most bytes a checkpoint file may hold: its header's bound and the declared tensors."""
        return 8 + self.limits.safetensors_header_bytes + self.manifest.checkpoint_bytes

    def decode_checkpoint(self, step: int, data: Any) -> Dict[str, np.ndarray]:
        """theta_step from the bytes of its file (read here or shipped from another machine):
        the hash the chain commits to, then the header against the manifest's tensors."""
        entry = self.checkpoint_entry(step)
        max_bytes = self._checkpoint_limit()
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) > max_bytes:
            raise TraceError(f"checkpoint {step}: expected at most {max_bytes} bytes of {entry['file']}")
        if sha256_bytes(data) != entry["sha256"]:  # hashlib reads a memoryview without a copy
            raise TraceError(f"checkpoint {step}: {entry['file']} does not match its hash (modified)")
        if not isinstance(data, bytearray):
            data = bytearray(data)  # the arrays are writable views of the buffer: a shipped object is read-only
        return decode_safetensors(data, self.manifest.tensors, f"checkpoint {step}", self.limits)
