"""The verifier's checks beside the recomputation: each answers one way a trace can pass every
distance and still prove no training, and has its own verdict and JSON key in the report.

* ``vacuous``: a segment whose logged update changes no coordinate of the model, or whose
  recomputed update is no larger than epsilon (at epsilon = 0: rounds to nothing). Such a step
  passes whatever its batch; an infinitesimal-update spoof (Fang et al.) is made of them.
* ``schedule``: learning rates that the declared schedule does not give (a spoof can shrink the
  rate of the steps it cannot explain).
* ``domain``: examples of the recomputed batches outside the data's declared range or grid;
  Zhang et al.'s spoof adds optimised noise to public data.
* ``known-data``: examples of the recomputed batches that are not in a data set the verifier
  holds itself (the trace's data may be the prover's file).
* ``interval``: the largest gap between checkpoints against the verifier's bound; spoofs that
  optimise noise are fragile to short intervals (Fang et al.).

A check is always computed and reported; it rejects the trace only where the caller requires
it, since honest loops can fail some of them (a schedule that ends at a rate of 0 makes its last
step vacuous)."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "CHECKS",
    "data_checks",
    "failed_checks",
    "interval_check",
    "parse_checks",
    "schedule_check",
    "vacuous_check",
]

CHECKS = ("vacuous", "schedule", "domain", "known-data", "interval")


def parse_checks(value: Optional[Iterable[str]]) -> Tuple[str, ...]:
    """The required checks from names (or one comma-separated string); refuses unknown names."""
    if value is None:
        return ()
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    if names == ["all"]:
        return CHECKS
    bad = [n for n in names if n not in CHECKS]
    if bad:
        raise ValueError(f"require: unknown check {bad[0]!r}; expected names from {CHECKS} or 'all'")
    return tuple(dict.fromkeys(names))


def failed_checks(report: Any) -> List[str]:
    """The checks a verification report failed, by name, in CHECKS' order (required or not)."""
    out = []
    for name in CHECKS:
        result = getattr(report, name.replace("-", "_"), None)
        if result is not None and not result["passed"]:
            out.append(name)
    return out


def vacuous_check(steps: Sequence[Any], epsilon: float) -> Optional[Dict[str, Any]]:
    """Segments whose logged update moved no coordinate, or whose recomputed update is <= epsilon."""
    rows = [r for r in steps if r.moved is not None]
    if not rows:
        return None
    still = [r.step for r in rows if r.moved == 0.0 or (r.update is not None and r.update <= epsilon)]
    updates = [r.update for r in rows if r.update is not None]
    return {
        "passed": not still,
        "segments": still[:100],
        "count": len(still),
        "least_moved": min(r.moved for r in rows),
        "smallest_update": min(updates) if updates else None,
    }


def schedule_check(rates: Optional[Dict[str, Any]], lr: float) -> Dict[str, Any]:
    """Whether every recorded learning rate is the declared one or the declared scheduler's."""
    if rates is None or not rates["per_step"]:
        return {"passed": True, "reason": f"one declared rate throughout ({lr:g})"}
    if rates["follows"]:
        return {"passed": True, "reason": f"the declared {rates['scheduler']} gives every recorded rate"}
    return {"passed": False, "reason": rates["reason"] or "recorded rates the declared schedule does not give"}


def _rows_key(X: np.ndarray, y: np.ndarray) -> List[bytes]:
    flat = np.ascontiguousarray(X.reshape(len(X), -1))
    return [flat[i].tobytes() + np.int64(y[i]).tobytes() for i in range(len(flat))]


def data_checks(
    trace: Any, segs: Sequence[Tuple[int, int]], data: Any, known: Any = None
) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """(domain, known_data) over the examples the recomputed segments use."""
    from ..data import values_in_domain

    used: set = set()
    for s, e in segs:
        for rec in trace.iter_records(s, e):
            if rec.batch is not None:
                used.update(int(i) for i in rec.batch)
    idx = np.array(sorted(used), dtype=np.int64)
    outside: List[int] = []
    if data.vocab is None and data.domain is not None and len(idx):
        y = data.y[idx]
        ok = values_in_domain(data.X[idx], data.levels, domain=data.domain) & (y >= 0) & (y < data.num_classes)
        outside = [int(i) for i in idx[~ok]]
    lo_hi = "no declared range" if data.domain is None else f"[{data.domain[0]:g}, {data.domain[1]:g}]"
    domain = {
        "passed": not outside,
        "examples": len(idx),
        "outside": len(outside),
        "first": outside[:10],
        "domain": f"{lo_hi}" + (f", {data.levels} levels" if data.levels else ""),
    }
    if known is None:
        return domain, None
    have = set(_rows_key(np.asarray(known.X, data.X.dtype), known.y))
    keys = _rows_key(data.X[idx], data.y[idx]) if len(idx) else []
    unknown = [int(i) for i, k in zip(idx, keys) if k not in have]
    return domain, {
        "passed": not unknown,
        "examples": len(idx),
        "unknown": len(unknown),
        "first": unknown[:10],
        "known": getattr(known, "name", "given"),
    }


def interval_check(trace: Any, max_interval: Optional[int]) -> Dict[str, Any]:
    """The largest gap between consecutive checkpoints, against ``max_interval`` (None: no bound)."""
    steps = trace.checkpoint_steps
    gap = max((b - a for a, b in zip(steps, steps[1:])), default=0)
    return {
        "passed": max_interval is None or gap <= max_interval,
        "checkpoint_every": trace.manifest.get("checkpoint_every"),
        "largest_gap": gap,
        "max_interval": max_interval,
    }
