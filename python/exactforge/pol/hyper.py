"""The reference's training arguments, read from the proof where it stores them.

Every checkpoint of a reference proof holds its optimizer's state dict, whose parameter group
holds the hyperparameters (lr of the next step, momentum, dampening, nesterov, weight_decay;
Adam's betas, eps, amsgrad), and, where the run used one, MultiStepLR's state (milestones with
their counts, gamma, base_lrs, last_epoch: the steps taken). These are the proof's own word for
how it was trained: an argument the verifier leaves out is read from there, one that
contradicts it is refused. The input normalisation is stored nowhere; the reference's
``train.py`` fixes it per data set (:data:`PRESETS`), and the import says which one it used and
why. The rate every checkpoint's optimizer holds is checked against the schedule replayed from
these values, so a proof whose checkpoints disagree with its own schedule is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..data import Dataset
from .proof import ProofError

__all__ = ["PRESETS", "TrainingArgs", "stored", "resolve", "normalization", "build_optimizer", "check_checkpoint"]

# The reference's train.py by data set: its Normalize and its optimizer (MNIST: plain SGD;
# CIFAR-10 and CIFAR-100: SGD with momentum and weight decay, MultiStepLR at dec_lr epochs).
PRESETS: Dict[str, Dict[str, Any]] = {
    "mnist": {"normalize": ([0.5], [0.5]), "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0},
    "cifar10": {
        "normalize": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "gamma": 0.1,
    },
    "cifar100": {
        "normalize": (
            [0.5070751592371323, 0.48654887331495095, 0.4409178433670343],
            [0.2673342858792401, 0.2564384629170883, 0.27615047132568404],
        ),
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "gamma": 0.2,
    },
}
# values torch's optimizers default to, for a proof that stores no optimizer state
_DEFAULTS = {
    "optimizer": "sgd",
    "momentum": 0.0,
    "dampening": 0.0,
    "nesterov": False,
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "amsgrad": False,
    "maximize": False,
    "gamma": 0.1,
}
_SGD = ("momentum", "dampening", "nesterov", "weight_decay", "maximize")
_ADAM = ("betas", "eps", "weight_decay", "amsgrad", "maximize")


@dataclass(frozen=True)
class TrainingArgs:
    """The reference's training arguments, as its ``train.py`` takes them: SGD (momentum and
    weight decay for CIFAR; plain for MNIST) or Adam, MultiStepLR over steps, cross-entropy.
    None: read from the proof (the checkpoint names for ``save_freq``, model_step_0's optimizer
    and scheduler state for the rest); a value the proof contradicts is refused. ``preset``:
    the reference's normalisation of ``mnist``, ``cifar10`` or ``cifar100``, or ``none``
    (default: the data set's, where it is one of these, unless ``normalize`` is given)."""

    lr: Optional[float] = None
    batch_size: Optional[int] = None  # None: the proof's
    save_freq: Optional[int] = None
    optimizer: Optional[str] = None  # "sgd" | "adam"
    momentum: Optional[float] = None
    weight_decay: Optional[float] = None
    milestones: Optional[Sequence[int]] = None  # MultiStepLR milestones, in steps
    gamma: Optional[float] = None
    normalize: Optional[Sequence[Sequence[float]]] = None  # (mean per channel, std per channel)
    preset: Optional[str] = None
    augmentation: Optional[str] = None  # "none", or the data set whose train.py transforms ran; None: the preset's
    workers: int = 0  # the DataLoader's num_workers (the reference's: 0)


def _shown(v: Any) -> str:
    text = repr(v)  # the proof's own value: bounded, it may be anything the unpickler allows
    return text if len(text) <= 60 else text[:57] + "..."


def _number(v: Any, what: str, lo: float, hi: float, open_lo: bool = False) -> float:
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or not math.isfinite(v)
        or not lo <= v <= hi
        or (open_lo and v == lo)
    ):
        interval = f"{'(' if open_lo else '['}{lo:g}, {hi:g}]"
        raise ProofError(f"proof: {what} is {_shown(v)}, not a number in {interval}")
    return float(v)


def _flag(v: Any, what: str) -> bool:
    if not isinstance(v, bool):
        raise ProofError(f"proof: {what} is {_shown(v)}, not true or false")
    return v


def stored(ckpt: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The training arguments a checkpoint (as :func:`~exactforge.pol.read_checkpoint` returns
    it) holds, checked: ``optimizer`` ("sgd" or "adam": Adam's group holds betas), ``lr`` (of
    the next step), ``base_lr``, the group's hyperparameters, ``milestones`` (sorted, a
    milestone counted n times appears n times), ``gamma``, ``last_epoch``."""
    found: Dict[str, Any] = {}
    opt = ckpt.get("optimizer")
    if opt is not None:
        groups = opt["param_groups"]
        if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict):
            raise ProofError(f"proof: {name}: the optimizer must hold one parameter group, as the reference's does")
        g, where = groups[0], f"{name}: the optimizer's"
        kind = found["optimizer"] = "adam" if "betas" in g else "sgd"
        found["lr"] = _number(g.get("lr"), f"{where} lr", 0.0, 1e6, open_lo=True)
        if "initial_lr" in g:
            found["base_lr"] = _number(g["initial_lr"], f"{where} initial_lr", 0.0, 1e6, open_lo=True)
        for key in _SGD if kind == "sgd" else _ADAM:
            if key not in g:
                continue
            v = g[key]
            if key in ("nesterov", "amsgrad", "maximize"):
                found[key] = _flag(v, f"{where} {key}")
            elif key == "betas":
                if not isinstance(v, (list, tuple)) or len(v) != 2:
                    raise ProofError(f"proof: {where} betas is {_shown(v)}, not two numbers")
                found[key] = [_number(b, f"{where} betas", 0.0, 1.0 - 1e-12) for b in v]
            else:
                found[key] = _number(v, f"{where} {key}", 0.0, 1e6 if key in ("weight_decay", "eps") else 1.0)
    sched = ckpt.get("scheduler")
    if sched is not None:
        scheduled = _scheduler(sched, name)
        if "base_lr" in found and found["base_lr"] != scheduled["base_lr"]:
            raise ProofError(
                f"proof: {name}: the scheduler's base_lrs {scheduled['base_lr']!r} and the optimizer's "
                f"initial_lr {found['base_lr']!r} differ"
            )
        found.update(scheduled)
    return found


def _scheduler(sched: Any, name: str) -> Dict[str, Any]:
    """MultiStepLR's state: the only scheduler the reference uses."""
    where = f"{name}: the scheduler's"
    if not isinstance(sched, dict) or "milestones" not in sched:
        raise ProofError(
            f"proof: {name}: the scheduler is not MultiStepLR (it has no milestones), which the reference uses"
        )
    ms = sched["milestones"]
    # a Counter when torch saved it; a dict or a list where the state was rewritten
    pairs = (
        list(ms.items()) if isinstance(ms, dict) else [(m, 1) for m in ms] if isinstance(ms, (list, tuple)) else None
    )
    if pairs is None or len(pairs) > 10_000:
        raise ProofError(f"proof: {where} milestones are {_shown(ms)}, not steps with their counts")
    milestones: List[int] = []
    for m, n in pairs:
        if type(m) is not int or type(n) is not int or not 0 <= m < 2**48 or not 1 <= n <= 1000:
            raise ProofError(f"proof: {where} milestones hold {_shown(m)}: {_shown(n)}, not a step and its count")
        milestones += [m] * n
    base = sched.get("base_lrs")
    if not isinstance(base, list) or len(base) != 1:
        raise ProofError(f"proof: {where} base_lrs is {_shown(base)}, not the rate of one parameter group")
    last = sched.get("last_epoch")
    if type(last) is not int or not 0 <= last < 2**48:
        raise ProofError(f"proof: {where} last_epoch is {_shown(last)}, not a step count")
    return {
        "milestones": sorted(milestones),
        "gamma": _number(sched.get("gamma"), f"{where} gamma", 0.0, 1e6, open_lo=True),
        "base_lr": _number(base[0], f"{where} base_lrs", 0.0, 1e6, open_lo=True),
        "last_epoch": last,
    }


def resolve(
    args: TrainingArgs, found: Dict[str, Any], name: str = "model_step_0"
) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The training arguments of the import and where each came from: the proof's (``found``,
    from :func:`stored`), an argument the proof does not store, or torch's default. ValueError
    naming the argument where it contradicts the proof, or where neither gives the rate."""
    values: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    has_sched = "milestones" in found

    def pick(key: str, given: Any, where: str) -> None:
        if key in found:
            if given is not None and given != found[key]:
                raise ValueError(
                    f"{key}: {_shown(given)} given, but the proof holds {_shown(found[key])} ({where}); leave it "
                    "out to use the proof's, or check that this is the proof you mean"
                )
            values[key], sources[key] = found[key], f"proof ({where})"
        elif given is not None:
            values[key], sources[key] = given, "argument"
        else:
            values[key] = _DEFAULTS[key]
            sources[key] = (
                "default (the proof stores no " + ("scheduler" if key == "gamma" else "optimizer") + " state)"
            )

    opt_where = f"{name}'s optimizer state"
    base = found.get("base_lr", found.get("lr"))  # the rate before any milestone: the reference's --lr
    if base is None and args.lr is None:
        raise ValueError(f"lr: the proof stores no optimizer state ({name}) to read the learning rate from; give it")
    found = dict(found) if base is None else dict(found, lr=base)
    pick(
        "optimizer", args.optimizer, opt_where + (": its group holds betas" if found.get("optimizer") == "adam" else "")
    )
    kind = values["optimizer"]
    if kind not in ("sgd", "adam"):
        raise ValueError(f"optimizer: expected 'sgd' or 'adam', got {_shown(kind)}")
    pick("lr", args.lr, f"{name}'s {'scheduler' if has_sched else 'optimizer'} state")
    if kind == "adam" and args.momentum:
        raise ValueError(f"momentum: {args.momentum!r} given, but the proof's optimizer is Adam, which has none")
    for key in _SGD if kind == "sgd" else _ADAM:
        pick(key, {"momentum": args.momentum, "weight_decay": args.weight_decay}.get(key), opt_where)
    given = None if args.milestones is None else sorted(int(m) for m in args.milestones)
    if has_sched:
        pick("milestones", given, f"{name}'s scheduler state")
        pick("gamma", args.gamma, f"{name}'s scheduler state")
    else:
        values["milestones"] = given or []
        sources["milestones"] = "argument" if given else "none (the proof holds no scheduler state)"
        values["gamma"] = args.gamma if args.gamma is not None else _DEFAULTS["gamma"]
        sources["gamma"] = "argument" if args.gamma is not None else "default"
    return values, sources


def normalization(args: TrainingArgs, data: Dataset) -> Tuple[Optional[Dict[str, List[float]]], str]:
    """The manifest's ``normalize`` entry and where it came from: ``args.normalize``,
    ``args.preset``, or the preset of the data set's name."""
    if args.normalize is not None and args.preset is not None:
        raise ValueError("preset: give a preset or normalize, not both")
    if args.preset is not None and args.preset not in PRESETS and args.preset != "none":
        raise ValueError(f"preset: expected one of {sorted(PRESETS) + ['none']}, got {_shown(args.preset)}")
    if args.normalize is not None:
        pair, source = args.normalize, "normalize (the argument)"
    elif args.preset == "none":
        return None, "none (preset none)"
    elif args.preset is not None:
        pair, source = PRESETS[args.preset]["normalize"], f"preset {args.preset} (the argument)"
    elif data.name in PRESETS:
        pair = PRESETS[data.name]["normalize"]
        source = f"preset {data.name} (the reference's for the data set {data.name}; preset none turns it off)"
    else:
        return None, f"none ({data.name} has no reference preset, and neither normalize nor preset was given)"
    mean, std = ([float(v) for v in vs] for vs in pair)
    channels = (data.shape or (1,))[0]
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        what = "normalize" if args.normalize is not None else "preset"
        raise ValueError(
            f"{what}: {len(mean)} means and {len(std)} deviations for data of {channels} channel(s); expected "
            f"{channels} means and {channels} positive deviations"
        )
    return {"mean": mean, "std": std}, source


def preset_notes(values: Dict[str, Any], data: Dataset) -> List[str]:
    """Where the proof's optimizer differs from the reference's train.py for the data set: a
    proof made otherwise (told, not refused: the proof's own values are replayed)."""
    preset = PRESETS.get(data.name)
    if preset is None:
        return []
    return [
        f"the proof's {key} {values[key]!r} is not the reference's {preset[key]!r} for {data.name}"
        for key in ("optimizer", "momentum", "weight_decay", "gamma")
        if key in values and (key != "gamma" or values["milestones"]) and values[key] != preset.get(key, values[key])
    ]


def build_optimizer(values: Dict[str, Any], model: Any) -> Any:
    import torch

    try:
        if values["optimizer"] == "sgd":
            return torch.optim.SGD(model.parameters(), lr=values["lr"], **{k: values[k] for k in _SGD})
        return torch.optim.Adam(model.parameters(), lr=values["lr"], **{k: values[k] for k in _ADAM})
    except ValueError as exc:  # torch's own refusals (nesterov without momentum, ...)
        raise ValueError(f"optimizer: the proof's {values['optimizer']} cannot be rebuilt ({exc})") from None


def check_checkpoint(
    found: Dict[str, Any], values: Dict[str, Any], sources: Dict[str, str], rates: List[float], step: int, name: str
) -> None:
    """A checkpoint's optimizer and scheduler agree with the import's arguments: the rate it
    holds is the schedule's for the next step, its hyperparameters are those of model_step_0,
    its scheduler has taken ``step`` steps. Refused naming the arguments that were given, or
    the proof when its own values disagree."""
    if "lr" in found and found["lr"] != rates[step]:
        given = [k for k in ("lr", "milestones", "gamma") if sources.get(k) == "argument"]
        where = (
            f"check {', '.join(given)}"
            if given
            else "the schedule read from model_step_0 does not give it: the proof's checkpoints disagree"
        )
        raise (ValueError if given else ProofError)(
            f"{given[0] if given else 'proof'}: {name}'s optimizer holds lr {found['lr']!r} for step {step}, the "
            f"schedule (lr {values['lr']!r}, milestones {values['milestones'][:8]}, gamma {values['gamma']!r}) gives "
            f"{rates[step]!r}; {where}"
        )
    for key, v in found.items():
        want = values["lr"] if key == "base_lr" else values.get(key, v)
        if key not in ("lr", "last_epoch") and v != want:
            raise ProofError(
                f"proof: {name}'s {key} is {_shown(v)}, the import's is {_shown(want)} ({sources.get(key)})"
            )
    if "last_epoch" in found and found["last_epoch"] != step:
        raise ProofError(f"proof: {name}'s scheduler has taken {found['last_epoch']} steps, its name says {step}")
