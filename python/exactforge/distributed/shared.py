"""A batch split among processes as a mode of the reproducible layers."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.hooks import RemovableHandle

from .allreduce import Reduction, ReductionBytes, _numpy, exact_matmul, exact_sum, reduce_all

__all__ = ["SharedBatch"]


@dataclass
class _Deferred:
    """A parameter's gradient reduction waiting for the end of the backward pass (or for the
    DDP bucket that holds the parameter)."""

    param: torch.Tensor
    reduction: Callable[[], Reduction]  # made when reduced: its operands may be made then too
    finish: Optional[Callable[[torch.Tensor], torch.Tensor]]
    backward: int  # the backward pass (autograd's graph task) that asked for it


def _made(a: Any) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else a()


def _leaf_of(t: torch.Tensor) -> Optional[torch.Tensor]:
    """The parameter a layer's weight is (itself, or a reshaped view of it), or None where it is
    computed from parameters (its gradient then has to be there at once)."""
    if t.is_leaf and t.requires_grad:
        return t
    base = t._base
    if base is not None and base.is_leaf and base.requires_grad and base.numel() == t.numel() and t.is_contiguous():
        return base
    return None


class SharedBatch:
    """The exact mode over a global batch whose examples are split among the processes of a
    ``torch.distributed`` group: pass it as the mode, ``exactforge.nn.reproducible(model,
    mode=SharedBatch(group))``, and run the model on this process's examples.

    Every reduction over examples (weight and bias gradients, BatchNorm's statistics, the loss's
    mean) is then the exact reduction over the whole global batch, computed as
    ``exact_matmul``/``exact_sum`` compute it: each process gets the bits one process would get
    on the whole batch, for any world size and any split. The per-example arithmetic is each
    process's own and is per example anyway. Every process must run the same layers in the same
    order (the reductions are collectives), as data-parallel training does.

    The parameters' gradients are not needed until the backward pass ends, so they wait for it
    (``defer_gradients=True``): each layer leaves an additive identity (-0.0) where its
    gradient goes, and the gradients are reduced together, in two collectives, and added into
    ``param.grad`` as the backward pass ends, or earlier by ``exact_allreduce_hook`` for the
    parameters of each DistributedDataParallel bucket. Each collective is a point where every
    process waits for the slowest, so one per step instead of two per layer is most of the
    communication time saved. ``torch.autograd.grad`` (which does not write ``param.grad``)
    needs ``defer_gradients=False``: every reduction at once, as the layer asks for it.

    ``name`` is ``"exact"``: what a trace records, since the bits are the exact mode's.
    ``traffic`` accumulates the bytes this process sent and its time in the collectives, for
    measuring."""

    name = "exact"

    def __init__(self, group: Optional[Any] = None, *, defer_gradients: bool = True) -> None:
        self.traffic = ReductionBytes()
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "SharedBatch: torch.distributed has no process group; call "
                "torch.distributed.init_process_group (e.g. backend='gloo') first"
            )
        self.group = group
        self.defer_gradients = bool(defer_gradients)
        self._pending: list = []
        self._listeners: OrderedDict = OrderedDict()  # weakly referable, for RemovableHandle
        self._awaited: set = set()  # backward passes (autograd's graph tasks) whose end will reduce

    # --- reductions a layer needs now -------------------------------------------------------
    def matmul(
        self,
        a: Union[torch.Tensor, Callable[[], torch.Tensor]],
        b: torch.Tensor,
        *,
        grad_of: Optional[torch.Tensor] = None,
        finish: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> torch.Tensor:
        """``a @ b`` over every process's part of the shared axis (a: m x k_p, b: k_p x n).
        With ``grad_of`` (the parameter the product is the gradient of; ``finish`` maps the
        product to its shape), the reduction may wait for the end of the backward pass: see
        the class; ``a`` may then be a function that makes it, called when it is reduced)."""
        param = self._deferrable(grad_of)
        if param is None:
            out = exact_matmul(_made(a), b, self.group, stats=self.traffic)
            return finish(out) if finish is not None else out
        assert grad_of is not None
        return self._defer(
            param, grad_of, lambda: Reduction("matmul", _numpy(_made(a), "a"), _numpy(b, "b")), finish, b.dtype
        )

    def sum(self, x: torch.Tensor, *, grad_of: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The sum over axis 0 of ``x`` and every other process's rows (``grad_of``: as in
        ``matmul``)."""
        param = self._deferrable(grad_of)
        if param is None:
            return exact_sum(x, self.group, stats=self.traffic)
        assert grad_of is not None
        return self._defer(param, grad_of, lambda: Reduction("sum", _numpy(x, "x")), None, x.dtype)

    def rows(self, k: int) -> int:
        """k summed over the processes: the global count of examples (or terms)."""
        t = torch.tensor([int(k)], dtype=torch.int64)
        t0 = time.perf_counter()
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        self.traffic.seconds += time.perf_counter() - t0
        self.traffic.collectives += 1
        self.traffic.lengths += 8
        return int(t.item())

    # --- gradients that wait for the end of the backward pass ------------------------------
    def _deferrable(self, grad_of: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if grad_of is None or not self.defer_gradients:
            return None
        return _leaf_of(grad_of)

    def _defer(
        self,
        param: torch.Tensor,
        grad_of: torch.Tensor,
        reduction: Callable[[], Reduction],
        finish: Optional[Callable],
        dtype: torch.dtype,
    ) -> torch.Tensor:
        task = torch._C._current_graph_task_id()
        if task not in self._awaited:
            # reduce as this backward pass ends, when every layer has asked for its gradient
            torch.autograd.Variable._execution_engine.queue_callback(lambda: self._end_of_backward(task))
            self._awaited.add(task)
        self._pending.append(_Deferred(param, reduction, finish, task))
        # -0.0 + g == g for every g (+0.0, -0.0 and NaN payloads included): the placeholder
        # leaves whatever param.grad holds as it was, for the reduced gradient to be added to
        return torch.full(grad_of.shape, -0.0, dtype=dtype)

    def _end_of_backward(self, task: int) -> None:
        # (a pass that raised never gets here: what it left waiting is never reduced or used)
        self._awaited.discard(task)
        pending = [d for d in self._pending if d.backward == task]
        self._pending = [d for d in self._pending if d.backward != task]
        for param, grad in self._reduce(pending):
            if param.grad is None:
                raise RuntimeError(
                    "SharedBatch: a parameter's gradient was not accumulated into param.grad (was the "
                    "backward pass torch.autograd.grad?); use SharedBatch(defer_gradients=False) there"
                )
            param.grad.add_(grad.reshape(param.grad.shape))

    def watch_gradients(self, fn: Callable[[torch.Tensor, torch.Tensor], None]) -> RemovableHandle:
        """Calls ``fn(param, gradient)`` for each reduced gradient that waited, before it is added
        to ``param.grad`` (a recorder checking the gradients a step applies); ``.remove()`` on
        the returned handle stops it."""
        handle = RemovableHandle(self._listeners)
        self._listeners[handle.id] = fn
        return handle

    def take_gradients(self, params: Iterable[torch.Tensor]) -> list:
        """The reduced gradients of those of ``params`` whose reductions are waiting, as
        (parameter, gradient to add to what its gradient holds) pairs: what a DDP bucket's hook
        calls. They no longer wait for the end of the backward pass."""
        ids, task = {id(p) for p in params}, torch._C._current_graph_task_id()
        mine = [d for d in self._pending if id(d.param) in ids and d.backward == task]
        self._pending = [d for d in self._pending if not (id(d.param) in ids and d.backward == task)]
        return self._reduce(mine)

    def _reduce(self, pending: list) -> list:
        """Reduces the deferred reductions together; a parameter's several gradients of one
        backward pass are added first, in the order the layers produced them (as autograd adds a
        tied parameter's gradients before accumulating them)."""
        if not pending:
            return []
        results = reduce_all([d.reduction() for d in pending], self.group, stats=self.traffic)
        groups: dict = {}
        order: list = []
        for d, r in zip(pending, results):
            g = torch.from_numpy(np.asarray(r))
            if d.finish is not None:
                g = d.finish(g)
            key = (d.backward, id(d.param))
            if key in groups:
                groups[key] = (d.param, groups[key][1] + g)
            else:
                groups[key] = (d.param, g)
                order.append(key)
        out = [groups[k] for k in order]
        for param, g in out:
            for fn in list(self._listeners.values()):
                fn(param, g)
        return out

    def __repr__(self) -> str:
        return f"SharedBatch(world_size={dist.get_world_size(self.group)}, defer_gradients={self.defer_gradients})"
