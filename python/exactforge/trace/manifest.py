"""The manifest's typed view: what a trace trains, on what, how, parsed once when the trace is
opened.

``TraceSpec.parse`` reads the training fields of a manifest (the dict of ``format``, whose bytes
and hash stay as the prover wrote them) into frozen dataclasses, each section checked by its
own parser: ``OptimizerSpec``, ``SchedulerSpec``, ``DataSpec``, ``ModelEntry``. A field that
does not fit raises TraceError naming it as ``manifest.<section>.<field>``, with what was
expected and what was found, so a hostile trace is refused where it is read and no later reader
meets a value it does not expect (an abstract scheduler class, an Adam without betas).

The nested objects a lower layer parses itself (``loss``, ``augment``, ``clip_grad``,
``normalize``) are kept as the manifest's objects after their checks here: they go to
``exactforge.nn`` as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from ..models.optim import GROUP_KEYS, MAX_GROUPS, OPTIONS
from .limits import DEFAULT_LIMITS, Limits
from .safeio import TraceError, is_sha256

__all__ = ["TraceSpec", "OptimizerSpec", "GroupSpec", "SchedulerSpec", "DataSpec", "ModelEntry"]

# torch's abstract schedulers: their step() is not defined, so no trace can declare one
_ABSTRACT_SCHEDULERS = ("LRScheduler", "_LRScheduler")
_SCHEDULER_KEYS = {"class", "state", "groups", "children"}
_SCHEDULER_DEPTH = 4  # as deep as exactforge.models.schedule rebuilds them
_SAMPLING = ("without-replacement", "with-replacement")


def _fail(field: str, expected: str, got: Any) -> TraceError:
    return TraceError(f"manifest.{field}: expected {expected}, got {str(got)[:40]!r}")


def _number(v: Any, field: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise _fail(field, f"a number in [{lo:g}, {hi:g}]", v)
    return float(v)


def _integer(
    man: Mapping[str, Any], key: str, lo: int, hi: int, optional: bool = False, where: str = ""
) -> Optional[int]:
    v = man.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _fail(where + key, f"an integer in {lo}..{hi}{' or null' if optional else ''}", v)
    return v


def _flag(v: Any, field: str) -> bool:
    if not isinstance(v, bool):
        raise _fail(field, "true or false", v)
    return v


@dataclass(frozen=True)
class GroupSpec:
    """One parameter group: its parameters (positions in the model's parameters) and values."""

    params: Tuple[int, ...]
    values: Tuple[Tuple[str, Any], ...]  # lr and the kind's hyperparameters, in GROUP_KEYS order


@dataclass(frozen=True)
class OptimizerSpec:
    """``manifest.optimizer``: the kind (sgd, adam, adamw, rmsprop), the first group's
    hyperparameters, the options written where true, and the groups where there are several.
    ``raw`` is the manifest's object, which exactforge.models.optim builds the optimizer from."""

    kind: str
    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: Optional[Tuple[float, float]] = None
    eps: Optional[float] = None
    alpha: Optional[float] = None
    centered: bool = False
    options: Tuple[str, ...] = ()
    groups: Optional[Tuple[GroupSpec, ...]] = None
    raw: Optional[Dict[str, Any]] = None

    @property
    def plain_sgd(self) -> bool:
        return self.kind == "sgd" and not self.momentum and not self.weight_decay and self.groups is None

    @classmethod
    def parse(cls, obj: Any, engine: str) -> "OptimizerSpec":
        if not isinstance(obj, dict):
            raise _fail("optimizer", "a JSON object", type(obj).__name__)
        kind = obj.get("name")
        if kind not in GROUP_KEYS:
            raise _fail("optimizer.name", f"one of {sorted(GROUP_KEYS)}", kind)
        if engine == "native":
            return cls._native(obj)
        keys = {"name", "lr", *GROUP_KEYS[kind]}
        for k in sorted(keys - set(obj)):
            raise _fail(f"optimizer.{k}", f"a value ({kind} takes {sorted(keys - {'name'})})", "<missing>")
        for k in sorted(set(obj) - keys - set(OPTIONS[kind]) - {"groups"}):
            raise _fail(f"optimizer.{k}", f"no such field: {kind} takes exactly {sorted(keys - {'name'})}", k)
        values = _group_values(kind, obj, "optimizer")
        for k in OPTIONS[kind]:
            if k in obj and obj[k] is not True:
                raise _fail(f"optimizer.{k}", "true (written only when set)", obj[k])
        groups = _groups(kind, obj, values) if "groups" in obj else None
        return cls(
            kind,
            **dict(values),
            options=tuple(k for k in OPTIONS[kind] if k in obj),
            groups=groups,
            raw=obj,
        )

    @classmethod
    def _native(cls, obj: Dict[str, Any]) -> "OptimizerSpec":
        """The native engine trains with plain SGD: a rate and nothing that changes the step."""
        if obj["name"] != "sgd":
            raise _fail("optimizer.name", "'sgd' (the native engine trains with plain SGD)", obj["name"])
        for k in sorted(set(obj) - {"name", "lr", "momentum", "dampening", "nesterov", "weight_decay"}):
            raise _fail(f"optimizer.{k}", "no such field (the native engine trains with plain SGD)", k)
        for k in ("momentum", "weight_decay"):
            if k in obj and _number(obj[k], f"optimizer.{k}", 0.0, 0.0) != 0.0:
                raise _fail(f"optimizer.{k}", "0 (the native engine trains with plain SGD)", obj[k])
        return cls("sgd", _number(obj.get("lr"), "optimizer.lr", 1e-300, 1e6), raw=obj)


def _group_values(kind: str, g: Mapping[str, Any], where: str) -> Tuple[Tuple[str, Any], ...]:
    """lr and the kind's hyperparameters of a group, each checked."""
    out: Dict[str, Any] = {"lr": _number(g.get("lr"), f"{where}.lr", 1e-300, 1e6)}
    bounds = {"weight_decay": 1e6, "momentum": 1.0, "dampening": 1.0, "alpha": 1.0, "eps": 1.0}
    for k in GROUP_KEYS[kind]:
        v = g.get(k)
        if k in ("nesterov", "centered"):
            out[k] = _flag(v, f"{where}.{k}")
        elif k == "betas":
            if not isinstance(v, list) or len(v) != 2:
                raise _fail(f"{where}.betas", "two numbers in [0, 1)", v)
            out[k] = tuple(_number(b, f"{where}.betas", 0.0, 1.0 - 1e-12) for b in v)
        else:
            out[k] = _number(v, f"{where}.{k}", 0.0, bounds[k])
    return tuple(out.items())


def _groups(kind: str, obj: Dict[str, Any], top: Tuple[Tuple[str, Any], ...]) -> Tuple[GroupSpec, ...]:
    groups = obj["groups"]
    if not isinstance(groups, list) or not 1 <= len(groups) <= MAX_GROUPS:
        raise _fail("optimizer.groups", f"a list of 1..{MAX_GROUPS} parameter groups", groups)
    out, seen = [], []
    for i, g in enumerate(groups):
        where = f"optimizer.groups[{i}]"
        keys = {"params", "lr", *GROUP_KEYS[kind]}
        if not isinstance(g, dict) or set(g) != keys:
            raise _fail(where, f"an object of exactly {sorted(keys)}", sorted(g) if isinstance(g, dict) else g)
        ps = g["params"]
        if not isinstance(ps, list) or not all(type(p) is int and p >= 0 for p in ps):
            raise _fail(f"{where}.params", "positions in the model's parameters", ps)
        seen += ps
        out.append(GroupSpec(tuple(ps), _group_values(kind, g, where)))
    if sorted(seen) != list(range(len(seen))):
        raise _fail("optimizer.groups", "each parameter position exactly once", sorted(seen)[:8])
    first = {k: obj[k] for k, _ in top}
    if {k: groups[0][k] for k in first} != first:
        raise _fail("optimizer.lr", "the first group's hyperparameters at the top level", first)
    return tuple(out)


@dataclass(frozen=True)
class SchedulerSpec:
    """``manifest.scheduler``: the torch scheduler's class, its state, the optimizer-group
    settings it reads and its sub-schedulers; ``raw`` goes to exactforge.models.schedule."""

    cls: str
    state: Dict[str, Any]
    children: Tuple["SchedulerSpec", ...] = ()
    raw: Optional[Dict[str, Any]] = None

    @property
    def name(self) -> str:
        return self.cls.rpartition(".")[2][:80]

    @classmethod
    def parse(cls, obj: Any, where: str = "scheduler", depth: int = 0) -> "SchedulerSpec":
        if not isinstance(obj, dict) or not set(obj) <= _SCHEDULER_KEYS:
            raise _fail(where, "{'class': str, 'state': {...}, 'groups': [...], 'children': [...]}", obj)
        name = obj.get("class")
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise _fail(f"{where}.class", "a class name of at most 200 characters", name)
        if name.rpartition(".")[2] in _ABSTRACT_SCHEDULERS:
            raise _fail(f"{where}.class", "a concrete scheduler (torch's LRScheduler base defines no rates)", name)
        if not isinstance(obj.get("state"), dict):
            raise _fail(f"{where}.state", "a JSON object", obj.get("state"))
        groups = obj.get("groups", [])
        if not isinstance(groups, list) or len(groups) > MAX_GROUPS or not all(isinstance(g, dict) for g in groups):
            raise _fail(f"{where}.groups", f"a list of at most {MAX_GROUPS} objects", groups)
        children = obj.get("children", [])
        if not isinstance(children, list) or (children and depth >= _SCHEDULER_DEPTH):
            raise _fail(f"{where}.children", f"a list of schedulers, nested at most {_SCHEDULER_DEPTH} deep", children)
        subs = tuple(cls.parse(c, f"{where}.children[{i}]", depth + 1) for i, c in enumerate(children))
        return cls(name, obj["state"], subs, obj)


@dataclass(frozen=True)
class DataSpec:
    """``manifest.data``: the fingerprint and sizes are checked against the verifier's data; the
    name, path and ``synthetic`` are the prover's word."""

    name: str
    fingerprint: str
    num_examples: int
    dim: Optional[int] = None
    num_classes: Optional[int] = None
    path: Optional[str] = None
    synthetic: Any = None

    @classmethod
    def parse(cls, obj: Any) -> "DataSpec":
        if not isinstance(obj, dict):
            raise _fail("data", "a JSON object with 'name' and 'fingerprint'", type(obj).__name__)
        if not isinstance(obj.get("name"), str):
            raise _fail("data.name", "a string", obj.get("name"))
        if not is_sha256(obj.get("fingerprint")):
            raise _fail("data.fingerprint", "a SHA-256 hex digest", obj.get("fingerprint"))
        sizes = {
            k: _integer(obj, k, 1, 2**48, optional=k != "num_examples", where="data.") for k in ("num_examples", "dim")
        }
        classes = _integer(obj, "num_classes", 1, 2**31, optional=True, where="data.")
        path = obj.get("path")
        return cls(
            obj["name"],
            obj["fingerprint"],
            int(sizes["num_examples"] or 0),
            sizes["dim"],
            classes,
            path if isinstance(path, str) else None,
            obj.get("synthetic"),
        )


@dataclass(frozen=True)
class ModelEntry:
    """``manifest.model``: an exactforge model spec (``native``, a ModelSpec), a zoo entry
    (``zoo`` with its input shape and classes) or a user's torch class (``torch_class``, a label:
    the verifier brings its own instance)."""

    native: Any = None  # exactforge.models.native.ModelSpec
    zoo: Optional[str] = None
    input_shape: Optional[Tuple[int, ...]] = None
    num_classes: Optional[int] = None
    torch_class: Optional[str] = None

    @classmethod
    def parse(cls, obj: Any, engine: str) -> "ModelEntry":
        from ..models.native import ModelSpec

        if not isinstance(obj, dict):
            raise _fail("model", "a JSON object", type(obj).__name__)
        if "kind" in obj:
            try:
                return cls(native=ModelSpec.from_dict(obj))
            except (ValueError, TypeError) as exc:
                raise TraceError(f"manifest.model: {exc}") from None
        if engine == "native":
            raise _fail("model", "an exactforge model spec (the native engine trains only those)", sorted(obj)[:6])
        if "zoo" in obj:
            if set(obj) != {"zoo", "input_shape", "num_classes"}:
                raise _fail("model", "a zoo entry of 'zoo', 'input_shape' and 'num_classes'", sorted(obj)[:6])
            shape, n = obj["input_shape"], obj["num_classes"]
            if not isinstance(obj["zoo"], str) or len(obj["zoo"]) > 40:
                raise _fail("model.zoo", "a zoo model's name", obj["zoo"])
            if not isinstance(shape, list) or not 1 <= len(shape) <= 4 or any(type(v) is not int for v in shape):
                raise _fail("model.input_shape", "1..4 integer dimensions", shape)
            if type(n) is not int:
                raise _fail("model.num_classes", "an integer", n)
            return cls(zoo=obj["zoo"], input_shape=tuple(shape), num_classes=n)
        if set(obj) != {"torch_class"} or not isinstance(obj["torch_class"], str):
            raise _fail("model", "an exactforge spec, a zoo entry or {'torch_class': a name}", sorted(obj)[:6])
        return cls(torch_class=obj["torch_class"][:200])


@dataclass(frozen=True)
class TraceSpec:
    """The training a manifest declares, typed; reached as ``Trace.spec``."""

    engine: str
    lr: float
    checkpoint_every: int
    initial: str
    reduction: Optional[str]
    optimizer: OptimizerSpec
    model: ModelEntry
    data: DataSpec
    reduction_plan: int = 1  # traces from before plans existed: every reduction in the mode
    steps: Optional[int] = None
    batch_size: Optional[int] = None
    seed: Optional[int] = None
    dtype: Optional[str] = None
    sampling: Optional[str] = None
    dropout_seed: Optional[int] = None
    eval_modules: Optional[Tuple[str, ...]] = None
    input_shape: Optional[Tuple[int, ...]] = None
    loss: Optional[Dict[str, Any]] = None
    clip_grad: Optional[Dict[str, float]] = None
    normalize: Optional[Dict[str, Any]] = None
    augment: Optional[Dict[str, Any]] = None
    accumulate: int = 1
    arithmetic: Optional[str] = None  # as declared; absent: torch's own kernels
    scheduler: Optional[SchedulerSpec] = None
    environment: Optional[Dict[str, Any]] = None
    imported: Optional[Dict[str, Any]] = None

    @property
    def step_arithmetic(self) -> Optional[str]:
        """How a torch trace's steps round: ``"portable-1"`` (exactforge's update, the same bits
        on every CPU) or ``"torch"`` (torch's kernels: a plain torch model, or a reproducible one
        recorded so or before the field existed); None for the native engine."""
        if self.engine != "torch":
            return None
        return "torch" if self.reduction is None else (self.arithmetic or "torch")

    @classmethod
    def parse(cls, man: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> "TraceSpec":
        """The typed view of ``man``; raises TraceError naming the first field that does not fit."""
        engine = man.get("engine")
        if engine not in ("native", "torch"):
            raise _fail("engine", "'native' or 'torch'", engine)
        core = _core(man, engine, limits)
        torch_only = _torch_fields(man, engine, core["batch_size"])
        sc = man.get("scheduler")
        return cls(
            engine=engine,
            optimizer=OptimizerSpec.parse(man.get("optimizer"), engine),
            model=ModelEntry.parse(man.get("model"), engine),
            data=DataSpec.parse(man.get("data")),
            scheduler=None if sc is None else SchedulerSpec.parse(sc),
            environment=man.get("environment"),
            imported=man.get("imported"),
            **core,
            **torch_only,
        )


def _core(man: Mapping[str, Any], engine: str, limits: Limits) -> Dict[str, Any]:
    """The fields of every trace: rate, schedule, sizes, the reduction, dropout's key."""
    lr = man.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise _fail("lr", "a positive finite number", lr)
    out: Dict[str, Any] = {"lr": float(lr)}
    out["checkpoint_every"] = _integer(man, "checkpoint_every", 1, limits.max_steps)
    out["steps"] = _integer(man, "steps", 1, limits.max_steps, optional=True)
    out["batch_size"] = _integer(man, "batch_size", 1, limits.max_batch, optional=True)
    out["seed"] = _integer(man, "seed", -(2**63), 2**64 - 1, optional=True)
    out["initial"] = man.get("initial")
    # torch: None (torch's own layers) or the mode of exactforge.nn's reproducible layers
    allowed = ("fixed", "exact") if engine == "native" else (None, "exact", "fixed")
    if "reduction" not in man or man["reduction"] not in allowed:
        raise _fail("reduction", f"one of {allowed} for the {engine} engine", man.get("reduction", "<missing>"))
    out["reduction"] = man["reduction"]
    plan = man.get("reduction_plan", 1)
    if isinstance(plan, bool) or plan not in (1, 2):
        raise _fail("reduction_plan", "1 or 2 (exactforge.models.REDUCTION_PLANS)", plan)
    out["reduction_plan"] = plan
    d = man.get("dropout")
    if d is not None and (
        not isinstance(d, dict) or set(d) != {"seed"} or type(d["seed"]) is not int or not 0 <= d["seed"] < 2**63
    ):
        raise _fail("dropout", "{'seed': an integer in 0..2^63-1} or null", d)
    out["dropout_seed"] = None if d is None else d["seed"]
    if man.get("sampling") not in (None, *_SAMPLING):
        raise _fail("sampling", f"one of {_SAMPLING}", man.get("sampling"))
    out["sampling"] = man.get("sampling")
    ev = man.get("eval_modules")
    if ev is not None and (
        not isinstance(ev, list)
        or len(ev) > limits.max_tensors
        or not all(isinstance(n, str) and len(n) <= 256 for n in ev)
    ):
        raise _fail("eval_modules", f"a list of at most {limits.max_tensors} module names", ev)
    out["eval_modules"] = None if ev is None else tuple(ev)
    if man.get("dtype") is not None and not isinstance(man["dtype"], str):
        raise _fail("dtype", "a dtype's name", man["dtype"])
    out["dtype"] = man.get("dtype")
    out["loss"] = _loss(man)
    shape = man.get("input_shape")
    if shape is not None and (
        not isinstance(shape, list) or not 1 <= len(shape) <= 4 or any(type(v) is not int or v < 1 for v in shape)
    ):
        raise _fail("input_shape", "1..4 positive dimensions of one example", shape)
    out["input_shape"] = None if shape is None else tuple(shape)
    return out


def _loss(man: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    if "loss" not in man:
        return None
    from ..nn.losses import check_spec

    try:
        check_spec(man["loss"])
    except ValueError as e:
        raise TraceError(f"manifest.loss: {e}") from None
    return man["loss"]


def _torch_fields(man: Mapping[str, Any], engine: str, batch_size: Optional[int]) -> Dict[str, Any]:
    """The fields only a torch trace declares: clipping, normalisation, arithmetic, gradient
    accumulation, the augmentation."""
    for key in ("clip_grad", "normalize", "arithmetic", "accumulate", "scheduler", "augment"):
        if man.get(key) is not None and engine != "torch":
            raise _fail(key, "null (only torch traces declare it)", man[key])
    clip = man.get("clip_grad")
    if clip is not None and (
        not isinstance(clip, dict)
        or len(clip) != 1
        or next(iter(clip)) not in ("norm", "value")
        or isinstance(next(iter(clip.values())), bool)
        or not isinstance(next(iter(clip.values())), (int, float))
        or not 0 < next(iter(clip.values())) < 1e30
    ):
        raise _fail("clip_grad", "{'norm': a positive number} or {'value': ...}", clip)
    norm = man.get("normalize")
    if norm is not None and (
        not isinstance(norm, dict)
        or set(norm) != {"mean", "std"}
        or not all(isinstance(norm[k], list) and 1 <= len(norm[k]) <= 64 for k in norm)
        or len(norm["mean"]) != len(norm["std"])
        or not all(type(v) is float and abs(v) < 1e6 for v in norm["mean"])
        or not all(type(v) is float and 1e-12 < v < 1e6 for v in norm["std"])
    ):
        raise _fail("normalize", "{'mean': [...], 'std': [positive ...]}, one per channel", norm)
    if "arithmetic" in man:
        from ..nn.update import ARITHMETICS

        if engine != "torch" or man["arithmetic"] not in ARITHMETICS or man.get("reduction") is None:
            raise _fail(
                "arithmetic", f"one of {list(ARITHMETICS)} (torch traces of a reproducible model)", man["arithmetic"]
            )
    acc = man.get("accumulate")
    if acc is not None and (type(acc) is not int or not 2 <= acc <= 1024):
        raise _fail("accumulate", "the number of micro-batches per step, 2..1024", acc)
    if acc is not None and batch_size is not None and acc > batch_size:
        raise _fail("accumulate", f"at most the batch size ({batch_size})", acc)
    if man.get("augment") is not None:
        from ..nn.augment import augment_from_dict

        try:
            augment_from_dict(man["augment"])
        except ValueError as e:
            raise TraceError(f"manifest.augment: {e}") from None
    return {
        "clip_grad": clip,
        "normalize": norm,
        "arithmetic": man.get("arithmetic"),
        "accumulate": acc or 1,
        "augment": man.get("augment"),
    }
