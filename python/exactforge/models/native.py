"""Native reproducible models: multinomial logistic regression and fully connected ReLU
networks, softmax cross-entropy (mean over the batch), plain SGD.

Every reduction goes through ``exactforge.reduce`` (reductions over the batch are keyed by
the examples' dataset indices), softmax uses exactforge's own exp/log (the same bits on every
device), and every other operation is a single IEEE-rounded elementwise operation. The next
checkpoint is therefore bitwise independent of batch order, thread count and device.

Layout (as in the papers): ``W_i`` is d_{i-1} x d_i and ``z_i = W_i^T a_{i-1} + b_i``; with
examples as rows, ``Z_i = A_{i-1} @ W_i + b_i``. Logistic regression is the FCN with no
hidden layer.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import reduce as R
from ..mathfn import output_errors, softmax_xent

__all__ = [
    "ModelSpec",
    "Params",
    "init_params",
    "forward",
    "loss_and_grad",
    "sgd_step",
    "per_example",
    "PerExample",
    "softmax_xent",
    "output_errors",
    "check_params",
]

Params = Dict[str, np.ndarray]  # an OrderedDict, in the order of ModelSpec.shapes()
KINDS = ("logreg", "fcn")
INITS = ("uniform", "gaussian")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a native model; serialises to the trace manifest."""

    kind: str
    input_dim: int
    num_classes: int
    hidden: Tuple[int, ...] = ()
    bias: bool = True
    dtype: str = "float32"
    # the law of the initial weights: torch.nn.Linear's uniform, or a Gaussian of the same
    # scale, under which the tensor method of exactforge.invert has its guarantee
    init: str = "uniform"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {self.kind!r}")
        if self.kind == "logreg" and self.hidden:
            raise ValueError("hidden: logistic regression has no hidden layer; use kind='fcn'")
        if self.kind == "fcn" and not self.hidden:
            raise ValueError("hidden: an FCN needs at least one hidden layer, e.g. hidden=(100,)")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype: expected 'float32' or 'float64', got {self.dtype!r}")
        if self.init not in INITS:
            raise ValueError(f"init: expected one of {INITS}, got {self.init!r}")
        for name, v in (
            ("input_dim", self.input_dim),
            ("num_classes", self.num_classes),
            *(("hidden", h) for h in self.hidden),
        ):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}: expected positive integers, got {v!r}")
        if self.num_classes < 2:
            raise ValueError("num_classes: expected at least 2 classes")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    @property
    def sizes(self) -> Tuple[int, ...]:
        return (int(self.input_dim), *self.hidden, int(self.num_classes))

    @property
    def num_layers(self) -> int:
        return len(self.sizes) - 1

    def shapes(self) -> "OrderedDict[str, Tuple[int, ...]]":
        out: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
        for i, (d0, d1) in enumerate(zip(self.sizes[:-1], self.sizes[1:]), start=1):
            out[f"W{i}"] = (d0, d1)
            if self.bias:
                out[f"b{i}"] = (d1,)
        return out

    @property
    def num_params(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes().values()))

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        if self.init == "uniform":  # the law of every trace before 'init' existed: their manifests stay as they were
            del d["init"]
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelSpec":
        """Strict: a spec read from a trace is hostile input, so no field is coerced (a bias of
        -1 or a width of 64.0 is refused, not read as True or 64)."""
        if not isinstance(d, dict):
            raise ValueError("model spec: expected a JSON object")
        fields = {"kind", "input_dim", "num_classes", "hidden", "bias", "dtype"}
        if set(d) - {"init"} != fields:  # as to_dict writes it: every field, no defaults, nothing else
            raise ValueError(f"model spec: expected the fields {sorted(fields)} (and 'init'), got {sorted(d)[:8]}")
        if "init" in d and d["init"] not in INITS:
            raise ValueError(f"model spec: 'init' must be one of {INITS}")

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        hidden = d.get("hidden", [])
        if not isinstance(d.get("kind"), str) or not is_int(d.get("input_dim")) or not is_int(d.get("num_classes")):
            raise ValueError("model spec: 'kind' (a string), 'input_dim' and 'num_classes' (integers) are required")
        if not isinstance(hidden, (list, tuple)) or not all(is_int(h) for h in hidden) or len(hidden) > 64:
            raise ValueError("model spec: 'hidden' must be a list of at most 64 integer widths")
        if not isinstance(d.get("bias", True), bool) or not isinstance(d.get("dtype", "float32"), str):
            raise ValueError("model spec: 'bias' must be true or false and 'dtype' a string")
        return cls(
            kind=d["kind"],
            input_dim=int(d["input_dim"]),
            num_classes=int(d["num_classes"]),
            hidden=tuple(int(h) for h in hidden),
            bias=d.get("bias", True),
            dtype=d.get("dtype", "float32"),
            init=d.get("init", "uniform"),
        )


def init_params(spec: ModelSpec, seed: int = 0) -> Params:
    """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights and biases (torch.nn.Linear's law), or
    with ``spec.init == "gaussian"`` N(0, 1/fan_in) for both: each hidden unit's (w_j, b_j) is
    then an isotropic Gaussian, as the tensor method needs (the bias as the weight of a constant
    input)."""
    rng = np.random.default_rng(seed)
    out: Params = OrderedDict()
    for name, shape in spec.shapes().items():
        bound = 1.0 / np.sqrt(spec.sizes[int(name[1:]) - 1])
        if spec.init == "gaussian":
            out[name] = rng.normal(0.0, bound, shape).astype(spec.dtype)
        else:
            out[name] = rng.uniform(-bound, bound, shape).astype(spec.dtype)
    return out


def check_params(spec: ModelSpec, params: Dict[str, np.ndarray], name: str = "params") -> Params:
    """The parameters in spec order, with names, shapes and dtype checked."""
    shapes = spec.shapes()
    if set(params) != set(shapes):
        raise ValueError(f"{name}: expected tensors {list(shapes)}, got {sorted(params)}")
    out: Params = OrderedDict()
    for k, shape in shapes.items():
        v = np.asarray(params[k])
        if v.shape != shape:
            raise ValueError(f"{name}: {k} has shape {v.shape}, the model needs {shape}")
        if v.dtype != np.dtype(spec.dtype):
            raise ValueError(f"{name}: {k} is {v.dtype}, the model is {spec.dtype}")
        out[k] = np.ascontiguousarray(v)
    return out


@dataclass
class Cache:
    """Forward quantities of a batch: pre-activations Z_i and activations A_i (A_0 = X)."""

    Z: List[np.ndarray] = field(default_factory=list)
    A: List[np.ndarray] = field(default_factory=list)


def forward(
    spec: ModelSpec, params: Params, X: np.ndarray, *, mode: str = "fixed", threads: Optional[int] = None
) -> Cache:
    """Forward pass; the reductions run over features (rows are independent examples)."""
    c = Cache(A=[X])
    a = X
    for i in range(1, spec.num_layers + 1):
        z = R.matmul(a, params[f"W{i}"], mode=mode, threads=threads)
        if spec.bias:
            z = z + params[f"b{i}"]
        c.Z.append(z)
        if i < spec.num_layers:
            a = np.maximum(z, z.dtype.type(0))
            c.A.append(a)
    return c


def _errors(
    spec: ModelSpec, params: Params, cache: Cache, y: np.ndarray, mode: str, threads: Optional[int]
) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Per-example losses and error matrices D_i (row k = dloss_k/dz_i, not divided by b)."""
    losses, p = softmax_xent(cache.Z[-1], y, mode=mode)
    D = [output_errors(p, y, mode=mode)]
    for i in range(spec.num_layers - 1, 0, -1):
        back = R.matmul(D[0], np.ascontiguousarray(params[f"W{i + 1}"].T), mode=mode, threads=threads)
        D.insert(0, back * (cache.Z[i - 1] > 0))
    return losses, D


#: Reduction plans of the native step, recorded in a trace's manifest ("reduction_plan"):
#: 1: every reduction in the trace's mode (traces recorded before plans existed);
#: 2: in exact mode, only the reductions over the batch (weight and bias gradients, the loss)
#:    are exact; the per-example products along features (forward A W, backward D W^T, the
#:    class sums of the softmax) run in the fixed order: one fused multiply-add chain in
#:    feature index order per output. Rows are examples, so no sum there mixes examples, and
#:    batch order and thread count change nothing either way; plan 2 is the faster (docs/benchmarks/step.md).
REDUCTION_PLANS = (1, 2)
REDUCTION_PLAN = 2


def loss_and_grad(
    spec: ModelSpec,
    params: Params,
    X: np.ndarray,
    y: np.ndarray,
    keys: np.ndarray,
    *,
    mode: str = "fixed",
    threads: Optional[int] = None,
    plan: int = REDUCTION_PLAN,
) -> Tuple[float, Params]:
    """Mean loss over the batch and its gradient. ``keys`` (the examples' dataset indices)
    order every reduction over the batch, so the result does not depend on the row order.
    Equal keys must mean the same example (a batch drawn with replacement). ``plan``: which
    reductions use ``mode`` (REDUCTION_PLANS)."""
    if plan not in REDUCTION_PLANS:
        raise ValueError(f"plan: expected one of {REDUCTION_PLANS}, got {plan!r}")
    feature_mode = mode if plan == 1 else "fixed"
    b = X.shape[0]
    keys = np.asarray(keys)
    if keys.shape != (b,):
        raise ValueError(f"keys: expected one dataset index per example ({b}), got shape {keys.shape}")
    # Put the batch in key order once; every reduction over the batch then runs in the
    # given order. Equal keys are the same example (same index, same data), so the stable
    # sort leaves nothing that depends on the incoming order.
    order = np.argsort(keys, kind="stable")
    if not np.array_equal(order, np.arange(b)):
        X, y = X[order], y[order]
    cache = forward(spec, params, X, mode=feature_mode, threads=threads)
    losses, D = _errors(spec, params, cache, y, feature_mode, threads)
    inv_b = X.dtype.type(b)
    grads: Params = OrderedDict()
    for i in range(1, spec.num_layers + 1):
        di = D[i - 1] / inv_b  # the mean's 1/b, applied per element before the reduction
        grads[f"W{i}"] = R.matmul(np.ascontiguousarray(cache.A[i - 1].T), di, mode=mode, threads=threads)
        if spec.bias:
            grads[f"b{i}"] = R.sum(di, 0, mode=mode, threads=threads)
    loss = float(R.sum(losses, 0, mode=mode, threads=threads)) / b
    return loss, OrderedDict((k, grads[k]) for k in spec.shapes())


def sgd_step(
    spec: ModelSpec,
    params: Params,
    X: np.ndarray,
    y: np.ndarray,
    keys: np.ndarray,
    lr: float,
    *,
    mode: str = "fixed",
    threads: Optional[int] = None,
    plan: int = REDUCTION_PLAN,
) -> Params:
    """theta - lr * grad, with the product and the difference each rounded once."""
    _, g = loss_and_grad(spec, params, X, y, keys, mode=mode, threads=threads, plan=plan)
    lr_t = np.dtype(spec.dtype).type(lr)
    return OrderedDict((k, params[k] - lr_t * g[k]) for k in spec.shapes())


@dataclass
class PerExample:
    """Per-example quantities the forging code needs (rows follow the batch order)."""

    losses: np.ndarray  # (b,)
    errors: List[np.ndarray]  # D_i, b x d_i: dloss/dz_i of each example
    activations: List[np.ndarray]  # A_{i-1}, b x d_{i-1}: the input of layer i (A_0 = X)
    grad_norms: np.ndarray  # (b, L): ||a_{i-1}|| * ||d_i||, the l2 norm of dloss/dW_i


def per_example(spec: ModelSpec, params: Params, X: np.ndarray, y: np.ndarray, *, mode: str = "fixed") -> PerExample:
    cache = forward(spec, params, X, mode=mode)
    losses, D = _errors(spec, params, cache, y, mode, None)
    norms = np.stack(
        [
            np.linalg.norm(cache.A[i].astype(np.float64), axis=1) * np.linalg.norm(D[i].astype(np.float64), axis=1)
            for i in range(spec.num_layers)
        ],
        axis=1,
    )
    return PerExample(losses, D, cache.A[: spec.num_layers], norms)
