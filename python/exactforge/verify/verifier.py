"""The verifier: integrity first (manifest, hash chain, schedule, completeness, checkpoint
hashes, the verifier's own data, the seeded theta_0), then recomputation of the selected
segments between checkpoints and a distance test (see :mod:`exactforge.verify.replay` for the
trust model).

``verify_trace`` never raises on a bad trace or setting: an invalid trace or setting gives
``valid=False`` with a ``reason``. ``accepted=False`` with ``valid=True`` means recomputed and
rejected.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..report.progress import progress_bar
from ..trace import Trace, TraceError
from ..trace.engine import check_table
from ..trace.reader import finite
from .calibrate import calibrate_epsilon
from .explain import (
    check_declarations,
    check_theta0,
    describe,
    explain,
    learning_rates,
    pol_reference,
    run_checks,
)
from .options import Checked, VerifyOptions
from .replay import engine_for, open_with_data, select_segments, update_norms
from .results import StepResult, VerificationReport, add_result
from .segments import SegmentJob, recompute_segments, settled_job

__all__ = ["verify_trace"]

# the names these functions had in this module, which callers of its first layout import
_check_table = check_table
_settled_job = settled_job


def verify_trace(directory: str, options: Optional[VerifyOptions] = None, **kwargs: Any) -> VerificationReport:
    """Verifies a trace. Never raises on a bad trace or setting: the report is then
    ``valid=False`` with a ``reason``. The settings are a :class:`VerifyOptions` (``options``)
    or its fields as keyword arguments, which replace the options' (an unknown name is a
    TypeError); ``report.options`` holds them.

    ``epsilon``: the largest accepted distance, or ``"auto"``: a safety factor times this
    machine's benign reproduction error, measured on the first segments
    (:mod:`exactforge.verify.calibrate`); ``report.epsilon_source`` says how it was set.

    ``dataset`` (a Dataset or arrays (X, y)) or ``data_path`` supply the training data (see the
    trust model above); ``model`` is a fresh instance of a torch trace's architecture (a trace
    recorded through exactforge.nn's reproducible layers is replayed through them: ``model`` is
    made reproducible in the trace's mode). ``loss_fn`` replays a trace recorded with a custom
    loss; the losses TraceRecorder can describe (cross-entropy with label smoothing, MSE against
    one-hot labels) are replayed from the manifest. ``permute_batches`` (a seed) shuffles each
    batch's examples before recomputation (the same set; within each micro-batch of a trace
    recorded with ``accumulate``); ``threads`` sets the recomputation's thread count (1..MAX_THREADS). An incomplete
    trace (fewer steps than declared, no final record) is invalid unless ``allow_partial``: then
    its prefix up to the last checkpoint is verified and the report says ``partial``.

    ``initial_test`` adds the reference Proof-of-Learning's check of theta_0: a
    Kolmogorov-Smirnov test of each layer against its initialisation law
    (:mod:`exactforge.verify.initial`); a layer that fails it makes the trace rejected, with the
    reason. A theta_0 recomputed from a declared seed needs no such test (``initial_verified``).

    A scheduled torch trace's records carry each step's learning rate, and the recomputation
    uses them; ``report.learning_rates`` says whether the declared scheduler, rebuilt from its
    recorded state and stepped once per step, gives those rates (``lr_lambda``: the function of
    a LambdaLR or MultiplicativeLR, which the trace cannot carry). Rates no scheduler explains
    are the prover's choice, and the report says so.

    ``reference``: also compute the Proof-of-Learning reference's verdict with its semantics
    (its four distances and thresholds over every segment, or its top-Q with ``reference_q``,
    and its initialisation test) and say where it differs from this one (None: for imported
    proofs only). ``reference_thresholds``: its thresholds (None: those of its current code; a
    named set such as "51909cc", or four numbers: :func:`exactforge.verify.reference.parse_thresholds`);
    ``reference_epochs``: the proof's epochs, over which its top-Q picks per epoch (None:
    inferred from the steps, batch size and data set size).

    ``executor`` spreads the recomputation over a cluster: an
    :class:`exactforge.verify.ray.RayExecutor` schedules the segments as Ray tasks. The
    integrity checks (manifest, hash chain, theta_0, the policy's choice) stay here, in this
    process; the workers recompute and compare, and the report is the serial one (the same
    per-segment errors and verdict), with ``executor`` saying what ran where.

    The checks of :mod:`exactforge.verify.checks` (vacuous steps, the learning-rate schedule, the
    data's domain, the verifier's own ``known_data`` (a Dataset or arrays), the checkpoint
    interval against ``max_interval``) are always reported; those named in ``require`` (names,
    a comma-separated string, or "all") reject the trace when they fail."""
    opts = VerifyOptions.of(options, **kwargs)
    report = VerificationReport(
        False,
        float("nan"),
        opts.epsilon_value,
        str(opts.distance_kind),
        str(opts.policy),
        valid=False,
        permute_batches=opts.permute_batches,
        threads=opts.threads,
        options=opts.to_dict(),
    )
    with contextlib.ExitStack() as stack:
        try:
            run = _prepare(directory, opts, report, stack)
        except (TraceError, ValueError, TypeError, OSError) as exc:
            report.reason = str(exc)
            return report
        report.valid, report.accepted, report.max_error = True, True, 0.0
        if _recompute(run, opts, report):
            _conclude(run, opts, report)
    return report


@dataclass
class _Run:
    """A checked trace ready to recompute: the verifier's data, the engine, theta_0, the job
    and the chosen segments (``stream``: those already sent to an executor's workers)."""

    trace: Trace
    data: Any
    load: Any
    step: Any
    theta0: Dict[str, np.ndarray]
    job: SegmentJob
    segs: List[Tuple[int, int]]
    checked: Checked
    stream: Any = None
    failed_init: Optional[str] = None


def _prepare(directory: str, opts: VerifyOptions, report: VerificationReport, stack: Any) -> _Run:
    """Every check before a segment is recomputed, in order: the settings, the trace and its
    data, the declarations, theta_0, epsilon "auto", the policy's segments."""
    checked = opts.checked()
    report.required = list(checked.required)
    job = SegmentJob(opts.permute_batches, str(opts.distance_kind), opts.epsilon_value, checked.threads)
    stream = _stream(opts, job, stack)
    trace, data = open_with_data(
        directory,
        opts.dataset,
        opts.data_path,
        limits=opts.limits,
        on_data=None if stream is None else stream.on_data,
        on_record=None if stream is None else stream.on_record,
    )
    describe(report, trace, opts.allow_partial)
    report.learning_rates = learning_rates(trace, opts.lr_lambda)
    load, step, initial = engine_for(trace, data, checked.threads, opts.model, opts.loss_fn)
    settled = settled_job(job, trace, step, opts.reference, opts.executor)
    check_declarations(trace.spec, data, step)
    theta0 = finite(load(0), 0)
    failed_init = check_theta0(report, trace.spec, theta0, step, initial, opts.initial_test)
    if opts.auto_epsilon:  # after the cheap checks: calibration recomputes the first segments
        report.epsilon, report.epsilon_source = calibrate_epsilon(trace, load, step)
        settled = dataclasses.replace(settled, epsilon=report.epsilon)
    if settled != job and stream is not None:
        stream.close()  # its segments went out with a job that lacked these settings
        stream = None
    # topq: one streaming pass over every checkpoint for the logged update norms
    norms = update_norms(trace, load, theta0) if opts.policy == "topq" else None
    segs = select_segments(trace, opts.policy, q=opts.q, fraction=opts.fraction, seed=opts.seed, update_norms=norms)
    report.total_segments = len(list(trace.segments()))
    # a sample chooses what is recomputed, never what is checked: the checkpoints the
    # recomputation will not read are checked here (topq's pass read every one already)
    if opts.policy == "random":
        read = {0} | {s for seg in segs for s in seg}
        trace.check_checkpoints([s for s in trace.checkpoint_steps if s not in read])
    report.checkpoints_checked = len(trace.checkpoint_steps)
    return _Run(trace, data, load, step, theta0, settled, segs, checked, stream, failed_init)


def _stream(opts: VerifyOptions, job: SegmentJob, stack: Any) -> Any:
    """An executor's stream: segments go to the workers while the chain is read, dropped if
    anything after fails (None: no executor, or a policy that picks after the chain)."""
    executor = opts.executor
    if executor is None or opts.policy != "all" or not callable(getattr(executor, "stream", None)):
        return None
    try:
        stack.enter_context(executor.session())
    except (ImportError, ConnectionError) as exc:  # no Ray, or no cluster there
        raise ValueError(f"executor: {exc}") from None
    stream = executor.stream(job, model=opts.model, loss_fn=opts.loss_fn)
    stack.callback(stream.close)
    return stream


def _recompute(run: _Run, opts: VerifyOptions, report: VerificationReport) -> bool:
    """Recomputes the segments here or on the executor; False (the report made invalid) when
    a checkpoint fails its checks when it is reached, a model does not fit it, or a task is
    lost."""
    if opts.executor is not None:
        # the executor reports its own failures (a task lost after its retries) as an invalid report
        try:
            extra = {"stream": run.stream} if run.stream is not None else {}
            opts.executor.verify(
                run.trace,
                run.data,
                run.segs,
                run.job,
                report,
                model=opts.model,
                loss_fn=opts.loss_fn,
                progress=opts.progress,
                **extra,
            )
        except (ImportError, ValueError, ConnectionError, RuntimeError) as exc:  # no Ray, or no cluster there
            report.valid, report.reason = False, f"executor: {exc}"
        if not report.valid:
            report.accepted = False
        return report.valid
    bar = progress_bar(len(run.segs), opts.progress, "verify", "segment")

    def on_result(r: StepResult) -> None:
        add_result(report, r)
        if bar is not None:
            bar.update(1)

    try:
        recompute_segments(run.trace, run.segs, run.load, run.step, run.job, on_result, run.theta0)
    except (TraceError, ValueError, TypeError, OSError, RuntimeError) as exc:
        report.valid, report.accepted, report.reason = False, False, str(exc)
        return False
    finally:
        if bar is not None:
            bar.close()
    return True


def _conclude(run: _Run, opts: VerifyOptions, report: VerificationReport) -> None:
    """The verdict from the recomputed segments, then the reference's and the other checks."""
    report.accepted = all(r.passed for r in report.steps)
    explain(report, run.trace)
    if opts.initial_test and run.failed_init is not None:
        report.accepted, report.reason = False, run.failed_init
    if report.steps:
        report.resolution = float(np.median([r.resolution for r in report.steps]))
    if run.job.reference_names:
        settings = (opts.reference_thresholds, run.checked.reference_epochs)
        report.reference = pol_reference(report, run.theta0, run.step, opts.reference_q, run.trace, settings)
    run_checks(report, run.trace, run.segs, run.data, run.checked.known, opts.max_interval)
