"""From a trace's typed manifest (``TraceSpec``) to the step engine that recomputes it: the one
factory the recorder, the verifier and the spoofing attacks share, so all three step the same way.

``engine_for(trace, data, ...)`` gives ``(load, step, initial)``: ``load(t)`` theta_t from the
trace's checkpoint, ``step(state, batch, t[, lr=])`` the next state as the trace's engine computes
it, ``initial()`` the seeded theta_0 of an exactforge model (None for other models). Raises
TraceError where the trace does not fit the verifier's data, model or optimizer.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..models import native as M
from ..models.step import NativeStep, TorchStep, torch_data
from .manifest import TraceSpec
from .reader import Trace
from .safeio import TraceError

__all__ = ["engine_for", "native_step", "check_table", "Engine"]

State = Dict[str, np.ndarray]
Engine = Tuple[Callable[[int], State], Any, Callable[[], Optional[State]]]


def check_table(trace: Trace, expected: Dict[str, Tuple[str, Tuple[int, ...]]], what: str) -> None:
    """The trace's checkpoint tensors must be those of the engine's model, name by name."""
    table = trace.manifest.tensors
    if dict(table) != dict(expected):
        # the first tensor that differs, by name: a shape (1,) against a 0-d one reads plainly
        for name in list(expected) + [k for k in table if k not in expected]:
            if table.get(name) != expected.get(name):
                have = "absent" if name not in table else f"{table[name][0]} {list(table[name][1])}"
                want = "absent" if name not in expected else f"{expected[name][0]} {list(expected[name][1])}"
                raise TraceError(
                    f"manifest: the checkpoint tensor {name[:80]!r} is {have} in the trace and {want} in {what}"
                )


def native_step(
    spec: TraceSpec, X: np.ndarray, y: np.ndarray, *, lr: Optional[float] = None, threads: Optional[int] = None
) -> NativeStep:
    """The native engine's SGD step over examples (X, y), in the trace's reduction mode and plan."""
    model = spec.model.native
    if spec.engine != "native" or model is None:
        raise TraceError("manifest.engine: the native step needs a native trace of an exactforge model")
    mode = spec.reduction or "fixed"
    return NativeStep(model, X, y, spec.lr if lr is None else lr, mode=mode, threads=threads, plan=spec.reduction_plan)


def engine_for(
    trace: Trace,
    data: Any,
    threads: Optional[int] = None,
    model: Any = None,
    loss_fn: Any = None,
    augment: Any = None,
) -> Engine:
    """(load, step, initial) of the trace's engine: the native models, or torch with the
    verifier's model code (``model``, ``loss_fn``); ``augment`` draws the inputs of a torch trace
    that declares no augmentation of its own (None: none)."""
    if trace.spec.engine == "native":
        return _native_engine(trace, data, threads)
    return _torch_engine(trace, data, model, loss_fn, augment)


def _native_engine(trace: Trace, data: Any, threads: Optional[int]) -> Engine:
    spec = trace.spec
    net = spec.model.native
    if net.input_dim != data.dim or net.num_classes != data.num_classes:
        raise TraceError(
            f"manifest: the model takes {net.input_dim} inputs and {net.num_classes} classes, "
            f"{data.name} has {data.dim} and {data.num_classes}"
        )
    st = {"float32": "F32", "float64": "F64"}[net.dtype]
    check_table(trace, {k: (st, tuple(s)) for k, s in net.shapes().items()}, f"the native {net.kind}")

    def load(step: int) -> State:
        return M.check_params(net, trace.load_checkpoint(step), f"checkpoint {step}")

    step = native_step(spec, data.X.astype(net.dtype, copy=False), data.y, threads=threads)

    def initial() -> State:
        return M.init_params(net, int(spec.seed or 0))

    return load, step, initial


def _torch_engine(trace: Trace, data: Any, model: Any, loss_fn: Any, augment: Any) -> Engine:
    from .. import nn as xnn
    from ..models import optim as O
    from ..models.torch_fcn import to_torch
    from ..nn.losses import replay
    from .safeio import dtype_name

    spec = trace.spec
    model = _verifier_model(spec, data, model)
    try:
        xnn.keyed_dropout(model)
        _set_modes(model, spec.eval_modules)
        loss_of = replay(spec.loss, spec.reduction, loss_fn)
    except ValueError as e:
        raise TraceError(str(e)) from None
    expected = {k: (dtype_name(v.detach().cpu().numpy().dtype), tuple(v.shape)) for k, v in model.state_dict().items()}
    ospec = spec.optimizer.raw
    assert ospec is not None  # parsed from the manifest's object
    expected.update(O.expected_table(ospec, list(model.parameters())))
    check_table(trace, expected, "the verifier's model and optimizer")
    X, y = _torch_data(spec, data, model)
    if spec.augment is not None:
        augment = xnn.augment_from_dict(spec.augment, trace.batch)
    step = TorchStep(
        model,
        X,
        y,
        ospec,
        loss_of,
        dropout_seed=spec.dropout_seed,
        clip=spec.clip_grad,
        augment=augment,
        accumulate=spec.accumulate,
        normalize=_normalization(spec, X),
        arithmetic=spec.step_arithmetic or "torch",
    )
    net = spec.model.native

    def initial() -> Optional[State]:
        if net is None:
            return None
        return {
            k: v.detach().numpy()
            for k, v in to_torch(net, M.init_params(net, int(spec.seed or 0))).state_dict().items()
        }

    return trace.load_checkpoint, step, initial


def _normalization(spec: TraceSpec, X: Any) -> Optional[Dict[str, List[float]]]:
    norm = spec.normalize
    if norm is not None and (X.dim() < 2 or X.shape[1] != len(norm["mean"])):
        raise TraceError(f"manifest.normalize: {len(norm['mean'])} channels, the inputs have {list(X.shape[1:2])}")
    return norm


def _zoo_model(spec: TraceSpec, data: Any, given: Any) -> Any:
    """A zoo model named by a trace, built from the verifier's own code (its weights come from
    the checkpoints) unless the verifier gives its own; the entry is the prover's, so every
    field is checked against the verifier's data either way."""
    from ..models.zoo import ZOO, build_model

    entry = spec.model
    name, shape, n = entry.zoo, list(entry.input_shape or ()), int(entry.num_classes or 0)
    if name not in ZOO:
        raise TraceError(f"manifest.model.zoo: unknown zoo model {str(name)[:40]!r}")
    if (
        shape != list(data.shape or (data.dim,))
        or n != data.num_classes
        or (name == "transformer") != (data.vocab is not None)
    ):
        raise TraceError(f"manifest.model: {name} on {shape} with {n} classes does not fit {data.name}")
    if given is not None:
        return given
    # the vocabulary is the verifier's data set's; a prover's other table size fails the tensor check
    return build_model(name, tuple(shape), n, vocab=data.vocab, seed=0)


def _verifier_model(spec: TraceSpec, data: Any, model: Any) -> Any:
    """The model the verifier recomputes with: its own instance, the zoo model the trace names,
    or the exactforge model of the spec; made reproducible in the trace's mode when the trace
    was recorded through exactforge.nn."""
    from .. import nn as xnn
    from ..models.torch_fcn import TorchFCN

    if spec.model.zoo is not None:
        model = _zoo_model(spec, data, model)
    if model is None:
        if spec.model.native is None:
            raise TraceError(
                "model: this torch trace names no exactforge model; pass model= (a fresh instance "
                "of the architecture) to verify_trace"
            )
        model = TorchFCN(spec.model.native)
    reduction = spec.reduction
    if reduction is None:
        return model
    # recorded through exactforge.nn's reproducible layers: replay through them
    try:
        mode = xnn.mode_of(model)
    except ValueError as e:
        raise TraceError(str(e)) from None
    if mode is not None and mode != reduction:
        raise TraceError(f"model: made reproducible with mode {mode!r}, the trace was recorded with {reduction!r}")
    arithmetic = spec.step_arithmetic or "torch"
    if mode is None or xnn.arithmetic_of(model) != arithmetic:
        try:
            model = xnn.reproducible(model, mode=reduction, arithmetic=arithmetic)
        except xnn.UnsupportedLayerError as e:
            raise TraceError(str(e)) from None
    return model


def _torch_data(spec: TraceSpec, data: Any, model: Any) -> Tuple[Any, Any]:
    """The verifier's data as tensors of the model's dtype (token ids stay ids), in the input
    shape the trace declares."""
    shape = spec.input_shape
    if shape is not None and math.prod(shape) != data.dim:
        raise TraceError(f"manifest.input_shape: expected the dimensions of one example ({data.dim} features)")
    return torch_data(data, model, None if shape is None else list(shape))


def _set_modes(model: Any, eval_modules: Optional[Tuple[str, ...]]) -> None:
    """Train mode everywhere except the modules the trace recorded in eval mode (a trace
    without the list: all in train mode, as a fresh model is)."""
    model.train()
    if not eval_modules:
        return
    mods = dict(model.named_modules())
    for name in eval_modules:
        if name not in mods:
            raise ValueError(f"manifest: 'eval_modules' names {name[:60]!r}, which the verifier's model does not have")
        mods[name].training = False
