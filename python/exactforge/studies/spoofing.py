"""How the spoofing attacks fare against each verifier, in three sweeps that each move one variable.

Two victims are trained on the same data (the native reproducible path and plain torch). Every
spoof of exactforge.forging.spoof is built against each and verified once; the verdicts of every
verifier come from that one report:

* exactforge at epsilon 0 (the native victim's spoofs) and at torch's calibrated epsilon (the
  torch victim's);
* the Proof-of-Learning reference (the torch victim's spoofs) at its current thresholds and at
  those of its first upload (51909cc, cosine ten times tighter), each recomputing every segment
  and with its per-epoch top-Q. The report's per-segment reference distances are judged again
  with :func:`exactforge.verify.reference.reference_verdict` for each threshold set and policy.

A spoof's checkpoints on the line from theta_0 to theta_T lie ``final distance / checkpoints``
apart (the *dummy spacing*: the error of a segment whose update is zero), so the spoof's steps,
its checkpoint interval k and its number of checkpoints are tied by steps = k x checkpoints.
Holding the total steps, as a single sweep over k does, moves k and the spacing together. The
sweeps here separate them:

* ``k``: the checkpoint interval, with the number of checkpoints (so the spacing) held;
* ``spacing``: the number of checkpoints (so the spacing), with k held;
* ``max_interval``: the interval check's bound, with one spoof held (judged again from its
  report: the check reads only the largest gap between checkpoints).

"Checks on" adds every check of exactforge.verify.checks: vacuous steps, the learning-rate
schedule, the data's domain, the verifier's own copy of the public data, and a checkpoint interval
of at most ``max_interval`` steps. The measured spacing is the mean l2 distance between the
spoof's consecutive logged checkpoints, theta_0 first, read back from its trace.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["REFERENCE_VARIANTS", "SWEEPS", "VERIFIERS", "distinct_rows", "spoofing_study"]

# (verifier, THRESHOLD_SETS name, top-Q): the reference's policies judged from one report
REFERENCE_VARIANTS: Tuple[Tuple[str, str, bool], ...] = (
    ("PoL reference, current thresholds, every segment", "current", False),
    ("PoL reference, current thresholds, top-Q", "current", True),
    ("PoL reference, 51909cc thresholds, every segment", "51909cc", False),
    ("PoL reference, 51909cc thresholds, top-Q", "51909cc", True),
)
VERIFIERS = ("native, epsilon 0", "torch, calibrated epsilon") + tuple(v[0] for v in REFERENCE_VARIANTS)
SWEEPS = ("k", "spacing", "max_interval")


def _victims(out: str, data: Any, steps: int, batch: int, seed: int) -> Dict[str, str]:
    from ..models.native import ModelSpec
    from ..trace.record import record_native, record_torch_fcn

    spec = ModelSpec("fcn", data.dim, data.num_classes, hidden=(100,))
    paths = {"native": os.path.join(out, "victim-native"), "torch": os.path.join(out, "victim-torch")}
    record_native(paths["native"], spec, data, steps=steps, batch_size=batch, seed=seed)
    record_torch_fcn(paths["torch"], spec, data, steps=steps, batch_size=batch, seed=seed)
    return paths


def _positive(name: str, values: Sequence[int]) -> List[int]:
    out = [int(v) for v in values]
    if not out or any(isinstance(v, bool) or v < 1 for v in out):
        raise ValueError(f"{name}: expected positive whole numbers, got {list(values)!r}")
    return out


def spoofing_study(
    out: str,
    data: Any,
    *,
    steps: int = 100,
    batch: int = 100,
    seed: int = 0,
    noise_steps: int = 5,
    checkpoints: int = 200,
    intervals: Sequence[int] = (1, 2, 4),
    interval: int = 1,
    checkpoint_counts: Sequence[int] = (10, 50, 200, 1000),
    max_interval: int = 10,
    max_intervals: Sequence[int] = (1, 2, 4, 10),
    q: int = 2,
    attacks: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """Trains the victims for ``steps`` steps, then runs the three sweeps: every k of ``intervals``
    with ``checkpoints`` checkpoints (spoof steps k x checkpoints); every number of checkpoints of
    ``checkpoint_counts`` at k = ``interval``; every bound of ``max_intervals`` on the spoof of the
    largest k of the first sweep. The checks use ``max_interval`` outside the third sweep; the
    reference's top-Q takes ``q`` segments per epoch. Returns the rows (one per sweep point, spoof
    and verifier), the spoofs with their measured spacing, and the success rates over the distinct
    spoofs. Traces go under ``out``."""
    from ..forging.spoof import SPOOFS

    ks = _positive("intervals", intervals)
    counts = _positive("checkpoint_counts", checkpoint_counts)
    bounds = _positive("max_intervals", max_intervals)
    c0, k0 = _positive("checkpoints", [checkpoints])[0], _positive("interval", [interval])[0]
    max_interval, q = _positive("max_interval", [max_interval])[0], _positive("q", [q])[0]
    attacks = tuple(attacks or SPOOFS)
    victims = _victims(out, data, steps, batch, seed)
    cache: Dict[Tuple[str, str, int, int], Dict[str, Any]] = {}

    def judged(attack: str, engine: str, k: int, c: int) -> Dict[str, Any]:
        key = (attack, engine, k, c)
        if key not in cache:
            cache[key] = _spoof_and_judge(
                victims[engine], attack, engine, out, data, k, c, seed=seed + 1, noise_steps=noise_steps, q=q
            )
        return cache[key]

    rows: List[Dict[str, Any]] = []
    k_held = max(ks)
    plan = [("k", k, c0, max_interval) for k in ks] + [("spacing", k0, c, max_interval) for c in counts]
    plan += [("max_interval", k_held, c0, m) for m in bounds]
    for sweep, k, c, bound in plan:
        for attack in attacks:
            for engine in victims:
                rows += _rows(sweep, judged(attack, engine, k, c), bound)
    spoofs = [
        {key: v for key, v in j.items() if key not in ("verdicts", "report_failed", "largest_gap")}
        for j in cache.values()
    ]
    distinct = _distinct(rows)
    return {
        "steps": steps,
        "batch": batch,
        "noise_steps": noise_steps,
        "q": q,
        "max_interval": max_interval,
        "spoof_steps": sorted({s["steps"] for s in spoofs}),
        "intervals": sorted({s["k"] for s in spoofs}),
        "sweeps": {
            "k": {"held": {"checkpoints": c0}, "values": ks},
            "spacing": {"held": {"k": k0}, "checkpoints": counts},
            "max_interval": {"held": {"k": k_held, "checkpoints": c0, "spoof_steps": k_held * c0}, "values": bounds},
        },
        "verifiers": _verifier_notes(q),
        "spoofs": spoofs,
        "rows": rows,
        "success": _rates(distinct),
    }


def _verifier_notes(q: int) -> Dict[str, str]:
    from ..verify.reference import THRESHOLD_SETS

    notes = {
        VERIFIERS[0]: "exactforge, native engine, epsilon 0 (the native victim's spoofs)",
        VERIFIERS[1]: "exactforge, torch engine, epsilon calibrated on the spoof's first segments",
    }
    for name, tset, topq in REFERENCE_VARIANTS:
        entry = THRESHOLD_SETS[tset]
        thr = ", ".join(f"{m} {v:g}" for m, v in entry["thresholds"].items())
        how = f"per epoch the Q = {q} segments with the largest logged update" if topq else "every segment"
        notes[name] = f"the reference's code as of {entry['commit']}, thresholds {thr}; {how}"
    return notes


def _spoof_and_judge(
    victim: str, attack: str, engine: str, out: str, data: Any, k: int, c: int, *, seed: int, noise_steps: int, q: int
) -> Dict[str, Any]:
    """Builds one spoof of k x c steps, verifies it once, and judges it by every verifier its
    engine has."""
    from ..forging.spoof import spoof, verify_spoof
    from ..verify.checks import failed_checks

    where = os.path.join(out, f"{attack}-{engine}-k{k}-c{c}")
    s = spoof(
        victim,
        attack,
        where,
        dataset=data,
        steps=k * c,
        checkpoint_every=k,
        seed=seed,
        noise_steps=noise_steps,
    )
    native = engine == "native"
    # the bound is applied per sweep point from the reported gap, so the report carries none
    rep = verify_spoof(s, data, epsilon=0.0 if native else "auto", max_interval=None, reference=not native)
    verdicts: List[Dict[str, Any]] = [
        {"verifier": VERIFIERS[0 if native else 1], "accepted": bool(rep.accepted), "epsilon": float(rep.epsilon)}
    ]
    if not native:
        verdicts += _reference_verdicts(rep, where, k, q)
    spacing, checkpoints = _spacing(where)
    entry: Dict[str, Any] = {
        "attack": attack,
        "engine": engine,
        "k": k,
        "steps": k * c,
        "checkpoints": checkpoints,
        "spacing": spacing,
        "final_distance": float(s.final_distance),
        "max_error": float(rep.max_error),
        "epsilon": float(rep.epsilon),
        "synthesised": int(s.synthesised),
        "spoof_lr": float(s.step_lr),
        "seconds": float(s.seconds),
        "verdicts": verdicts,
        "report_failed": [f for f in failed_checks(rep) if f != "interval"],
        "largest_gap": int(rep.interval["largest_gap"]) if rep.interval else k,
    }
    segments = getattr(s, "segments", None)
    if segments is not None:  # the spoofer's own per-segment account, where it gives one
        entry["segments"] = [dict(seg) for seg in segments]
    for key in ("noise_weight", "noise_l2", "within_thresholds", "rate_rule"):
        if getattr(s, key, None) is not None:
            entry[key] = getattr(s, key)
    return entry


def _reference_verdicts(rep: Any, where: str, k: int, q: int) -> List[Dict[str, Any]]:
    """The reference's verdict for each threshold set and policy, from the one report's
    per-segment distances; epochs as the verifier infers them for top-Q."""
    from ..trace import Trace
    from ..verify.reference import infer_epochs, reference_verdict

    man = Trace.open(where).manifest
    n_steps = int(man["steps"])
    epochs = infer_epochs(n_steps, int(man.get("batch_size") or 1), int(man["data"]["num_examples"]))
    init = (rep.reference or {}).get("initialization")
    # reference_verdict reads only the smallest p-value of the initialisation test
    tests = [SimpleNamespace(p_value=init["min_p_value"])] if init else None
    out: List[Dict[str, Any]] = []
    for name, tset, topq in REFERENCE_VARIANTS:
        v = reference_verdict(
            rep.steps,
            exactforge_accepted=bool(rep.accepted),
            epsilon=float(rep.epsilon),
            q=q if topq else None,
            initial_tests=tests,
            thresholds=tset,
            epochs=epochs if topq else None,
            epochs_source="inferred" if topq else None,
            num_steps=n_steps,
            save_freq=k,
        )
        if v is None:
            continue
        out.append(
            {
                "verifier": name,
                # the verifier's own verdict also fails an imported proof whose data hash does not
                # match; that holds whatever the thresholds
                "accepted": bool(v.accepted) and (rep.reference or {}).get("hash") != "invalid",
                "epsilon": None,
                "max_distance": dict(v.max_distance),
                "above": dict(v.above),
                "segments_checked": len(v.segments),
                "epochs": v.epochs,
            }
        )
    return out


def _spacing(where: str) -> Tuple[float, int]:
    """(mean l2 between consecutive logged checkpoints, theta_0 first; checkpoints after theta_0)."""
    from ..trace import Trace

    t = Trace.open(where)
    steps = t.checkpoint_steps

    def flat(step: int) -> np.ndarray:
        ck = t.load_checkpoint(step)
        return np.concatenate([np.asarray(ck[n], np.float64).ravel() for n in sorted(ck)])

    prev, gaps = flat(steps[0]), []
    for step in steps[1:]:
        cur = flat(step)
        gaps.append(float(np.linalg.norm(cur - prev)))
        prev = cur
    return float(np.mean(gaps)) if gaps else 0.0, len(gaps)


def _rows(sweep: str, j: Dict[str, Any], bound: int) -> List[Dict[str, Any]]:
    from ..verify.checks import CHECKS

    failed = list(j["report_failed"]) + (["interval"] if j["largest_gap"] > bound else [])
    failed = [c for c in CHECKS if c in failed]
    rows = []
    for v in j["verdicts"]:
        row = {
            "sweep": sweep,
            "attack": j["attack"],
            "engine": j["engine"],
            "k": j["k"],
            "spoof_steps": j["steps"],
            "checkpoints": j["checkpoints"],
            "spacing": j["spacing"],
            "max_interval": bound,
            "verifier": v["verifier"],
            "epsilon": v["epsilon"],
            "max_error": j["max_error"],
            "accepted": v["accepted"],
            "failed_checks": failed,
            "accepted_with_checks": bool(v["accepted"] and not failed),
        }
        row.update({key: v[key] for key in ("max_distance", "segments_checked", "epochs") if key in v})
        rows.append(row)
    return rows


def _distinct(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Each spoof and verifier once, at the study's own bound: the rows of the k and spacing
    sweeps (which share their common point)."""
    seen, out = set(), []
    for r in rows:
        key = (r["attack"], r["engine"], r["k"], r["spoof_steps"], r["verifier"])
        if r["sweep"] != "max_interval" and key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _rates(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per verifier: spoofs accepted over spoofs tried, with the checks off and on."""
    out: Dict[str, Dict[str, Any]] = {}
    for v in VERIFIERS:
        mine = [r for r in rows if r["verifier"] == v]
        if mine:
            out[v] = {
                "tried": len(mine),
                "accepted": sum(r["accepted"] for r in mine),
                "accepted_with_checks": sum(r["accepted_with_checks"] for r in mine),
            }
    return out


def distinct_rows(study: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The rows of the k and spacing sweeps, each spoof and verifier once (what ``success`` counts)."""
    return _distinct(study["rows"])
