"""Verification and reproduction studies on a Ray cluster.

A long execution trace is embarrassingly parallel over its segments (checkpoint to
checkpoint), a reproduction study over its cells (batch size x condition x repeat). A
:class:`RayExecutor` schedules them as Ray tasks; the report it fills is the serial one.

What stays on the driver, and why: the integrity checks (manifest, the whole hash chain, the
seeded theta_0, the policy's choice of segments) are sequential by nature and decide what a
worker may trust; a task gets the checked records of its own segments (never the whole chain)
and recomputes. With policy 'all' the two overlap: a group of segments goes out as soon as the
driver has checked its records, and everything sent is dropped if the trace fails a later
check (the serial report, invalid with no segments, is what comes back).
Each checkpoint a worker reads is checked again against the hash the chain commits to, whether
it reads the file from shared storage or receives its bytes through the object store, so a
worker never trusts storage the driver did not check.

Why the verdict is the serial one: the workers run the same function as the serial verifier
(:func:`exactforge.verify.recompute_segments`), and the results are put back in segment order,
stopping at the first segment that fails its checks, as a serial run stops. On exactforge's
reproducible paths (native models, exactforge.nn) the bits do not depend on the thread count,
the batch order or the CPU, so the per-segment errors are bitwise those of a serial run, and
epsilon = 0 stays usable across machines. Plain torch traces recompute under each worker's
float arithmetic: give ``threads=`` to make it the one the serial run used.

Failures: a task whose worker dies (killed, out of memory, a node lost) is retried by Ray
(``max_retries``); each attempt is counted, and the report lists the retried tasks. A task that
still fails makes the report invalid, naming its segments: nothing is silently dropped.

Ray is an optional extra: ``pip install "exactforge[ray]"``.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..report.progress import progress_bar
from ..trace import Trace, TraceError
from ..trace.reader import Record

__all__ = ["RAY_INSTALL", "RayExecutor", "require_ray", "chunk_segments"]

RAY_INSTALL = 'pip install "exactforge[ray]"'
CHECKPOINT_MODES = ("auto", "shared", "ship")


def require_ray() -> Any:
    """The ray module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"Ray is not installed; {RAY_INSTALL} installs it") from None
    return ray


def chunk_segments(segs: Sequence[Tuple[int, int]], parts: int) -> List[List[Tuple[int, int]]]:
    """Contiguous groups of segments with about equal step counts (``min(parts, len(segs))``
    groups, none empty): each cut falls where the running step count is nearest its share.
    Contiguous, so a task reads each checkpoint once: a segment's end is the next one's start."""
    segs = list(segs)
    parts = max(1, min(int(parts), len(segs)))
    cum, total = [], 0
    for s, e in segs:
        total += e - s
        cum.append(total)
    cuts, lo = [], 0  # cuts[j]: the number of segments in groups 0..j
    for j in range(1, parts):
        hi = len(segs) - (parts - j)  # leave one segment for each group to come
        target = total * j / parts
        n = bisect.bisect_left(cum, target) + 1  # the first count reaching the target, or one short
        best = min(
            (c for c in (n - 1, n) if lo < c <= hi),
            key=lambda c: abs(cum[c - 1] - target),
            default=min(max(n, lo + 1), hi),
        )
        cuts.append(best)
        lo = best
    bounds = [0, *cuts, len(segs)]
    return [segs[bounds[i] : bounds[i + 1]] for i in range(parts)]


@dataclass
class _Run:
    """What the task loop saw: attempts per task (Ray's retries included) and lost tasks."""

    attempts: Dict[int, int] = field(default_factory=dict)
    failures: Dict[int, str] = field(default_factory=dict)


def _attempt(ledger: Any, key: int, fn: Callable, *args: Any) -> Any:
    """A task: counts the attempt with the ledger (synchronously, so an attempt that dies
    right after is still counted), then runs ``fn``."""
    import ray

    ray.get(ledger.begin.remote(key))
    return fn(*args)


def _ledger(ray: Any) -> Any:
    @ray.remote(num_cpus=0)
    class Ledger:  # a counter of task attempts; Ray does not tell the driver about retries
        def __init__(self) -> None:
            self.n: Dict[int, int] = {}

        def begin(self, key: int) -> None:
            self.n[key] = self.n.get(key, 0) + 1

        def counts(self) -> Dict[int, int]:
            return dict(self.n)

    return Ledger


def _verify_task(
    data: Any, model: Any, loss_fn: Any, trace: Any, segs: List[Tuple[int, int]], job: Any
) -> Tuple[List[Any], Optional[str]]:
    """Recomputes a group of segments on a worker (``trace``: their slice of the checked
    trace): (results in order, the error that stopped it or None), the serial verifier's
    outcome for these segments."""
    from .replay import engine_for
    from .segments import recompute_segments

    results: List[Any] = []
    try:
        load, step, _ = engine_for(trace, data, job.threads, model, loss_fn)
        recompute_segments(trace, segs, load, step, job, results.append)
    except (TraceError, ValueError, TypeError, OSError, RuntimeError) as exc:
        return results, str(exc)
    return results, None


def _slice_records(trace: Trace, segs: Sequence[Tuple[int, int]]) -> Dict[int, Record]:
    """The records of ``segs`` with their batches, each segment read in one pass."""
    out: Dict[int, Record] = {}
    for s, e in segs:
        for rec in trace.iter_records(s, e):
            out[rec.step] = rec
    return out


@dataclass
class _TraceSlice(Trace):
    """What a task needs of a checked trace: the manifest, the checkpoint entries and the records
    of its segments (a task never reads the whole chain), and
    the checkpoint files' bytes when they are shipped instead of read from shared storage.
    ``decode_checkpoint`` checks shipped bytes exactly as it checks a file."""

    slice_records: Dict[int, Any] = field(default_factory=dict)
    blobs: Optional[Dict[int, Any]] = None

    @classmethod
    def of(cls, trace: Trace, segs: Sequence[Tuple[int, int]], blobs: Optional[Dict[int, Any]] = None) -> "_TraceSlice":
        return cls(
            trace.directory,
            trace.manifest,
            trace.manifest_hash,
            limits=trace.limits,
            complete=trace.complete,
            incomplete_reason=trace.incomplete_reason,
            entries={t: trace.entries[t] for seg in segs for t in seg if t},
            slice_records=_slice_records(trace, segs),  # with their batches
            blobs=blobs,
        )

    def batch(self, step: int) -> Any:
        if step not in self.slice_records:
            raise TraceError(f"record {step}: not part of this task's segments")
        return self.slice_records[step].batch

    def iter_records(self, start: int, stop: int) -> Iterator[Record]:
        for t in range(start, stop):
            if t not in self.slice_records:
                raise TraceError(f"record {t}: not part of this task's segments")
            yield self.slice_records[t]

    def checkpoint_bytes(self, step: int) -> Any:
        if self.blobs is None:
            return super().checkpoint_bytes(step)
        import ray

        if step not in self.blobs:
            raise TraceError(f"checkpoint {step}: not shipped to this worker")
        return ray.get(self.blobs[step])


class _TaskPool:
    """Ray tasks of one function, at most ``window`` in flight: ``submit`` waits for a slot
    (finishing tasks as they come), ``drain`` waits for the rest. Attempts are counted by a
    ledger actor (Ray does not tell the driver about its retries); a task lost after its retries
    is recorded as a failure, never dropped."""

    def __init__(self, ray: Any, fn: Callable, task_cpus: int, max_retries: int, window: int) -> None:
        self.ray, self.fn, self.window = ray, fn, max(1, window)
        self.remote = ray.remote(_attempt).options(num_cpus=task_cpus, max_retries=max_retries, retry_exceptions=False)
        self.ledger = _ledger(ray).remote()
        self.pending: Dict[Any, int] = {}
        self.results: Dict[int, Any] = {}
        self.run = _Run()
        self.on_done: Optional[Callable[[int, Any], None]] = None

    def submit(self, key: int, args: tuple) -> None:
        while len(self.pending) >= self.window:
            self._finish_one()
        self.pending[self.remote.remote(self.ledger, key, self.fn, *args)] = key

    def _finish_one(self) -> None:
        ray = self.ray
        done, _ = ray.wait(list(self.pending), num_returns=1)
        for ref in done:
            i = self.pending.pop(ref)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker died max_retries + 1 times, or a bug
                cause = getattr(exc, "cause", None)
                what = cause if isinstance(cause, BaseException) else exc
                text = str(what).strip().splitlines()
                self.run.failures[i] = f"{type(what).__name__}: {text[-1][:300] if text else ''}"
                continue
            self.results[i] = value
            if self.on_done is not None:
                self.on_done(i, value)

    def drain(self) -> _Run:
        """Waits for every task and reads the attempt counts (the caller closes the pool)."""
        while self.pending:
            self._finish_one()
        self.run.attempts = {int(k): int(v) for k, v in self.ray.get(self.ledger.counts.remote()).items()}
        return self.run

    def close(self) -> None:
        """Cancels what is still in flight (a stream whose trace failed to open), then the
        ledger. Each cancelled task's error is read here: Ray prints an 'unhandled error' for
        an exception nobody reads, and a task still running would find the ledger gone."""
        refs = list(self.pending)
        self.pending = {}
        for ref in refs:
            self.ray.cancel(ref, force=True)
        for ref in refs:
            try:
                self.ray.get(ref, timeout=30)
            except Exception:  # noqa: BLE001 - cancelled, or lost: either way its result is dropped
                pass
        if self.ledger is not None:
            self.ray.kill(self.ledger)
            self.ledger = None


class _Stream:
    """Segments submitted while the driver is still reading the chain (policy 'all'): each
    group of contiguous segments goes out as soon as its records are checked, so the driver's
    sequential check overlaps the workers' recomputation. Everything here is provisional: if
    the trace fails to open, or the driver's later checks fail, the tasks are cancelled and
    their results never read."""

    def __init__(self, executor: "RayExecutor", ray: Any, job: Any, model: Any, loss_fn: Any) -> None:
        self.ex, self.ray, self.job, self.model, self.loss_fn = executor, ray, job, model, loss_fn
        self.workers = executor.workers(ray)
        self.pool = executor._pool(ray, _verify_task, 2 * self.workers)
        self.chunks: List[List[Tuple[int, int]]] = []
        self.shared: Optional[tuple] = None
        self.step_target = 0
        self.last = 0  # the last checkpoint seen: where the next segment starts
        self.open: List[Tuple[int, int]] = []  # segments checked but not yet submitted
        self.t0 = time.perf_counter()

    def on_data(self, trace: Any, data: Any) -> None:
        declared = trace.manifest.steps
        if declared:  # groups of about the size the batch path would make
            self.step_target = max(1, -(-int(declared) // (self.workers * self.ex.tasks_per_worker)))
            self.shared = (self.ray.put(data), self.ray.put(self.model), self.ray.put(self.loss_fn))

    def on_record(self, trace: Any) -> None:
        rec = trace.last
        if self.shared is None or rec.checkpoint is None:
            return
        e = rec.checkpoint["step"]
        self.open.append((self.last, e))
        self.last = e
        if e - self.open[0][0] >= self.step_target:
            self.submit(trace, self.open)
            self.open = []

    def submit(self, trace: Any, chunk: List[Tuple[int, int]]) -> None:
        key = len(self.chunks)
        self.chunks.append(list(chunk))
        assert self.shared is not None  # set with the data, before the first record arrives
        self.pool.submit(key, self.ex._verify_args(self.ray, trace, chunk, self.job, self.shared))

    def close(self) -> None:
        self.pool.close()


def _probe(address: str, timeout: float) -> None:
    """Fails within ``timeout`` seconds when nothing answers at a HOST:PORT address (with or
    without ray://); Ray itself would retry for minutes. ``auto`` and other forms are Ray's to
    resolve."""
    import socket

    rest = address[len("ray://") :] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConnectionError(f"no Ray cluster answers at {address} ({exc}; waited at most {timeout:g} s)") from None


@contextlib.contextmanager
def _scoped_env(name: str, value: str) -> Iterator[None]:
    """Sets an environment variable for the duration (a value the user set wins)."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


class RayExecutor:
    """Runs the verifier's segments and a study's cells as Ray tasks.

    ``address``: ``"local"`` starts a Ray instance on this machine (``num_cpus`` workers; all
    cores when None); any other value is passed to ``ray.init(address=...)`` (``"auto"``,
    ``"HOST:PORT"``, ``"ray://HOST:10001"``). When Ray is already initialised in this process,
    that instance is used and left running. ``task_cpus``: CPUs (and recomputation threads) per
    task. ``max_retries``: Ray's retries of a task whose worker died. ``checkpoints``:
    ``"shared"`` (workers read the trace directory: the same path on every node), ``"ship"``
    (the driver reads each checkpoint file and puts its bytes in the object store), ``"auto"``
    (shared on a local instance, shipped to a remote cluster). ``tasks_per_worker``: segment
    groups per worker, for load balance (more groups, more per-task overhead). ``connect_timeout``:
    seconds to reach a cluster's address before giving up with a ConnectionError naming it."""

    def __init__(
        self,
        address: str = "local",
        *,
        num_cpus: Optional[int] = None,
        task_cpus: int = 1,
        max_retries: int = 3,
        checkpoints: str = "auto",
        tasks_per_worker: int = 4,
        connect_timeout: float = 10.0,
    ) -> None:
        if not isinstance(address, str) or not address.strip():
            raise ValueError(
                f"address: expected 'local' or a Ray address (auto, HOST:PORT, ray://HOST:PORT), got {address!r}"
            )
        for name, v, lo in (
            ("task_cpus", task_cpus, 1),
            ("max_retries", max_retries, 0),
            ("tasks_per_worker", tasks_per_worker, 1),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
        if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
            raise ValueError(f"num_cpus: expected a positive integer or None, got {num_cpus!r}")
        if (
            isinstance(connect_timeout, bool)
            or not isinstance(connect_timeout, (int, float))
            or not (0 < connect_timeout <= 3600)
        ):
            raise ValueError(f"connect_timeout: expected seconds in (0, 3600], got {connect_timeout!r}")
        if checkpoints not in CHECKPOINT_MODES:
            raise ValueError(f"checkpoints: expected one of {CHECKPOINT_MODES}, got {checkpoints!r}")
        self.address, self.num_cpus, self.task_cpus = address.strip(), num_cpus, task_cpus
        self.max_retries, self.checkpoints, self.tasks_per_worker = max_retries, checkpoints, tasks_per_worker
        self.connect_timeout = float(connect_timeout)

    # -- the Ray session ------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """Ray, initialised for the duration (an instance already running is used as it is)."""
        ray = require_ray()
        if ray.is_initialized():
            yield ray
            return
        opts: Dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        try:
            if self.address == "local":
                ray.init(num_cpus=self.num_cpus, **opts)
            else:
                _probe(self.address, self.connect_timeout)
                # Ray's own wait for a cluster's control service is a minute or more: bounded here
                with _scoped_env("RAY_gcs_server_request_timeout_seconds", str(max(1, int(self.connect_timeout)))):
                    ray.init(address=self.address, **opts)
        except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
            raise ConnectionError(f"cannot start or reach Ray at {self.address!r}: {str(exc)[:300]}") from None
        try:
            yield ray
        finally:
            ray.shutdown()

    def workers(self, ray: Any) -> int:
        return max(1, int(ray.cluster_resources().get("CPU", 1) // self.task_cpus))

    def _mode(self) -> str:
        if self.checkpoints != "auto":
            return self.checkpoints
        return "shared" if self.address == "local" else "ship"

    def _pool(self, ray: Any, fn: Callable, window: int) -> "_TaskPool":
        return _TaskPool(ray, fn, self.task_cpus, self.max_retries, window)

    def _summary(self, ray: Any, run: _Run, tasks: int, seconds: float, **extra: Any) -> Dict[str, Any]:
        return {
            "kind": "ray",
            "address": self.address,
            "workers": self.workers(ray),
            "task_cpus": self.task_cpus,
            "max_retries": self.max_retries,
            "tasks": tasks,
            "attempts": sum(run.attempts.values()),
            "seconds": seconds,
            **extra,
        }

    # -- verification ---------------------------------------------------------------------------
    def _job(self, job: Any) -> Any:
        # a task's threads are its CPUs, not the whole node's
        return job if job.threads else dataclasses.replace(job, threads=self.task_cpus)

    def _verify_args(self, ray: Any, trace: Any, chunk: List[Tuple[int, int]], job: Any, shared: tuple) -> tuple:
        blobs = None
        if self._mode() == "ship":  # each checkpoint the group reads, once (the driver's read is bounded)
            steps = sorted({s for s, _ in chunk} | {e for _, e in chunk})
            blobs = {st: ray.put(bytes(trace.checkpoint_bytes(st))) for st in steps}
        return (*shared, _TraceSlice.of(trace, chunk, blobs), chunk, job)

    def stream(self, job: Any, *, model: Any = None, loss_fn: Any = None) -> _Stream:
        """A stream for ``verify_trace``: segments go to the workers while the chain is read
        (call inside ``session()``)."""
        return _Stream(self, require_ray(), self._job(job), model, loss_fn)

    def verify(
        self,
        trace: Any,
        data: Any,
        segs: List[Tuple[int, int]],
        job: Any,
        report: Any,
        *,
        model: Any = None,
        loss_fn: Any = None,
        progress: bool = False,
        stream: Optional[_Stream] = None,
    ) -> None:
        """Recomputes ``segs`` of a checked trace on the cluster and fills ``report`` as the
        serial verifier would (called by ``verify_trace(..., executor=...)``). ``stream``: the
        groups already submitted while the trace was read, a prefix of ``segs``."""
        from .results import add_result

        t0 = stream.t0 if stream is not None else time.perf_counter()  # a stream started with the chain
        job = self._job(job)
        with self.session() as ray:
            workers = self.workers(ray)
            if stream is not None and stream.shared is not None:
                pool, shared, chunks = stream.pool, stream.shared, list(stream.chunks)
                done_segs = [s for c in chunks for s in c]
                assert done_segs == segs[: len(done_segs)], "a stream submits a prefix of the segments"
                rest = segs[len(done_segs) :]
            else:
                if stream is not None:
                    stream.close()
                pool = self._pool(ray, _verify_task, 2 * workers)
                shared = (ray.put(data), ray.put(model), ray.put(loss_fn))
                chunks, rest = [], segs
            streamed = len(chunks)
            if rest:
                for c in chunk_segments(rest, max(1, workers * self.tasks_per_worker - streamed)):
                    chunks.append(c)
            bar = progress_bar(len(segs), progress, f"verify (ray, {workers} workers)", "segment")
            if bar is not None:
                bar.update(sum(len(chunks[i]) for i in pool.results))
                pool.on_done = lambda i, v: bar.update(len(chunks[i]))
            try:
                for i in range(streamed, len(chunks)):
                    pool.submit(i, self._verify_args(ray, trace, chunks[i], job, shared))
                run = pool.drain()
            finally:
                pool.close()
                if bar is not None:
                    bar.close()

            def span(i: int) -> List[int]:  # the steps a group covers
                return [chunks[i][0][0], chunks[i][-1][1]]

            retried = [{"segments": span(i), "attempts": n} for i, n in sorted(run.attempts.items()) if n > 1]
            report.executor = self._summary(
                ray,
                run,
                len(chunks),
                0.0,
                checkpoints=self._mode(),
                retried=retried,
                streamed_tasks=streamed,
                failed=[{"segments": span(i), "error": m} for i, m in sorted(run.failures.items())],
            )
        # in segment order, stopping where a serial run would stop
        for i in range(len(chunks)):
            if i in run.failures:
                report.valid = False
                report.reason = (
                    f"segments {span(i)[0]}..{span(i)[1]}: the Ray task failed after "
                    f"{run.attempts.get(i, 1)} attempt(s) ({run.failures[i]}); they were not verified"
                )
                break
            results, err = pool.results[i]
            for r in results:
                add_result(report, r)
            if err is not None:
                report.valid, report.reason = False, err
                break
        report.executor["seconds"] = time.perf_counter() - t0

    # -- reproduction studies -------------------------------------------------------------------
    def map_cells(
        self, fn: Callable, cells: Sequence[tuple], shared: Sequence[Any], *, on_done: Callable[[int, Any], None]
    ) -> Dict[str, Any]:
        """Runs fn(*shared, *cells[i]) for every cell (``shared`` enters the object store once)
        and calls on_done(i, value) as cells finish; raises RuntimeError naming the cells lost
        after their retries. Returns the executor summary for the report."""
        t0 = time.perf_counter()
        with self.session() as ray:
            refs = tuple(ray.put(v) for v in shared)
            # a list or array that several cells share (a batch schedule, the logged states) enters
            # the object store once: cells refer to it by identity
            puts: Dict[int, Any] = {}

            def ref_of(v: Any) -> Any:
                if not isinstance(v, (list, tuple, dict)) and not hasattr(v, "__array__"):
                    return v
                if id(v) not in puts:
                    puts[id(v)] = ray.put(v)
                return puts[id(v)]

            pool = self._pool(ray, fn, 2 * self.workers(ray))
            pool.on_done = on_done
            try:
                for i, c in enumerate(cells):
                    pool.submit(i, (*refs, *(ref_of(v) for v in c)))
                run = pool.drain()
            finally:
                pool.close()
            summary = self._summary(
                ray,
                run,
                len(cells),
                time.perf_counter() - t0,
                retried=[{"cell": i, "attempts": n} for i, n in sorted(run.attempts.items()) if n > 1],
            )
        if run.failures:
            i, msg = next(iter(sorted(run.failures.items())))
            raise RuntimeError(
                f"{len(run.failures)} study cell(s) failed after their retries, the first (cell {i}): {msg}"
            )
        return summary
