"""Learning-rate schedulers in a trace: what the recorder writes and what the verifier replays.

A trace records the learning rate each step used (a record's ``lr`` where it differs from the
manifest's), and the verifier recomputes every step with it: that is what makes a scheduled
loop verify. It also lets the prover choose any rate for any step, so the verifier checks the
rates against the scheduler the manifest declares: ``scheduler_entry`` writes the scheduler's
class, its full state and the optimizer-group settings it reads (OneCycleLR keeps ``max_lr``
there) when recording begins, and ``replay_rates`` rebuilds it on a one-parameter optimizer and
steps it once per optimizer step, as a loop that calls ``scheduler.step()`` after each
``optimizer.step()`` does. The report says whether the recorded rates are those.

Every scheduler of ``torch.optim.lr_scheduler`` driven by ``step()`` alone replays from its
state (StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR, LinearLR, ConstantLR,
PolynomialLR, OneCycleLR, CosineAnnealingWarmRestarts, SequentialLR and ChainedScheduler of
those); LambdaLR and MultiplicativeLR hold functions no trace can carry: the verifier supplies
them (``lr_lambda=``). ReduceLROnPlateau reads the loss the loop passes it: its rates are
replayed as recorded and reported as not following a replayable schedule.
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["scheduler_entry", "replay_rates", "LAMBDA_SCHEDULERS"]

_MODULE = "torch.optim.lr_scheduler"
# the keys of a parameter group a scheduler reads or writes besides "lr"
_GROUP_KEYS = ("initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum")
LAMBDA_SCHEDULERS = ("LambdaLR", "MultiplicativeLR")
_MAX_DEPTH = 4  # SequentialLR of ChainedScheduler of ...: deep enough for any real loop


def _json(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if np.isfinite(v) else str(v)
    if isinstance(v, Counter):  # MultiStepLR's milestones
        return {"counter": sorted(int(k) for k in v.elements())}
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json(x) for k, x in v.items()}
    return None  # a function (LambdaLR's): the verifier supplies it


def scheduler_entry(scheduler: Any, optimizer: Any) -> Dict[str, Any]:
    """The manifest's ``scheduler``: class, state (with its sub-schedulers') and the optimizer
    group's scheduler settings, taken when recording begins."""
    if getattr(scheduler, "optimizer", None) is not optimizer:
        raise ValueError("scheduler: it must drive the recorded optimizer (scheduler.optimizer is not it)")
    return _entry(scheduler, optimizer, 0)


def _entry(scheduler: Any, optimizer: Any, depth: int) -> Dict[str, Any]:
    cls = type(scheduler)
    state = scheduler.state_dict() if callable(getattr(scheduler, "state_dict", None)) else {}
    entry: Dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"[:200]}
    subs = getattr(scheduler, "_schedulers", None)
    if subs is not None and depth < _MAX_DEPTH:
        entry["children"] = [_entry(s, optimizer, depth + 1) for s in subs]
        state = {k: v for k, v in state.items() if k != "_schedulers"}
    entry["state"] = {k: _json(v) for k, v in sorted(state.items())}
    entry["groups"] = [{k: _json(g[k]) for k in _GROUP_KEYS if k in g} for g in optimizer.param_groups]
    return entry


def _class_of(entry: Any) -> Any:
    import torch.optim.lr_scheduler as S

    if not isinstance(entry, dict) or not isinstance(entry.get("class"), str):
        raise ValueError("scheduler: expected {'class': ..., 'state': {...}}")
    module, _, name = entry["class"].rpartition(".")
    cls = getattr(S, name, None) if module == _MODULE else None
    if not isinstance(cls, type) or not issubclass(cls, S.LRScheduler) or name == "ReduceLROnPlateau":
        raise ValueError(f"scheduler: {entry['class'][:80]} is not a step-driven torch scheduler")
    return cls


def _rebuild(entry: Dict[str, Any], optimizer: Any, lr_lambda: Optional[Callable], depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError("scheduler: nested too deep")
    cls = _class_of(entry)
    name = cls.__name__
    state = entry.get("state")
    if not isinstance(state, dict):
        raise ValueError("scheduler: its state must be an object")
    sched = cls.__new__(cls)
    sched.__dict__.update({k: _restore(v) for k, v in state.items()})
    sched.optimizer = optimizer
    if name in LAMBDA_SCHEDULERS:
        if lr_lambda is None:
            raise ValueError(f"scheduler: {name} holds a function the trace cannot carry; supply it (lr_lambda=)")
        setattr(sched, "lr_lambdas", [lr_lambda] * len(optimizer.param_groups))
    if "children" in entry:
        setattr(sched, "_schedulers", [_rebuild(c, optimizer, lr_lambda, depth + 1) for c in entry["children"]])
    return sched


def _restore(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"counter"} and isinstance(v["counter"], list):
        return Counter(int(k) for k in v["counter"])
    return v


def replay_rates(
    entry: Dict[str, Any], optimizer_spec: Dict[str, Any], steps: int, lr_lambda: Optional[Callable] = None
) -> List[Tuple[float, ...]]:
    """The learning rate of each parameter group at steps 0..steps-1 under the declared
    scheduler stepped once after each optimizer step. ValueError if it cannot be rebuilt (the
    reason says why)."""
    import torch

    from . import optim as O

    _class_of(entry)
    n = O.num_groups(optimizer_spec)
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(n)]
    spec = dict(optimizer_spec)
    if "groups" in spec:  # one stand-in parameter per group
        spec["groups"] = [{**g, "params": [i]} for i, g in enumerate(spec["groups"])]
    opt = O.build(spec, params)
    saved = entry.get("groups")
    last = (entry.get("state") or {}).get("_last_lr")
    if not isinstance(saved, list) or len(saved) != n or not isinstance(last, list) or len(last) != n:
        raise ValueError(f"scheduler: its state does not describe the optimizer's {n} parameter group(s)")
    try:
        for group, keys, lr in zip(opt.param_groups, saved, last):
            group.update({k: v for k, v in keys.items() if k in _GROUP_KEYS})
            group["lr"] = float(lr)
        sched = _rebuild(entry, opt, lr_lambda)
        rates = [tuple(float(g["lr"]) for g in opt.param_groups)]
        with warnings.catch_warnings():
            # the rebuilt scheduler never saw an optimizer.step(), which torch warns about; no
            # parameter moves here, only the rates are read
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(1, steps):
                sched.step()
                rates.append(tuple(float(g["lr"]) for g in opt.param_groups))
    except (TypeError, KeyError, AttributeError, IndexError, ZeroDivisionError, OverflowError, ValueError) as exc:
        raise ValueError(f"scheduler: its state does not replay ({type(exc).__name__}: {str(exc)[:80]})") from None
    return rates


# torch's schedulers compute rates with the C library's cos and pow (CosineAnnealingLR,
# PolynomialLR, OneCycleLR), which are not correctly rounded on every platform: a rate the
# prover's machine computed may be a unit in the last place from the verifier's. The step
# replays the recorded rate exactly either way; the schedule check only asks whether the rates
# are the declared scheduler's, so it allows that much and no more.
RATE_RTOL = 1e-13


def first_difference(recorded: Sequence[Any], replayed: Sequence[Any]) -> Optional[int]:
    """The first step whose recorded rates are not the replayed ones, to RATE_RTOL relative
    (None: all agree)."""
    import math

    for t, (a, b) in enumerate(zip(recorded, replayed)):
        if len(a) != len(b) or not all(math.isclose(x, y, rel_tol=RATE_RTOL, abs_tol=0.0) for x, y in zip(a, b)):
            return t
    return None
