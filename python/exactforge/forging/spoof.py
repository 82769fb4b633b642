"""Spoofing Proof-of-Learning: a complete execution trace, from a fresh theta_0, for a model one did
not train. Given a trace's final model theta_T and public data, each attack writes a real trace
(manifest, chained records, checkpoints; a data file where it synthesises examples) that
``exactforge verify`` reads:

* ``adversarial`` (Zhang et al., S&P 2022): dummy checkpoints on the line from theta_0 to theta_T;
  within each checkpoint interval every step's batch is public examples plus noise optimised
  (Adam on ||eta g(x + delta) - (theta - W_next) / remaining||_2) so that the recomputed steps
  land near the next dummy checkpoint. The noisy examples are written to ``data.npz``.
* ``infinitesimal`` (Fang et al., EuroS&P 2023): the same dummy checkpoints with a learning rate
  so small that every step's update is negligible (here: below float32's resolution, so it rounds
  to nothing); each segment's error is then the distance between consecutive dummy checkpoints.
  A torch trace declares the ordinary rate and records the small one per step (a schedule the
  manifest does not declare); a native trace, which has no per-step rates, declares it.
* ``reorder``: honest SGD from theta_0 on public data whose batch order is chosen greedily to
  approach theta_T (the best of ``candidates`` batches per step), then theta_T claimed as the last
  checkpoint. Every segment but the last reproduces exactly.

The spoof's ``max_residual`` is the spoofer's own estimate of the largest segment error (l2); the
verifier's verdict is what counts.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..data import Dataset
from ..models import native as M

__all__ = ["SPOOFS", "SpoofGame", "SpoofResult", "SpoofRound", "play_spoofing", "spoof", "verify_spoof"]

SPOOFS = ("adversarial", "infinitesimal", "reorder")

# Manifest fields the writer sets itself, or that describe the victim's run rather than the spoof's.
_WRITER_FIELDS = ("schema", "schema_version", "tensors", "initial_checkpoint", "created", "environment")


@dataclass
class SpoofResult:
    attack: str
    out: str
    engine: str
    steps: int
    checkpoint_every: int
    lr: float  # the learning rate the manifest declares
    step_lr: float  # the rate the steps use (the infinitesimal spoof's is tiny)
    synthesised: int  # examples appended to the public data (data.npz), 0 where none
    data_path: Optional[str]  # the data file the verifier needs (--dataset npz --data-path), if any
    max_residual: float  # the spoofer's estimate of the largest segment error (l2)
    final_distance: float  # l2 from theta_0 to theta_T: how far the spoof had to travel
    seconds: float

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _checkpoint(spec: M.ModelSpec, engine: str, params: M.Params) -> Dict[str, np.ndarray]:
    """A checkpoint in the engine's layout: native parameters, or TorchFCN's state_dict."""
    if engine == "native":
        return {k: np.asarray(v) for k, v in params.items()}
    from ..models.torch_fcn import to_torch

    return {k: v.detach().numpy().copy() for k, v in to_torch(spec, params).state_dict().items()}


def _stepper(spec: M.ModelSpec, man: Dict[str, Any]) -> Callable[..., M.Params]:
    """(params, X, y, lr, keys) -> params after one SGD step, computed as the trace's engine computes
    it (``keys``: the examples' dataset indices, which order a fixed-order reduction)."""
    if man["engine"] == "native":
        from ..models.step import NativeStep

        def native(params, X, y, lr, keys):
            eng = NativeStep(spec, X, y, lr, mode=man.get("reduction") or "fixed", plan=man.get("reduction_plan", 1))
            return eng.arrays(params, X.astype(spec.dtype), y, np.asarray(keys, np.int64))

        return native
    import torch

    from ..models.torch_fcn import from_torch, to_torch

    def torch_step(params, X, y, lr, keys):
        model = to_torch(spec, params)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(X.astype(np.float32))), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return from_torch(spec, model)

    return torch_step


def _dist(spec: M.ModelSpec, a: M.Params, b: M.Params) -> float:
    return float(np.linalg.norm(M.flatten(spec, a).astype(np.float64) - M.flatten(spec, b).astype(np.float64)))


def _line(spec: M.ModelSpec, theta0: M.Params, thetaT: M.Params, points: List[int], total: int) -> List[M.Params]:
    """Dummy checkpoints at ``points`` (steps) on the line from theta_0 to theta_T, float32; the last is theta_T."""
    a, b = M.flatten(spec, theta0).astype(np.float64), M.flatten(spec, thetaT).astype(np.float64)
    out = [M.unflatten(spec, (a + (b - a) * (p / total)).astype(np.float32)) for p in points[:-1]]
    return out + [thetaT]


def _adversarial_batch(
    spec: M.ModelSpec, params: M.Params, X: np.ndarray, y: np.ndarray, want: np.ndarray, lr: float, iters: int
) -> np.ndarray:
    """X + delta, with delta optimised so that one SGD step moves the flat parameters by ``want``."""
    import torch

    from ..models.torch_fcn import to_torch

    model = to_torch(spec, params)
    ps = list(model.parameters())
    target = torch.from_numpy(-want.astype(np.float32))  # theta' = theta - lr g: lr g = -want
    xs = torch.from_numpy(X.astype(np.float32)).clone().requires_grad_(True)
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam([xs], lr=0.01)
    for _ in range(iters):
        loss = torch.nn.functional.cross_entropy(model(xs), yt)
        g = torch.autograd.grad(loss, ps, create_graph=True)
        obj = (lr * torch.cat([t.reshape(-1) for t in g]) - target).norm()
        opt.zero_grad()
        obj.backward()
        opt.step()
    return xs.detach().numpy()


def spoof(
    trace: str,
    attack: str,
    out: str,
    *,
    dataset: Optional[Dataset] = None,
    data_path: Optional[str] = None,
    steps: Optional[int] = None,
    checkpoint_every: int = 1,
    seed: int = 1,
    noise_steps: int = 30,
    candidates: int = 8,
    lr_scale: float = 1e-10,
) -> SpoofResult:
    """Writes a spoofed trace into ``out`` that ends at the final model of ``trace`` (an exactforge
    logreg or fcn trace). ``steps`` (default: the victim's) SGD steps with a checkpoint every
    ``checkpoint_every``; theta_0 is the model's initialisation with ``seed``, declared seeded.
    ``noise_steps``: the adversarial spoof's Adam iterations per step; ``candidates``: batches the
    reorder spoof tries per step; ``lr_scale``: the infinitesimal spoof's rate over the victim's."""
    from .context import open_exactforge_trace, params_at

    if attack not in SPOOFS:
        raise ValueError(f"attack: expected one of {SPOOFS}, got {attack!r}")
    if isinstance(checkpoint_every, bool) or int(checkpoint_every) < 1:
        raise ValueError(f"checkpoint_every: expected a positive interval, got {checkpoint_every!r}")
    if not 0 < lr_scale < 1:
        raise ValueError(f"lr_scale: expected a factor in (0, 1), got {lr_scale!r}")
    if os.path.exists(os.path.join(out, "manifest.json")):
        raise FileExistsError(f"out: {out} already holds a trace; choose a new folder")
    t0 = time.perf_counter()
    victim, spec, data = open_exactforge_trace(trace, dataset, data_path)
    man = dict(victim.manifest)
    n = int(steps or victim.declared_steps or victim.num_steps)
    if n < 1:
        raise ValueError(f"steps: expected a positive number of steps, got {n}")
    k = int(checkpoint_every)
    thetaT = params_at(victim, spec, victim.checkpoint_steps[-1])
    theta0 = M.init_params(spec, seed)
    points = sorted({*range(k, n + 1, k), n})
    plan = _Plan(spec, man, data, n, k, points, seed)
    if attack == "infinitesimal":
        entries, resid, step_lr = plan.infinitesimal(theta0, thetaT, lr_scale)
    elif attack == "reorder":
        entries, resid, step_lr = plan.reorder(theta0, thetaT, candidates)
    else:
        entries, resid, step_lr = plan.adversarial(theta0, thetaT, noise_steps)
    written = plan.write(out, theta0, entries, attack, step_lr)
    return SpoofResult(
        attack,
        out,
        man["engine"],
        n,
        k,
        float(plan.declared_lr),
        float(step_lr),
        len(plan.extra_X),
        written,
        float(resid),
        _dist(spec, theta0, thetaT),
        time.perf_counter() - t0,
    )


Entry = Tuple[np.ndarray, Optional[M.Params], Optional[float]]  # batch, checkpoint after it, the step's own rate


class _Plan:
    """The spoof's schedule (steps, checkpoints, public batches) and the trace it writes."""

    def __init__(self, spec, man, data, n, k, points, seed) -> None:
        from ..trace.record import batch_schedule

        self.spec, self.man, self.data, self.n, self.k, self.points = spec, man, data, n, k, points
        self.seed = seed
        self.lr = float(man["lr"])
        self.declared_lr = self.lr
        self.step = _stepper(spec, man)
        b = int(man.get("batch_size") or 64)
        self.batches = batch_schedule(len(data), min(b, len(data)), seed)
        self.X = data.X.reshape(len(data), -1)
        self.extra_X: List[np.ndarray] = []
        self.extra_y: List[int] = []

    def infinitesimal(self, theta0, thetaT, scale) -> Tuple[List[Entry], float, float]:
        tiny = self.lr * scale
        ws = _line(self.spec, theta0, thetaT, self.points, self.n)
        per_step = self.man["engine"] == "torch"  # torch records carry a rate; native ones cannot
        if not per_step:
            self.declared_lr = tiny
        entries: List[Entry] = []
        resid, prev, c = 0.0, theta0, 0
        for t in range(self.n):
            idx = next(self.batches)
            ck = ws[c] if t + 1 == self.points[c] else None
            entries.append((idx, ck, tiny if per_step else None))
            if ck is not None:
                resid, prev, c = max(resid, _dist(self.spec, prev, ck)), ck, c + 1
        return entries, resid, tiny

    def reorder(self, theta0, thetaT, candidates) -> Tuple[List[Entry], float, float]:
        entries: List[Entry] = []
        theta = theta0
        for t in range(self.n):
            best = None
            for _ in range(max(1, candidates)):
                idx = next(self.batches)
                nxt = self.step(theta, self.X[idx], self.data.y[idx], self.lr, idx)
                d = _dist(self.spec, nxt, thetaT)
                if best is None or d < best[0]:
                    best = (d, idx, nxt)
            assert best is not None
            theta = best[2]
            last = t + 1 == self.n
            entries.append((best[1], thetaT if last else theta if t + 1 in self.points else None, None))
        return entries, _dist(self.spec, theta, thetaT), self.lr

    def adversarial(self, theta0, thetaT, iters) -> Tuple[List[Entry], float, float]:
        ws = _line(self.spec, theta0, thetaT, self.points, self.n)
        entries: List[Entry] = []
        theta, resid, c, n0 = theta0, 0.0, 0, len(self.data)
        for t in range(self.n):
            idx = next(self.batches)
            left = self.points[c] - t  # steps until the next dummy checkpoint
            want = (M.flatten(self.spec, ws[c]).astype(np.float64) - M.flatten(self.spec, theta)) / left
            Xs = _adversarial_batch(self.spec, theta, self.X[idx], self.data.y[idx], want, self.lr, iters)
            new = np.arange(n0 + len(self.extra_X), n0 + len(self.extra_X) + len(idx), dtype=np.int64)
            self.extra_X.extend(Xs)
            self.extra_y.extend(int(v) for v in self.data.y[idx])
            theta = self.step(theta, Xs, self.data.y[idx], self.lr, new)
            ck = ws[c] if t + 1 == self.points[c] else None
            entries.append((new, ck, None))
            if ck is not None:  # the verifier restarts each segment from the logged checkpoint
                resid, theta, c = max(resid, _dist(self.spec, theta, ck)), ck, c + 1
        return entries, resid, self.lr

    def write(self, out: str, theta0, entries: List[Entry], attack: str, step_lr: float) -> Optional[str]:
        from ..data import load_npz
        from ..report.files import atomic_write
        from ..trace.writer import TraceWriter, environment

        man = {key: v for key, v in self.man.items() if key not in _WRITER_FIELDS}
        man.update(seed=self.seed, initial="seeded", steps=self.n, checkpoint_every=self.k, lr=self.declared_lr)
        if isinstance(man.get("optimizer"), dict):
            man["optimizer"] = {**man["optimizer"], "lr": self.declared_lr}
        man["environment"] = environment("cpu")
        path = None
        os.makedirs(out, exist_ok=True)
        if self.extra_X:
            X = np.concatenate([self.X, np.asarray(self.extra_X, self.X.dtype)])
            y = np.concatenate([self.data.y, np.asarray(self.extra_y, np.int64)])
            path = os.path.join(out, "data.npz")
            shape = self.data.shape or (self.data.dim,)
            # the public data's own domain, declared as it is (none where it has none)
            dom = {} if self.data.domain is None else {"lo": self.data.domain[0], "hi": self.data.domain[1]}
            buf = io.BytesIO()
            np.savez(buf, X=X.reshape(len(X), *shape), y=y, levels=self.data.levels or 0, **dom)
            atomic_write(path, buf.getvalue())  # a kill leaves no half-written data file
            written = load_npz(path)  # the manifest names the data as the verifier will read it
            man["data"] = {**man["data"], "name": "npz", "fingerprint": written.fingerprint()}
            man["data"].update(num_examples=len(written), path="data.npz")
        eng, spec = self.man["engine"], self.spec
        w = TraceWriter(out, man, _checkpoint(spec, eng, theta0))
        for i, (idx, ck, lr) in enumerate(entries):
            w.append(idx, None if ck is None else _checkpoint(spec, eng, ck), final=i + 1 == len(entries), lr=lr)
        w.close()
        return path


@dataclass
class SpoofRound:
    round: int
    won: bool  # the verifier accepted the spoof
    reasons: List[str]  # why it was rejected (empty when the spoof won)
    max_error: float
    failed_checks: List[str]  # every check that failed, required or not


@dataclass
class SpoofGame:
    """The spoofing game: each round the verifier trains a victim, the adversary spoofs its final
    model, and wins when the verifier accepts the spoof."""

    attack: str
    model: str
    engine: str
    epsilon: float
    required: List[str]
    checkpoint_every: int
    spoof_steps: int
    rounds: List[SpoofRound]
    win_rate: float
    seconds: float

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def play_spoofing(
    attack: str,
    rounds: int,
    epsilon: Any = 0.0,
    *,
    model: str = "fcn",
    engine: str = "native",
    data: Optional[Dataset] = None,
    batch_size: int = 100,
    steps: int = 20,
    spoof_steps: int = 200,
    checkpoint_every: int = 1,
    require: Any = ("domain", "known-data"),
    max_interval: Optional[int] = None,
    seed: int = 0,
) -> SpoofGame:
    """``rounds`` rounds of the spoofing game against a verifier of ``engine`` at ``epsilon``
    (a value, or "auto": calibrated on the spoof's first segments), requiring the checks
    ``require`` (exactforge.verify.checks; the verifier holds the public data, so known-data
    applies)."""
    import tempfile

    from ..data import load_digits
    from ..trace.record import record_native, record_torch_fcn
    from ..verify.checks import failed_checks

    if model not in ("logreg", "fcn"):
        raise ValueError(f"model: the spoofs build exactforge logreg or fcn traces, got {model!r}")
    if engine not in ("native", "torch"):
        raise ValueError(f"engine: expected native or torch, got {engine!r}")
    data = data or load_digits()
    spec = M.ModelSpec(model, data.dim, data.num_classes, (100,) if model == "fcn" else ())
    record = record_native if engine == "native" else record_torch_fcn
    t0, played = time.perf_counter(), []
    eps_used, required = float("nan"), []
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as d:
            victim, where = os.path.join(d, "victim"), os.path.join(d, "spoof")
            record(victim, spec, data, steps=steps, batch_size=batch_size, seed=seed + r)
            s = spoof(
                victim,
                attack,
                where,
                dataset=data,
                steps=spoof_steps,
                checkpoint_every=checkpoint_every,
                seed=seed + r + 1,
            )
            rep = verify_spoof(s, data, epsilon=epsilon, require=require, max_interval=max_interval)
        eps_used, required = rep.epsilon, rep.required
        failed = failed_checks(rep)
        reasons = [f"error {rep.max_error:.3g} over epsilon {rep.epsilon:.3g}"] if rep.max_error > rep.epsilon else []
        reasons += [f"required check {n} failed" for n in failed if n in required]
        played.append(SpoofRound(r, bool(rep.accepted), reasons, float(rep.max_error), failed))
    wins = sum(p.won for p in played)
    return SpoofGame(
        attack,
        model,
        engine,
        float(eps_used),
        list(required),
        int(checkpoint_every),
        int(spoof_steps),
        played,
        wins / max(1, rounds),
        time.perf_counter() - t0,
    )


def verify_spoof(result: SpoofResult, data: Dataset, **kwargs: Any) -> Any:
    """The verifier's report on a spoofed trace: the verifier holds the public data ``data``
    (the spoof's own data file where it synthesised examples, with ``data`` as its known data);
    ``kwargs`` go to verify_trace. Raises RuntimeError when the spoof is not a valid trace."""
    from ..verify.verifier import verify_trace

    rep = verify_trace(
        result.out,
        dataset=None if result.data_path else data,
        data_path=result.data_path,
        known_data=data,
        **kwargs,
    )
    if not rep.valid:
        raise RuntimeError(f"spoof: the {result.attack} spoof in {result.out} is not a valid trace: {rep.reason}")
    return rep
