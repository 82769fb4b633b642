"""How the spoofing attacks fare against each verifier, with the verifier's checks off and on, over
checkpoint intervals.

Two victims are trained on the same data (the native reproducible path and plain torch, one
checkpoint per step); every spoof of exactforge.forging.spoof is built against each, for each
checkpoint interval k, and verified: the native spoof at epsilon = 0, the torch spoof at its
calibrated epsilon and by the Proof-of-Learning reference's thresholds. A spoof succeeds against a
verifier when that verifier accepts it. "Checks on" adds every check of exactforge.verify.checks:
vacuous steps, the learning-rate schedule, the data's domain, the verifier's own copy of the
public data, and a checkpoint interval of at most ``max_interval`` steps.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["VERIFIERS", "spoofing_study"]

VERIFIERS = ("native, epsilon 0", "torch, calibrated epsilon", "PoL reference thresholds")


def _victims(out: str, data: Any, steps: int, batch: int, seed: int) -> Dict[str, str]:
    from ..models.native import ModelSpec
    from ..trace.record import record_native, record_torch_fcn

    spec = ModelSpec("fcn", data.dim, data.num_classes, hidden=(100,))
    paths = {"native": os.path.join(out, "victim-native"), "torch": os.path.join(out, "victim-torch")}
    record_native(paths["native"], spec, data, steps=steps, batch_size=batch, seed=seed)
    record_torch_fcn(paths["torch"], spec, data, steps=steps, batch_size=batch, seed=seed)
    return paths


def spoofing_study(
    out: str,
    data: Any,
    *,
    steps: int = 100,
    spoof_steps: int = 1000,
    intervals: Sequence[int] = (1, 10, 100),
    batch: int = 100,
    seed: int = 0,
    noise_steps: int = 10,
    max_interval: int = 10,
) -> Dict[str, Any]:
    """Trains the victims for ``steps`` steps, builds every spoof of ``spoof_steps`` steps (more
    steps make each spoofed step shorter: Fang et al.'s lever) and verifies it; returns the rows
    (one per spoof, interval and verifier) and the success rates with the checks off and on.
    Traces go under ``out``."""
    from ..forging.spoof import SPOOFS, spoof, verify_spoof
    from ..verify.checks import failed_checks

    victims = _victims(out, data, steps, batch, seed)
    rows: List[Dict[str, Any]] = []
    for attack in SPOOFS:
        for k in intervals:
            if k > spoof_steps:
                continue
            for engine, victim in victims.items():
                where = os.path.join(out, f"{attack}-k{k}-{engine}")
                s = spoof(
                    victim,
                    attack,
                    where,
                    dataset=data,
                    steps=spoof_steps,
                    checkpoint_every=k,
                    seed=seed + 1,
                    noise_steps=noise_steps,
                )
                eps: Any = 0.0 if engine == "native" else "auto"
                rep = verify_spoof(s, data, epsilon=eps, max_interval=max_interval, reference=engine == "torch")
                failed = failed_checks(rep)
                verdicts: List[Tuple[str, bool, Optional[float]]] = [
                    (VERIFIERS[0] if engine == "native" else VERIFIERS[1], rep.accepted, rep.epsilon)
                ]
                if rep.reference is not None:
                    verdicts.append((VERIFIERS[2], bool(rep.reference["accepted"]), None))
                for name, accepted, eps_used in verdicts:
                    rows.append(
                        {
                            "attack": attack,
                            "k": k,
                            "verifier": name,
                            "epsilon": eps_used,
                            "max_error": rep.max_error,
                            "accepted": bool(accepted),
                            "failed_checks": failed,
                            "accepted_with_checks": bool(accepted and not failed),
                            "synthesised": s.synthesised,
                            "engine": engine,
                            "spoof_lr": s.step_lr,
                        }
                    )
    return {
        "steps": steps,
        "spoof_steps": spoof_steps,
        "batch": batch,
        "intervals": [k for k in intervals if k <= spoof_steps],
        "max_interval": max_interval,
        "rows": rows,
        "success": _rates(rows),
    }


def _rates(rows: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per verifier: spoofs accepted over spoofs tried, with the checks off and on."""
    out: Dict[str, Dict[str, Any]] = {}
    for v in VERIFIERS:
        mine = [r for r in rows if r["verifier"] == v]
        if mine:
            out[v] = {
                "tried": len(mine),
                "accepted": sum(r["accepted"] for r in mine),
                "accepted_with_checks": sum(r["accepted_with_checks"] for r in mine),
            }
    return out
