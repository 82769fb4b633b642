"""The data forging game (main paper, Algorithm 1) and the stealth studies of the attacks.

The verifier trains T steps and records the trace, then challenges the adversary with a batch.
The adversary answers with a forged batch from the chosen attack. The verifier checks
(i) distinctness (and, in the membership scenario, that the target example is gone),
(ii) the domain (grid pixels and one-hot labels; can be switched off), and
(iii) error <= epsilon. A forgery that passes is *stealthy*; many rounds give a win rate.

Scenarios: ``membership`` (refute membership inference of an example of the challenged batch:
it must not be in the forged batch) and ``unlearning`` (claim an example was unlearned: every
batch of the trace that holds it must be forged, and every forgery must pass).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..data import Dataset, load_dataset
from ..report.progress import progress_bar
from ..verify.distances import distance
from .attacks import ATTACKS, StepContext, run_attack

__all__ = ["Round", "GameResult", "Verifier", "play_game", "StealthStudy", "stealth_study"]


@dataclass
class Round:
    round: int
    steps: List[int]
    target: int  # dataset index of the example the adversary must remove
    won: bool
    reasons: List[str]
    approx_error: float
    distinct: bool
    in_domain: bool


@dataclass
class GameResult:
    attack: str
    model: str
    engine: str
    scenario: str
    epsilon: float
    epsilon_source: str
    domain_check: bool
    rounds: List[Round]
    win_rate: float
    seconds: float
    # The verifier's resolution (median over the trained steps of ulp(theta_{t+1}) / (2 lr)): at
    # epsilon = 0 a forgery whose gradient differs by less than this per coordinate can pass, so
    # out-of-domain exact forgeries are stopped only by the domain check.
    resolution: float = float("nan")
    dtype: str = "float32"

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["resolution"] = self.resolution if np.isfinite(self.resolution) else None
        return d


class Verifier:
    """Trains and records a trace (in memory) with the chosen engine, and calibrates epsilon."""

    def __init__(
        self,
        model: str = "fcn",
        engine: str = "torch",
        data: Optional[Dataset] = None,
        batch_size: int = 100,
        steps: int = 20,
        lr: float = 0.01,
        seed: int = 0,
    ) -> None:
        from ..models.step import CONDITIONS, NATIVE_MODELS, Stepper
        from ..models.zoo import build_model
        from ..trace.record import batch_schedule

        if engine not in ("torch", "native"):
            raise ValueError(f"engine: expected 'torch' or 'native', got {engine!r}")
        if engine == "native" and model not in NATIVE_MODELS:
            raise ValueError(f"engine: the native path supports {NATIVE_MODELS}, not {model}")
        self.data = data if data is not None else load_dataset("digits")
        self.model, self.engine, self.lr, self.seed = model, engine, lr, seed
        shape = self.data.shape or (self.data.dim,)
        self.net = build_model(model, shape, self.data.num_classes, vocab=self.data.vocab, seed=seed)
        self.stepper = Stepper(model, self.net, self.data, lr)
        self.cond = CONDITIONS["native" if engine == "native" else "baseline"]
        sched = batch_schedule(len(self.data), batch_size, seed)
        self.batches = [next(sched) for _ in range(steps)]
        self.states = [self.stepper.flat()]
        rng = np.random.default_rng(seed)
        for idx in self.batches:
            self.states.append(self.stepper.step(self.states[-1], idx, self.cond, rng))

    def context(self, t: int) -> StepContext:
        return StepContext(
            self.net,
            self.data,
            self.states[t],
            self.states[t + 1],
            self.batches[t],
            self.lr,
            engine=self.engine,
            model_name=self.model,
        )

    def calibrate(self, safety_factor: float = 10.0, repeats: int = 3) -> float:
        """epsilon = safety x the largest benign reproduction error (permuted batches, one thread)."""
        from ..models.step import CONDITIONS

        names = ("native+permute", "native+threads") if self.engine == "native" else ("permute", "threads")
        worst = 0.0
        for t in range(len(self.batches)):
            for name in names:
                for r in range(repeats if "permute" in name else 1):
                    new = self.stepper.step(
                        self.states[t], self.batches[t], CONDITIONS[name], np.random.default_rng([self.seed, t, r])
                    )
                    worst = max(worst, distance(new, self.states[t + 1], "l2"))
        return safety_factor * worst


def _judge(res, target: int, eps: float, domain_check: bool, data: Dataset) -> List[str]:
    reasons = []
    if not res.distinct:
        reasons.append("not distinct from the challenged batch")
    if target in res.forged_indices:
        reasons.append("the target example is still in the forged batch")
    if domain_check and not res.in_domain:
        where = (
            f"values outside [{data.domain[0]:g}, {data.domain[1]:g}]"
            + (f" or off its grid of {data.levels} levels" if data.levels else "")
            if data.domain
            else "no declared value range"
        )
        reasons.append(f"outside the data domain ({where}, or labels not one-hot)")
    if not (res.approx_error <= eps):
        reasons.append(f"approximation error {res.approx_error:.3g} > epsilon {eps:.3g}")
    return reasons


def play_game(
    attack: str = "greedy",
    rounds: int = 10,
    epsilon: Union[str, float] = "auto",
    *,
    model: str = "fcn",
    engine: str = "torch",
    batch_size: int = 100,
    steps: int = 10,
    lr: float = 0.01,
    fraction: Optional[float] = None,
    domain_check: bool = True,
    scenario: str = "membership",
    seed: int = 0,
    budget: Optional[Dict[str, Any]] = None,
    verifier: Optional[Verifier] = None,
    progress: bool = False,
    data: Optional[Dataset] = None,
) -> GameResult:
    if attack not in ATTACKS:
        raise ValueError(f"attack: expected one of {ATTACKS}, got {attack!r}")
    if scenario not in ("membership", "unlearning"):
        raise ValueError(f"scenario: expected 'membership' or 'unlearning', got {scenario!r}")
    if rounds < 1:
        raise ValueError("rounds: expected at least one round")
    t0 = time.perf_counter()
    v = verifier or Verifier(model, engine, data=data, batch_size=batch_size, steps=steps, lr=lr, seed=seed)
    eps, source = _epsilon(epsilon, v)
    rng = np.random.default_rng([seed, 1234])
    budget = dict(budget or {})
    out: List[Round] = []
    bar = progress_bar(rounds, progress, f"game {attack}", "round")
    for k in range(rounds):
        out.append(_play_round(k, v, rng, attack, scenario, fraction, eps, domain_check, seed, budget))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    wins = sum(r.won for r in out)
    from ..verify.results import resolution

    res_median = float(np.median([resolution({"theta": np.asarray(st)}, v.lr)[0] for st in v.states[1:]]))
    return GameResult(
        attack,
        v.model,
        v.engine,
        scenario,
        eps,
        source,
        domain_check,
        out,
        wins / len(out),
        time.perf_counter() - t0,
        res_median,
        str(np.asarray(v.states[-1]).dtype),
    )


def _epsilon(epsilon: Union[str, float], v: Verifier) -> Tuple[float, str]:
    """The verifier's epsilon and where it came from: calibrated ("auto") or given."""
    if isinstance(epsilon, str):
        if epsilon != "auto":
            raise ValueError("epsilon: expected 'auto', 0 or a non-negative number")
        return v.calibrate(), f"calibrated (10 x the largest benign error, {v.engine} path)"
    eps = float(epsilon)
    if eps < 0:
        raise ValueError("epsilon: expected a non-negative number")
    return eps, "given"


def _play_round(
    k: int,
    v: Verifier,
    rng: np.random.Generator,
    attack: str,
    scenario: str,
    fraction: Optional[float],
    eps: float,
    domain_check: bool,
    seed: int,
    budget: Dict[str, Any],
) -> Round:
    """Round k: a target drawn (a member of one step's batch, or an example to unlearn from
    every step that used it), each of its steps forged without it and judged."""
    if scenario == "membership":
        t = int(rng.integers(len(v.batches)))
        target = int(rng.choice(v.batches[t]))
        steps_to_forge = [t]
    else:
        seen = np.unique(np.concatenate(v.batches))
        target = int(rng.choice(seen))
        steps_to_forge = [t for t, bt in enumerate(v.batches) if target in set(bt.tolist())]
    won, reasons, worst, dist_all, dom_all = True, [], 0.0, True, True
    for t in steps_to_forge:
        batch = v.batches[t]
        r = max(1, int(round((fraction or 0) * len(batch))))
        others = [i for i in batch if i != target]
        remove = [target] + [int(i) for i in rng.choice(others, r - 1, replace=False)] if r > 1 else [target]
        res = run_attack(attack, v.context(t), remove, seed=seed + k, **budget)
        why = _judge(res, target, eps, domain_check, v.data)
        worst = max(worst, res.approx_error)
        dist_all &= res.distinct
        dom_all &= res.in_domain
        if why:
            won = False
            reasons += [f"step {t}: {w}" for w in why]
    return Round(k, steps_to_forge, target, won, reasons, worst, dist_all, dom_all)


# -- stealth studies ---------------------------------------------------------------------------


@dataclass
class StealthStudy:
    """Attack errors against the calibrated epsilon: forging-fraction sweep, across training,
    and the correlation of error with the forged example's loss and gradient norm."""

    attack: str
    model: str
    engine: str
    epsilon: float
    fraction_sweep: List[Dict[str, float]] = field(default_factory=list)
    across_training: List[Dict[str, float]] = field(default_factory=list)
    correlation: Dict[str, float] = field(default_factory=dict)
    stealthy_fraction: float = 0.0  # share of all forgeries with error <= epsilon

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def stealth_study(
    attack: str = "greedy",
    verifier: Optional[Verifier] = None,
    *,
    fractions: Sequence[float] = (0.01, 0.1, 0.3, 0.5, 1.0),
    epsilon: Optional[float] = None,
    seed: int = 0,
    budget: Optional[Dict[str, Any]] = None,
    out: Optional[str] = None,
) -> StealthStudy:
    import torch

    from .attacks import per_example_grads

    v = verifier or Verifier()
    eps = v.calibrate() if epsilon is None else float(epsilon)
    budget = dict(budget or {})
    st = StealthStudy(attack, v.model, v.engine, eps)
    rng = np.random.default_rng(seed)
    errors = []
    t = 0
    b = len(v.batches[0])
    for f in fractions:
        r = max(1, int(round(f * b)))
        remove = [int(i) for i in rng.choice(v.batches[t], r, replace=False)]
        res = run_attack(attack, v.context(t), remove, seed=seed, **budget)
        st.fraction_sweep.append({"fraction": r / b, "replaced": r, "approx_error": res.approx_error})
        errors.append(res.approx_error)
    losses, norms, errs = [], [], []
    shape = v.data.shape or (v.data.dim,)
    for t in range(len(v.batches)):
        target = int(rng.choice(v.batches[t]))
        res = run_attack(attack, v.context(t), [target], seed=seed + t, **budget)
        X = torch.from_numpy(v.data.X[[target]]).reshape(1, *shape)
        yv = torch.from_numpy(v.data.y[[target]])
        g = per_example_grads(v.net, v.states[t], X, yv)[0]
        v.stepper.load(v.states[t])
        with torch.no_grad():
            loss = float(torch.nn.functional.cross_entropy(v.net(X), yv))
        st.across_training.append(
            {
                "step": t,
                "example": target,
                "approx_error": res.approx_error,
                "loss": loss,
                "grad_norm": float(np.linalg.norm(g)),
            }
        )
        losses.append(loss)
        norms.append(float(np.linalg.norm(g)))
        errs.append(res.approx_error)
        errors.append(res.approx_error)
    if len(errs) > 2:
        st.correlation = {
            "pearson_loss": float(np.corrcoef(losses, errs)[0, 1]),
            "pearson_grad_norm": float(np.corrcoef(norms, errs)[0, 1]),
            "spearman_grad_norm": float(np.corrcoef(np.argsort(np.argsort(norms)), np.argsort(np.argsort(errs)))[0, 1]),
        }
    st.stealthy_fraction = float(np.mean(np.array(errors) <= eps))
    if out:
        _figures(st, out)
    return st


def _figures(st: StealthStudy, out: str) -> None:
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    os.makedirs(out, exist_ok=True)

    def draw(ax, x, y, style, **kw):
        """Non-zero errors on the log axis; exact zeros as triangles on the bottom edge (a log
        axis has no 0), labelled "exactly 0"."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        nz = y > 0
        if style == "scatter":
            ax.scatter(x[nz], y[nz], s=12, **kw)
        else:
            ax.plot(x[nz], y[nz], style, **kw)
        if np.any(~nz):
            ax.plot(
                x[~nz],
                np.zeros(int(np.sum(~nz))),
                "v",
                color="tab:green",
                clip_on=False,
                transform=ax.get_xaxis_transform(),
                label="exactly 0 (on the axis)",
            )

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    fs = st.fraction_sweep
    draw(axes[0], [x["fraction"] for x in fs], [x["approx_error"] for x in fs], "o-", label=st.attack)
    axes[0].set_xlabel("forging fraction (share of the batch replaced)")
    axes[0].set_title("error vs forging fraction (papers' Fig. 3)", fontsize=9)
    at = st.across_training
    draw(axes[1], [x["step"] for x in at], [x["approx_error"] for x in at], ".-", label=st.attack)
    axes[1].set_xlabel("step t")
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_title("one example forged at every step (Fig. 5)", fontsize=9)
    norms = [x["grad_norm"] for x in at]
    draw(axes[2], norms, [x["approx_error"] for x in at], "scatter")
    if norms and min(norms) > 0 and max(norms) / min(norms) > 10:  # a narrow range reads better linear
        axes[2].set_xscale("log")
    axes[2].set_xlabel("per-example gradient norm of the forged example")
    axes[2].set_title("error vs gradient norm (Fig. 11)", fontsize=9)
    for ax in axes:
        ax.set_yscale("log")
        ax.set_ylabel("approximation error (l2)")
        if st.epsilon > 0:
            ax.axhline(st.epsilon, color="k", ls="--", lw=0.8, label=f"epsilon {st.epsilon:.1e}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(
        f"{st.attack} on {st.model} ({st.engine} path): "
        + (
            "below the dashed line a forgery is within epsilon"
            if st.epsilon > 0
            else "epsilon = 0, so only an error of exactly 0 passes"
        ),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"stealth_{st.attack}.png"), dpi=110)
    plt.close(fig)
