"""The Proof-of-Learning reference's verdict, computed beside exactforge's.

The reference (``verify.py`` of cleverhans-lab/Proof-of-Learning) recomputes the steps from a
checkpoint and compares the model parameters (``net.parameters()`` concatenated, no buffers) with
the logged ones in four distances, each against a threshold: l1 <= 1000, l2 <= 10, linf <= 0.1
and cosine <= 0.001 (its ``--delta`` defaults). Its cosine distance divides by ``|w1| * |w1|``
where ``|w1| * |w2|`` is meant, so it is not the scale-blind measure it is documented as; it is
reproduced here as written, and the corrected one is reported beside it. It recomputes every
segment, or with ``--q`` the top-Q segments ranked by the logged update's size in each distance
(the union over the four). theta_0 is tested against its initialisation law with a
Kolmogorov-Smirnov test per layer (p < 0.01 fails).

exactforge's verdict and the reference's are reported side by side, with where and why they
differ: the reference's thresholds are orders of magnitude above benign reproduction errors,
so it accepts steps that exactforge's epsilon rejects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = [
    "THRESHOLDS",
    "METRICS",
    "reference_distances",
    "ReferenceVerdict",
    "reference_verdict",
    "AugmentationTolerance",
    "augmentation_tolerance",
]

METRICS = ("l1", "l2", "linf", "cos")
THRESHOLDS = {"l1": 1000.0, "l2": 10.0, "linf": 0.1, "cos": 0.001}


def reference_distances(
    w1_state: Dict[str, np.ndarray], w2_state: Dict[str, np.ndarray], names: Sequence[str]
) -> Dict[str, float]:
    """The reference's ``parameter_distance(w1, w2)`` over the parameters ``names`` in
    float32 torch arithmetic as it computes them, and the corrected cosine (``cos_fixed``)."""
    import torch

    w1 = torch.cat([torch.from_numpy(np.asarray(w1_state[n], np.float32)).reshape(-1) for n in names])
    w2 = torch.cat([torch.from_numpy(np.asarray(w2_state[n], np.float32)).reshape(-1) for n in names])
    d = w1 - w2
    n1, n2 = torch.norm(w1), torch.norm(w2)
    dot = torch.dot(w1, w2)
    return {
        "l1": float(torch.norm(d, p=1)),
        "l2": float(torch.norm(d, p=2)),
        "linf": float(torch.norm(d, p=float("inf"))),
        "cos": float(1 - dot / (n1 * n1)),
        "cos_fixed": float(1 - dot / (n1 * n2)),
    }


@dataclass
class ReferenceVerdict:
    accepted: bool
    policy: str  # "all" or "top-q"
    q: Optional[int]
    thresholds: Dict[str, float]
    segments: List[int]  # first step of each segment the reference would recompute and had recomputed here
    max_distance: Dict[str, float]
    above: Dict[str, int]  # segments over the threshold, per distance
    initialization: Optional[Dict[str, Any]]  # the KS test: smallest p-value, passed
    agreement: str  # where exactforge's verdict and the reference's differ, and why
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _top_q(updates: List[Dict[str, float]], q: int) -> List[int]:
    """The reference's choice: for each distance the q segments with the largest logged update,
    the union over the distances (positions in ``updates``)."""
    chosen: set = set()
    for m in METRICS:
        vals = np.array([u[m] for u in updates])
        chosen |= set(int(i) for i in np.argsort(-vals, kind="stable")[: min(q, len(vals))])
    return sorted(chosen)


def reference_verdict(
    steps: List[Any],
    *,
    exactforge_accepted: bool,
    epsilon: float,
    q: Optional[int] = None,
    initial_tests: Optional[List[Any]] = None,
    thresholds: Dict[str, float] = THRESHOLDS,
) -> Optional[ReferenceVerdict]:
    """The verdict from the recomputed segments' reference distances (``StepResult.reference``:
    ``recomputed`` against the logged end, ``update`` of the logged checkpoints). ``q``: the
    reference's top-Q policy (None: every segment). None when no segment carries them."""
    rows = [s for s in steps if getattr(s, "reference", None)]
    if not rows:
        return None
    pick = list(range(len(rows))) if q is None else _top_q([r.reference["update"] for r in rows], q)
    chosen = [rows[i] for i in pick]
    maxd = {m: max(r.reference["recomputed"][m] for r in chosen) for m in METRICS}
    above = {m: sum(r.reference["recomputed"][m] > thresholds[m] for r in chosen) for m in METRICS}
    init = None
    init_ok = True
    if initial_tests:
        p_min = min(t.p_value for t in initial_tests)
        init_ok = p_min >= 0.01
        init = {"min_p_value": p_min, "passed": init_ok, "layers": len(initial_tests)}
    accepted = not any(above.values()) and init_ok
    agreement = _agreement(exactforge_accepted, accepted, epsilon, maxd, thresholds, chosen, rows)
    return ReferenceVerdict(
        accepted,
        "all" if q is None else "top-q",
        q,
        dict(thresholds),
        [r.step for r in chosen],
        maxd,
        above,
        init,
        agreement,
    )


def _agreement(
    ours: bool, theirs: bool, epsilon: float, maxd: Dict[str, float], thr: Dict[str, float], chosen: List, rows: List
) -> str:
    if ours == theirs:
        # the distance nearest its threshold, as a fraction of it (its cosine can be negative)
        m = max(METRICS, key=lambda k: maxd[k] / thr[k])
        share = maxd[m] / thr[m]
        return f"both {'accept' if ours else 'reject'}" + (
            f"; the reference's {m} distance is {share:.3g} times its threshold" if share > 0 else ""
        )
    if not ours:
        failing = [r.step for r in rows if not r.passed]
        unseen = [s for s in failing if s not in {c.step for c in chosen}]
        why = (
            f"segments {unseen[:5]} are not among the ones the reference's top-Q recomputes"
            if unseen
            else "every distance is within the reference's thresholds"
        )
        return (
            f"exactforge rejects (a recomputed checkpoint differs by more than epsilon = {epsilon:g}) and the "
            f"reference accepts: {why}"
        )
    return "exactforge accepts and the reference rejects: its initialisation test failed or a distance is over its threshold"


@dataclass
class AugmentationTolerance:
    """How far honest replays land from the logged checkpoints when the training drew crops
    and flips from an RNG it did not log: each segment replayed under ``draws`` draws."""

    transform: str
    draws: int
    segments: List[int]
    l2: Dict[str, float]  # smallest and largest exactforge l2 distance over the replays
    reference_max: Dict[str, float]  # the reference's four distances, largest over the replays
    reference_accepts: bool  # every replay within the reference's thresholds
    epsilon_needed: float  # the l2 tolerance that accepts every honest replay measured here

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def augmentation_tolerance(
    directory: str,
    *,
    dataset: Any = None,
    data_path: Optional[str] = None,
    model: Any = None,
    draws: int = 4,
    segments: int = 3,
    seed: int = 0,
) -> AugmentationTolerance:
    """Replays the first ``segments`` segments of a torch trace ``draws`` times, each with the
    reference CIFAR loop's RandomCrop(padding 4) and RandomHorizontalFlip drawn afresh
    (:func:`exactforge.nn.augment.torch_crop_flip`), and measures the distances to the logged
    checkpoints: the tolerance a verifier needs to accept an honest proof trained that way,
    which no replay can reproduce exactly."""
    import torch

    from ..nn.augment import torch_crop_flip
    from .distances import verification_distance
    from .verifier import _pairs, engine_for, open_with_data, replay_segment

    trace, data = open_with_data(directory, dataset, data_path)
    if trace.manifest["engine"] != "torch":
        raise ValueError("augmentation: a torch trace is needed (the proof's model replayed with torch)")
    load, step, _ = engine_for(trace, data, None, model)
    names = [n for n, _ in step.model.named_parameters()]
    gen = torch.Generator()
    step.augment = lambda x, step, examples: torch_crop_flip(x, gen)
    segs = list(trace.segments())[: max(1, segments)]
    l2s: List[float] = []
    ref: Dict[str, float] = {m: 0.0 for m in METRICS}
    for s, e in segs:
        start, logged = load(s), load(e)
        for d in range(draws):
            # far from the small seeds training loops use, so a draw does not replay the original by chance
            gen.manual_seed(((seed + 1) * 0x9E3779B97F4A7C15 + s * 1009 + d) % 2**63)
            state = replay_segment(trace, step, start, s, e)
            l2s.append(float(verification_distance(_pairs(state, logged), "l2")))
            dist = reference_distances(logged, state, names)
            ref = {m: max(ref[m], dist[m]) for m in METRICS}
    accepts = all(ref[m] <= THRESHOLDS[m] for m in METRICS)
    return AugmentationTolerance(
        "random crop (padding 4) and horizontal flip",
        draws,
        [s for s, _ in segs],
        {"min": min(l2s), "max": max(l2s)},
        ref,
        accepts,
        max(l2s),
    )
