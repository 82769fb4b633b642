"""What every recomputation of a trace shares, below the verifier, its calibration and the
reference's tolerance measurement: opening a trace with the verifier's own data, the engine,
choosing segments, and replaying one segment's records.

Trust model: the trace directory is the prover's and hostile; the data set, the model code of
a torch trace, epsilon and the policy are the verifier's. Nothing the prover supplies is
followed outside the trace directory: a manifest's data path is never opened, and a data set
that is not bundled with exactforge must be given by the verifier (``data_path=`` or
``dataset=``), whose fingerprint must equal the manifest's."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..data import BUNDLED, DATASETS, Dataset, as_dataset, load_dataset
from ..trace import DEFAULT_LIMITS, Limits, Trace, TraceError
from ..trace import engine as _engine
from ..trace.manifest import DataSpec
from ..trace.reader import finite
from .augmentation import fresh_augmentation
from .distances import verification_distance

__all__ = [
    "POLICIES",
    "open_with_data",
    "engine_for",
    "select_segments",
    "replay_segment",
    "permuted",
    "pairs",
    "states",
    "update_norms",
]

POLICIES = ("all", "topq", "random")


def engine_for(trace: Trace, data: Dataset, threads: Optional[int], model: Any = None, loss_fn: Any = None):
    """(load, step, initial) of the trace's engine (:func:`exactforge.trace.engine.engine_for`),
    an unrecovered imported proof's inputs drawn afresh as the reference's verify.py draws them.
    Raises TraceError when the trace does not fit the verifier's data and model."""
    fresh = fresh_augmentation(trace.spec)
    return _engine.engine_for(trace, data, threads, model, loss_fn, augment=fresh)


def pairs(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(a's, b's) tensor of each float tensor of b: what a distance compares."""
    return [(np.asarray(a[k]), np.asarray(b[k])) for k in b if np.asarray(b[k]).dtype.kind == "f"]


def _load_data(spec: DataSpec, dataset: Any, data_path: Optional[str]) -> Dataset:
    name = spec.name
    if dataset is not None:
        return as_dataset(dataset, name)
    if data_path:
        if name not in DATASETS + ("npz",):
            raise TraceError(
                f"data: the trace names the data set {name[:40]!r}, which exactforge cannot read from "
                "files; save it as .npz (arrays X, y) and pass --dataset npz --data-path FILE.npz, or "
                "pass it as dataset= (arrays) in Python"
            )
        return load_dataset(name, data_path)
    if name in BUNDLED:
        return load_dataset(name)
    raise TraceError(
        f"data: {name[:40]!r} is not bundled with exactforge, and a trace's own data path is never "
        "opened (the prover could point it anywhere); the verifier supplies the data: --data-path "
        "(dataset= in Python)"
    )


def open_with_data(
    directory: str,
    dataset: Any = None,
    data_path: Optional[str] = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    on_data: Optional[Callable[[Trace, Dataset], None]] = None,
    on_record: Optional[Callable[[Trace], None]] = None,
) -> Tuple[Trace, Dataset]:
    """Opens and checks a trace and loads the verifier's training data: ``dataset`` (a Dataset
    or a pair of arrays), the manifest's data set read from the verifier's ``data_path``, or a
    bundled data set by name. Refuses data whose fingerprint or size differs. Raises
    TraceError (the trace) or ValueError (the data).

    With ``on_data(trace, data)`` the data is loaded as soon as the manifest is checked and
    handed over before the records are read (``on_record`` follows each one): a distributed
    verifier starts on the checked prefix. Errors keep their order: a bad chain is reported
    before bad data, as without the hooks."""
    if on_data is None and on_record is None:
        trace = Trace.open(directory, limits)
        return trace, _checked_data(trace.spec.data, dataset, data_path)
    got: Dict[str, Any] = {}

    def manifest_checked(t: Trace) -> None:
        try:
            got["data"] = _checked_data(t.spec.data, dataset, data_path)
        except (TraceError, ValueError, TypeError, OSError) as exc:  # raised after the chain is checked
            got["error"] = exc
            return
        if on_data is not None:
            on_data(t, got["data"])

    trace = Trace.open(
        directory,
        limits,
        on_manifest=manifest_checked,
        on_record=None if on_record is None else (lambda t: "error" in got or on_record(t)),
    )
    if "error" in got:
        raise got["error"]
    return trace, got["data"]


def _checked_data(spec: DataSpec, dataset: Any, data_path: Optional[str]) -> Dataset:
    data = _load_data(spec, dataset, data_path)
    if data.fingerprint() != spec.fingerprint:
        raise TraceError(
            f"data: the fingerprint of {data.name} does not match the trace's (different or modified training data)"
        )
    if len(data) != spec.num_examples:
        raise TraceError(f"data: {len(data)} examples, the trace declares {spec.num_examples}")
    return data


def select_segments(
    trace: Trace,
    policy: str,
    *,
    q: int = 1,
    fraction: float = 0.1,
    seed: int = 0,
    update_norms: Optional[List[float]] = None,
) -> List[Tuple[int, int]]:
    """Segments (start, end) to recompute: all; PoL's top-Q largest logged updates per epoch;
    or a seeded random sample (at least one)."""
    segs = trace.segments()
    if policy == "all" or not segs:
        return segs
    if policy == "random":
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction: expected a value in (0, 1], got {fraction}")
        n = max(1, int(round(fraction * len(segs))))
        pick = np.sort(np.random.default_rng(seed).choice(len(segs), size=n, replace=False))
        return [segs[i] for i in pick]
    if policy == "topq":
        if q < 1:
            raise ValueError(f"q: expected a positive number of steps per epoch, got {q}")
        if update_norms is None or len(update_norms) != len(segs):
            raise ValueError("update_norms: policy 'topq' needs one logged update norm per segment")
        n = trace.spec.data.num_examples
        b = trace.spec.batch_size
        per_epoch = max(1, n // b) if b else len(segs)
        chosen = []
        epochs: Dict[int, List[int]] = {}
        for i, (s, _) in enumerate(segs):
            epochs.setdefault(s // per_epoch, []).append(i)
        for ids in epochs.values():
            chosen.extend(sorted(ids, key=lambda i: -update_norms[i])[:q])
        return [segs[i] for i in sorted(chosen)]
    raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")


def replay_segment(
    trace: Trace,
    step: Callable,
    state: Any,
    s: int,
    e: int,
    order: Optional[Callable[[np.ndarray, int], np.ndarray]] = None,
) -> Any:
    """theta_e recomputed from ``state`` (theta_s) through the records s..e-1, each step with
    its recorded learning rate where it carries one; ``order(batch, t)`` rearranges a batch."""
    for rec in trace.iter_records(s, e):
        idx = rec.batch
        assert idx is not None  # iter_records reads the batches
        if order is not None:
            idx = order(idx, rec.step)
        state = step(state, idx, rec.step) if rec.lr is None else step(state, idx, rec.step, lr=rec.lr)
    return state


def permuted(idx: np.ndarray, seed: int, t: int, parts: int = 1) -> np.ndarray:
    """Step t's batch shuffled with the seed. A step over micro-batches (``parts``, split as
    numpy.array_split) is shuffled within each: which examples share a micro-batch is part of
    the computation (BatchNorm's statistics, the rounding of each micro-batch's sum)."""
    rng = np.random.default_rng([seed, t])
    if parts == 1:
        return idx[rng.permutation(idx.size)]
    return np.concatenate([p[rng.permutation(p.size)] for p in np.array_split(idx, parts)])


def update_norms(trace: Trace, load: Callable, theta0: Dict[str, np.ndarray]) -> List[float]:
    """The l2 norm of every logged update, two checkpoints in memory at a time (for topq)."""
    norms = []
    prev = theta0
    for _, e in trace.segments():
        cur = finite(load(e), e)
        norms.append(verification_distance(pairs(cur, prev), "l2"))
        prev = cur
    return norms


def states(
    segs: List[Tuple[int, int]], load: Callable, theta0: Optional[Dict[str, np.ndarray]]
) -> Iterator[Tuple[int, int, Any, Any]]:
    """(start, end, theta_start, theta_end) with at most two checkpoints in memory."""
    cache: Dict[int, Any] = {0: theta0} if theta0 is not None else {}
    for s, e in segs:
        start = cache[s] if s in cache else finite(load(s), s)
        end = finite(load(e), e)
        cache = {e: end}
        yield s, e, start, end
