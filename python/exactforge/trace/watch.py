"""What a recorder sees of a training loop, so that nothing it does not record changes an update.

A trace records the batch of every step; the verifier replays the step from the manifest (the
model, the optimizer, the loss) and the record. Anything else a loop does to an update (an
augmented or normalised input, another loss, gradients edited between ``backward`` and
``optimizer.step()``, gradients accumulated over several backward passes or from an earlier
step, a hyperparameter changed by hand or by a scheduler, a module switched between train and
eval mode) would make an honest trace fail verification: the prover would look like a forger.
``LoopWatch`` hooks the model, its parameters and the optimizer and checks each step as it
happens, refusing at that step (``ValueError``, naming what and why), so that a loop is
either recorded faithfully or not recorded at all:

* the model's input must be the data set's examples of the step, in the declared input shape,
  augmented by the declared keyed augmentation if any (bit for bit: no other augmentation,
  normalisation or batch);
* the gradient the loss sends to the model's output must be the recorded loss's, recomputed
  from that output and the step's labels (bit for bit);
* each parameter's gradient comes from one backward pass of this step, onto zeroed gradients,
  and reaches ``optimizer.step()`` unchanged, or changed exactly as the declared clipping does;
* the optimizer steps once per recorded step, with the recorded hyperparameters; its learning
  rate may change (a scheduler): the rate each step used is recorded and replayed;
* the modules in eval mode are the ones the manifest lists;
* no training forward pass runs under ``torch.autocast`` (mixed precision rounds in another
  dtype; the verifier replays in the model's).

Each check costs a pass over the batch's inputs, the output's gradient or the parameters'
gradients: small against the forward and backward pass it checks.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import numpy as np

__all__ = ["LoopWatch", "clip_entry", "check_reproducible_loop"]


def _value(v: Any) -> Any:
    return [float(x) for x in v] if isinstance(v, (tuple, list)) else v


class LoopWatch:
    """Hooks on ``model``, its parameters and ``optimizer``; ``take(idx)`` closes a step.

    ``X`` and ``y`` are the data set as the verifier feeds it (inputs in the manifest's input
    shape and the model's dtype, labels); ``loss`` replays the recorded loss; ``clip`` is the
    declared clipping (``{"norm": max}``, ``{"value": max}`` or None) and ``clip_fn`` applies
    it to a list of gradient tensors as the verifier will."""

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        spec: Dict[str, Any],
        X: Any,
        y: Any,
        loss: Callable,
        clip: Optional[Dict[str, float]],
        clip_fn: Callable[[List[Any]], None],
        eval_modules: List[str],
        augment: Any = None,
        accumulate: int = 1,
        shared: Any = None,
    ) -> None:
        self.model, self.optimizer, self.spec = model, optimizer, spec
        self.X, self.y, self.loss, self.clip, self.clip_fn = X, y, loss, clip, clip_fn
        self.eval_modules, self.augment, self.accumulate = eval_modules, augment, accumulate
        # a shared batch's reductions that wait for the end of the backward pass: the parameters'
        # hooks see the -0.0 a layer leaves, and the reduced gradient is added after them
        self.shared = shared
        self.params = list(model.parameters())
        from ..models.optim import GROUP_KEYS  # the hyperparameters a manifest records, besides lr

        keys = GROUP_KEYS[spec["name"]]
        self.hyper = [{k: _value(g[k]) for k in keys} for g in optimizer.param_groups]
        self.handles: List[Any] = []
        self._reset()

    def _reset(self) -> None:
        self.grads: Dict[int, Any] = {}  # parameter position -> its gradient from this step's backward
        self.fired: Dict[int, int] = {}
        # (inputs, output, the loss's gradient at the output) of each backward pass, in order
        self.passes: List[Any] = []
        self.lr: Optional[List[float]] = None
        self.stepped = 0

    # -- hooks ------------------------------------------------------------------------------
    def install(self) -> None:
        import torch

        self.handles.append(self.model.register_forward_hook(self._forward))
        for i, p in enumerate(self.params):
            if p.requires_grad:
                self.handles.append(p.register_hook(lambda g, i=i: self._grad(i, g)))
        self.handles.append(self.optimizer.register_step_pre_hook(self._before_step))
        if self.shared is not None:
            self.handles.append(self.shared.watch_gradients(self._reduced))
        self._torch = torch

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _forward(self, module: Any, args: Any, output: Any) -> None:
        if not self._torch.is_grad_enabled():
            return  # an evaluation pass: it changes no update
        cast = _autocast(self._torch)
        if cast is not None:
            raise ValueError(
                f"TraceRecorder: the model's forward pass ran under torch.autocast ({cast}): mixed precision "
                "rounds the layers' arithmetic in another dtype, so the update's bits are not the ones the "
                "verifier replays in the model's own dtype; train without autocast (or convert the model to "
                "the dtype, e.g. model.to(torch.bfloat16), which the trace records)"
            )
        if not args or not isinstance(args[0], self._torch.Tensor) or not isinstance(output, self._torch.Tensor):
            raise ValueError(
                "TraceRecorder: the model must take the batch's inputs as one tensor and return one tensor "
                "(what the verifier feeds it and differentiates the loss against)"
            )
        if output.requires_grad:
            # kept only when a loss's gradient reaches this output: a pass that is not trained on
            # (an evaluation with gradients on) leaves the step's record alone
            inputs, value = args[0], output.detach()  # not output itself: its hook would hold it in a cycle
            output.register_hook(lambda g: self._output_grad(inputs, value, g))

    def _output_grad(self, inputs: Any, output: Any, g: Any) -> None:
        self.passes.append((inputs, output, g.detach().clone()))

    def _grad(self, i: int, g: Any) -> None:
        n = self.fired.get(i, 0) + 1
        self.fired[i] = n
        if n > self.accumulate:
            raise ValueError(
                f"TraceRecorder: backward pass {n} before optimizer.step(), {self.accumulate} declared (gradient "
                "accumulation over micro-batches is replayed when declared: accumulate= the number of "
                "micro-batches, each batch split as numpy.array_split(batch, accumulate))"
            )
        old = self.params[i].grad
        if n == 1 and old is not None and bool(old.any()):
            raise ValueError(
                "TraceRecorder: gradients left from an earlier step are being added to (call "
                "optimizer.zero_grad() before each backward pass)"
            )
        # torch adds each pass's gradient onto the one before, as here: the same bits
        self.grads[i] = g.detach().clone() if n == 1 else self.grads[i] + g.detach()

    def _reduced(self, param: Any, g: Any) -> None:
        for i, p in enumerate(self.params):
            if p is param and i in self.grads:
                # what param.grad gets: the pass's gradient (-0.0 where the reduction waited) plus it
                self.grads[i] = self.grads[i] + g.reshape(self.grads[i].shape)
                return

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.stepped += 1
        if self.stepped > 1:
            raise ValueError("TraceRecorder: optimizer.step() ran twice without rec.step() between them")
        if len(optimizer.param_groups) != len(self.hyper):
            raise ValueError("TraceRecorder: a parameter group was added to the optimizer after recording began")
        rates = []
        for group, hyper in zip(optimizer.param_groups, self.hyper):
            for k, v in hyper.items():
                if _value(group[k]) != v:
                    raise ValueError(
                        f"TraceRecorder: the optimizer's {k} changed from {v} to {_value(group[k])} (a scheduler "
                        "cycling momentum, such as OneCycleLR(cycle_momentum=True), or a hand edit); the trace "
                        "records the learning rate of each step, not other hyperparameters"
                    )
            if isinstance(group["lr"], self._torch.Tensor):
                raise ValueError("TraceRecorder: a tensor learning rate cannot be replayed; use a float")
            rates.append(float(group["lr"]))
        self.lr = rates
        self._check_grads()

    def _check_grads(self) -> None:
        expected = [self.grads.get(i) for i in range(len(self.params))]
        if self.clip is not None:  # clipped as the verifier will, on copies
            expected = [None if g is None else g.clone() for g in expected]
            self.clip_fn([g for g in expected if g is not None])
        for i, p in enumerate(self.params):
            have, want = p.grad, expected[i]
            if want is None:
                if have is not None and bool(have.any()):
                    raise ValueError(
                        f"TraceRecorder: parameter {i} has a gradient that no backward pass of this step made"
                    )
                continue
            if have is None or not self._torch.equal(have, want):
                what = ", clipped as declared" if self.clip is not None else ""
                raise ValueError(
                    f"TraceRecorder: parameter {i}'s gradient at optimizer.step() differs from the one this step's "
                    f"backward pass computed{what}: gradient clipping, noise or any edit between backward() and "
                    "step() must be declared (clip_grad_norm= or clip_grad_value=; on a reproducible model, "
                    "clip with exactforge.nn.clip_grad_norm_) or it cannot be replayed"
                )

    # -- closing a step ---------------------------------------------------------------------
    def take(self, idx: np.ndarray, step: int) -> List[float]:
        """Checks the step ``step`` just taken on the examples ``idx`` and returns its learning
        rate in each parameter group."""
        torch = self._torch
        try:
            if self.stepped == 0:
                raise ValueError("TraceRecorder: rec.step() before optimizer.step() ran for this step")
            self._check_modes()
            parts = np.array_split(np.asarray(idx, dtype=np.int64), self.accumulate)
            if len(self.passes) != self.accumulate:
                raise ValueError(
                    f"TraceRecorder: {len(self.passes)} backward pass(es) of the model reached the loss in this step, "
                    f"{self.accumulate} declared (accumulate=)"
                )
            for part, (inputs, output, output_grad) in zip(parts, self.passes):
                self._check_inputs(inputs, part, step)
                self._check_loss(output, output_grad, torch.from_numpy(part))
            assert self.lr is not None  # set by the optimizer's pre-step hook
            return self.lr
        finally:
            self._reset()

    def _check_inputs(self, inputs: Any, part: np.ndarray, step: int) -> None:
        torch = self._torch
        b = torch.from_numpy(part)
        want = self.X[b] if self.augment is None else self.augment(self.X[b], step=step, examples=part)
        have = inputs.detach().to("cpu")
        if have.shape != want.shape and have.numel() == want.numel() and self._flattens_first():
            have = have.reshape(want.shape)  # a model that flattens its input sees the same values
        if have.shape != want.shape or have.dtype != want.dtype or not torch.equal(have, want):
            raise ValueError(
                "TraceRecorder: the model's input is not the data set's examples of this step "
                f"(shape {list(have.shape)}, expected {list(want.shape)}: random augmentation, normalisation, "
                "another batch, or another input_shape=); the verifier feeds the recorded examples as they are, "
                "or augmented by a declared augment= (exactforge.nn.KeyedAugment, applied by rec.augment): "
                "torchvision's random transforms draw from torch's RNG, which a trace does not hold"
            )

    def _flattens_first(self) -> bool:
        """Whether the model's first layer flattens each example (then the shape it was fed in
        does not matter, only the values)."""
        torch = self._torch
        first = next((m for m in self.model.modules() if not list(m.children())), None)
        return isinstance(first, torch.nn.Flatten) and first.start_dim == 1 and first.end_dim == -1

    def _check_modes(self) -> None:
        now = [n for n, m in self.model.named_modules() if not m.training]
        if now != self.eval_modules:
            raise ValueError(
                "TraceRecorder: the modules in eval mode are not the ones recorded when the trace began "
                f"({now[:4]} vs {self.eval_modules[:4]}); switch back to the same modes before each step"
            )

    def _check_loss(self, output: Any, output_grad: Any, b: Any) -> None:
        torch = self._torch
        out = output.to("cpu").requires_grad_(True)  # output is the forward's value, detached
        loss = self.loss(out, self.y[b])
        (grad,) = torch.autograd.grad(loss if self.accumulate == 1 else loss / self.accumulate, out)
        if not torch.equal(grad, output_grad.to("cpu")):
            scaled = f" divided by {self.accumulate} (loss / accumulate)" if self.accumulate > 1 else ""
            raise ValueError(
                f"TraceRecorder: the loss's gradient at the model's output is not the recorded loss's{scaled} "
                "(loss_fn= names the loss the loop uses; on a reproducible model use exactforge.nn.cross_entropy "
                "or mse_loss, whose gradients do not depend on the batch order)"
            )


def _autocast(torch: Any) -> Optional[str]:
    """The device type and dtype of an enabled ``torch.autocast`` region, or None."""
    for device in ("cpu", "cuda", "xpu", "mps", "hpu"):
        try:
            on = torch.is_autocast_enabled(device)
        except (TypeError, RuntimeError):  # a torch without the device argument, or an unknown device
            on = torch.is_autocast_enabled() if device == "cuda" else False
        if on:
            get = getattr(torch, "get_autocast_dtype", None)
            dtype = get(device) if get is not None else None
            return f"{device}{', ' + str(dtype).replace('torch.', '') if dtype is not None else ''}"
    return None


def clip_entry(clip_grad_norm: Optional[float], clip_grad_value: Optional[float]) -> Optional[Dict[str, float]]:
    """The manifest's ``clip_grad`` for a recorder's declared clipping (at most one kind)."""
    import math

    given = {k: v for k, v in (("norm", clip_grad_norm), ("value", clip_grad_value)) if v is not None}
    if len(given) > 1:
        raise ValueError("clip_grad_norm, clip_grad_value: declare one kind of clipping")
    for k, v in given.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"clip_grad_{k}: expected a positive number, got {v!r}")
    return {k: float(v) for k, v in given.items()} or None


def check_reproducible_loop(model: Any, loss_fn: Any) -> None:
    """What a reproducible model cannot be recorded with, refused before anything is written:
    torch's own losses (their gradients follow the batch order; exactforge.nn's do not)."""
    import torch.nn as tnn
    import torch.nn.functional as F

    if (
        loss_fn in (F.cross_entropy, F.mse_loss)
        or isinstance(loss_fn, (tnn.CrossEntropyLoss, tnn.MSELoss))
        or (getattr(loss_fn, "func", None) in (F.cross_entropy, F.mse_loss))
    ):
        raise ValueError(
            "loss_fn: on a reproducible model the loop must use exactforge.nn.cross_entropy (label_smoothing= "
            "as torch's) or exactforge.nn.mse_loss: torch's loss sums the batch in its own order"
        )
