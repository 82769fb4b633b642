"""What the verifier says beside the distances: the trace's own description in the report,
the declarations checked against the verifier's data and model, theta_0's origin, the learning
rates against the declared scheduler, the Proof-of-Learning reference's verdict, the other
checks, and why a rejected trace was rejected."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from ..trace import Trace, TraceError
from ..trace.format import declared_fields
from ..trace.manifest import TraceSpec
from .augmentation import augmentation_note
from .checks import data_checks, failed_checks, interval_check, schedule_check, vacuous_check
from .initial import initial_law_test
from .initial import summary as init_summary
from .machines import compare_machines, machine_bound, machine_note
from .reference import infer_epochs, reference_verdict
from .results import VerificationReport

__all__ = [
    "describe",
    "learning_rates",
    "check_declarations",
    "check_theta0",
    "explain",
    "pol_reference",
    "run_checks",
]


def explain(report: VerificationReport, trace: Trace) -> None:
    """The machines' comparison in the report, and a rejection's reason: the first segment
    over epsilon, its distance against epsilon, and for a trace bound to its machine's
    arithmetic, where the recording machine differs from this one (machine_note)."""
    man, spec = trace.manifest, trace.spec
    bound = machine_bound(man)
    report.arithmetic = spec.step_arithmetic
    report.augmentation = augmentation_note(spec)
    comparison = compare_machines(spec.environment)
    report.machines = {"bound": bound, **comparison}
    failed = [r for r in report.steps if not r.passed]
    if report.accepted or not failed or report.reason is not None:
        return
    first = failed[0]
    others = f" ({len(failed)} of {len(report.steps)} recomputed segments are over epsilon)" if len(failed) > 1 else ""
    report.reason = (
        f"step {first.step}: the segment {first.step}..{first.end_step} recomputed lands at {report.distance} "
        f"distance {first.error:.6g} from the logged checkpoint {first.end_step}, over epsilon {report.epsilon:.6g}"
        f"{others}"
    )
    note = machine_note(man, comparison)
    if note is not None:
        report.reason += f"; {note}"


def describe(report: VerificationReport, trace: Trace, allow_partial: bool) -> None:
    """What the report says of the trace itself; an incomplete trace is refused unless a
    prefix is asked for."""
    spec = trace.spec
    report.engine, report.declared_steps, report.complete = spec.engine, trace.declared_steps, trace.complete
    if report.epsilon_source is None:
        report.epsilon_source = "given"
    report.initial, report.num_steps = spec.initial, trace.num_steps
    report.declared = declared_fields(trace.manifest)
    if not trace.complete:
        if not allow_partial:
            raise TraceError(
                f"{trace.incomplete_reason}; --allow-partial (allow_partial=True) verifies "
                "the prefix up to the last checkpoint"
            )
        report.partial = True
        report.unverified_tail = trace.num_records - trace.num_steps


def learning_rates(trace: Trace, lr_lambda: Optional[Callable[[int], float]] = None) -> Optional[Dict[str, Any]]:
    """For a torch trace: how many records carry their own learning rate, the declared
    scheduler, and whether it replays every recorded rate (``follows``; None where nothing is
    declared or it cannot be rebuilt, with the ``reason``)."""
    from ..models.optim import group_rates
    from ..models.schedule import first_difference, replay_rates

    spec = trace.spec
    if spec.engine != "torch":
        return None
    entry = spec.scheduler
    if entry is None and not trace.rated_records:  # one rate throughout: nothing to read again
        return {"per_step": 0, "scheduler": None, "follows": None, "first_difference": None, "reason": None}
    base = tuple(group_rates(spec.optimizer.raw or {}))
    rates = [
        base if r.lr is None else (r.lr if isinstance(r.lr, tuple) else (float(r.lr),))
        for r in trace.iter_records(0, trace.num_records)
    ]
    out: Dict[str, Any] = {
        "per_step": sum(r != base for r in rates),
        "scheduler": None,
        "follows": None,
        "first_difference": None,
        "reason": None,
    }
    if entry is None:
        if out["per_step"]:
            out["reason"] = "the rates change with no scheduler declared: the prover's choice"
        return out
    out["scheduler"] = entry.name
    try:
        replayed = replay_rates(entry.raw or {}, spec.optimizer.raw or {}, len(rates), lr_lambda)
    except ValueError as exc:
        out["reason"] = str(exc)
        return out
    t = first_difference(rates, replayed)
    out["follows"], out["first_difference"] = t is None, t
    if t is not None:
        shown = (rates[t], replayed[t]) if len(base) > 1 else (rates[t][0], replayed[t][0])
        out["reason"] = f"step {t} used lr {shown[0]!r}, the declared scheduler gives {shown[1]!r}"
    return out


def check_theta0(
    report: VerificationReport, spec: TraceSpec, theta0: Dict[str, np.ndarray], step: Any, initial: Callable, test: bool
) -> Optional[str]:
    """A declared seed that the verifier can recompute is checked, whatever 'initial' says;
    with ``test``, the initialisation-law test runs too. Returns why theta_0 fails that test."""
    ref = initial() if spec.initial == "seeded" or spec.seed is not None else None
    if spec.initial == "seeded" or ref is not None:
        _check_seeded(theta0, ref, spec.seed)
        report.initial_verified = True
    if not test:
        return None
    tests = initial_law_test(theta0, getattr(step, "model", None), getattr(step, "spec", None))
    report.initial_test = [t.to_dict() for t in tests]
    return init_summary(tests)


def check_declarations(spec: TraceSpec, data: Any, step: Any) -> None:
    """What the manifest declares beside what is recomputed must agree with the verifier's
    data and model and with itself: a declaration nobody checks can say anything (the printed
    resolution used a top-level lr of 1e308 that the optimizer never saw)."""
    for key, have in (("dim", data.dim), ("num_classes", data.num_classes)):
        declared = getattr(spec.data, key)
        if declared is not None and declared != have:
            raise TraceError(f"manifest: data.{key} is {str(declared)[:20]}, the verifier's {data.name} has {have}")
    if spec.optimizer.lr != spec.lr:
        raise TraceError(f"manifest: 'lr' is {spec.lr!r} but the optimizer's lr is {str(spec.optimizer.lr)[:30]}")
    net, module = getattr(step, "spec", None), getattr(step, "model", None)
    dtype = net.dtype if net is not None else None
    if module is not None:
        dtype = str(next(module.parameters()).dtype).replace("torch.", "")
    if spec.dtype is not None and dtype is not None and spec.dtype != dtype:
        raise TraceError(f"manifest: 'dtype' is {spec.dtype[:20]}, the model computes in {dtype}")


def _check_seeded(theta0: Dict[str, np.ndarray], ref: Optional[Dict[str, np.ndarray]], seed: Any) -> None:
    """A trace that claims a seeded theta_0 must start exactly there, tensor by tensor and dtype."""
    if ref is None:
        raise TraceError(
            "manifest: 'initial' is 'seeded' but the model is not an exactforge model, so the "
            "seeded initialisation cannot be recomputed"
        )
    if set(ref) != set(theta0) or not all(
        np.array_equal(ref[k], theta0[k]) and ref[k].dtype == theta0[k].dtype for k in ref
    ):
        raise TraceError(
            f"checkpoint 0: theta_0 is not the initialisation of seed {seed}, which the manifest declares "
            "(a run that started from other weights declares no seed)"
        )


def pol_reference(
    report: VerificationReport,
    theta0: Any,
    step: Any,
    q: Optional[int],
    trace: Trace,
    settings: Tuple[Any, Optional[int]],
) -> Optional[Dict[str, Any]]:
    thresholds, epochs = settings
    source = "given"
    if epochs is None and q is not None:
        b, n = trace.spec.batch_size, trace.spec.data.num_examples
        if b and trace.num_steps:
            epochs = infer_epochs(trace.num_steps, int(b), n)
            source = f"inferred: {trace.num_steps} steps x {b} per batch / {n} examples, rounded up"
    tests = initial_law_test(theta0, model=getattr(step, "model", None))
    verdict = reference_verdict(
        report.steps,
        exactforge_accepted=report.accepted,
        epsilon=report.epsilon,
        q=q,
        initial_tests=tests,
        thresholds=thresholds,
        epochs=epochs,
        epochs_source=source if epochs is not None else None,
        num_steps=trace.num_steps,
        save_freq=trace.spec.checkpoint_every,
    )
    if verdict is None:
        return None
    out = verdict.to_dict()
    # the reference's verify_hash: an imported proof's hash.txt against the text hash of the data
    # it was imported with (the data verify reads has that import's fingerprint)
    checked = (trace.spec.imported or {}).get("data_hash_checked")
    out["hash"] = "valid" if checked is True else "invalid" if checked is False else "unchecked"
    if checked is False:
        out["accepted"] = False
        out["notes"] = list(out.get("notes") or []) + [
            "its verify_hash fails: the proof's hash.txt is not the text hash of this data (\"Hash doesn't match. "
            'The proof is invalid")'
        ]
    return out


def run_checks(
    report: VerificationReport, trace: Trace, segs: Any, data: Any, known: Any, max_interval: Optional[int]
) -> None:
    """The checks beside the distances; a required one that fails rejects the trace."""
    report.vacuous = vacuous_check(report.steps, report.epsilon)
    report.schedule = schedule_check(report.learning_rates, trace.spec.lr)
    report.domain, report.known_data = data_checks(trace, segs, data, known)
    report.interval = interval_check(trace, max_interval)
    if "known-data" in report.required and report.known_data is None:
        report.valid, report.accepted = False, False
        report.reason = "require: the known-data check needs the verifier's own data (known_data=, --known-data)"
        return
    failed = failed_checks(report)
    for name in report.required:
        if name in failed:
            report.accepted = False
            report.reason = report.reason or f"the required {name} check failed"
