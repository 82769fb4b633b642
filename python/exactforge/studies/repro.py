"""Reproduction-error studies: how far an honest step moves when it is recomputed under another
condition, and the verifier's epsilon calibrated from it (the papers' first contribution).

A study records a trace under a generating condition, recomputes every checkpoint R times under
each verifying condition, and reports the distances (all of the verifier's), their variance,
the fraction of exactly-zero recomputations, a cross-condition matrix (rows: generated under,
columns: verified under; the papers' Table 3), and a calibrated epsilon.

Conditions (each a named setting recorded in the trace manifest and in the report):
``baseline`` (as generated), ``permute`` (each batch shuffled: aggregation order), ``threads``
(one CPU thread instead of the default), ``deterministic`` (torch.use_deterministic_algorithms),
``bf16`` / ``fp16`` (autocast mixed precision), ``native`` (exactforge's reproducible path,
logistic regression and FCN only; ``native+permute``, ``native+threads`` combine),
``reproducible`` (the zoo's torch model with exactforge.nn's layers and loss: logreg, fcn, LeNet
and VGGmini; ``reproducible+permute``, ``reproducible+threads`` combine), and on a CUDA machine
``cuda``, ``cuda+benchmark`` (cudnn autotuning) and ``cuda+deterministic``.

Calibration: epsilon = safety_factor x the largest error seen under the float32 torch conditions
(baseline, permute, threads, deterministic) on the first half of the repeats; the false-reject
rate it implies is measured on the other half (held out). Mixed precision is reported but not
used for calibration: a verifier recomputes in the precision the trace declares.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .._backend.threads import threads as torch_threads
from ..data import Dataset, load_dataset
from ..models.step import CONDITIONS, NATIVE_MODELS, NN_MODELS, Condition, Stepper, applied  # noqa: F401
from ..report.progress import progress_bar
from ..verify.distances import DISTANCES, distance

__all__ = [
    "Condition",
    "CONDITIONS",
    "NATIVE_MODELS",
    "NN_MODELS",
    "available_conditions",
    "StudyReport",
    "run_study",
    "PAPERS",
]

PAPERS = {
    "same GPU, float32 (LeNet/MNIST, VGGmini/CIFAR10)": "1.3e-8 / 2.9e-7",
    "across GPUs, float32 (LeNet/MNIST, VGGmini/CIFAR10)": "3.1e-6 / 4.4e-4",
    "same GPU, autotuning off": "0",
    "bfloat16 vs float32": "up to 3 orders of magnitude larger",
}


CALIBRATION = ("baseline", "permute", "threads", "deterministic")


def available_conditions(model: str) -> List[str]:
    import torch

    out = [
        n
        for n, c in CONDITIONS.items()
        if c.device == "cpu"
        and (
            c.engine == "torch"
            or (c.engine == "native" and model in NATIVE_MODELS)
            or (c.engine == "nn" and model in NN_MODELS)
        )
    ]
    if torch.cuda.is_available():
        out += [n for n, c in CONDITIONS.items() if c.device == "cuda"]
    return out


# -- the study ------------------------------------------------------------------------------


@dataclass
class ConditionStats:
    max_error: float = 0.0  # l2, over every checkpoint and repeat
    mean_error: float = 0.0
    variance: float = 0.0
    zero_fraction: float = 0.0  # recomputations bitwise equal to the logged step
    distances: Dict[str, float] = field(default_factory=dict)  # max of each verifier distance
    by_batch_size: Dict[str, Dict[str, float]] = field(default_factory=dict)
    per_checkpoint: Dict[str, List[float]] = field(default_factory=dict)  # b -> max l2 per checkpoint


@dataclass
class StudyReport:
    model: str
    dataset: str
    synthetic: bool
    batch_sizes: List[int]
    steps: int
    repeats: int
    lr: float
    conditions: Dict[str, ConditionStats]
    epsilon: float
    safety_factor: float
    false_reject_rate: float
    calibrated_on: List[str]
    epsilon_native: Optional[float]
    matrix: Dict[str, Any]
    seconds: float
    papers: Dict[str, str] = field(default_factory=lambda: dict(PAPERS))
    environment: Dict[str, Any] = field(default_factory=dict)
    executor: Optional[Dict[str, Any]] = None  # where the recomputations ran (None: here); exactforge.verify.ray

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _generate(
    stepper: Stepper, cond: Condition, batches: List[np.ndarray], out: Optional[str], meta: Dict[str, Any]
) -> List[np.ndarray]:
    """Runs the steps under ``cond`` and records the trace (checkpoint every step)."""
    from ..trace import TraceWriter, environment

    states = [stepper.flat()]
    rng = np.random.default_rng(0)
    writer = None
    if out:
        manifest = {
            "engine": cond.engine,
            "model": {"zoo": stepper.name},
            "optimizer": {"name": "sgd", "lr": stepper.lr},
            "lr": stepper.lr,
            "checkpoint_every": 1,
            "batch_size": len(batches[0]),
            "steps": len(batches),
            "initial": "given",
            "extra": {"condition": asdict(cond), **meta},
            "reduction": "fixed" if cond.engine == "native" else None,
            "data": {
                "name": stepper.data.name,
                "fingerprint": stepper.data.fingerprint(),
                "num_examples": len(stepper.data),
                "synthetic": stepper.data.synthetic,
            },
            "environment": environment(cond.device),
        }
        writer = TraceWriter(out, manifest, {"params": states[0]})
    for t, idx in enumerate(batches):
        # generation never shuffles: the logged order is the batch as recorded
        states.append(stepper.step(states[-1], idx, dataclasses.replace(cond, permute=False), rng))
        if writer is not None:
            writer.append(idx, {"params": states[-1]}, final=t + 1 == len(batches))
    return states


def _cell_errors(
    st: Stepper, states: List[np.ndarray], batches: List[np.ndarray], cond: Condition, seed: int, b: int, r: int
) -> np.ndarray:
    """(steps, len(DISTANCES)): repeat r of recomputing every logged step under ``cond``."""
    out = np.zeros((len(batches), len(DISTANCES)))
    for t in range(len(batches)):
        new = st.step(states[t], batches[t], cond, np.random.default_rng([seed, b, t, r]))
        out[t] = [distance(new, states[t + 1], k) for k in DISTANCES]
    return out


def _study_cell(
    model: str,
    data: Dataset,
    lr: float,
    seed: int,
    threads: int,
    engine: str,
    cond: str,
    b: int,
    r: int,
    batches: List[np.ndarray],
    states: List[np.ndarray],
) -> np.ndarray:
    """A study cell on a Ray worker: the model is rebuilt from the verifier's code (its weights
    are the logged states) and runs with the driver's torch thread count."""

    from ..models.zoo import build_model

    with torch_threads(threads):
        net = build_model(model, data.shape or (data.dim,), data.num_classes, vocab=data.vocab, seed=seed)
        return _cell_errors(Stepper(model, net, data, lr), states, batches, CONDITIONS[cond], seed, b, r)


def run_study(
    model: str = "fcn",
    dataset: str = "digits",
    batch_sizes: Sequence[int] = (32, 100, 1000),
    conditions: Sequence[str] = ("permute", "threads", "deterministic", "bf16"),
    *,
    repeats: int = 5,
    steps: int = 50,
    lr: float = 0.01,
    seed: int = 0,
    safety_factor: float = 10.0,
    matrix_steps: int = 10,
    out: Optional[str] = None,
    data_path: Optional[str] = None,
    data: Optional[Dataset] = None,
    progress: bool = False,
    executor: Any = None,
) -> StudyReport:
    """Runs a reproduction study (see the module's text). ``executor``: an
    :class:`exactforge.verify.ray.RayExecutor` runs the recomputations (condition x batch size
    x repeat) as Ray tasks; the traces are recorded here, and the report is the serial one
    (each recomputation is seeded by (seed, b, t, r) wherever it runs, and a worker uses this
    process's torch thread count unless the condition sets its own)."""
    import torch

    _check_conditions(model, conditions, repeats, steps)
    data = _study_data(model, dataset, data_path, data, batch_sizes)
    t_start = time.perf_counter()
    shape = data.shape or (data.dim,)
    conds = ["baseline"] + [c for c in conditions if c != "baseline"]
    total = len(batch_sizes) * steps * repeats * len(conds)
    bar = progress_bar(total, progress, f"repro {model}")
    errs, executor_info = _recompute(model, data, batch_sizes, conds, repeats, steps, lr, seed, out, executor, bar)
    if bar is not None:
        bar.close()
    stats = {c: _condition_stats(errs[c]) for c in conds if errs[c]}
    eps, frr, calib, eps_native = _calibrate(errs, conds, repeats, safety_factor)
    matrix = _matrix(model, data, shape, batch_sizes, conds, matrix_steps, lr, seed, repeats) if matrix_steps else {}
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    rep = StudyReport(
        model,
        data.name,
        data.synthetic,
        [int(b) for b in batch_sizes],
        steps,
        repeats,
        lr,
        stats,
        eps,
        safety_factor,
        frr,
        calib,
        eps_native,
        matrix,
        time.perf_counter() - t_start,
        environment=env,
        executor=executor_info,
    )
    if out:
        write_outputs(rep, out)
    return rep


def _check_conditions(model: str, conditions: Sequence[str], repeats: int, steps: int) -> None:
    import torch

    from ..models.zoo import ZOO

    if model not in ZOO:
        raise ValueError(f"model: expected one of {ZOO}, got {model!r}")
    for c in conditions:
        if c not in CONDITIONS:
            raise ValueError(f"conditions: unknown {c!r}; choose from {list(CONDITIONS)}")
        if CONDITIONS[c].engine == "native" and model not in NATIVE_MODELS:
            raise ValueError(f"conditions: {c} uses exactforge's native path, available for {NATIVE_MODELS}")
        if CONDITIONS[c].engine == "nn" and model not in NN_MODELS:
            raise ValueError(f"conditions: {c} uses exactforge.nn's reproducible layers, available for {NN_MODELS}")
        if CONDITIONS[c].device == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"conditions: {c} needs a CUDA device and none is visible")
    if repeats < 1 or steps < 1:
        raise ValueError("repeats, steps: expected positive integers")


def _study_data(
    model: str, dataset: str, data_path: Optional[str], data: Optional[Dataset], batch_sizes: Sequence[int]
) -> Dataset:
    if data is None:
        # The Transformer reads tokens: IMDB when given, otherwise the labelled synthetic task.
        if model == "transformer" and dataset != "imdb":
            dataset = "synthetic-tokens"
        data = load_dataset(dataset, data_path)
    if model in ("lenet", "vggmini") and (data.shape is None or len(data.shape) != 3):
        raise ValueError(f"dataset: {model} needs images (digits, mnist, cifar10), not {data.name}")
    for b in batch_sizes:
        if not 1 <= b <= len(data):
            raise ValueError(f"batch_sizes: {b} is not in 1..{len(data)} (the size of {data.name})")
    return data


def _recompute(
    model: str,
    data: Dataset,
    batch_sizes: Sequence[int],
    conds: List[str],
    repeats: int,
    steps: int,
    lr: float,
    seed: int,
    out: Optional[str],
    executor: Any,
    bar: Any,
) -> Tuple[Dict[str, Dict[int, np.ndarray]], Optional[Dict[str, Any]]]:
    """For each batch size, a trace generated per engine (recorded under ``out``) and every
    step recomputed ``repeats`` times under each condition of that engine: condition -> batch
    size -> (steps, repeats, len(DISTANCES)) errors, and what the executor reports."""
    import torch

    from ..models.zoo import build_model
    from ..trace.record import batch_schedule

    shape = data.shape or (data.dim,)
    groups = [(e, [c for c in conds if CONDITIONS[c].engine == e]) for e in ("torch", "native", "nn")]
    cells: List[tuple] = []  # (engine, condition, b, repeat, batches, states) for an executor
    errs: Dict[str, Dict[int, np.ndarray]] = {c: {} for c in conds}
    for b in batch_sizes:
        sched = batch_schedule(len(data), b, seed)
        batches = [next(sched) for _ in range(steps)]
        for engine, group in groups:
            if not group:
                continue
            net = build_model(model, shape, data.num_classes, vocab=data.vocab, seed=seed)
            st = Stepper(model, net, data, lr)
            gen = Condition("baseline", engine=engine)
            tr_dir = os.path.join(out, "traces", f"{engine}-b{b}") if out else None
            states = _generate(st, gen, batches, tr_dir, {"study": "generation"})
            for c in group:  # torch: "baseline" first; native: its own conditions only
                if executor is None:
                    arr = np.zeros((steps, repeats, len(DISTANCES)))
                    for r in range(repeats):
                        arr[:, r] = _cell_errors(st, states, batches, CONDITIONS[c], seed, b, r)
                        if bar is not None:
                            bar.update(steps)
                    errs[c][b] = arr
                else:  # the recomputations go to the cluster; the trace above was recorded here
                    errs[c][b] = np.zeros((steps, repeats, len(DISTANCES)))
                    cells.extend((engine, c, b, r, batches, states) for r in range(repeats))
    if executor is None:
        return errs, None

    def done(i: int, value: np.ndarray) -> None:
        _, c, b, r, _, _ = cells[i]
        errs[c][b][:, r] = value
        if bar is not None:
            bar.update(steps)

    info = executor.map_cells(_study_cell, cells, (model, data, lr, seed, torch.get_num_threads()), on_done=done)
    return errs, info


def _condition_stats(by_b: Dict[int, np.ndarray]) -> ConditionStats:
    """One condition's errors summarised: l2 over everything, each distance's max, per batch size."""
    l2 = DISTANCES.index("l2")
    allv = np.concatenate([a[:, :, l2].ravel() for a in by_b.values()])
    s = ConditionStats(float(allv.max()), float(allv.mean()), float(allv.var()), float(np.mean(allv == 0.0)))
    s.distances = {k: float(max(a[:, :, i].max() for a in by_b.values())) for i, k in enumerate(DISTANCES)}
    for b, a in by_b.items():
        v = a[:, :, l2]
        s.by_batch_size[str(b)] = {
            "max_error": float(v.max()),
            "mean_error": float(v.mean()),
            "zero_fraction": float(np.mean(v == 0.0)),
        }
        s.per_checkpoint[str(b)] = [float(x) for x in v.max(axis=1)]
    return s


def _calibrate(
    errs: Dict[str, Dict[int, np.ndarray]], conds: List[str], repeats: int, safety_factor: float
) -> Tuple[float, float, List[str], Optional[float]]:
    """(epsilon, held-out false-reject rate, the conditions calibrated on, the reproducible
    paths' epsilon): epsilon is the safety factor times the largest l2 error of the float32
    torch conditions in the first half of the repeats; the rate is measured on the other half."""
    l2 = DISTANCES.index("l2")
    half = max(1, (repeats + 1) // 2)
    calib = [c for c in CALIBRATION if c in errs and errs[c]]
    cal = np.concatenate([errs[c][b][:, :half, l2].ravel() for c in calib for b in errs[c]])
    held_parts = [errs[c][b][:, half:, l2].ravel() for c in calib for b in errs[c]]
    held = np.concatenate(held_parts) if held_parts and sum(h.size for h in held_parts) else np.zeros(0)
    eps = float(safety_factor * cal.max()) if cal.size else 0.0
    frr = float(np.mean(held > eps)) if held.size else 0.0
    reproducible = [c for c in conds if CONDITIONS[c].engine in ("native", "nn")]
    eps_native = None
    if reproducible:  # the reproducible paths: exactforge's native models and exactforge.nn
        nv = np.concatenate([errs[c][b][:, :, l2].ravel() for c in reproducible for b in errs[c]])
        eps_native = float(safety_factor * nv.max())
    return eps, frr, calib, eps_native


def _matrix(model, data, shape, batch_sizes, conds, steps, lr, seed, repeats) -> Dict[str, Any]:
    """Max l2 error of recomputing (under the column condition) a short trace generated under
    the row condition, at the smallest batch size. Random conditions use ``repeats`` draws."""
    from ..models.zoo import build_model
    from ..trace.record import batch_schedule

    b = int(min(batch_sizes))
    sched = batch_schedule(len(data), b, seed)
    batches = [next(sched) for _ in range(steps)]
    rows = [c for c in conds if not CONDITIONS[c].permute]  # generating "permuted" is just another order
    vals = []
    for rname in rows:
        net = build_model(model, shape, data.num_classes, vocab=data.vocab, seed=seed)
        st = Stepper(model, net, data, lr)
        states = _generate(st, CONDITIONS[rname], batches, None, {})
        row = []
        for cname in conds:
            cond = CONDITIONS[cname]
            reps = repeats if cond.permute else 1
            worst = 0.0
            for t in range(steps):
                for r in range(reps):
                    new = st.step(states[t], batches[t], cond, np.random.default_rng([seed, 99, t, r]))
                    worst = max(worst, distance(new, states[t + 1], "l2"))
            row.append(worst)
        vals.append(row)
    return {"batch_size": b, "steps": steps, "rows": rows, "cols": list(conds), "max_error": vals}


# -- outputs ---------------------------------------------------------------------------------


def write_outputs(rep: StudyReport, out: str) -> None:
    """report.json, report.md and the figures into ``out``."""
    from ..report import jsonio
    from ..report.files import atomic_write
    from .repro_figures import figures

    os.makedirs(out, exist_ok=True)
    jsonio.write(os.path.join(out, "report.json"), rep.to_dict())
    atomic_write(os.path.join(out, "report.md"), markdown(rep).encode())
    figures(rep, out)


def markdown(rep: StudyReport) -> str:
    lines = [
        f"# Reproduction-error study: {rep.model} on {rep.dataset}" + (" (SYNTHETIC data)" if rep.synthetic else ""),
        "",
        f"Batch sizes {rep.batch_sizes}, {rep.steps} checkpoints, each recomputed {rep.repeats} times per "
        f"condition, lr {rep.lr}. Errors are l2 distances between the recomputed and the logged next checkpoint.",
        "",
        "| condition | max error | mean error | variance | exactly 0 | "
        + " | ".join(f"max @ b={b}" for b in rep.batch_sizes)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(rep.batch_sizes),
    ]
    for name, s in rep.conditions.items():
        by = " | ".join(
            f"{s.by_batch_size.get(str(b), {}).get('max_error', float('nan')):.3g}" for b in rep.batch_sizes
        )
        lines.append(
            f"| {name} | {s.max_error:.3g} | {s.mean_error:.3g} | {s.variance:.3g} | {s.zero_fraction:.0%} | {by} |"
        )
    lines += [
        "",
        f"**Calibrated epsilon: {rep.epsilon:.3g}** = {rep.safety_factor:g} x the largest error under "
        f"{', '.join(rep.calibrated_on)} (first half of the repeats); honest-trace false-reject rate on the held-out "
        f"half: {rep.false_reject_rate:.2%}.",
    ]
    if rep.epsilon_native is not None:
        lines.append(
            f"Native reproducible path: epsilon = {rep.epsilon_native:g} (its largest error is "
            f"{'exactly 0' if rep.epsilon_native == 0 else 'not 0'})."
        )
    if rep.matrix:
        m = rep.matrix
        lines += [
            "",
            f"Cross-condition matrix (rows: generated under, columns: verified under; max l2 over "
            f"{m['steps']} steps at b={m['batch_size']}):",
            "",
            "| generated \\ verified | " + " | ".join(m["cols"]) + " |",
            "|---|" + "---|" * len(m["cols"]),
        ]
        for r, row in zip(m["rows"], m["max_error"]):
            lines.append(f"| {r} | " + " | ".join(f"{v:.2g}" for v in row) + " |")
    lines += ["", "Published magnitudes for comparison (cited from the papers, not measured here):", ""]
    lines += [f"- {k}: {v}" for k, v in rep.papers.items()]
    lines += ["", "Figures: errors_per_checkpoint.png, batch_size_sweep.png, condition_matrix.png."]
    return "\n".join(lines) + "\n"
