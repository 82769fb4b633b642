"""The Proof-of-Learning reference's verdict, computed beside exactforge's.

The reference (``verify.py`` of cleverhans-lab/Proof-of-Learning, as of commit c286c7c)
recomputes the steps from a checkpoint and compares the model parameters (``net.parameters()``
concatenated, no buffers, no optimizer state) with the logged ones in four distances, each
against a threshold: l1 <= 1000, l2 <= 10, linf <= 0.1 and cosine <= 0.01 (its ``--delta``
defaults since commit 99463ed; the first upload, 51909cc, had cosine <= 0.001:
:data:`THRESHOLD_SETS`). Its cosine distance divides by ``|w1| * |w1|`` where ``|w1| * |w2|`` is
meant, so it is not the scale-blind measure it is documented as; it is reproduced here as
written, and the corrected one is reported beside it. It recomputes every segment, or with
``--q`` (``verify_topq``) per epoch the Q segments with the largest logged update in each
distance, the union over the four (:func:`topq_selection`). theta_0 is tested against its
initialisation law with a Kolmogorov-Smirnov test per layer (p < 0.01 fails).

exactforge's verdict and the reference's are reported side by side, with where and why they
differ: the reference's thresholds are orders of magnitude above benign reproduction errors,
so it accepts steps that exactforge's epsilon rejects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import reduce
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "REFERENCE_COMMIT",
    "THRESHOLDS",
    "THRESHOLD_SETS",
    "METRICS",
    "parse_thresholds",
    "infer_epochs",
    "topq_selection",
    "reference_distances",
    "ReferenceVerdict",
    "reference_verdict",
    "AugmentationTolerance",
    "augmentation_tolerance",
]

METRICS = ("l1", "l2", "linf", "cos")
# the reference's HEAD when its verify.py and utils.py were last compared with this module
REFERENCE_COMMIT = "c286c7c"
# its --delta defaults (for --dist 1 2 inf cos) per revision: a proof checked with the first
# upload's defaults met a cosine threshold ten times tighter than one checked today
THRESHOLD_SETS: Dict[str, Dict[str, Any]] = {
    "current": {
        "commit": REFERENCE_COMMIT,
        "since": "99463ed",
        "date": "2021-03-04",
        "thresholds": {"l1": 1000.0, "l2": 10.0, "linf": 0.1, "cos": 0.01},
    },
    "51909cc": {
        "commit": "51909cc",
        "since": "51909cc",
        "date": "2021-02-27",
        "thresholds": {"l1": 1000.0, "l2": 10.0, "linf": 0.1, "cos": 0.001},
    },
}
_ALIASES = {"c286c7c": "current", "99463ed": "current", "2021-03-04": "current", "2021-02-27": "51909cc"}
THRESHOLDS: Dict[str, float] = dict(THRESHOLD_SETS["current"]["thresholds"])


def parse_thresholds(spec: Any = None) -> Tuple[Dict[str, float], str, Optional[str]]:
    """(thresholds, name, commit) of ``spec``: None (the current ones), a named set of
    :data:`THRESHOLD_SETS` or one of its commits or dates, four numbers for l1, l2, linf and
    cosine ("1000,10,0.1,0.01", a sequence, or a mapping by metric). Numbers equal to a named
    set take its name and commit; others are "given", with no commit. ValueError otherwise."""
    if spec is None:
        spec = "current"
    if isinstance(spec, str):
        key = spec.strip()
        key = _ALIASES.get(key, key)
        if key in THRESHOLD_SETS:
            return dict(THRESHOLD_SETS[key]["thresholds"]), key, THRESHOLD_SETS[key]["commit"]
        parts = [p for p in key.split(",")]
        if len(parts) != len(METRICS):
            raise ValueError(
                f"expected four numbers L1,L2,LINF,COS or one of {', '.join(THRESHOLD_SETS)}, got {spec!r}"
            )
        spec = parts
    if isinstance(spec, Mapping):
        if set(spec) != set(METRICS):
            raise ValueError(f"expected thresholds for {', '.join(METRICS)}, got {sorted(spec)}")
        raw = [spec[m] for m in METRICS]
    else:
        raw = list(spec)
        if len(raw) != len(METRICS):
            raise ValueError(f"expected four thresholds (l1, l2, linf, cos), got {len(raw)}")
    values: Dict[str, float] = {}
    for m, v in zip(METRICS, raw):
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"the {m} threshold: expected a number, got {v!r}") from None
        # a NaN threshold would accept every distance (every comparison with it is false)
        if x != x or x < 0:
            raise ValueError(f"the {m} threshold: expected a number >= 0, got {v!r}")
        values[m] = x
    for name, entry in THRESHOLD_SETS.items():
        if entry["thresholds"] == values:
            return values, name, entry["commit"]
    return values, "given", None


def infer_epochs(steps: int, batch_size: int, num_examples: int) -> int:
    """The epochs of a proof the reference's ``train.py`` made: ``create_sequences`` joins one
    permutation of the data per epoch and cuts the whole into ``floor(epochs * n / b)``
    batches, so (with b <= n) the epochs are the smallest whole number with
    ``steps * b <= epochs * n``."""
    if steps < 1 or batch_size < 1 or num_examples < 1:
        raise ValueError(f"epochs: cannot infer them from {steps} steps of {batch_size} over {num_examples} examples")
    return max(1, -(-steps * batch_size // num_examples))


def topq_selection(
    updates: Mapping[int, Mapping[str, float]], num_steps: int, save_freq: int, epochs: int, q: int
) -> Tuple[List[int], List[Dict[str, Any]], List[str]]:
    """The segments the reference's ``verify_topq`` recomputes, by checkpoint index (segment i
    starts at step ``i * save_freq``), with the epochs they come from and notes where its own
    code would behave otherwise. ``updates[i]``: the logged update of segment i in each
    distance (an index missing from it was not measured here, and is left out of the ranking).

    As its loop: ``ckpt_per_epoch = num_steps / epochs / save_freq``; epoch e covers the
    checkpoints ``np.round(ckpt_per_epoch * e)`` to ``np.round(ckpt_per_epoch * (e + 1))``
    (rounding half to even); in each, the q largest per distance by ``np.argpartition``, the
    union over the distances."""
    if save_freq < 1 or epochs < 1 or num_steps < 1:
        raise ValueError(
            f"top-Q: needs steps, a checkpoint interval and epochs >= 1, got {num_steps}, {save_freq}, {epochs}"
        )
    ckpt_per_epoch = num_steps / epochs / save_freq
    chosen: List[int] = []
    per_epoch: List[Dict[str, Any]] = []
    notes: List[str] = []
    end = 0
    for epoch in range(epochs):
        start = int(np.round(ckpt_per_epoch * epoch))
        end = int(np.round(ckpt_per_epoch * (epoch + 1)))
        present = [i for i in range(start, end) if i in updates]
        picked: List[int] = []
        if present:
            dist = np.array([[float(updates[i][m]) for i in present] for m in METRICS])
            k = min(q, len(present))
            top = reduce(np.union1d, list(np.argpartition(dist, -k, axis=1)[:, -k:]))
            picked = [present[int(j)] for j in top]
        if 0 < end - start < q:
            # argpartition's kth = -q is out of bounds: the reference stops with a ValueError
            notes.append(
                f"epoch {epoch + 1} holds {end - start} segment(s), fewer than Q = {q}: the reference's verify_topq "
                "raises there (np.argpartition); here all of them are taken"
            )
        elif end == start:
            notes.append(f"epoch {epoch + 1} holds no segment: the reference recomputes nothing there")
        if len(present) < end - start:
            notes.append(
                f"epoch {epoch + 1}: {end - start - len(present)} of its {end - start} segments were not recomputed "
                "here, so they are not ranked; the reference ranks them all"
            )
        per_epoch.append(
            {
                "epoch": epoch + 1,
                "steps": [start * save_freq, min(end * save_freq, num_steps)],
                "segments": end - start,
                "chosen": [i * save_freq for i in picked],
            }
        )
        chosen.extend(picked)
    last = -(-num_steps // save_freq)  # segments of the trace
    if end < last:
        notes.append(
            f"segments from step {end * save_freq} on lie after the reference's last epoch boundary "
            f"(np.round({num_steps} / {save_freq}) = {end} checkpoints): its top-Q never recomputes them"
        )
    return chosen, per_epoch, notes


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
    # where the thresholds come from: a THRESHOLD_SETS name and its commit, or "given" (None)
    thresholds_set: str = "current"
    thresholds_commit: Optional[str] = REFERENCE_COMMIT
    reference_commit: str = REFERENCE_COMMIT  # the reference's code these semantics follow
    # top-q: the epochs its selection divides the trace into, how they were set ("given", or
    # inferred from the steps, batch size and data), and per epoch its steps and chosen segments
    epochs: Optional[int] = None
    epochs_source: Optional[str] = None
    per_epoch: Optional[List[Dict[str, Any]]] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def reference_verdict(
    steps: List[Any],
    *,
    exactforge_accepted: bool,
    epsilon: float,
    q: Optional[int] = None,
    initial_tests: Optional[List[Any]] = None,
    thresholds: Any = None,
    epochs: Optional[int] = None,
    epochs_source: Optional[str] = None,
    num_steps: Optional[int] = None,
    save_freq: Optional[int] = None,
) -> Optional[ReferenceVerdict]:
    """The verdict from the recomputed segments' reference distances (``StepResult.reference``:
    ``recomputed`` against the logged end, ``update`` of the logged checkpoints). ``q``: the
    reference's top-Q policy (None, or q <= 0 as its ``--q``: every segment), per epoch over
    ``epochs`` (None: 1, its ``verify_topq``'s default) of the ``num_steps`` steps checkpointed
    every ``save_freq`` (None: read from the segments). ``thresholds``: anything
    :func:`parse_thresholds` takes (None: the current ones). None when no segment carries the
    distances."""
    thr, thr_name, thr_commit = parse_thresholds(thresholds)
    rows = [s for s in steps if getattr(s, "reference", None)]
    if not rows:
        return None
    notes: List[str] = []
    per_epoch = None
    if q is None or q <= 0:
        chosen = rows
        q, epochs, epochs_source = None, None, None
    else:
        save_freq = save_freq or rows[0].end_step - rows[0].step
        num_steps = num_steps or max(r.end_step for r in rows)
        if epochs is None:
            epochs, epochs_source = 1, "default (1, as the reference's verify_topq)"
        by_index = {r.step // save_freq: r for r in rows if r.step % save_freq == 0}
        pick, per_epoch, notes = topq_selection(
            {i: r.reference["update"] for i, r in by_index.items()}, num_steps, save_freq, epochs, q
        )
        chosen = [by_index[i] for i in pick]
        epochs_source = epochs_source or "given"
    if chosen:
        maxd = {m: max(r.reference["recomputed"][m] for r in chosen) for m in METRICS}
    else:  # its top-Q picked nothing (no segment inside an epoch): nothing to compare
        maxd = {m: 0.0 for m in METRICS}
    above = {m: sum(r.reference["recomputed"][m] > thr[m] for r in chosen) for m in METRICS}
    init = None
    init_ok = True
    if initial_tests:
        p_min = min(t.p_value for t in initial_tests)
        init_ok = p_min >= 0.01
        init = {"min_p_value": p_min, "passed": init_ok, "layers": len(initial_tests)}
    accepted = not any(above.values()) and init_ok
    agreement = _agreement(exactforge_accepted, accepted, epsilon, maxd, thr, chosen, rows)
    return ReferenceVerdict(
        accepted,
        "all" if q is None else "top-q",
        q,
        thr,
        [r.step for r in chosen],
        maxd,
        above,
        init,
        agreement,
        notes,
        thr_name,
        thr_commit,
        REFERENCE_COMMIT,
        epochs,
        epochs_source,
        per_epoch,
    )


def _agreement(
    ours: bool, theirs: bool, epsilon: float, maxd: Dict[str, float], thr: Dict[str, float], chosen: List, rows: List
) -> str:
    if ours == theirs:
        # the distance nearest its threshold, as a fraction of it (its cosine can be negative)
        m = max(METRICS, key=lambda k: _share(maxd[k], thr[k]))
        share = _share(maxd[m], thr[m])
        return f"both {'accept' if ours else 'reject'}" + (
            f"; the reference's {m} distance is {share:.3g} times its threshold" if share > 0 else ""
        )
    if not ours:
        failing = [r.step for r in rows if not r.passed]
        unseen = [s for s in failing if s not in {c.step for c in chosen}]
        why = (
            f"segments {unseen[:5]} are not among the ones the reference's per-epoch top-Q recomputes"
            if unseen
            else "every distance is within the reference's thresholds"
        )
        return (
            f"exactforge rejects (a recomputed checkpoint differs by more than epsilon = {epsilon:g}) and the "
            f"reference accepts: {why}"
        )
    return "exactforge accepts and the reference rejects: its initialisation test failed or a distance is over its threshold"


def _share(d: float, t: float) -> float:
    # a threshold of 0 is the caller's (--pol-thresholds): any positive distance is over it
    if t == 0:
        return float("inf") if d > 0 else 0.0
    return d / t


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
    thresholds: Any = None,
) -> AugmentationTolerance:
    """Replays the first ``segments`` segments of a torch trace ``draws`` times, each with the
    reference CIFAR loop's RandomCrop(padding 4) and RandomHorizontalFlip drawn afresh
    (:func:`exactforge.nn.augment.torch_crop_flip`), and measures the distances to the logged
    checkpoints: the tolerance a verifier needs to accept an honest proof trained that way,
    which no replay can reproduce exactly. ``thresholds``: the reference's, as
    :func:`parse_thresholds` takes them (None: the current ones)."""
    import torch

    from ..nn.augment import torch_crop_flip
    from .distances import verification_distance
    from .replay import engine_for, open_with_data, pairs, replay_segment

    thr = parse_thresholds(thresholds)[0]
    trace, data = open_with_data(directory, dataset, data_path)
    if trace.spec.engine != "torch":
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
            l2s.append(float(verification_distance(pairs(state, logged), "l2")))
            dist = reference_distances(logged, state, names)
            ref = {m: max(ref[m], dist[m]) for m in METRICS}
    accepts = all(ref[m] <= thr[m] for m in METRICS)
    return AugmentationTolerance(
        "random crop (padding 4) and horizontal flip",
        draws,
        [s for s, _ in segs],
        {"min": min(l2s), "max": max(l2s)},
        ref,
        accepts,
        max(l2s),
    )
