"""Recomputing segments and comparing them with the logged checkpoints: the one function
(``recompute_segments``) the serial verifier and its Ray workers run, with the settings it
needs (``SegmentJob``)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .._backend.threads import threads as torch_threads
from ..trace import Trace
from .distances import verification_distance
from .reference import reference_distances
from .replay import pairs, permuted, replay_segment, states
from .results import StepResult, moved_share, resolution

__all__ = ["SegmentJob", "recompute_segments", "settled_job"]


@dataclass(frozen=True)
class SegmentJob:
    """What recomputing a segment needs besides the trace and the engine: the verifier's
    settings. Shared by the serial verifier and its Ray workers, so both run the same code."""

    permute_batches: Optional[int]
    distance_kind: str
    epsilon: float
    threads: Optional[int]
    reference_names: Optional[Tuple[str, ...]] = None  # parameters the reference's distances cover


def recompute_segments(
    trace: Trace,
    segs: List[Tuple[int, int]],
    load: Callable,
    step: Callable,
    job: SegmentJob,
    on_result: Callable[[StepResult], None],
    theta0: Optional[Dict[str, np.ndarray]] = None,
) -> None:
    """Recomputes ``segs`` in order, calling ``on_result`` after each; raises on the first
    checkpoint that fails its checks (TraceError) or a model that does not fit it."""
    spec = trace.spec
    lr, parts = spec.lr, spec.accumulate
    with torch_threads(job.threads if spec.engine == "torch" else None):
        for s, e, state, logged in states(segs, load, theta0):
            t0, start = time.perf_counter(), state
            seed = job.permute_batches
            order = None if seed is None else (lambda idx, t: permuted(idx, seed, t, parts))
            state = replay_segment(trace, step, state, s, e, order)
            err = verification_distance(pairs(state, logged), job.distance_kind)
            res_med, res_min = resolution(logged, lr)
            ref = None
            if job.reference_names:
                names = job.reference_names
                ref = {
                    "recomputed": reference_distances(logged, state, names),
                    "update": reference_distances(start, logged, names),
                }
            on_result(
                StepResult(
                    s,
                    e,
                    err,
                    bool(err <= job.epsilon),
                    time.perf_counter() - t0,
                    res_med,
                    res_min,
                    ref,
                    moved_share(start, logged),
                    _update_distance(start, state, job.distance_kind),
                )
            )


def _update_distance(start: Dict[str, np.ndarray], end: Dict[str, np.ndarray], kind: str) -> float:
    """The verifier's distance between the model's parameters at a segment's start and end."""
    keep = [k for k in end if not k.startswith("optimizer.") and k in start]
    return verification_distance(pairs({k: start[k] for k in keep}, {k: end[k] for k in keep}), kind)


def settled_job(job: SegmentJob, trace: Trace, step: Any, reference: Optional[bool], executor: Any) -> SegmentJob:
    """The job once the trace is known: the reference's distances where asked (by default for
    imported proofs), over the torch model's parameters; and for a plain torch trace on an
    executor, this process's torch thread count, since torch's own sums follow the thread count
    and the workers would otherwise run with theirs."""
    wanted = trace.manifest.get("imported") is not None if reference is None else bool(reference)
    model = getattr(step, "model", None)
    if wanted and model is not None:
        job = dataclasses.replace(job, reference_names=tuple(n for n, _ in model.named_parameters()))
    if executor is not None and job.threads is None and trace.manifest["engine"] == "torch":
        import torch

        job = dataclasses.replace(job, threads=int(torch.get_num_threads()))
    return job
