"""The verifier: integrity first (manifest, hash chain, schedule, completeness, checkpoint
hashes, the verifier's own data, the seeded theta_0), then recomputation of the selected
segments between checkpoints and a distance test.

Trust model: the trace directory is the prover's and hostile; the data set, the model code of
a torch trace, epsilon and the policy are the verifier's. Nothing the prover supplies is
followed outside the trace directory: a manifest's data path is never opened, and a data set
that is not bundled with exactforge must be given by the verifier (``data_path=`` or
``dataset=``), whose fingerprint must equal the manifest's.

``verify_trace`` never raises: an invalid trace or argument gives ``valid=False`` with a
``reason``. ``accepted=False`` with ``valid=True`` means recomputed and rejected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from .._backend.threads import threads as torch_threads
from ..data import BUNDLED, DATASETS, Dataset, as_dataset, load_dataset
from ..models import native as M
from ..models.step import NativeStep, TorchStep, torch_data
from ..reduce import check_threads
from ..report.progress import progress_bar
from ..trace import DEFAULT_LIMITS, Limits, Trace, TraceError
from ..trace.format import declared_fields
from ..trace.reader import finite
from .augmentation import augmentation_note, fresh_augmentation
from .checks import data_checks, failed_checks, interval_check, parse_checks, schedule_check, vacuous_check
from .distances import DISTANCES, verification_distance
from .initial import initial_law_test
from .initial import summary as init_summary
from .machines import compare_machines, machine_bound, machine_note, trace_arithmetic
from .reference import reference_distances

__all__ = [
    "POLICIES",
    "StepResult",
    "VerificationReport",
    "verify_trace",
    "select_segments",
    "open_with_data",
    "check_threads",
    "resolution",
    "SegmentJob",
    "engine_for",
    "recompute_segments",
]

POLICIES = ("all", "topq", "random")


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


def _load_data(man: Dict[str, Any], dataset: Any, data_path: Optional[str]) -> Dataset:
    name = man["data"]["name"]
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
        return trace, _checked_data(trace.manifest, dataset, data_path)
    got: Dict[str, Any] = {}

    def manifest_checked(t: Trace) -> None:
        try:
            got["data"] = _checked_data(t.manifest, dataset, data_path)
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


def _checked_data(man: Dict[str, Any], dataset: Any, data_path: Optional[str]) -> Dataset:
    data = _load_data(man, dataset, data_path)
    if data.fingerprint() != man["data"]["fingerprint"]:
        raise TraceError(
            f"data: the fingerprint of {data.name} does not match the trace's (different or modified training data)"
        )
    if len(data) != man["data"]["num_examples"]:
        raise TraceError(f"data: {len(data)} examples, the trace declares {man['data']['num_examples']}")
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
        n = int(trace.manifest["data"]["num_examples"])
        b = trace.manifest.get("batch_size")
        per_epoch = max(1, n // b) if b else len(segs)
        chosen = []
        epochs: Dict[int, List[int]] = {}
        for i, (s, _) in enumerate(segs):
            epochs.setdefault(s // per_epoch, []).append(i)
        for ids in epochs.values():
            chosen.extend(sorted(ids, key=lambda i: -update_norms[i])[:q])
        return [segs[i] for i in sorted(chosen)]
    raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")


# -- engines: load(step) -> state, step(state, batch) -> state, initial() -> state or None ---------
def _check_table(trace: Trace, expected: Dict[str, Tuple[str, Tuple[int, ...]]], what: str) -> None:
    table = trace.manifest.tensors
    if dict(table) != dict(expected):
        # the first tensor that differs, by name: a shape (1,) against a 0-d one reads plainly
        for name in list(expected) + [k for k in table if k not in expected]:
            if table.get(name) != expected.get(name):
                have = "absent" if name not in table else f"{table[name][0]} {list(table[name][1])}"
                want = "absent" if name not in expected else f"{expected[name][0]} {list(expected[name][1])}"
                raise TraceError(
                    f"manifest: the checkpoint tensor {name[:80]!r} is {have} in the trace and {want} in {what}"
                )


def _model_spec(man: Dict[str, Any]) -> M.ModelSpec:
    try:
        return M.ModelSpec.from_dict(man["model"])
    except (ValueError, TypeError) as exc:
        raise TraceError(f"manifest: model: {exc}") from None


def _native_engine(trace: Trace, data: Dataset, threads: Optional[int]):
    man = trace.manifest
    spec = _model_spec(man)
    if spec.input_dim != data.dim or spec.num_classes != data.num_classes:
        raise TraceError(
            f"manifest: the model takes {spec.input_dim} inputs and {spec.num_classes} classes, "
            f"{data.name} has {data.dim} and {data.num_classes}"
        )
    st = {"float32": "F32", "float64": "F64"}[spec.dtype]
    _check_table(trace, {k: (st, tuple(s)) for k, s in spec.shapes().items()}, f"the native {spec.kind}")
    opt = man["optimizer"]
    if opt.get("name") != "sgd" or any(opt.get(k) for k in ("momentum", "weight_decay")):
        raise TraceError(f"optimizer: the native engine trains with plain SGD, the trace names {str(opt)[:80]}")
    mode = man["reduction"]
    plan = man.get("reduction_plan", 1)  # traces from before plans existed: every reduction in `mode`
    lr = float(man["lr"])
    X = data.X.astype(spec.dtype, copy=False)

    def load(step: int) -> Dict[str, np.ndarray]:
        return M.check_params(spec, trace.load_checkpoint(step), f"checkpoint {step}")

    step = NativeStep(spec, X, data.y, lr, mode=mode, threads=threads, plan=plan)

    def initial() -> Dict[str, np.ndarray]:
        return M.init_params(spec, int(man["seed"]))

    return load, step, initial


def _zoo_model(entry: Dict[str, Any], data: Dataset, given: Any) -> Any:
    """A zoo model named by a trace, built from the verifier's own code (its weights come from
    the checkpoints) unless the verifier gives its own; the entry is the prover's, so every
    field is checked against the verifier's data either way."""
    from ..models.zoo import ZOO, build_model

    name, shape, n = entry.get("zoo"), entry.get("input_shape"), entry.get("num_classes")
    if name not in ZOO:
        raise TraceError(f"manifest: model: unknown zoo model {str(name)[:40]!r}")
    if (
        shape != list(data.shape or (data.dim,))
        or n != data.num_classes
        or (name == "transformer") != (data.vocab is not None)
    ):
        raise TraceError(f"manifest: model: {name} on {shape} with {n} classes does not fit {data.name}")
    if given is not None:
        return given
    # the vocabulary is the verifier's data set's; a prover's other table size fails the tensor check
    return build_model(name, tuple(shape), n, vocab=data.vocab, seed=0)


def _torch_engine(trace: Trace, data: Dataset, model: Any, loss_fn: Any = None):
    from .. import nn as xnn
    from ..models import optim as O
    from ..models.torch_fcn import to_torch
    from ..nn.losses import replay
    from ..trace.safeio import dtype_name

    man = trace.manifest
    try:
        O.check_spec(man["optimizer"])
    except ValueError as e:
        raise TraceError(f"manifest: {e}") from None
    ospec = man["optimizer"]
    spec = _model_spec(man) if "kind" in man["model"] else None
    model = _verifier_model(man, data, model, spec)
    reduction = man["reduction"]
    try:
        xnn.keyed_dropout(model)
        _set_modes(model, man.get("eval_modules"))
    except ValueError as e:
        raise TraceError(str(e)) from None
    dropout_seed = (man.get("dropout") or {}).get("seed")
    try:
        loss_of = replay(man.get("loss"), reduction, loss_fn)
    except ValueError as e:
        raise TraceError(str(e)) from None
    expected = {k: (dtype_name(v.detach().cpu().numpy().dtype), tuple(v.shape)) for k, v in model.state_dict().items()}
    params = list(model.parameters())
    expected.update(O.expected_table(ospec, params))
    _check_table(trace, expected, "the verifier's model and optimizer")
    X, y = _torch_data(man, data, model)

    def load(step: int) -> Dict[str, np.ndarray]:
        return trace.load_checkpoint(step)

    augment = xnn.augment_from_dict(man["augment"], trace.batch) if man.get("augment") is not None else None
    if augment is None:
        augment = fresh_augmentation(man)
    step = TorchStep(
        model,
        X,
        y,
        ospec,
        loss_of,
        dropout_seed=dropout_seed,
        clip=man.get("clip_grad"),
        augment=augment,
        accumulate=man.get("accumulate") or 1,
        normalize=_normalization(man, X),
        arithmetic=trace_arithmetic(man) or "torch",
    )

    def initial() -> Optional[Dict[str, np.ndarray]]:
        if spec is None:
            return None
        return {
            k: v.detach().numpy() for k, v in to_torch(spec, M.init_params(spec, int(man["seed"]))).state_dict().items()
        }

    return load, step, initial


def _normalization(man: Any, X: Any) -> Optional[Dict[str, List[float]]]:
    norm = man.get("normalize")
    if norm is not None and (X.dim() < 2 or X.shape[1] != len(norm["mean"])):
        raise TraceError(
            f"manifest: 'normalize' has {len(norm['mean'])} channels, the inputs have {list(X.shape[1:2])}"
        )
    return norm


def _verifier_model(man: Any, data: Dataset, model: Any, spec: Optional[M.ModelSpec]) -> Any:
    """The model the verifier recomputes with: its own instance, the zoo model the trace names,
    or the exactforge model of the spec; made reproducible in the trace's mode when the trace
    was recorded through exactforge.nn."""
    from .. import nn as xnn
    from ..models.torch_fcn import TorchFCN

    entry = man["model"]
    if "kind" not in entry:  # a spec is checked field by field where it is read (ModelSpec.from_dict)
        keys, what = (
            ({"zoo", "input_shape", "num_classes"}, "a zoo entry holds 'zoo', 'input_shape' and 'num_classes'")
            if "zoo" in entry
            else ({"torch_class"}, "expected an exactforge spec, a zoo entry or {'torch_class': a name}")
        )
        if set(entry) != keys or not isinstance(entry.get("torch_class", ""), str):
            raise TraceError(f"manifest: model: {what}, got {sorted(entry)[:6]}")
    if "zoo" in entry:
        model = _zoo_model(entry, data, model)
    if model is None:
        if spec is None:
            raise TraceError(
                "model: this torch trace names no exactforge model; pass model= (a fresh instance "
                "of the architecture) to verify_trace"
            )
        model = TorchFCN(spec)
    reduction = man["reduction"]
    if reduction is not None:  # recorded through exactforge.nn's reproducible layers: replay through them
        try:
            mode = xnn.mode_of(model)
        except ValueError as e:
            raise TraceError(str(e)) from None
        if mode is not None and mode != reduction:
            raise TraceError(f"model: made reproducible with mode {mode!r}, the trace was recorded with {reduction!r}")
        # a trace without the name was recorded before exactforge named one: torch's arithmetic
        arithmetic = man.get("arithmetic", "torch")
        if mode is None or xnn.arithmetic_of(model) != arithmetic:
            try:
                model = xnn.reproducible(model, mode=reduction, arithmetic=arithmetic)
            except xnn.UnsupportedLayerError as e:
                raise TraceError(str(e)) from None
    return model


def _torch_data(man: Any, data: Dataset, model: Any) -> Tuple[Any, Any]:
    """The verifier's data as tensors of the model's dtype (token ids stay ids), in the input
    shape the trace declares."""
    shape = man.get("input_shape")
    if shape is not None and (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 4
        or any(type(v) is not int or v < 1 for v in shape)
        or math.prod(shape) != data.dim
    ):
        raise TraceError(f"manifest: 'input_shape' must list the dimensions of one example ({data.dim} features)")
    return torch_data(data, model, shape)


def _set_modes(model: Any, eval_modules: Optional[List[str]]) -> None:
    """Train mode everywhere except the modules the trace recorded in eval mode (a trace
    without the list: all in train mode, as a fresh model is)."""
    model.train()
    if not eval_modules:
        return
    mods = dict(model.named_modules())
    for name in eval_modules:
        if name not in mods:
            raise ValueError(f"manifest: 'eval_modules' names {name[:60]!r}, which the verifier's model does not have")
        mods[name].training = False


def _pairs(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> List[Tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(a[k]), np.asarray(b[k])) for k in b if np.asarray(b[k]).dtype.kind == "f"]


def verify_trace(
    directory: str,
    *,
    epsilon: Union[float, str] = 0.0,
    distance_kind: str = "l2",
    policy: str = "all",
    q: int = 1,
    fraction: float = 0.1,
    seed: int = 0,
    permute_batches: Optional[int] = None,
    threads: Optional[int] = None,
    dataset: Any = None,
    data_path: Optional[str] = None,
    model: Any = None,
    progress: bool = False,
    allow_partial: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    loss_fn: Any = None,
    executor: Any = None,
    initial_test: bool = False,
    lr_lambda: Optional[Callable[[int], float]] = None,
    reference: Optional[bool] = None,
    reference_q: Optional[int] = None,
    reference_thresholds: Any = None,
    reference_epochs: Optional[int] = None,
    require: Any = None,
    known_data: Any = None,
    max_interval: Optional[int] = None,
) -> VerificationReport:
    """Verifies a trace. Never raises on a bad trace or argument: the report is then
    ``valid=False`` with a ``reason``.

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
    failed_init: Optional[str] = None
    with contextlib.ExitStack() as stack:
        auto = isinstance(epsilon, str) and epsilon == "auto"
        eps_value = 0.0 if auto else float(epsilon) if isinstance(epsilon, (int, float, np.floating)) else float("nan")
        report = VerificationReport(
            False,
            float("nan"),
            eps_value,
            str(distance_kind),
            str(policy),
            valid=False,
            permute_batches=permute_batches,
            threads=threads,
        )
        try:
            threads = _check_arguments(
                epsilon, eps_value, distance_kind, policy, q, fraction, permute_batches, threads, executor
            )
            report.required = list(parse_checks(require))
            ref_settings = _reference_settings(reference_thresholds, reference_epochs)
            known = None if known_data is None else as_dataset(known_data, "known")
            if max_interval is not None and (isinstance(max_interval, bool) or int(max_interval) < 1):
                raise ValueError(f"max_interval: expected a positive number of steps, got {max_interval!r}")
            job = SegmentJob(permute_batches, str(distance_kind), eps_value, threads)
            stream = None
            if executor is not None and policy == "all" and callable(getattr(executor, "stream", None)):
                # segments go to the workers while the chain is read; dropped if anything below fails
                try:
                    stack.enter_context(executor.session())
                except (ImportError, ConnectionError) as exc:  # no Ray, or no cluster there
                    raise ValueError(f"executor: {exc}") from None
                stream = executor.stream(job, model=model, loss_fn=loss_fn)
                stack.callback(stream.close)
            trace, data = open_with_data(
                directory,
                dataset,
                data_path,
                limits=limits,
                on_data=None if stream is None else stream.on_data,
                on_record=None if stream is None else stream.on_record,
            )
            _describe(report, trace, allow_partial)
            report.learning_rates = learning_rates(trace, lr_lambda)
            load, step, initial = engine_for(trace, data, threads, model, loss_fn)
            settled = _settled_job(job, trace, step, reference, executor)
            _check_declarations(trace.manifest, data, step)
            theta0 = finite(load(0), 0)
            failed_init = _check_theta0(report, trace.manifest, theta0, step, initial, initial_test)
            if auto:  # after the cheap checks: calibration recomputes the first segments
                from .calibrate import calibrate_epsilon

                eps_value, report.epsilon_source = calibrate_epsilon(trace, load, step)
                report.epsilon = eps_value
                settled = dataclasses.replace(settled, epsilon=eps_value)
            if settled != job and stream is not None:
                stream.close()  # its segments went out with a job that lacked these settings
                stream = None
            job = settled
            # topq: one streaming pass over every checkpoint for the logged update norms
            norms = _update_norms(trace, load, theta0) if policy == "topq" else None
            segs = select_segments(trace, policy, q=q, fraction=fraction, seed=seed, update_norms=norms)
            report.total_segments = len(list(trace.segments()))
            # a sample chooses what is recomputed, never what is checked: the checkpoints the
            # recomputation will not read are checked here (topq's pass read every one already)
            if policy == "random":
                read = {0} | {s for seg in segs for s in seg}
                trace.check_checkpoints([s for s in trace.checkpoint_steps if s not in read])
            report.checkpoints_checked = len(trace.checkpoint_steps)
        except (TraceError, ValueError, TypeError, OSError) as exc:
            report.reason = str(exc)
            return report
        report.valid, report.accepted, report.max_error = True, True, 0.0
        if executor is not None:
            # the executor reports its own failures (a task lost after its retries) as an invalid report
            try:
                extra = {"stream": stream} if stream is not None else {}
                executor.verify(
                    trace, data, segs, job, report, model=model, loss_fn=loss_fn, progress=progress, **extra
                )
            except (ImportError, ValueError, ConnectionError, RuntimeError) as exc:  # no Ray, or no cluster there
                report.valid, report.reason = False, f"executor: {exc}"
            if not report.valid:
                report.accepted = False
                return report
        else:
            try:
                _recompute(trace, segs, load, step, theta0, job, report, progress)
            except (TraceError, ValueError, TypeError, OSError, RuntimeError) as exc:
                # a checkpoint that fails its checks when it is reached, or a model that does not fit it
                report.valid, report.accepted, report.reason = False, False, str(exc)
                return report
        report.accepted = all(r.passed for r in report.steps)
        _explain(report, trace.manifest)
        if initial_test and failed_init is not None:
            report.accepted, report.reason = False, failed_init
        if report.steps:
            report.resolution = float(np.median([r.resolution for r in report.steps]))
        if job.reference_names:
            report.reference = _reference(report, theta0, step, reference_q, trace, ref_settings)
        _checks(report, trace, segs, data, known, max_interval)
        return report


def _explain(report: VerificationReport, man: Any) -> None:
    """The machines' comparison in the report, and a rejection's reason: the first segment
    over epsilon, its distance against epsilon, and for a trace bound to its machine's
    arithmetic, where the recording machine differs from this one (machine_note)."""
    bound = machine_bound(man)
    report.arithmetic = trace_arithmetic(man)
    report.augmentation = augmentation_note(man)
    comparison = compare_machines(man.get("environment"))
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


def _describe(report: VerificationReport, trace: Trace, allow_partial: bool) -> None:
    """What the report says of the trace itself; an incomplete trace is refused unless a
    prefix is asked for."""
    man = trace.manifest
    report.engine, report.declared_steps, report.complete = man["engine"], trace.declared_steps, trace.complete
    if report.epsilon_source is None:
        report.epsilon_source = "given"
    report.initial, report.num_steps = man["initial"], trace.num_steps
    report.declared = declared_fields(man)
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

    man = trace.manifest
    if man["engine"] != "torch":
        return None
    entry = man.get("scheduler")
    if entry is None and not trace.rated_records:  # one rate throughout: nothing to read again
        return {"per_step": 0, "scheduler": None, "follows": None, "first_difference": None, "reason": None}
    base = tuple(group_rates(man["optimizer"]))
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
    out["scheduler"] = str(entry["class"]).rpartition(".")[2][:80]
    try:
        replayed = replay_rates(entry, man["optimizer"], len(rates), lr_lambda)
    except ValueError as exc:
        out["reason"] = str(exc)
        return out
    t = first_difference(rates, replayed)
    out["follows"], out["first_difference"] = t is None, t
    if t is not None:
        shown = (rates[t], replayed[t]) if len(base) > 1 else (rates[t][0], replayed[t][0])
        out["reason"] = f"step {t} used lr {shown[0]!r}, the declared scheduler gives {shown[1]!r}"
    return out


def _check_theta0(
    report: VerificationReport, man: Any, theta0: Dict[str, np.ndarray], step: Any, initial: Callable, test: bool
) -> Optional[str]:
    """A declared seed that the verifier can recompute is checked, whatever 'initial' says;
    with ``test``, the initialisation-law test runs too. Returns why theta_0 fails that test."""
    ref = initial() if man["initial"] == "seeded" or man.get("seed") is not None else None
    if man["initial"] == "seeded" or ref is not None:
        _check_seeded(theta0, ref, man["seed"])
        report.initial_verified = True
    if not test:
        return None
    tests = initial_law_test(theta0, getattr(step, "model", None), getattr(step, "spec", None))
    report.initial_test = [t.to_dict() for t in tests]
    return init_summary(tests)


def _check_arguments(
    epsilon: Any,
    eps_value: float,
    distance_kind: str,
    policy: str,
    q: Any,
    fraction: float,
    permute_batches: Any,
    threads: Optional[int],
    executor: Any,
) -> Optional[int]:
    """The verifier's own arguments, checked before the trace is opened; returns the thread count."""
    if distance_kind not in DISTANCES:
        raise ValueError(f"distance: expected one of {DISTANCES}, got {distance_kind!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
    if isinstance(epsilon, bool) or not (eps_value >= 0 and math.isfinite(eps_value)):
        raise ValueError(f"epsilon: expected a finite number >= 0, got {epsilon!r}")
    threads = check_threads(threads)
    if permute_batches is not None and (
        isinstance(permute_batches, bool) or not isinstance(permute_batches, int) or permute_batches < 0
    ):
        raise ValueError(f"permute_batches: expected a seed >= 0 or None, got {permute_batches!r}")
    if policy == "random" and not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected a value in (0, 1], got {fraction}")
    if policy == "topq" and (isinstance(q, bool) or not isinstance(q, int) or q < 1):
        raise ValueError(f"q: expected a positive number of steps per epoch, got {q!r}")
    if executor is not None and not callable(getattr(executor, "verify", None)):
        raise ValueError(
            f"executor: expected None or an exactforge.verify.ray.RayExecutor, got {type(executor).__name__}"
        )
    return threads


def _check_declarations(man: Any, data: Dataset, step: Any) -> None:
    """What the manifest declares beside what is recomputed must agree with the verifier's
    data and model and with itself: a declaration nobody checks can say anything (the printed
    resolution used a top-level lr of 1e308 that the optimizer never saw)."""
    d = man["data"]
    for key, have in (("dim", data.dim), ("num_classes", data.num_classes)):
        if key in d and d[key] != have:
            raise TraceError(f"manifest: data.{key} is {str(d[key])[:20]}, the verifier's {data.name} has {have}")
    opt_lr = man["optimizer"].get("lr")
    if opt_lr is not None and opt_lr != man["lr"]:
        raise TraceError(f"manifest: 'lr' is {man['lr']!r} but the optimizer's lr is {str(opt_lr)[:30]}")
    spec, module = getattr(step, "spec", None), getattr(step, "model", None)
    dtype = spec.dtype if spec is not None else None
    if module is not None:
        dtype = str(next(module.parameters()).dtype).replace("torch.", "")
    if "dtype" in man and dtype is not None and man["dtype"] != dtype:
        raise TraceError(f"manifest: 'dtype' is {str(man['dtype'])[:20]}, the model computes in {dtype}")


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


def _update_norms(trace: Trace, load: Callable, theta0: Dict[str, np.ndarray]) -> List[float]:
    """The l2 norm of every logged update, two checkpoints in memory at a time (for topq)."""
    norms = []
    prev = theta0
    for _, e in trace.segments():
        cur = finite(load(e), e)
        norms.append(verification_distance(_pairs(cur, prev), "l2"))
        prev = cur
    return norms


def _states(
    segs: List[Tuple[int, int]], load: Callable, theta0: Optional[Dict[str, np.ndarray]]
) -> Iterator[Tuple[int, int, Any, Any]]:
    """(start, end, theta_start, theta_end) with at most two checkpoints in memory."""
    cache: Dict[int, Any] = {0: theta0} if theta0 is not None else {}
    for s, e in segs:
        start = cache[s] if s in cache else finite(load(s), s)
        end = finite(load(e), e)
        cache = {e: end}
        yield s, e, start, end


@dataclass(frozen=True)
class SegmentJob:
    """What recomputing a segment needs besides the trace and the engine: the verifier's
    settings. Shared by the serial verifier and its Ray workers, so both run the same code."""

    permute_batches: Optional[int]
    distance_kind: str
    epsilon: float
    threads: Optional[int]
    reference_names: Optional[Tuple[str, ...]] = None  # parameters the reference's distances cover


def engine_for(trace: Trace, data: Dataset, threads: Optional[int], model: Any = None, loss_fn: Any = None):
    """(load, step, initial) of the trace's engine: the native models, or torch with the
    verifier's model code. Raises TraceError when the trace does not fit them."""
    if trace.manifest["engine"] == "native":
        return _native_engine(trace, data, threads)
    return _torch_engine(trace, data, model, loss_fn)


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
    lr = float(trace.manifest["lr"])
    parts = trace.manifest.get("accumulate") or 1
    with torch_threads(job.threads if trace.manifest["engine"] == "torch" else None):
        for s, e, state, logged in _states(segs, load, theta0):
            t0, start = time.perf_counter(), state
            seed = job.permute_batches
            order = None if seed is None else (lambda idx, t: permuted(idx, seed, t, parts))
            state = replay_segment(trace, step, state, s, e, order)
            err = verification_distance(_pairs(state, logged), job.distance_kind)
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
    return verification_distance(_pairs({k: start[k] for k in keep}, {k: end[k] for k in keep}), kind)


def _settled_job(job: SegmentJob, trace: Trace, step: Any, reference: Optional[bool], executor: Any) -> SegmentJob:
    """The job once the trace is known: the reference's distances where asked (by default for
    imported proofs), over the torch model's parameters; and for a plain torch trace on an
    executor, this process's torch thread count, since torch's own sums follow the thread count
    and the workers would otherwise run with theirs."""
    import dataclasses

    wanted = trace.manifest.get("imported") is not None if reference is None else bool(reference)
    model = getattr(step, "model", None)
    if wanted and model is not None:
        job = dataclasses.replace(job, reference_names=tuple(n for n, _ in model.named_parameters()))
    if executor is not None and job.threads is None and trace.manifest["engine"] == "torch":
        import torch

        job = dataclasses.replace(job, threads=int(torch.get_num_threads()))
    return job


def _reference_settings(thresholds: Any, epochs: Optional[int]) -> Tuple[Any, Optional[int]]:
    """The reference's arguments, checked before any segment is recomputed."""
    from .reference import parse_thresholds

    try:
        parse_thresholds(thresholds)
    except ValueError as exc:
        raise ValueError(f"reference_thresholds: {exc}") from None
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1):
        raise ValueError(f"reference_epochs: expected a positive number of epochs, got {epochs!r}")
    return thresholds, None if epochs is None else int(epochs)


def _reference(
    report: VerificationReport,
    theta0: Any,
    step: Any,
    q: Optional[int],
    trace: Trace,
    settings: Tuple[Any, Optional[int]],
) -> Optional[Dict[str, Any]]:
    from .initial import initial_law_test
    from .reference import infer_epochs, reference_verdict

    thresholds, epochs = settings
    source = "given"
    if epochs is None and q is not None:
        man = trace.manifest
        b, n = man.get("batch_size"), int(man["data"]["num_examples"])
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
        save_freq=int(trace.manifest["checkpoint_every"]),
    )
    if verdict is None:
        return None
    out = verdict.to_dict()
    # the reference's verify_hash: an imported proof's hash.txt against the text hash of the data
    # it was imported with (the data verify reads has that import's fingerprint)
    checked = (trace.manifest.get("imported") or {}).get("data_hash_checked")
    out["hash"] = "valid" if checked is True else "invalid" if checked is False else "unchecked"
    if checked is False:
        out["accepted"] = False
        out["notes"] = list(out.get("notes") or []) + [
            "its verify_hash fails: the proof's hash.txt is not the text hash of this data (\"Hash doesn't match. "
            'The proof is invalid")'
        ]
    return out


def _checks(
    report: VerificationReport, trace: Trace, segs: Any, data: Dataset, known: Any, max_interval: Optional[int]
) -> None:
    """The checks beside the distances; a required one that fails rejects the trace."""
    report.vacuous = vacuous_check(report.steps, report.epsilon)
    report.schedule = schedule_check(report.learning_rates, float(trace.manifest["lr"]))
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


def add_result(report: VerificationReport, r: StepResult) -> None:
    report.steps.append(r)
    report.max_error = max(report.max_error, r.error) if math.isfinite(r.error) else float("inf")


def _recompute(trace, segs, load, step, theta0, job: SegmentJob, report, progress) -> None:
    bar = progress_bar(len(segs), progress, "verify", "segment")

    def on_result(r: StepResult) -> None:
        add_result(report, r)
        if bar is not None:
            bar.update(1)

    try:
        recompute_segments(trace, segs, load, step, job, on_result, theta0)
    finally:
        if bar is not None:
            bar.close()
