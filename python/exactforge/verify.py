"""The verifier: integrity first (manifest, hash chain, checkpoint hashes, data fingerprint),
then recomputation of the selected segments between checkpoints and a distance test."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import models as M
from .data import Dataset, load_dataset
from .distances import DISTANCES, distance
from .trace import Trace, TraceError

__all__ = ["POLICIES", "StepResult", "VerificationReport", "verify_trace", "select_segments", "open_with_data"]

POLICIES = ("all", "topq", "random")


@dataclass
class StepResult:
    step: int          # first step of the recomputed segment
    end_step: int      # the checkpoint it is compared with
    error: float       # distance(recomputed theta_end, logged theta_end)
    passed: bool
    seconds: float


@dataclass
class VerificationReport:
    accepted: bool
    max_error: float
    epsilon: float
    distance: str
    policy: str
    steps: List[StepResult] = field(default_factory=list)
    reason: Optional[str] = None       # why the trace is invalid (then accepted is False)
    valid: bool = True
    num_steps: int = 0                 # steps covered by checkpoints
    unverified_tail: int = 0           # recorded steps after the last checkpoint
    engine: str = ""
    permute_batches: Optional[int] = None
    threads: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["max_error"] = _json_float(self.max_error)
        for s in d["steps"]:
            s["error"] = _json_float(s["error"])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def _json_float(x: float) -> Any:
    return x if np.isfinite(x) else str(x)


def open_with_data(directory: str, dataset: Optional[Dataset] = None,
                   data_path: Optional[str] = None) -> Tuple[Trace, Dataset]:
    """Opens and checks a trace and loads its training data (the manifest's dataset, from
    ``data_path`` when given), refusing data whose fingerprint differs. Raises TraceError."""
    trace = Trace.open(directory)
    man = trace.manifest
    if dataset is None:
        dataset = load_dataset(man["data"]["name"], data_path or man["data"].get("path"))
    if dataset.fingerprint() != man["data"].get("fingerprint"):
        raise TraceError(f"data: the fingerprint of {dataset.name} does not match the trace's "
                         "(different or modified training data)")
    return trace, dataset


def _invalid(reason: str, epsilon: float, dist: str, policy: str) -> VerificationReport:
    return VerificationReport(False, float("nan"), epsilon, dist, policy, reason=reason, valid=False)


def select_segments(trace: Trace, policy: str, *, q: int = 1, fraction: float = 0.1, seed: int = 0,
                    update_norms: Optional[List[float]] = None) -> List[Tuple[int, int]]:
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
        n = int(trace.manifest["data"].get("num_examples") or 0)
        b = int(trace.manifest.get("batch_size") or 0)
        per_epoch = max(1, n // b) if n and b else len(segs)
        assert update_norms is not None
        chosen = []
        epochs: Dict[int, List[int]] = {}
        for i, (s, _) in enumerate(segs):
            epochs.setdefault(s // per_epoch, []).append(i)
        for ids in epochs.values():
            ids = sorted(ids, key=lambda i: -update_norms[i])[:q]
            chosen.extend(ids)
        return [segs[i] for i in sorted(chosen)]
    raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")


def _native_engine(trace: Trace, data: Dataset, threads: Optional[int]) -> Tuple[Callable, Callable]:
    spec = M.ModelSpec.from_dict(trace.manifest["model"])
    mode = trace.manifest.get("reduction") or "fixed"
    lr = float(trace.manifest["lr"])
    X = data.X.astype(spec.dtype, copy=False)

    def load(step: int) -> M.Params:
        return M.check_params(spec, trace.load_checkpoint(step), f"checkpoint {step}")

    def step(params: M.Params, idx: np.ndarray) -> M.Params:
        return M.sgd_step(spec, params, X[idx], data.y[idx], idx, lr, mode=mode, threads=threads)

    return load, step


def _torch_engine(trace: Trace, data: Dataset, threads: Optional[int], model: Any) -> Tuple[Callable, Callable]:
    import torch

    from .torch_models import TorchFCN

    opt = trace.manifest.get("optimizer") or {}
    if opt.get("name") != "sgd" or any(opt.get(k) for k in ("momentum", "weight_decay")):
        raise TraceError(f"optimizer: recomputation from checkpoints supports plain SGD, the trace used {opt}")
    mspec = trace.manifest["model"]
    if model is None:
        if "kind" not in mspec:
            raise TraceError("model: this torch trace names no exactforge model; pass model= (a fresh instance "
                             "of the architecture) to verify_trace")
        model = TorchFCN(M.ModelSpec.from_dict(mspec))
    lr = float(trace.manifest["lr"])
    X = torch.from_numpy(data.X.astype(str(next(model.parameters()).dtype).replace("torch.", "")))
    y = torch.from_numpy(data.y)

    def load(step: int) -> Dict[str, np.ndarray]:
        state = trace.load_checkpoint(step)
        try:
            model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
        except (RuntimeError, KeyError) as exc:
            raise TraceError(f"checkpoint {step}: does not fit the model ({exc})") from None
        return state

    def step(state: Dict[str, np.ndarray], idx: np.ndarray) -> Dict[str, np.ndarray]:
        # (torch's thread count is set once around the whole verification: setting it
        # rebuilds the thread pool)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        o = torch.optim.SGD(model.parameters(), lr=lr)
        t = torch.from_numpy(idx)
        loss = torch.nn.functional.cross_entropy(model(X[t]), y[t])
        o.zero_grad()
        loss.backward()
        o.step()
        return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}

    return load, step


def _flat(state: Dict[str, np.ndarray], names: List[str]) -> np.ndarray:
    return np.concatenate([np.asarray(state[k], dtype=np.float64).ravel() for k in names])


def verify_trace(directory: str, *, epsilon: float = 0.0, distance_kind: str = "l2", policy: str = "all",
                 q: int = 1, fraction: float = 0.1, seed: int = 0, permute_batches: Optional[int] = None,
                 threads: Optional[int] = None, dataset: Optional[Dataset] = None, data_path: Optional[str] = None,
                 model: Any = None, progress: bool = False) -> VerificationReport:
    """Verifies a trace. Never raises on a bad trace: the report is then ``valid=False`` with
    a ``reason``. ``permute_batches`` (a seed) shuffles each batch's examples before
    recomputation (the same set); ``threads`` sets the thread count of the recomputation."""
    if distance_kind not in DISTANCES:
        raise ValueError(f"distance: expected one of {DISTANCES}, got {distance_kind!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
    if not (epsilon >= 0):
        raise ValueError(f"epsilon: expected a non-negative number, got {epsilon}")
    try:
        trace, dataset = open_with_data(directory, dataset, data_path)
        man = trace.manifest
        for rec in trace.records:
            if any(i < 0 or i >= len(dataset) for i in rec.batch):
                raise TraceError(f"record {rec.step}: batch index outside the dataset (0..{len(dataset) - 1})")
        engine = man["engine"]
        if engine == "native":
            load, step = _native_engine(trace, dataset, threads)
        elif engine == "torch":
            load, step = _torch_engine(trace, dataset, threads, model)
        else:
            raise TraceError(f"manifest: unknown engine {engine!r}")
        ckpts = {s: load(s) for s in trace.checkpoint_steps}  # hash-checked and shape-checked
        names = list(ckpts[0].keys())
        for s, st in ckpts.items():
            if set(st) != set(names):
                raise TraceError(f"checkpoint {s}: holds different tensors than theta_0")
            if not all(np.all(np.isfinite(v)) for v in st.values()):
                raise TraceError(f"checkpoint {s}: holds NaN or infinite weights")
    except (TraceError, FileNotFoundError) as exc:
        return _invalid(str(exc), epsilon, distance_kind, policy)

    flat = {s: _flat(st, names) for s, st in ckpts.items()}
    norms = [float(np.linalg.norm(flat[e] - flat[s])) for s, e in trace.segments()]
    segs = select_segments(trace, policy, q=q, fraction=fraction, seed=seed, update_norms=norms)
    report = VerificationReport(True, 0.0, float(epsilon), distance_kind, policy, num_steps=trace.num_steps,
                                unverified_tail=len(trace.records) - trace.num_steps, engine=man["engine"],
                                permute_batches=permute_batches, threads=threads)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(segs), desc="verify", unit="segment", leave=False)
    torch_threads = None
    if threads and man["engine"] == "torch":
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    try:
        _recompute(trace, segs, ckpts, flat, names, step, permute_batches, distance_kind, epsilon, report, bar)
    finally:
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)
    if bar is not None:
        bar.close()
    report.accepted = all(r.passed for r in report.steps)
    return report


def _recompute(trace, segs, ckpts, flat, names, step, permute_batches, distance_kind, epsilon, report, bar) -> None:
    for s, e in segs:
        t0 = time.perf_counter()
        state = ckpts[s]
        for t in range(s, e):
            idx = trace.batch(t)
            if permute_batches is not None:
                idx = idx[np.random.default_rng([permute_batches, t]).permutation(idx.size)]
            state = step(state, idx)
        err = distance(_flat(state, names), flat[e], distance_kind)
        passed = bool(err <= epsilon)
        report.steps.append(StepResult(s, e, err, passed, time.perf_counter() - t0))
        report.max_error = max(report.max_error, err) if np.isfinite(err) else float("inf")
        if bar is not None:
            bar.update(1)
