"""What a verification reports: each recomputed segment (``StepResult``) and the verdict
(``VerificationReport``, its JSON in ``to_dict``), with the numbers a segment is judged by (the
verifier's resolution, the share of coordinates a logged update moved)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["StepResult", "VerificationReport", "resolution", "moved_share", "add_result"]


@dataclass
class StepResult:
    step: int  # first step of the recomputed segment
    end_step: int  # the checkpoint it is compared with
    error: float  # distance(recomputed theta_end, logged theta_end)
    passed: bool
    seconds: float
    # The verifier's resolution at this checkpoint, in gradient units: a change of the gradient
    # smaller than ulp(theta_end_j) / (2 lr) in coordinate j can vanish when theta_end is rounded,
    # so epsilon = 0 cannot tell such gradients apart. Median and smallest over the coordinates.
    resolution: Optional[float] = None
    resolution_min: Optional[float] = None
    # the Proof-of-Learning reference's distances where they are asked for (imported proofs):
    # "recomputed" (logged end vs recomputed) and "update" (logged start vs logged end)
    reference: Optional[Dict[str, Dict[str, float]]] = None
    # share of the model's float coordinates that the logged segment changed: 0 is a vacuous
    # segment (every update below the resolution, as an "infinitesimal update" spoof makes them)
    moved: Optional[float] = None
    # the verifier's distance between the recomputed end and the segment's start: an update no
    # larger than epsilon proves nothing about its batch (any batch, or none, passes)
    update: Optional[float] = None


def moved_share(start: Dict[str, np.ndarray], end: Dict[str, np.ndarray]) -> float:
    """The share of the model's float coordinates (optimizer state left out) that differ
    between two checkpoints."""
    changed = total = 0
    for k, v in end.items():
        a = np.asarray(v)
        if a.dtype.kind != "f" or k.startswith("optimizer.") or k not in start:
            continue
        changed += int(np.count_nonzero(a != np.asarray(start[k])))
        total += a.size
    return changed / total if total else 1.0


def resolution(theta: Dict[str, np.ndarray], lr: float) -> Tuple[float, float]:
    """(median, min) over the float coordinates of ulp(theta_j) / (2 lr): below it a gradient
    change can vanish in the rounding of theta_{t+1} = theta_t - lr * g (see the README).

    An ulp is a power of two, so a checkpoint has only a few distinct values: they are counted
    a chunk at a time (no float64 copy of the model, which the verifier's memory bound forbids)
    and the median is taken from the counts, as np.median would."""
    counts: Dict[float, int] = {}
    for v in theta.values():
        flat = np.asarray(v).reshape(-1)
        if flat.dtype.kind != "f":
            continue
        for i in range(0, flat.size, 1 << 16):
            vals, cnt = np.unique(np.spacing(np.abs(flat[i : i + (1 << 16)])), return_counts=True)
            for u, c in zip(vals.astype(np.float64) / (2.0 * lr), cnt):
                counts[float(u)] = counts.get(float(u), 0) + int(c)
    if not counts:
        return float("nan"), float("nan")
    keys = sorted(counts)
    total = sum(counts.values())

    def kth(k: int) -> float:  # the k-th smallest value (0-based)
        seen = 0
        for u in keys:
            seen += counts[u]
            if k < seen:
                return u
        return keys[-1]

    lo, hi = kth((total - 1) // 2), kth(total // 2)
    return float((lo + hi) / 2) if lo != hi else lo, keys[0]


@dataclass
class VerificationReport:
    accepted: bool
    max_error: float
    epsilon: float
    distance: str
    policy: str
    steps: List[StepResult] = field(default_factory=list)
    epsilon_source: Optional[str] = None  # how epsilon was set (the caller's, or auto: calibrated here)
    reason: Optional[str] = None  # why the trace or an argument is invalid (then accepted is False)
    valid: bool = True
    num_steps: int = 0  # steps covered by checkpoints
    declared_steps: Optional[int] = None
    complete: bool = False  # every declared step is recorded (the last record is final)
    partial: bool = False  # an incomplete trace verified as a prefix (allow_partial)
    unverified_tail: int = 0  # recorded steps after the last checkpoint (partial traces only)
    initial: Optional[str] = None  # "seeded" (theta_0 recomputed and equal) or "given"
    initial_verified: bool = False  # theta_0 recomputed from a declared seed and equal, bit for bit
    initial_test: Optional[List[Dict[str, Any]]] = None  # per layer, with initial_test=True (KS against the init law)
    resolution: Optional[float] = None  # median over the segments of StepResult.resolution
    engine: str = ""
    permute_batches: Optional[int] = None
    threads: Optional[int] = None
    total_segments: int = 0  # segments of the (verified prefix of the) trace; steps holds the recomputed ones
    checkpoints_checked: int = 0  # checkpoints whose file, hash, header and weights were checked (all, any policy)
    # manifest fields no verifier can check (the prover's word: when, where, the data's name, 'extra')
    declared: List[str] = field(default_factory=list)
    # torch traces: the learning rates the records carry, and whether the declared scheduler
    # replays them (see learning_rates())
    learning_rates: Optional[Dict[str, Any]] = None
    # the Proof-of-Learning reference's verdict beside this one (exactforge.verify.reference)
    reference: Optional[Dict[str, Any]] = None
    # segments whose logged update changes no coordinate of the model: they pass any epsilon
    # and prove no training (an update below the resolution rounds to nothing)
    vacuous: Optional[Dict[str, Any]] = None
    # the other checks of exactforge.verify.checks, each with "passed"; ``required`` names the
    # checks whose failure rejects the trace (the others are reported only)
    schedule: Optional[Dict[str, Any]] = None
    domain: Optional[Dict[str, Any]] = None
    known_data: Optional[Dict[str, Any]] = None
    interval: Optional[Dict[str, Any]] = None
    required: List[str] = field(default_factory=list)
    executor: Optional[Dict[str, Any]] = (
        None  # where the segments ran (None: here, serially); see exactforge.verify.ray
    )
    # the trace's declared machine beside this one (exactforge.verify.machines): "bound" (its bits
    # depend on the CPU: torch's kernels), "differences" ({"fact", "trace", "here"}) and the facts
    # the trace does not record ("unrecorded"); set once the segments are recomputed
    machines: Optional[Dict[str, Any]] = None
    # a torch trace's arithmetic: "portable-1" (the same bits on every CPU) or "torch" (its
    # kernels', bound to the machine; also traces from before the field); None for the native engine
    arithmetic: Optional[str] = None
    # how the inputs were augmented in the replay: "keyed" (KeyedAugment), "recovered" (an
    # imported proof's draws from its recovered stream), "fresh draws" (an imported proof whose
    # stream was not recovered: the tolerance it needs is --pol-augmentation's), or None
    augmentation: Optional[str] = None
    # the verifier's settings (VerifyOptions.to_dict): what this verdict was reached under
    options: Optional[Dict[str, Any]] = None

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["max_error"] = _json_float(self.max_error)
        d["epsilon"] = _json_float(self.epsilon)
        d["resolution"] = _json_float(self.resolution) if self.resolution is not None else None
        for s in d["steps"]:
            for k in ("error", "resolution", "resolution_min"):
                s[k] = _json_float(s[k]) if s[k] is not None else None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)


def _json_float(x: Any) -> Any:
    """JSON has no NaN or infinity: an undefined number is null."""
    try:
        return float(x) if math.isfinite(float(x)) else None
    except (TypeError, ValueError):
        return None


def add_result(report: VerificationReport, r: StepResult) -> None:
    report.steps.append(r)
    report.max_error = max(report.max_error, r.error) if math.isfinite(r.error) else float("inf")
