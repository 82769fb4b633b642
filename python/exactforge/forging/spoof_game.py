"""The spoofing game: each round the verifier trains a victim, the adversary spoofs its final
model with one of the attacks of :mod:`exactforge.forging.spoof`, and wins when the verifier
accepts the spoof."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

from ..data import Dataset
from ..models import native as M
from .spoof import spoof, verify_spoof

__all__ = ["SpoofGame", "SpoofRound", "play_spoofing"]


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
