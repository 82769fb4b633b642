"""TraceRecorder: the execution trace of a torch training loop the user writes, recorded as it
runs, and the checks of what it is given."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..data import Dataset, as_dataset, fingerprint
from ..models import native as M
from .writer import TraceWriter, environment

__all__ = ["TraceRecorder", "MAX_ACCUMULATE"]


MAX_ACCUMULATE = 1024


class _Follower:
    """The writer of a process other than rank 0 in a shared batch: it writes nothing and keeps
    the step count, so the processes agree on each step's number (dropout keys, the last step)."""

    def __init__(self, steps: Optional[int]) -> None:
        self.steps = steps
        self.next_step = 0
        self.finished = False
        self.last: Optional[int] = None

    def append(self, idx: Any, checkpoint: Any, *, final: bool = False, lr: Any = None) -> None:
        self.last = self.next_step
        self.next_step += 1
        self.finished = final

    def finish(self, checkpoint: Any = None) -> None:
        self.finished = True

    def close(self) -> None:
        pass


def _check_augment(augment: Any, input_shape: Sequence[int]) -> Any:
    from ..nn.augment import KeyedAugment

    if augment is None:
        return None
    if not isinstance(augment, KeyedAugment):
        raise ValueError(
            f"augment: expected an exactforge.nn.KeyedAugment, got {type(augment).__name__} (torchvision's random "
            "transforms draw from torch's RNG, which a trace does not hold)"
        )
    if len(input_shape) != 3:
        raise ValueError(f"augment: augmentation needs image inputs (channels, height, width), got {list(input_shape)}")
    if augment.rot90 and input_shape[1] != input_shape[2]:
        raise ValueError(f"augment: rot90 needs square images, got {list(input_shape[1:])}")
    return augment


def _device_of(model: Any) -> str:
    try:
        return str(next(model.parameters()).device)
    except (StopIteration, AttributeError):
        return "cpu"


def _check_recordable(model: Any, checkpoint_every: int, batch_size: Any, steps: Any) -> None:
    """Refuses a checkpoint interval, batch size or step count that is no positive integer, and
    a torch.compile'd module."""
    import torch

    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected a positive interval, got {checkpoint_every}")
    if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
        # torch.compile's wrapper: its state_dict names every tensor "_orig_mod.<name>", which
        # no verifier's instance of the architecture has, and its type is not the model's
        raise ValueError(
            f"model: a torch.compile'd module ({type(model).__name__}) cannot be recorded: its state_dict "
            "keys carry the prefix '_orig_mod.' and its class is the compiler's, so the trace would not "
            "load into the model the verifier builds; pass the uncompiled module to the recorder, "
            "TraceRecorder(out, model._orig_mod, ...) (the loop may keep calling the compiled one: they "
            "share parameters, and the trace records the original names)"
        )
    for name_, v in (("batch_size", batch_size), ("steps", steps)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name_}: expected a positive integer or None, got {v!r}")


def _check_dropout_seed(dropout_seed: Any, seed: Optional[int]) -> int:
    """The dropout keys' seed: given, else the run's seed, else 0."""
    if dropout_seed is None:
        dropout_seed = seed if seed is not None else 0
    if isinstance(dropout_seed, bool) or not isinstance(dropout_seed, int) or not 0 <= dropout_seed < 2**63:
        raise ValueError(f"dropout_seed: expected an integer in 0..2^63-1, got {dropout_seed!r}")
    return dropout_seed


def _input_shape(model: Any, ds: Dataset, input_shape: Optional[Sequence[int]]) -> List[int]:
    """How the loop feeds one example to the model: given, or the data set's image shape for a
    convolutional model, else flat. The verifier reshapes the data the same way."""
    import torch

    if input_shape is None:
        conv = any(isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)) for m in model.modules())
        input_shape = ds.shape if (conv and ds.shape) else (int(np.prod(ds.X.shape[1:])),)
    shape = [int(v) for v in input_shape]
    if int(np.prod(shape)) != int(np.prod(ds.X.shape[1:])):
        raise ValueError(
            f"input_shape: {shape} does not hold the {int(np.prod(ds.X.shape[1:]))} features of an example"
        )
    return shape


class TraceRecorder:
    """Records the execution trace of a torch training loop the user writes::

        with TraceRecorder(out, model, optimizer, dataset, checkpoint_every=k) as rec:
            for idx in batches:                      # dataset indices of the batch
                loss = loss_fn(model(X[idx]), y[idx])
                optimizer.zero_grad(); loss.backward(); optimizer.step()
                rec.step(idx)                        # after the optimizer's step

    ``dataset`` is an exactforge ``Dataset``, a pair (X, y) of arrays or tensors, or a torch
    ``TensorDataset``: its exact bytes are fingerprinted into the manifest. The manifest is
    written (and hashed) on entering the block, so everything it should say (``batch_size``,
    ``seed``, and ``extra``: an object of the caller's own fields, stored under the manifest's
    ``extra`` and reported as declared, not verified) is given here. ``initial="seeded"``
    declares theta_0 a function of ``seed`` and ``model_spec`` that the verifier recomputes
    (default ``"given"``). Checkpoints are
    the model's ``state_dict`` (safetensors). theta_0 is taken on entering the block, and a
    final checkpoint is written on leaving it.

    ``loss_fn`` is the loss the loop uses (default: plain cross-entropy): torch's or
    exactforge.nn's cross-entropy (label smoothing included) or MSE against one-hot labels are
    written into the manifest and replayed; any other callable is recorded as custom, and the
    verifier passes it as ``loss_fn``. A model made reproducible (``exactforge.nn.reproducible``)
    is recorded as such and replayed through the same layers, under any batch order.

    A reproducible model's optimizer steps through exactforge's portable update while the block
    runs (``exactforge.nn.reproducible_optimizer``; the manifest's ``arithmetic``), so the trace
    verifies at epsilon 0 on every CPU, not only on one like the recording machine. After the
    block the optimizer steps through torch's kernels again, unless the loop installed the
    portable update itself (then it stays).

    The optimizer's state goes into every checkpoint (``exactforge.optim``: SGD with momentum,
    weight decay, nesterov; Adam; AdamW; RMSprop), so the verifier replays it too. Dropout: every
    nn.Dropout of the model is keyed (``exactforge.nn.keyed_dropout``): its masks are a hash of
    (``dropout_seed``, step, layer, dataset index), so a loop whose model has dropout in training
    mode calls ``rec.begin(idx)`` before each forward pass, and the verifier recomputes the same
    masks, under any batch order on the reproducible path. Which modules were in eval mode is
    recorded too.

    The loop is watched while it runs (``exactforge.trace.watch.LoopWatch``): every input to an
    update is either recorded or refused at the step it appears, with the reason. ``scheduler``:
    the LR scheduler driving ``optimizer`` (its state is recorded; each step's rate goes into
    the record where it differs from the manifest's, and the verifier checks the rates against
    the scheduler). ``clip_grad_norm`` / ``clip_grad_value``: the clipping the loop applies
    between ``backward()`` and ``optimizer.step()``. ``augment``: an
    ``exactforge.nn.KeyedAugment`` the loop applies with ``rec.augment(inputs, idx)``.
    ``accumulate``: micro-batches per step (the batch split as ``numpy.array_split``, each
    micro-batch's loss divided by ``accumulate``). Parameter groups and the optimizer options
    amsgrad, maximize and foreach are recorded with the optimizer. Refused: other optimizers,
    fused ones, dropout types whose masks cannot be keyed, gradients changed or accumulated
    without a declaration, torch's random transforms, hyperparameters other than the learning
    rate changed mid-run, forward passes under ``torch.autocast``, and a ``torch.compile``'d module
    (pass its ``_orig_mod``, the module it compiles, to the recorder).
    """

    def __init__(
        self,
        directory: str,
        model: Any,
        optimizer: Any,
        dataset: Any,
        *,
        checkpoint_every: int = 1,
        seed: Optional[int] = None,
        batch_size: Optional[int] = None,
        steps: Optional[int] = None,
        model_spec: Optional[M.ModelSpec] = None,
        data_name: Optional[str] = None,
        data_path: Optional[str] = None,
        extra: Optional[Mapping[str, Any]] = None,
        loss_fn: Any = None,
        input_shape: Optional[Sequence[int]] = None,
        zoo: Optional[str] = None,
        dropout_seed: Optional[int] = None,
        initial: str = "given",
        scheduler: Any = None,
        clip_grad_norm: Optional[float] = None,
        clip_grad_value: Optional[float] = None,
        augment: Any = None,
        accumulate: int = 1,
    ) -> None:
        from .. import nn as xnn
        from ..models import optim as O
        from ..nn.losses import spec_of
        from . import watch as W

        _check_recordable(model, checkpoint_every, batch_size, steps)
        self.directory = directory
        self.model = model
        self.optimizer = optimizer
        self.checkpoint_every = checkpoint_every
        self.batch_size = batch_size
        self.steps = steps
        ds = as_dataset(dataset)
        self._num_examples = int(ds.X.shape[0])
        xnn.keyed_dropout(model)  # refuses dropout types whose masks cannot be keyed
        self._dropout_seed = _check_dropout_seed(dropout_seed, seed)
        self._begun: Optional[np.ndarray] = None
        self._opt_spec = O.spec_of(optimizer, model)
        self._params = list(model.parameters())
        self._steps = 0
        loss = spec_of(loss_fn)
        clip = W.clip_entry(clip_grad_norm, clip_grad_value)
        self._join_shared_batch()
        if xnn.mode_of(model) is not None:
            W.check_reproducible_loop(model, loss_fn)
        input_shape = _input_shape(model, ds, input_shape)
        self.manifest = self._base_manifest(ds, model_spec, zoo, data_name, data_path, seed, initial, loss, input_shape)
        self._declare(extra, clip, scheduler, accumulate, augment, input_shape)
        self._loss_fn, self._dataset = loss_fn, ds
        self._watch: Optional[W.LoopWatch] = None
        self._writer: Optional[Union[TraceWriter, _Follower]] = None
        self._since_ckpt = 0

    def _join_shared_batch(self) -> None:
        """A model whose batch is split among processes (exactforge.distributed.SharedBatch):
        every process runs a recorder, each step's global batch is gathered, and rank 0 writes."""
        from .. import nn as xnn

        self._shared = xnn.shared_batch_of(self.model)
        self._rank = 0
        if self._shared is not None:
            import torch.distributed as dist

            self._rank = dist.get_rank(self._shared.group)
            self._world = dist.get_world_size(self._shared.group)

    def _base_manifest(
        self,
        ds: Dataset,
        model_spec: Optional[M.ModelSpec],
        zoo: Optional[str],
        data_name: Optional[str],
        data_path: Optional[str],
        seed: Optional[int],
        initial: str,
        loss: Any,
        input_shape: List[int],
    ) -> Dict[str, Any]:
        """The manifest's fields that every torch trace has, in the schema's order."""
        from .. import nn as xnn

        model, X, y = self.model, ds.X, ds.y
        return {
            "engine": "torch",
            "model": model_spec.to_dict()
            if model_spec is not None
            else (
                {"zoo": zoo, "input_shape": list(ds.shape or (ds.dim,)), "num_classes": int(y.max()) + 1}
                if zoo
                else {"torch_class": type(model).__qualname__}
            ),
            "optimizer": self._opt_spec,
            "lr": self._opt_spec["lr"],
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "seed": seed,
            "initial": initial,
            "batch_size": self.batch_size,
            "steps": self.steps,
            "checkpoint_every": self.checkpoint_every,
            "reduction": xnn.mode_of(model),
            "loss": loss,
            "input_shape": input_shape,
            "dropout": {"seed": self._dropout_seed},
            # modules that behave differently in eval mode (dropout, batch norm): the verifier sets
            # the same modes on its instance of the model
            "eval_modules": [n for n, m in model.named_modules() if not m.training],
            "data": {
                "name": data_name or ds.name,
                "fingerprint": fingerprint(X, y),
                "num_examples": self._num_examples,
                "dim": int(np.prod(X.shape[1:])),
                "num_classes": int(y.max()) + 1 if y.size else 0,
                "path": data_path,
            },
            "environment": environment(_device_of(model)),
        }

    def _declare(
        self, extra: Any, clip: Any, scheduler: Any, accumulate: Any, augment: Any, input_shape: List[int]
    ) -> None:
        """The manifest's optional fields, each where the run has it: the world size of a shared
        batch, the arithmetic, the caller's extra fields, clipping, the scheduler, accumulation
        and augmentation (the last two checked here)."""
        from .. import nn as xnn
        from ..models.schedule import scheduler_entry

        if self._shared is not None:  # declared: the bits do not depend on it
            self.manifest["environment"]["world_size"] = self._world
        # a reproducible model's optimizer steps through the arithmetic its layers were given:
        # exactforge's portable one (the same bits on every CPU) unless the user chose torch's
        self._arithmetic = xnn.arithmetic_of(self.model)
        if self._arithmetic is not None:
            self.manifest["arithmetic"] = self._arithmetic
        self._portable: Any = None
        if extra:
            self.manifest["extra"] = dict(extra)  # the caller's own fields: declared, never verified
        if clip is not None:
            self.manifest["clip_grad"] = clip
        if scheduler is not None:
            self.manifest["scheduler"] = scheduler_entry(scheduler, self.optimizer)
        if isinstance(accumulate, bool) or not isinstance(accumulate, int) or not 1 <= accumulate <= MAX_ACCUMULATE:
            raise ValueError(f"accumulate: expected the number of micro-batches per step, 1..{MAX_ACCUMULATE}")
        if self.batch_size is not None and accumulate > self.batch_size:
            raise ValueError(f"accumulate: {accumulate} micro-batches cannot split batches of {self.batch_size}")
        self._accumulate = accumulate
        if accumulate > 1:
            self.manifest["accumulate"] = accumulate
        self._augment = _check_augment(augment, input_shape)
        if self._augment is not None:
            self.manifest["augment"] = self._augment.to_dict()

    def _state(self) -> Dict[str, np.ndarray]:
        from ..models.optim import state_tensors

        st = OrderedDict((k, v.detach().cpu().numpy()) for k, v in self.model.state_dict().items())
        st.update(state_tensors(self.optimizer, self._opt_spec, self._params, self._steps))
        return st

    def __enter__(self) -> "TraceRecorder":
        if self._rank != 0:  # another process of a shared batch: rank 0 writes the trace
            self._writer = _Follower(self.steps)
        else:
            self._writer = TraceWriter(self.directory, self.manifest, self._state(), background=True)
        self._watch = self._make_watch()
        self._watch.install()
        if self._arithmetic not in (None, "torch"):
            from ..nn.update import reproducible_optimizer

            # its hooks run after the watch's, which check the gradients torch's step would see
            installed = getattr(self.optimizer, "_exactforge_portable", None)
            if installed is not None:  # the loop's own: it stays after the block
                installed.reinstall()
            else:  # the recorder's: removed after the block, torch's update again
                self._portable = reproducible_optimizer(self.optimizer)
        return self

    def _make_watch(self) -> Any:
        """The hooks that check each step of the loop against what the trace records."""
        from ..models.step import clip_function, torch_data
        from ..nn import mode_of
        from ..nn.losses import replay
        from .watch import LoopWatch

        man = self.manifest
        X, y = torch_data(self._dataset, self.model, man["input_shape"])
        custom = self._loss_fn if man["loss"]["name"] == "custom" else None
        # a shared batch's loop computed the loss over every process's examples: so does the check
        loss = replay(man["loss"], self._shared if self._shared is not None else man["reduction"], custom)
        clip = clip_function(man.get("clip_grad"), mode_of(self.model) is not None)
        return LoopWatch(
            self.model,
            self.optimizer,
            self._opt_spec,
            X,
            y,
            loss,
            man.get("clip_grad"),
            clip,
            man["eval_modules"],
            augment=self._augment,
            accumulate=self._accumulate,
            shared=self._shared,
        )

    def _indices(self, batch_indices: Any, what: str, whole: bool = True) -> np.ndarray:
        if self._writer is None:
            raise RuntimeError(f"TraceRecorder.{what}: use the recorder inside a `with` block")
        idx = np.array(batch_indices.detach().cpu() if hasattr(batch_indices, "detach") else batch_indices)
        if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError("batch_indices: expected a non-empty 1-D sequence of dataset indices")
        if idx.min() < 0 or idx.max() >= self._num_examples:
            raise ValueError(f"batch_indices: indices must lie in 0..{self._num_examples - 1}")
        if whole and self._shared is None and self.batch_size is not None and idx.size != self.batch_size:
            raise ValueError(
                f"batch_indices: {idx.size} examples, but batch_size={self.batch_size} was declared "
                "(pass batch_size=None to the recorder for batches of varying size)"
            )
        if self._writer.finished:
            raise ValueError(f"{what}: the trace already holds the {self.steps} steps it declares")
        return idx

    def begin(self, batch_indices: Union[Sequence[int], np.ndarray, Any]) -> None:
        """Announces the next step's batch (dataset indices, in the order fed to the model)
        before its forward pass: keys the model's dropout masks to this step and these
        examples. Needed when the model has dropout in training mode; harmless otherwise. With
        ``accumulate=``, announce each micro-batch before its forward pass."""
        from ..nn import dropout_keys

        micro = self._accumulate > 1  # then each micro-batch is announced before its forward pass
        idx = self._indices(batch_indices, "begin", whole=not micro)
        assert self._writer is not None  # _indices refused a recorder outside its with block
        dropout_keys(self.model, seed=self._dropout_seed, step=self._writer.next_step, examples=idx)
        self._begun = np.concatenate([self._begun, idx]) if micro and self._begun is not None else idx

    def augment(self, inputs: Any, batch_indices: Union[Sequence[int], np.ndarray, Any]) -> Any:
        """The next step's inputs (``inputs``: the examples ``batch_indices``, in the recorded
        input shape) augmented with the declared ``augment=`` draws of this step and these
        examples: what the verifier feeds the model when it replays the step."""
        idx = self._indices(batch_indices, "augment", whole=False)
        assert self._writer is not None  # _indices refused a recorder outside its with block
        if self._augment is None:
            raise ValueError("augment: the recorder was given no augment= (exactforge.nn.KeyedAugment)")
        return self._augment(inputs, step=self._writer.next_step, examples=idx)

    def step(self, batch_indices: Union[Sequence[int], np.ndarray, Any]) -> None:
        """Records one optimizer step taken on the examples ``batch_indices`` (in order)."""
        from ..models.optim import group_rates
        from ..nn import keyed_layers

        idx = self._indices(batch_indices, "step")
        assert self._writer is not None  # _indices refused a recorder outside its with block
        mine = idx  # this process's examples (all of them on one process)
        if self._shared is not None:
            idx = self._global_batch(idx)
        begun, self._begun = self._begun, None
        for m in keyed_layers(self.model):  # the next forward pass needs the next step's keys
            setattr(m, "_exactforge_keys", None)
        if begun is not None and not np.array_equal(begun, mine):
            raise ValueError("batch_indices: step() got other examples than begin() announced for this step")
        assert self._watch is not None  # installed on entering the block
        rates = self._watch.take(mine, self._writer.next_step)  # refuses a step that the trace could not replay
        lr: Union[None, float, List[float]] = None
        if rates != group_rates(self._opt_spec):  # a schedule (or a hand edit) changed them
            lr = rates[0] if len(rates) == 1 else rates
        self._since_ckpt += 1
        self._steps += 1
        final = self.steps is not None and self._writer.next_step + 1 == self.steps
        due = self._since_ckpt == self.checkpoint_every or final
        ck = self._state() if due and self._rank == 0 else None
        if due:
            self._since_ckpt = 0
        self._writer.append(idx, ck, final=final, lr=lr)

    def _global_batch(self, idx: np.ndarray) -> np.ndarray:
        """The step's whole batch: every process's examples, in rank order (a collective)."""
        assert self._shared is not None
        whole = np.concatenate(self._shared.gather(idx.astype(np.int64).reshape(-1, 1), "batch")).reshape(-1)
        if self.batch_size is not None and whole.size != self.batch_size:
            raise ValueError(
                f"batch_indices: the processes' examples make a batch of {whole.size}, but batch_size="
                f"{self.batch_size} was declared"
            )
        return whole

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._watch is not None:
            self._watch.remove()
            self._watch = None
        if self._portable is not None:
            self._portable.remove()
            self._portable = None
        w = self._writer
        if w is None:
            return
        try:
            if exc_type is not None or w.finished or w.last is None:
                return  # on an error the trace keeps every complete step and stays incomplete
            if self.steps is None:  # the run ends here: the last step becomes final
                w.finish(self._state() if self._since_ckpt and self._rank == 0 else None)
        finally:
            if exc_type is None:
                w.close()  # every step committed, or the failed write raised
            else:
                try:
                    w.close()
                except Exception:  # noqa: BLE001
                    pass  # the loop's own exception is the one to see; the trace is a valid prefix
