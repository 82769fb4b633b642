"""The one step engine: forward, loss, gradient and optimizer update of one training step.

Recording, verification, the studies, the attacks and the forging game all step through this
module, so that an optimizer, a loss or a layer is taught to exactforge once.

- :class:`NativeStep`: exactforge's native models (logistic regression, FCN) on a parameter
  dict, with the order-free reductions (``mode`` "fixed" or "exact").
- :class:`TorchStep`: a torch module on its state dict (optimizer state included), with a
  torch optimizer described as in a trace's manifest (:mod:`exactforge.models.optim`) and a
  loss callable; made reproducible (:mod:`exactforge.nn`) or plain torch.
- :class:`Stepper`: the flat-vector view of both that the studies and attacks use (the
  parameters of a zoo model in torch order, :mod:`exactforge.models.layout`), under a
  :class:`Condition` (batch order, threads, determinism, mixed precision, device)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._backend.threads import threads as torch_threads
from . import native as M
from . import optim as O
from .layout import flat_of, flat_to_native, load_flat, native_to_flat

__all__ = [
    "NativeStep",
    "TorchStep",
    "torch_data",
    "clip_function",
    "Stepper",
    "Condition",
    "CONDITIONS",
    "NATIVE_MODELS",
    "NN_MODELS",
    "applied",
    "sgd_spec",
]

NATIVE_MODELS = ("logreg", "fcn")
# zoo models whose every layer exactforge.nn runs reproducibly
NN_MODELS = ("logreg", "fcn", "lenet", "vggmini", "transformer")

State = Dict[str, np.ndarray]


def sgd_spec(lr: float) -> Dict[str, Any]:
    """The optimizer entry of plain SGD (no momentum, no weight decay) at ``lr``."""
    return {"name": "sgd", "lr": lr, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0}


class NativeStep:
    """theta_{t+1} = theta_t - lr * grad of a native model, on the examples ``idx`` of (X, y)."""

    def __init__(
        self,
        spec: M.ModelSpec,
        X: np.ndarray,
        y: np.ndarray,
        lr: float,
        *,
        mode: str = "fixed",
        threads: Optional[int] = None,
        plan: Optional[int] = None,
    ) -> None:
        self.spec, self.X, self.y, self.lr = spec, X, y, lr
        self.mode, self.threads, self.plan = mode, threads, plan

    def __call__(self, params: State, idx: np.ndarray, t: int = 0) -> State:
        return self.arrays(params, self.X[idx], self.y[idx], idx)

    def arrays(
        self, params: State, X: np.ndarray, y: np.ndarray, keys: np.ndarray, threads: Optional[int] = None
    ) -> State:
        """The same step on a batch given as arrays (labels: classes or label vectors)."""
        # no plan: sgd_step's default, the current one
        plan = {} if self.plan is None else {"plan": self.plan}
        return M.sgd_step(
            self.spec,
            params,
            X,
            y,
            keys,
            self.lr,
            mode=self.mode,
            threads=self.threads if threads is None else threads,
            **plan,
        )


def torch_data(data: Any, model: Any, input_shape: Optional[Sequence[int]] = None) -> Tuple[Any, Any]:
    """A data set as a model is fed it: inputs as a tensor of the model's dtype (token ids stay
    int64 ids) in ``input_shape`` per example, labels as int64. The recorder checks a loop's
    inputs against these, and the verifier feeds them."""
    import torch

    dtype = np.int64 if data.vocab is not None else str(next(model.parameters()).dtype).replace("torch.", "")
    X = torch.from_numpy(data.X.astype(dtype))
    if input_shape is not None:
        X = X.reshape(len(data), *input_shape)
    return X, torch.from_numpy(data.y)


def clip_function(clip: Optional[Dict[str, float]], reproducible: bool) -> Callable[[List[Any]], None]:
    """Applies the declared gradient clipping to a list of gradient tensors, in place, as
    ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` do on a model's parameters; the
    norm of a reproducible model is the order-free one (``exactforge.nn.clip_grad_norm_``)."""
    import torch

    def holders(grads: List[Any]) -> List[Any]:
        out = []
        for g in grads:
            h = torch.empty_like(g)  # a tensor whose .grad is g: the clipping functions work on .grad
            h.grad = g
            out.append(h)
        return out

    def apply(grads: List[Any]) -> None:
        if clip is None or not grads:
            return
        if "value" in clip:
            torch.nn.utils.clip_grad_value_(holders(grads), clip["value"])
        elif reproducible:
            from ..nn import clip_grad_norm_

            clip_grad_norm_(holders(grads), clip["norm"])
        else:
            torch.nn.utils.clip_grad_norm_(holders(grads), clip["norm"])

    return apply


class TorchStep:
    """One optimizer step of a torch module.

    ``optimizer`` is a manifest's optimizer entry (:func:`exactforge.models.optim.check_spec`),
    ``loss(output, y)`` the loss; ``dropout_seed`` keys exactforge.nn's dropout masks by (seed,
    step, example) and ``augment`` (a KeyedAugment) the inputs; ``device`` and ``autocast`` ("bfloat16", "float16") are the studies'
    conditions. The module's own parameters are overwritten by each step."""

    def __init__(
        self,
        model: Any,
        X: Any,
        y: Any,
        optimizer: Dict[str, Any],
        loss: Callable,
        *,
        dropout_seed: Optional[int] = None,
        device: str = "cpu",
        autocast: Optional[str] = None,
        clip: Optional[Dict[str, float]] = None,
        augment: Any = None,
        accumulate: int = 1,
        normalize: Optional[Dict[str, List[float]]] = None,
        arithmetic: str = "torch",
    ) -> None:
        from ..nn import mode_of

        self.model, self.X, self.y, self.optimizer, self.loss = model, X, y, optimizer, loss
        self.dropout_seed, self.device, self.autocast = dropout_seed, device, autocast
        self.params = list(model.parameters())
        self.keys = set(model.state_dict())
        self.clip = clip_function(clip, mode_of(model) is not None)
        self.augment = augment  # a KeyedAugment: step t's draws for each example
        self.accumulate = accumulate  # micro-batches per step: numpy.array_split of the batch, loss / accumulate
        self.normalize = normalize  # per channel, after augmentation (exactforge.nn.augment.normalize)
        # "portable-1": the optimizer steps through exactforge.nn.update (the same bits on every
        # CPU); "torch": through torch's own kernels, for traces that name no portable arithmetic
        self.arithmetic = arithmetic

    def __call__(
        self, state: State, idx: np.ndarray, t: int = 0, lr: Union[None, float, Sequence[float]] = None
    ) -> State:
        """The next state dict (with the optimizer's state tensors) from ``state``; ``lr`` is the
        step's learning rate where the trace records one (a schedule), else the optimizer's."""
        import torch

        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items() if k in self.keys})
        o = O.build(self.optimizer, self.params)
        if lr is not None:
            rates = [lr] if isinstance(lr, (int, float)) else list(lr)
            if len(rates) != len(o.param_groups):
                raise ValueError(f"lr: {len(rates)} learning rate(s) for {len(o.param_groups)} parameter group(s)")
            for g, r in zip(o.param_groups, rates):
                g["lr"] = float(r)
        steps = O.load_state(o, self.optimizer, self.params, state)
        self._update(o, idx, t)
        out = {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}
        out.update(O.state_tensors(o, self.optimizer, self.params, steps + 1))
        return out

    def flat(self, flat: np.ndarray, idx: np.ndarray, t: int = 0) -> np.ndarray:
        """The next parameters as a flat float32 vector in torch order, from ``flat`` (an
        optimizer without state: plain SGD)."""
        import torch

        dev = torch.device(self.device)
        self.model.to(dev)
        load_flat(self.params, flat)
        self._update(O.build(self.optimizer, self.params), idx, t)
        out = flat_of(self.params)
        self.model.to("cpu")
        return out

    def _update(self, o: Any, idx: np.ndarray, t: int) -> None:
        o.zero_grad()
        for part in np.array_split(np.asarray(idx), self.accumulate):
            loss = self._loss(part, t)
            (loss if self.accumulate == 1 else loss / self.accumulate).backward()
        self.clip([p.grad for p in self.params if p.grad is not None])
        if self.arithmetic == "torch":
            o.step()
        else:
            from ..nn.update import portable_step

            portable_step(o)

    def _loss(self, idx: np.ndarray, t: int) -> Any:
        """The loss of the examples ``idx`` at step t (dropout and augmentation keyed to them)."""
        import torch

        if self.dropout_seed is not None:  # the masks of step t, following each example (also when permuted)
            from ..nn import dropout_keys

            dropout_keys(self.model, seed=self.dropout_seed, step=t, examples=idx)
        b = torch.from_numpy(np.array(idx, dtype=np.int64))  # a writable copy (records are read-only)
        xb, yb = self.X[b], self.y[b]
        if self.augment is not None:
            xb = self.augment(xb, step=t, examples=idx)
        if self.normalize is not None:
            from ..nn.augment import normalize

            xb = normalize(xb, self.normalize["mean"], self.normalize["std"])
        if self.device != "cpu":
            xb, yb = xb.to(self.device), yb.to(self.device)
        if self.autocast is not None:
            with torch.autocast(device_type=torch.device(self.device).type, dtype=getattr(torch, self.autocast)):
                out = self.model(xb)
        else:
            out = self.model(xb)
        return self.loss(out, yb)


# -- conditions and the flat-vector stepper of the studies and attacks -------------------------


@dataclass(frozen=True)
class Condition:
    """How a step is (re)computed: the studies' axes of reproduction error."""

    name: str
    permute: bool = False
    threads: Optional[int] = None
    deterministic: bool = False
    autocast: Optional[str] = None  # "bfloat16" | "float16"
    device: str = "cpu"
    cudnn_benchmark: Optional[bool] = None
    engine: str = "torch"  # "torch" | "native" | "nn" (torch with exactforge.nn layers)

    @property
    def float32(self) -> bool:
        return self.autocast is None


CONDITIONS: Dict[str, Condition] = {
    c.name: c
    for c in [
        Condition("baseline"),
        Condition("permute", permute=True),
        Condition("threads", threads=1),
        Condition("deterministic", deterministic=True),
        Condition("bf16", autocast="bfloat16"),
        Condition("fp16", autocast="float16"),
        Condition("native", engine="native"),
        Condition("native+permute", engine="native", permute=True),
        Condition("native+threads", engine="native", threads=1),
        Condition("reproducible", engine="nn"),
        Condition("reproducible+permute", engine="nn", permute=True),
        Condition("reproducible+threads", engine="nn", threads=1),
        Condition("cuda", device="cuda"),
        Condition("cuda+benchmark", device="cuda", cudnn_benchmark=True),
        Condition("cuda+deterministic", device="cuda", deterministic=True, cudnn_benchmark=False),
    ]
}


@contextlib.contextmanager
def applied(cond: Condition) -> Iterator[None]:
    """Sets torch's global switches for a condition and restores them afterwards."""
    import torch

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    try:
        torch.use_deterministic_algorithms(cond.deterministic, warn_only=True)
        if cond.cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = cond.cudnn_benchmark
        with torch_threads(cond.threads):
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.backends.cudnn.benchmark = prev_bench


class Stepper:
    """Recomputes one SGD step of a zoo model from a flat float32 parameter vector (torch
    order) under a condition: the torch engine (plain or with exactforge.nn's reproducible
    layers) or, for logreg and FCN, the native one."""

    def __init__(self, model_name: str, model: Any, data: Any, lr: float, native_spec: Any = None) -> None:
        import torch

        self.name, self.model, self.data, self.lr = model_name, model, data, lr
        self.params = list(model.parameters())
        shape = data.shape or (data.dim,)
        self.X = torch.from_numpy(data.X).reshape(len(data), *shape)
        self.y = torch.from_numpy(data.y)
        self._native_spec = native_spec
        if native_spec is None and model_name in NATIVE_MODELS:
            self._native_spec = M.ModelSpec(
                model_name, int(np.prod(shape)), data.num_classes, (100,) if model_name == "fcn" else ()
            )
        self._nn_model: Any = None

    def flat(self, params: Any = None) -> np.ndarray:
        return flat_of(self.params if params is None else params)

    def load(self, flat: np.ndarray, params: Any = None) -> None:
        load_flat(self.params if params is None else params, flat)

    def step(self, flat: np.ndarray, idx: np.ndarray, cond: Condition, rng: np.random.Generator) -> np.ndarray:
        if cond.permute:
            idx = idx[rng.permutation(len(idx))]
        with applied(cond):
            if cond.engine == "native":
                return self.native_step_arrays(flat, self.data.X[idx], self.data.y[idx], idx, threads=cond.threads)
            if cond.engine == "nn":
                return self._nn_step(flat, idx, cond)
            return self._torch_step(flat, idx, cond)

    def _nn_step(self, flat: np.ndarray, idx: np.ndarray, cond: Condition) -> np.ndarray:
        """torch.optim.SGD's update with the gradient of exactforge.nn's reproducible layers and
        cross-entropy: the same bits for any batch order and thread count."""
        import copy

        from .. import nn as xnn

        if self._nn_model is None:
            self._nn_model = xnn.reproducible(copy.deepcopy(self.model).cpu())
        engine = TorchStep(
            self._nn_model, self.X, self.y, sgd_spec(self.lr), xnn.cross_entropy, arithmetic=xnn.ARITHMETIC
        )
        with torch_threads(cond.threads, torch=False, native=True):
            return engine.flat(flat, idx)

    def _torch_step(self, flat: np.ndarray, idx: np.ndarray, cond: Condition) -> np.ndarray:
        import torch

        def loss(out: Any, y: Any) -> Any:
            return torch.nn.functional.cross_entropy(out.float(), y)

        return TorchStep(
            self.model, self.X, self.y, sgd_spec(self.lr), loss, device=cond.device, autocast=cond.autocast
        ).flat(flat, idx)

    def native_spec(self) -> M.ModelSpec:
        if self._native_spec is None:
            raise ValueError(f"the native path supports {NATIVE_MODELS} (exactforge models), not {self.name}")
        return self._native_spec

    def to_native(self, flat: np.ndarray) -> M.Params:
        """A flat torch-order vector ((weight, bias) per layer, weight = W_i^T) as exactforge params."""
        return flat_to_native(self.native_spec(), flat)

    def from_native(self, params: State) -> np.ndarray:
        return native_to_flat(self.native_spec(), params)

    def native_step_arrays(
        self, flat: np.ndarray, X: np.ndarray, Y: np.ndarray, keys: np.ndarray, threads: Optional[int] = None
    ) -> np.ndarray:
        """One native SGD step on a batch given as arrays (labels: classes or label vectors)."""
        Yn = np.asarray(Y) if np.asarray(Y).ndim == 1 else np.asarray(Y, np.float32)
        engine = NativeStep(self.native_spec(), self.data.X, self.data.y, self.lr, threads=threads)
        new = engine.arrays(self.to_native(flat), np.asarray(X, np.float32).reshape(len(X), -1), Yn, keys)
        return self.from_native(new)
