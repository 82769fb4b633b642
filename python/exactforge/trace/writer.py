"""Writing a trace step by step, so that nothing committed is lost when the process is killed.

Every file is written atomically (temporary file, fsync, rename, fsync of the directory), and
a step's checkpoint before its record. So at any instant the directory holds a valid trace: a
prefix of the run, which ``resume`` continues. ``resume`` checks the caller's arguments against
the manifest before it touches anything, then removes the unfinished tail (records past the
last checkpoint) from the last record backwards, each removal made durable before the next:
a kill in the middle leaves a shorter valid prefix, never a hole.

A recorder writes in the background (``background=True``): the files go, in the same order and
each as atomically, through one writer thread, so a training step does not wait for the disk's
fsyncs. What is committed is what that thread has synced: a kill loses at most the steps still
queued (a few records, never a committed one, never the order), and the trace on disk stays a
valid prefix. A failed write (a full disk) is raised at the next step or when the recorder
closes, naming the file.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import queue
import re
import threading
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..report.files import atomic_write
from ..report.files import fsync_dir as _fsync_dir
from .format import (
    FIELDS,
    INITIAL_KINDS,
    SCHEMA,
    SCHEMA_VERSION,
    canonical_json,
    checkpoint_name,
    record_hash,
    record_name,
    sha256_bytes,
    tensor_table,
)
from .reader import Record, Trace

__all__ = ["TraceWriter", "atomic_write", "environment", "encode_checkpoint"]


# The environment variables that change a computation's bits on one machine: torch's kernel ISA
# (ATen dispatches on it), MKL's code path (chosen by CPU vendor unless pinned) and exactforge's
# own kernels. Recorded where they are set, so a trace says which emulation produced it.
EMULATION_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "EXACTFORGE_ISA")


def environment(device: str = "cpu") -> Dict[str, Any]:
    """Where a trace was produced: device, library versions, exactforge's compile options, and
    the machine facts a plain-torch trace's bits depend on (the CPU, torch's kernel ISA, its
    BLAS, and the environment variables set to emulate another machine). The prover's word
    (``declared``); a verifier names where its own differ when it rejects such a trace
    (exactforge.verify.machines). Cheap, and never raises."""
    from .. import compile_options

    env: Dict[str, Any] = {
        "device": device,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "exactforge": compile_options(),
    }
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        env["torch"] = None
    env["cpu"] = _cpu()
    env["torch_cpu_capability"] = _torch_cpu_capability()
    env["blas"] = _blas()
    env["mkl_branch"] = mkl_branch()
    env["emulation"] = {k: os.environ[k] for k in EMULATION_VARIABLES if k in os.environ}
    return env


def _cpu() -> Dict[str, str]:
    """The CPU's vendor (``vendor_id`` of /proc/cpuinfo, else the platform's processor) and model."""
    from ..report.machine import cpu_name

    vendor = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("vendor_id"):
                    vendor = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    try:
        model = cpu_name()
    except Exception:  # noqa: BLE001  (a description, never a reason to fail a recording)
        model = platform.machine()
    return {"vendor": vendor or platform.processor() or platform.machine(), "model": model}


def _torch_cpu_capability() -> Optional[str]:
    """The ISA torch's CPU kernels dispatch to (``DEFAULT``, ``AVX2``, ``AVX512``, ...)."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001  (no torch, or a torch without the query)
        return None


def _blas() -> Optional[Dict[str, Optional[str]]]:
    """torch's BLAS, read from its build configuration: ``{"name": "mkl", "version": ...}``
    (MKL picks its code path by CPU vendor), ``{"name": "openblas", ...}``, and so on."""
    try:
        import torch

        config = str(torch.__config__.show())
    except Exception:  # noqa: BLE001
        return None
    info = re.search(r"BLAS_INFO=([^,\s]+)", config)
    name = info.group(1).lower() if info else None
    lapack = re.search(r"LAPACK_INFO=([^,\s]+)", config)
    version = None
    mkl = re.search(r"Math Kernel Library Version ([0-9.]+)", config)
    if mkl and (name is None or "mkl" in name):
        name, version = name or "mkl", mkl.group(1)
    return {"name": name, "version": version, "lapack": lapack.group(1).lower() if lapack else None}


# MKL's conditional-numerical-reproducibility branches (mkl_cbwr.h), by number
_MKL_BRANCHES = {
    2: "COMPATIBLE",
    3: "SSE2",
    6: "SSSE3",
    7: "SSE4_1",
    8: "SSE4_2",
    9: "AVX",
    10: "AVX2",
    11: "AVX512_MIC",
    12: "AVX512",
    13: "AVX512_MIC_E1",
    14: "AVX512_E1",
}


def mkl_branch() -> Optional[str]:
    """The code path torch's MKL runs here (``MKL_CBWR``'s names): the one MKL chose for this
    CPU, or the one ``MKL_CBWR`` pinned. MKL gives every non-Intel CPU its ``COMPATIBLE``
    branch, whose bits are the same on any x86 CPU, so an Intel machine replays an AMD
    machine's MKL results under ``MKL_CBWR=COMPATIBLE``. None without torch's MKL."""
    try:
        import ctypes

        import torch

        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get, auto = lib.mkl_serv_cbwr_get, lib.mkl_serv_cbwr_get_auto_branch
        get.restype = auto.restype = ctypes.c_int
        branch = get(ctypes.c_int(1))  # MKL_CBWR_BRANCH; 1 (MKL_CBWR_AUTO) when nothing is pinned
        if branch == 1:
            branch = auto()
        return _MKL_BRANCHES.get(int(branch), str(branch))
    except Exception:  # noqa: BLE001  (another BLAS, another platform: nothing to say)
        return None


def encode_checkpoint(tensors: Mapping[str, np.ndarray], step: int) -> bytes:
    from safetensors.numpy import save

    # np.ascontiguousarray would turn a 0-d tensor (BatchNorm's num_batches_tracked) into shape (1,)
    arrays = {k: np.asarray(v) for k, v in tensors.items()}
    arrays = {k: v if v.flags.c_contiguous else v.copy(order="C") for k, v in arrays.items()}
    return save(arrays, metadata={"exactforge_step": str(step)})


class _Committer:
    """One thread that writes files atomically, in the order they were given."""

    def __init__(self, depth: int = 8) -> None:
        # bounded: a disk slower than training makes the loop wait instead of queueing memory
        self._queue: "queue.Queue[Optional[Tuple[str, bytes]]]" = queue.Queue(maxsize=depth)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="exactforge-trace-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:  # after a failure nothing later is written: no holes
                    atomic_write(*item)
            except BaseException as exc:  # noqa: BLE001  (handed to the writing thread)
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, path: str, data: bytes) -> None:
        self._raise()
        self._queue.put((path, data))

    def flush(self) -> None:
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise()


class TraceWriter:
    """Writes a trace step by step; every write is atomic. Use a recorder (exactforge.record)
    rather than this class directly.

    The manifest gets the schema fields, theta_0's hash and the tensor table (names, dtypes and
    shapes of a checkpoint, taken from ``initial``), which bound what a reader will accept.
    ``manifest["initial"]`` says whether theta_0 is ``"seeded"`` (a pure function of the
    manifest's model and seed, which verifiers recompute) or ``"given"`` (default)."""

    def __init__(
        self, directory: str, manifest: Dict[str, Any], initial: Mapping[str, np.ndarray], background: bool = False
    ) -> None:
        if os.path.exists(os.path.join(directory, "manifest.json")):
            raise FileExistsError(f"out: {directory} already holds a trace; choose a new folder or resume it")
        manifest = dict(manifest)
        unknown = sorted(k for k in manifest if k not in FIELDS)
        if unknown:  # a reader refuses them: never written, then refused
            raise ValueError(f"manifest: unknown field {unknown[0]!r}; a recorder's own fields go under 'extra'")
        manifest.setdefault("initial", "given")
        if manifest["initial"] not in INITIAL_KINDS:
            raise ValueError(f"initial: expected one of {INITIAL_KINDS}, got {manifest['initial']!r}")
        table = tensor_table(initial)  # refuses dtypes a checkpoint cannot hold, before anything is written
        os.makedirs(os.path.join(directory, "checkpoints"), exist_ok=True)
        os.makedirs(os.path.join(directory, "records"), exist_ok=True)
        self.directory = directory
        data = encode_checkpoint(initial, 0)
        atomic_write(os.path.join(directory, checkpoint_name(0)), data)
        manifest.update(
            {
                "schema": SCHEMA,
                "schema_version": SCHEMA_VERSION,
                "tensors": table,
                "initial_checkpoint": {"step": 0, "file": checkpoint_name(0), "sha256": sha256_bytes(data)},
            }
        )
        manifest.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        raw = canonical_json(manifest)  # sorted keys, so the hash does not depend on dict order
        atomic_write(os.path.join(directory, "manifest.json"), raw)
        self.manifest = manifest
        self.prev = sha256_bytes(raw)
        self.next_step = 0
        self.last: Optional[Record] = None
        self.finished = False
        self._committer: Optional[_Committer] = _Committer() if background else None

    @classmethod
    def resume(
        cls,
        directory: str,
        check: Optional[Callable[[Dict[str, Any]], None]] = None,
    ) -> Tuple["TraceWriter", Trace]:
        """Continues a trace after its last checkpoint. ``check(manifest)`` runs first and may
        raise to refuse the resume (different arguments), then every checkpoint is checked for
        integrity: a refused resume has removed nothing. The
        unfinished tail (records past the last checkpoint) is removed from the end backwards,
        each removal synced, so every intermediate state is a valid, shorter prefix. A complete
        trace is returned as it is (``writer.finished``)."""
        trace = Trace.open(directory)
        if check is not None:
            check(trace.manifest)
        # Nothing is removed before the whole trace has proved intact (every checkpoint's file,
        # hash, header and weights, the chain having been checked by open): a resume refused
        # below would otherwise have deleted the tail of a trace it cannot continue.
        trace.check_checkpoints()
        last = trace.num_steps
        folder = os.path.join(directory, "records")
        if not trace.complete:
            for i in reversed(range(last, trace.num_records)):
                os.unlink(os.path.join(directory, record_name(i)))
                _fsync_dir(folder)
            trace.truncate(last)
        self = cls.__new__(cls)
        self._committer = None
        self.directory = directory
        self.manifest = dict(trace.manifest)
        self.prev = trace.last.hash if trace.last is not None else trace.manifest_hash
        self.next_step = last
        self.last = trace.record(last - 1) if last else None  # finish() needs its batch
        self.finished = trace.complete
        return self, trace

    def append(
        self,
        batch: Union[Sequence[int], np.ndarray],
        checkpoint: Optional[Mapping[str, np.ndarray]] = None,
        *,
        final: bool = False,
        lr: Union[None, float, Sequence[float]] = None,
    ) -> Record:
        """Records step ``next_step`` with its batch; ``checkpoint`` is theta after the step.
        ``final`` marks the last step of the run (it needs a checkpoint); ``lr`` is the step's
        learning rate where it differs from the manifest's (a schedule)."""
        if self.finished:
            raise ValueError("append: the trace is complete (its final step is recorded)")
        if final and checkpoint is None:
            raise ValueError("append: the final step needs its checkpoint")
        t = self.next_step
        ck = None
        if checkpoint is not None:
            data = encode_checkpoint(checkpoint, t + 1)
            self._save(os.path.join(self.directory, checkpoint_name(t + 1)), data)  # before the record
            ck = {"step": t + 1, "file": checkpoint_name(t + 1), "sha256": sha256_bytes(data)}
        return self._write(t, [int(i) for i in batch], self.prev, ck, final, lr)

    def _write(
        self,
        t: int,
        batch: list,
        prev: str,
        ck: Optional[Dict[str, Any]],
        final: bool,
        lr: Union[None, float, Sequence[float]] = None,
    ) -> Record:
        rec: Dict[str, Any] = {"step": t, "batch": batch, "prev": prev, "checkpoint": ck}
        if final:
            rec["final"] = True
        if isinstance(lr, (int, float)):
            rec["lr"] = lr = float(lr)
        elif lr is not None:  # one per parameter group
            rec["lr"] = [float(r) for r in lr]
            lr = tuple(rec["lr"])
        rec["hash"] = record_hash(rec)
        self._save(os.path.join(self.directory, record_name(t)), canonical_json(rec))
        self.prev = rec["hash"]
        self.next_step = t + 1
        arr = np.asarray(batch, dtype=np.int64)
        arr.setflags(write=False)
        self.last = Record(t, arr, prev, ck, rec["hash"], final, lr)
        self.finished = final
        return self.last

    def _save(self, path: str, data: bytes) -> None:
        if self._committer is not None:
            self._committer.put(path, data)
        else:
            atomic_write(path, data)

    def flush(self) -> None:
        """Waits until every file given so far is written and synced; raises a failed write."""
        if self._committer is not None:
            self._committer.flush()

    def close(self) -> None:
        """Flushes and stops the background writer (if any); the writer writes synchronously after."""
        c, self._committer = self._committer, None
        if c is not None:
            c.close()

    def finish(self, checkpoint: Optional[Mapping[str, np.ndarray]] = None) -> Record:
        """Marks the last recorded step final, with ``checkpoint`` (theta after it) when that
        step has none yet. The record file is replaced atomically, never removed: until the
        rename the trace is a valid incomplete prefix, after it a complete trace."""
        last = self.last
        if last is None:
            raise ValueError("finish: no step has been recorded")
        if self.finished:
            return last
        ck = last.checkpoint
        if ck is None:
            if checkpoint is None:
                raise ValueError("finish: the last step has no checkpoint; pass theta after it")
            data = encode_checkpoint(checkpoint, last.step + 1)
            self._save(os.path.join(self.directory, checkpoint_name(last.step + 1)), data)
            ck = {"step": last.step + 1, "file": checkpoint_name(last.step + 1), "sha256": sha256_bytes(data)}
        assert last.batch is not None  # the writer's own records carry their batch
        return self._write(last.step, [int(i) for i in last.batch], last.prev, ck, True, last.lr)
