"""Spoofing Proof-of-Learning: a complete execution trace, from a fresh theta_0, for a model one did
not train. Given a trace's final model theta_T and public data, each attack writes a real trace
(manifest, chained records, checkpoints; a data file where it synthesises examples) that
``exactforge verify`` reads:

* ``adversarial`` (Zhang et al., S&P 2022): dummy checkpoints on the line from theta_0 to theta_T;
  within each checkpoint interval every step's batch is public examples B plus noise R optimised
  by Adam on Zhang et al.'s objective ``||W_next - (W - eta g(B + R; W))||_2 + lambda ||R||_2``
  (W_next: the step's share of the way to the next dummy checkpoint; lambda: ``noise_weight``),
  so that the recomputed steps land near the next dummy checkpoint. The noisy examples are
  written to ``data.npz``.
* ``infinitesimal`` (Fang et al., EuroS&P 2023): the same dummy checkpoints and unchanged public
  batches, with a learning rate chosen from the verifier's thresholds: the largest rate whose
  update cannot carry any segment's recomputed end outside the thresholds around the next dummy
  checkpoint (the Proof-of-Learning reference's l1, l2, linf and cosine thresholds,
  ``pol_thresholds``). Where the dummy checkpoints alone are farther apart than a threshold, no
  rate can do that; the rate then falls back to ``lr_scale`` times the victim's, whose update
  rounds to nothing, and the result says how many steps would have been needed. A torch trace
  declares the ordinary rate and records the chosen one per step (a schedule the manifest does
  not declare); a native trace, which has no per-step rates, declares it.
* ``reorder``: honest SGD from theta_0 on public data whose batch order is chosen greedily to
  approach theta_T (the best of ``candidates`` batches per step), then theta_T claimed as the last
  checkpoint. Every segment but the last reproduces exactly.

Every spoof reports its segments as the verifier recomputes them: the recomputed end's l2 distance
to the logged checkpoint (``error``), the distance a zero update would leave (``zero_update_error``:
the gap between consecutive checkpoints, which an attack whose update does nothing still "achieves")
and the norm of the noise added to the segment's examples (``noise_l2``). The spoof's
``max_residual`` is the largest ``error``; the verifier's verdict is what counts.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..data import Dataset
from ..models import layout
from ..models import native as M
from ..trace.limits import DEFAULT_LIMITS

__all__ = [
    "NOISE_WEIGHT",
    "SPOOFS",
    "SpoofResult",
    "spoof",
    "verify_spoof",
]

SPOOFS = ("adversarial", "infinitesimal", "reorder")

# lambda of Zhang et al.'s objective: the data-forging short paper (section 2, "Attack based on
# 'adversarial' optimisation") writes it as the plain sum of the two norms, and Zhang et al.'s
# released attack I weighs its noise term (squared there, as is its distance) by 1 too
NOISE_WEIGHT = 1.0

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
    step_lr: float  # the rate the steps use (the infinitesimal spoof's is chosen from the thresholds)
    synthesised: int  # examples appended to the public data (data.npz), 0 where none
    data_path: Optional[str]  # the data file the verifier needs (--dataset npz --data-path), if any
    max_residual: float  # the largest segment error (l2), recomputed as the verifier does
    final_distance: float  # l2 from theta_0 to theta_T: how far the spoof had to travel
    seconds: float
    # per segment: error, zero_update_error, noise_l2 (and its first and last step)
    segments: List[Dict[str, Any]] = field(default_factory=list)
    max_zero_update_error: float = 0.0  # the largest gap between consecutive checkpoints (l2)
    noise_weight: Optional[float] = None  # adversarial: lambda of the noise term
    noise_l2: float = 0.0  # the largest segment noise norm ||R||_2 (0 where the data is not changed)
    # synthesised examples outside the public data's declared range or grid (None: none
    # synthesised, or the data declares no range)
    outside_domain: Optional[int] = None
    domain: Optional[str] = None  # that range and grid, as the verifier's domain check words it
    # infinitesimal: the thresholds targeted, whether every recomputed segment lands within
    # them (the reference's distances to the next checkpoint), and how the rate was chosen
    pol_thresholds: Optional[Dict[str, float]] = None
    within_thresholds: Optional[bool] = None
    rate_rule: Optional[str] = None

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
        from ..trace.engine import native_step
        from ..trace.manifest import TraceSpec

        typed = TraceSpec.parse(man)  # the step the verifier's engine factory builds for this manifest

        def native(params, X, y, lr, keys):
            eng = native_step(typed, X, y, lr=lr)
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
    return float(
        np.linalg.norm(layout.flatten(spec, a).astype(np.float64) - layout.flatten(spec, b).astype(np.float64))
    )


def _line(spec: M.ModelSpec, theta0: M.Params, thetaT: M.Params, points: List[int], total: int) -> List[M.Params]:
    """Dummy checkpoints at ``points`` (steps) on the line from theta_0 to theta_T, float32; the last is theta_T."""
    a, b = layout.flatten(spec, theta0).astype(np.float64), layout.flatten(spec, thetaT).astype(np.float64)
    out = [layout.unflatten(spec, (a + (b - a) * (p / total)).astype(np.float32)) for p in points[:-1]]
    return out + [thetaT]


def _adversarial_batch(
    spec: M.ModelSpec,
    params: M.Params,
    X: np.ndarray,
    y: np.ndarray,
    want: np.ndarray,
    lr: float,
    iters: int,
    weight: float,
) -> np.ndarray:
    """X + R, with the noise R optimised so that one SGD step moves the flat parameters by
    ``want`` while ``weight * ||R||_2`` keeps it small (Zhang et al.'s objective)."""
    import torch

    from ..models.torch_fcn import to_torch

    model = to_torch(spec, params)
    ps = list(model.parameters())
    target = torch.from_numpy(-want.astype(np.float32))  # theta' = theta - lr g: lr g = -want
    x0 = torch.from_numpy(X.astype(np.float32))
    noise = torch.zeros_like(x0, requires_grad=True)  # the norm's gradient at 0 is taken as 0
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam([noise], lr=0.01)
    for _ in range(iters):
        loss = torch.nn.functional.cross_entropy(model(x0 + noise), yt)
        g = torch.autograd.grad(loss, ps, create_graph=True)
        obj = (lr * torch.cat([t.reshape(-1) for t in g]) - target).norm()
        if weight:
            obj = obj + weight * torch.linalg.vector_norm(noise)
        opt.zero_grad()
        obj.backward()
        opt.step()
    return (x0 + noise).detach().numpy()


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
    noise_weight: float = NOISE_WEIGHT,
    pol_thresholds: Any = None,
) -> SpoofResult:
    """Writes a spoofed trace into ``out`` that ends at the final model of ``trace`` (an exactforge
    logreg or fcn trace). ``steps`` (default: the victim's) SGD steps with a checkpoint every
    ``checkpoint_every``; theta_0 is the model's initialisation with ``seed``, declared seeded.
    ``noise_steps``: the adversarial spoof's Adam iterations per step; ``noise_weight``: lambda
    of its noise term (Zhang et al.'s 1 by default, 0 drops the term); ``candidates``: batches
    the reorder spoof tries per step; ``pol_thresholds``: the thresholds the infinitesimal
    spoof's rate is chosen from (anything exactforge.verify.reference.parse_thresholds takes;
    None: the reference's current ones, 1000, 10, 0.1, 0.01); ``lr_scale``: its rate over the
    victim's where no rate keeps every segment within them."""
    from ..verify.reference import parse_thresholds
    from .context import open_exactforge_trace, params_at

    if attack not in SPOOFS:
        raise ValueError(f"attack: expected one of {SPOOFS}, got {attack!r}")
    top = DEFAULT_LIMITS.max_steps  # a trace's most steps: refused before the spoof's plan is sized by them
    for name, v in (("steps", steps), ("checkpoint_every", checkpoint_every)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= top):
            raise ValueError(f"{name}: expected an integer in 1..{top} (trace.limits.Limits.max_steps), got {v!r}")
    if not 0 < lr_scale < 1:
        raise ValueError(f"lr_scale: expected a factor in (0, 1), got {lr_scale!r}")
    if isinstance(noise_weight, bool) or not (isinstance(noise_weight, (int, float)) and 0 <= noise_weight < math.inf):
        raise ValueError(f"noise_weight: expected a finite number >= 0, got {noise_weight!r}")
    thresholds = parse_thresholds(pol_thresholds)[0]
    if os.path.exists(os.path.join(out, "manifest.json")):
        raise FileExistsError(f"out: {out} already holds a trace; choose a new folder")
    t0 = time.perf_counter()
    victim, spec, data = open_exactforge_trace(trace, dataset, data_path)
    man = dict(victim.manifest)
    n = int(steps or victim.declared_steps or victim.num_steps)
    if checkpoint_every > n:  # its only checkpoint would be the last step: no manifest declares that interval
        raise ValueError(f"checkpoint_every: expected at most the spoof's {n} steps, got {checkpoint_every}")
    k = int(checkpoint_every)
    thetaT = params_at(victim, spec, victim.checkpoint_steps[-1])
    theta0 = M.init_params(spec, seed)
    points = sorted({*range(k, n + 1, k), n})
    plan = _Plan(spec, man, data, n, k, points, seed)
    extra: Dict[str, Any] = {}
    if attack == "infinitesimal":
        entries, segments, step_lr, extra = plan.infinitesimal(theta0, thetaT, lr_scale, thresholds)
    elif attack == "reorder":
        entries, segments, step_lr = plan.reorder(theta0, thetaT, candidates)
    else:
        entries, segments, step_lr = plan.adversarial(theta0, thetaT, noise_steps, float(noise_weight))
        extra = {"noise_weight": float(noise_weight), **plan.domain_report()}
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
        max(s["error"] for s in segments),
        _dist(spec, theta0, thetaT),
        time.perf_counter() - t0,
        segments=segments,
        max_zero_update_error=max(s["zero_update_error"] for s in segments),
        noise_l2=max(s["noise_l2"] for s in segments),
        **extra,
    )


Entry = Tuple[np.ndarray, Optional[M.Params], Optional[float]]  # batch, checkpoint after it, the step's own rate


def _segment(start: int, end: int, error: float, zero: float, noise: float = 0.0) -> Dict[str, Any]:
    return {"step": start, "end_step": end, "error": error, "zero_update_error": zero, "noise_l2": noise}


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

    def _spans(self) -> List[Tuple[int, int]]:
        return list(zip([0] + self.points[:-1], self.points))

    def _ref(self, logged: M.Params, other: M.Params) -> Dict[str, float]:
        """The reference's four distances of ``other`` to the logged checkpoint, over the
        parameters in the trace's own layout (the reference's argument order)."""
        from ..verify.reference import reference_distances

        a = _checkpoint(self.spec, self.man["engine"], logged)
        return reference_distances(a, _checkpoint(self.spec, self.man["engine"], other), list(a))

    def _replay(self, start: M.Params, batches: List[np.ndarray], lr: float) -> M.Params:
        theta = start
        for idx in batches:
            theta = self.step(theta, self.X[idx], self.data.y[idx], lr, idx)
        return theta

    def infinitesimal(self, theta0, thetaT, scale, thr) -> Tuple[List[Entry], List[Dict[str, Any]], float, Dict]:
        ws = _line(self.spec, theta0, thetaT, self.points, self.n)
        starts = [theta0] + ws[:-1]
        spans = self._spans()
        batches = [[next(self.batches) for _ in range(s, e)] for s, e in spans]
        spacing = [self._ref(w, s) for w, s in zip(ws, starts)]  # a zero update's distances
        rate, rule, ok, ends = self._threshold_rate(spans, starts, ws, batches, spacing, thr)
        if rate is None:
            rate = self.lr * scale
            ends = [self._replay(start, bs, rate) for start, bs in zip(starts, batches)]
        per_step = self.man["engine"] == "torch"  # torch records carry a rate; native ones cannot
        if not per_step:
            self.declared_lr = rate
        entries: List[Entry] = []
        segments = []
        for (s, e), start, w, bs, end in zip(spans, starts, ws, batches, ends):
            entries.extend((idx, w if s + j + 1 == e else None, rate if per_step else None) for j, idx in enumerate(bs))
            segments.append(_segment(s, e, _dist(self.spec, end, w), _dist(self.spec, start, w)))
        extra = {"pol_thresholds": dict(thr), "within_thresholds": ok, "rate_rule": rule}
        return entries, segments, rate, extra

    def _threshold_rate(self, spans, starts, ws, batches, spacing, thr) -> Tuple[Optional[float], str, bool, List]:
        """Fang et al.'s rate: small enough that every segment's recomputed end stays within the
        thresholds around the next dummy checkpoint, whatever the update's direction. By the
        triangle inequality a segment of updates u_j lands within a norm's threshold t when
        spacing + rate * sum ||g_j|| <= t; the reference's cosine, 1 - <L, R> / |L|^2, moves by at
        most |update|_2 / |L|_2. The largest such rate is then confirmed by replaying every
        segment as the verifier does, halved until it holds (the gradients change along the
        segment). (rate, how it was chosen, whether it holds, the replayed ends); no rate where
        the spacing alone is over a threshold: no rate helps there."""
        over = [(spacing[i][m] / thr[m] if thr[m] > 0 else math.inf, m, i) for i in range(len(ws)) for m in thr]
        over = [o for o in over if spacing[o[2]][o[1]] > thr[o[1]]]
        if over:
            ratio, m, i = max(over)
            need = (
                "" if not math.isfinite(ratio) else f"; about {math.ceil(self.n * ratio)} steps would bring them within"
            )
            return (
                None,
                f"no rate keeps every segment within the thresholds: the dummy checkpoints {spans[i][0]} "
                f"and {spans[i][1]} are {spacing[i][m]:.4g} apart in {m}, over its {thr[m]:g}{need}; the rate "
                "falls back to one whose update rounds to nothing",
                False,
                [],
            )
        rate = math.inf
        for start, w, bs, sp in zip(starts, ws, batches, spacing):
            grads = [
                layout.flatten(self.spec, start)
                - layout.flatten(self.spec, self.step(start, self.X[idx], self.data.y[idx], 1.0, idx))
                for idx in bs
            ]
            size = {
                "l1": sum(float(np.abs(g).sum()) for g in grads),
                "l2": sum(float(np.linalg.norm(g)) for g in grads),
                "linf": sum(float(np.abs(g).max()) for g in grads),
            }
            size["cos"] = size["l2"] / max(float(np.linalg.norm(layout.flatten(self.spec, w))), 1e-300)
            for m, t in thr.items():
                if size[m] > 0:
                    rate = min(rate, (t - sp[m]) / size[m])
        if not math.isfinite(rate):  # no batch has a gradient: any rate leaves the model where it is
            rate = self.lr
        for _ in range(64):
            if not rate > 0:  # a spacing exactly at a threshold leaves no room
                break
            ends = [self._replay(s, bs, rate) for s, bs in zip(starts, batches)]
            if all(all(d[m] <= thr[m] for m in thr) for d in (self._ref(w, e) for w, e in zip(ws, ends))):
                return (
                    rate,
                    "the largest rate whose update keeps every segment's recomputed end within the thresholds "
                    "around the next dummy checkpoint",
                    True,
                    ends,
                )
            rate /= 2
        return (
            None,
            "no positive rate kept every replayed segment within the thresholds; the rate falls back to one "
            "whose update rounds to nothing",
            False,
            [],
        )

    def reorder(self, theta0, thetaT, candidates) -> Tuple[List[Entry], List[Dict[str, Any]], float]:
        entries: List[Entry] = []
        segments = []
        theta, last_ck, last_step = theta0, theta0, 0
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
            ck = thetaT if last else theta if t + 1 in self.points else None
            entries.append((best[1], ck, None))
            if ck is not None:  # honest steps land exactly on their checkpoint; the claim does not
                segments.append(_segment(last_step, t + 1, _dist(self.spec, theta, ck), _dist(self.spec, last_ck, ck)))
                last_ck, last_step = ck, t + 1
        return entries, segments, self.lr

    def adversarial(self, theta0, thetaT, iters, weight) -> Tuple[List[Entry], List[Dict[str, Any]], float]:
        ws = _line(self.spec, theta0, thetaT, self.points, self.n)
        entries: List[Entry] = []
        segments = []
        theta, c, n0 = theta0, 0, len(self.data)
        start, noise2 = 0, 0.0
        for t in range(self.n):
            idx = next(self.batches)
            left = self.points[c] - t  # steps until the next dummy checkpoint
            want = (layout.flatten(self.spec, ws[c]).astype(np.float64) - layout.flatten(self.spec, theta)) / left
            Xs = _adversarial_batch(self.spec, theta, self.X[idx], self.data.y[idx], want, self.lr, iters, weight)
            Xs = Xs.astype(self.X.dtype)  # as data.npz stores them and the verifier reads them
            noise2 += float(np.sum((Xs.astype(np.float64) - self.X[idx].astype(np.float64)) ** 2))
            new = np.arange(n0 + len(self.extra_X), n0 + len(self.extra_X) + len(idx), dtype=np.int64)
            self.extra_X.extend(Xs)
            self.extra_y.extend(int(v) for v in self.data.y[idx])
            theta = self.step(theta, Xs, self.data.y[idx], self.lr, new)
            ck = ws[c] if t + 1 == self.points[c] else None
            entries.append((new, ck, None))
            if ck is not None:  # the verifier restarts each segment from the logged checkpoint
                prev = theta0 if c == 0 else ws[c - 1]
                segments.append(
                    _segment(start, t + 1, _dist(self.spec, theta, ck), _dist(self.spec, prev, ck), math.sqrt(noise2))
                )
                theta, c, start, noise2 = ck, c + 1, t + 1, 0.0
        return entries, segments, self.lr

    def domain_report(self) -> Dict[str, Any]:
        """How many synthesised examples leave the public data's declared range or grid."""
        from ..data import values_in_domain

        dom = self.data.domain
        if dom is None or not self.extra_X:
            return {"outside_domain": None, "domain": None if dom is not None else "no declared range"}
        ok = values_in_domain(np.asarray(self.extra_X), self.data.levels, domain=dom)
        grid = f", {self.data.levels} levels" if self.data.levels else ""
        return {"outside_domain": int(np.count_nonzero(~ok)), "domain": f"[{dom[0]:g}, {dom[1]:g}]{grid}"}

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
