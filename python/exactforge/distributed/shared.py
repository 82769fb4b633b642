"""A batch split among processes as a mode of the reproducible layers."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.hooks import RemovableHandle

import exactforge.reduce as R

from .allreduce import (
    Agreement,
    LevelSum,
    Reduction,
    ReductionBytes,
    _numpy,
    _timed,
    exact_matmul,
    exact_sum,
    reduce_all,
)

__all__ = ["SharedBatch"]


@dataclass
class _Deferred:
    """A parameter's gradient reduction waiting for the end of the backward pass (or for the
    DDP bucket that holds the parameter)."""

    param: torch.Tensor
    reduction: Reduction
    finish: Optional[Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class _Layer:
    """The reductions one layer's backward deferred (an autograd node), with the collectives
    that reduce them once launched (shared by every layer they reduce: at the end, every layer
    waiting goes in one agreement and one level sum; with overlap, a layer's agreement goes when
    the next layer defers and its levels one layer later)."""

    node: Any
    task: int  # the backward pass (autograd's graph task)
    entries: List[_Deferred] = field(default_factory=list)
    agreement: Optional[Agreement] = None
    levels: Optional[LevelSum] = None


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

    The parameters' gradients are not needed until the backward pass ends, so they do not hold
    it up (``defer_gradients=True``): each layer leaves an additive identity (-0.0) where its
    gradient goes, and the reductions wait. At the end of the backward pass (or in
    ``exact_allreduce_hook``, for each DistributedDataParallel bucket) they are done together,
    in two collectives for all of them, and added into ``param.grad``. A collective the
    backward pass stops at costs the wait for the slowest process as well as its own time, and
    two per layer would hold up the backward pass at every layer (``docs/benchmarks/distributed.md``
    measures both).
    ``torch.autograd.grad`` (which does not write ``param.grad``) needs
    ``defer_gradients=False``: every reduction at once, as the layer asks for it. Where the
    default group is NCCL's, pass a Gloo group of the same processes: the reductions are
    collectives on CPU arrays.

    ``overlap=True`` launches each layer's collectives while the backward pass goes on instead
    (the scales when the next layer's gradients are asked for, the levels one layer later),
    waiting for them at the end: for machines whose cores can run Gloo's threads beside the
    computation; where the processes already fill every core, the threads compete with it
    (``docs/benchmarks/distributed.md`` reports both).

    ``name`` is ``"exact"``: what a trace records, since the bits are the exact mode's.
    ``traffic`` accumulates the bytes this process sent and its time in the collectives (calls,
    and waits for those launched in the background), for measuring."""

    name = "exact"

    def __init__(self, group: Optional[Any] = None, *, defer_gradients: bool = True, overlap: bool = False) -> None:
        self.traffic = ReductionBytes()
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "SharedBatch: torch.distributed has no process group; call "
                "torch.distributed.init_process_group (e.g. backend='gloo') first"
            )
        backend = str(dist.get_backend(group)).lower()
        if "nccl" in backend and "gloo" not in backend and "mpi" not in backend:
            raise ValueError(
                f"group: its backend is {backend!r}, which carries CUDA tensors only, and the exact reductions "
                "are collectives on CPU arrays; pass a Gloo group of the same processes: "
                "SharedBatch(torch.distributed.new_group(backend='gloo'))"
            )
        self.group = group
        self.defer_gradients = bool(defer_gradients)
        self.overlap = bool(overlap)
        self._layers: List[_Layer] = []  # deferred, in the order their layers asked
        # reduced, not yet handed over: (backward pass, id(param)) -> (param, gradient)
        self._reduced: dict = {}
        self._awaited: set = set()  # backward passes whose end will hand the gradients over
        self._listeners: OrderedDict = OrderedDict()  # weakly referable, for RemovableHandle
        self._capacity: dict = {}  # the most rows a process has gathered, per kind of gather

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
        the class. ``a`` may be a function that makes it."""
        param = self._deferrable(grad_of)
        if param is None:
            out = exact_matmul(_made(a), b, self.group, stats=self.traffic)
            return finish(out) if finish is not None else out
        assert grad_of is not None
        return self._defer(param, grad_of, Reduction("matmul", _made(a), b), finish)

    def sum(self, x: torch.Tensor, *, grad_of: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The sum over axis 0 of ``x`` and every other process's rows (``grad_of``: as in
        ``matmul``)."""
        param = self._deferrable(grad_of)
        if param is None:
            return exact_sum(x, self.group, stats=self.traffic)
        assert grad_of is not None
        return self._defer(param, grad_of, Reduction("sum", x), None)

    def rows(self, k: int) -> int:
        """k summed over the processes: the global count of examples (or terms)."""
        t = torch.tensor([int(k)], dtype=torch.int64)
        _timed(self.traffic, dist.all_reduce, t, op=dist.ReduceOp.SUM, group=self.group)
        self.traffic.lengths += 8
        return int(t.item())

    def total(self, x: torch.Tensor) -> tuple:
        """The exact sum over axis 0 of ``x`` and every other process's rows, and how many rows
        that is: for a loss's few per-example values, whose rows are gathered (one collective,
        where a reduction takes two and the count a third) and summed here, in the exact mode,
        whose sum does not depend on the order. Returns (sum, rows)."""
        xn = _numpy(x, "x")
        if xn.ndim != 2:
            raise ValueError(f"x: expected a 2-D (rows, columns) tensor, got shape {xn.shape}")
        every = np.concatenate(self.gather(xn, "loss"))
        if len(every) < 1:
            raise ValueError("the reduced axis is empty on every process")
        return torch.from_numpy(np.asarray(R.sum(every, axis=0, mode="exact"))), len(every)

    def token_sums(self, rows: torch.Tensor, tokens: np.ndarray, vocab: int) -> torch.Tensor:
        """An embedding table's gradient: for each token, the exact sum of the rows (k x D) of
        every position, on every process, that holds it (``tokens``: k ids below ``vocab``); zero
        for a token no process holds. Which tokens a process holds differs, so their union is
        gathered first; then one reduction per token (a process without it adds no rows), all in
        one agreement and one level sum: the bits of one process's per-token exact sums."""
        rn = _numpy(rows, "rows")
        ids = np.asarray(tokens, dtype=np.int64)
        if rn.ndim != 2 or ids.shape != (rn.shape[0],):
            raise ValueError(f"rows, tokens: expected k x D rows and k ids, got {rn.shape} and {ids.shape}")
        mine = np.unique(ids)
        union = np.unique(np.concatenate(self.gather(mine.reshape(-1, 1), "tokens"))).astype(np.int64)
        if len(union) and (union[0] < 0 or union[-1] >= vocab):
            raise ValueError(f"tokens: expected ids in [0, {vocab}), got {union[0]}..{union[-1]}")
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        lo = np.searchsorted(sorted_ids, union, side="left")
        hi = np.searchsorted(sorted_ids, union, side="right")
        parts = [Reduction("sum", np.ascontiguousarray(rn[order[a:b]])) for a, b in zip(lo, hi)]
        out = torch.zeros((vocab, rn.shape[1]), dtype=rows.dtype)
        if parts:
            sums = reduce_all(parts, self.group, stats=self.traffic)
            out[torch.from_numpy(union)] = torch.from_numpy(np.stack(sums))
        return out

    def gather(self, xn: np.ndarray, key: str) -> list:
        """Every process's rows of a small k x n array (k may differ, n and the dtype may not),
        in rank order: one all-gather of each process's count and its first rows up to a
        capacity; a process with more sends them in a second, and the capacity (per ``key``, a
        name for the kind of data) grows for the next call."""
        k, n = xn.shape
        world = dist.get_world_size(self.group)
        cap = self._capacity.get(key, 0)
        first = np.zeros(8 + cap * n * xn.itemsize, dtype=np.uint8)
        first[:8] = np.array([k], dtype=np.int64).view(np.uint8)
        mine = np.ascontiguousarray(xn[:cap]).view(np.uint8).reshape(-1)
        first[8 : 8 + mine.size] = mine
        parts = [torch.empty(first.size, dtype=torch.uint8) for _ in range(world)]
        _timed(self.traffic, dist.all_gather, parts, torch.from_numpy(first), group=self.group)
        self.traffic.lengths += 8
        self.traffic.gathered += first.size - 8
        counts = [int(p.numpy()[:8].view(np.int64)[0]) for p in parts]
        if max(counts) <= cap:
            return [p.numpy()[8:].view(xn.dtype).reshape(cap, n)[:c] for p, c in zip(parts, counts)]
        cap = self._capacity[key] = max(counts)
        full = np.zeros(cap * n * xn.itemsize, dtype=np.uint8)
        full[: xn.nbytes] = np.ascontiguousarray(xn).view(np.uint8).reshape(-1)
        parts = [torch.empty(full.size, dtype=torch.uint8) for _ in range(world)]
        _timed(self.traffic, dist.all_gather, parts, torch.from_numpy(full), group=self.group)
        self.traffic.gathered += full.size
        return [p.numpy().view(xn.dtype).reshape(cap, n)[:c] for p, c in zip(parts, counts)]

    # --- gradients that wait for the end of the backward pass ------------------------------
    def _deferrable(self, grad_of: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if grad_of is None or not self.defer_gradients:
            return None
        return _leaf_of(grad_of)

    def _defer(
        self, param: torch.Tensor, grad_of: torch.Tensor, reduction: Reduction, finish: Optional[Callable]
    ) -> torch.Tensor:
        task = torch._C._current_graph_task_id()
        if task not in self._awaited:
            # hand the gradients over as this backward pass ends, when every layer has asked
            torch.autograd.Variable._execution_engine.queue_callback(lambda: self._end_of_backward(task))
            self._awaited.add(task)
        node = torch._C._current_autograd_node()
        last = self._layers[-1] if self._layers else None
        if last is None or last.node is not node or last.task != task:
            if self.overlap:
                # A new layer: the last one's scales go now, and the levels of the ones before
                # it (whose scales went a layer ago, while this layer's backward computed).
                self._launch(levels_up_to=len(self._layers) - 1)
            last = _Layer(node, task)
            self._layers.append(last)
        last.entries.append(_Deferred(param, reduction, finish))
        # -0.0 + g == g for every g (+0.0, -0.0 and NaN payloads included): the placeholder
        # leaves whatever param.grad holds as it was, for the reduced gradient to be added to
        return torch.full(grad_of.shape, -0.0, dtype=torch.float64 if reduction.dtype == "float64" else torch.float32)

    def _launch(self, levels_up_to: int) -> None:
        """Launches the agreement of the layers that have none (together), and the levels of
        those of the first ``levels_up_to`` layers that have none (together). The same calls in
        the same order on every process: they are collectives."""
        fresh = [layer for layer in self._layers if layer.agreement is None]
        if fresh:
            agreement = Agreement([d.reduction for layer in fresh for d in layer.entries], self.group, self.traffic)
            for layer in fresh:
                layer.agreement = agreement
        # the agreements of those layers, in order, each once; every layer of them gets the levels
        agreements = list(
            dict.fromkeys(layer.agreement for layer in self._layers[:levels_up_to] if layer.levels is None)
        )
        if agreements:
            levels = LevelSum([a for a in agreements if a is not None])
            for layer in self._layers:
                if layer.agreement in agreements:
                    layer.levels = levels

    def _reduce_waiting(self) -> None:
        """Every layer waiting: its collectives finished and its gradients ready to hand over,
        a parameter's several gradients of one backward pass added first, in the order the layers
        produced them (as autograd adds a tied parameter's gradients before accumulating them)."""
        self._launch(levels_up_to=len(self._layers))
        layers, self._layers = self._layers, []
        entries = [(layer.task, d) for layer in layers for d in layer.entries]
        outs: list = []
        for levels in dict.fromkeys(layer.levels for layer in layers):  # each level sum once, in order
            assert levels is not None
            outs += levels.wait()
        for (task, d), r in zip(entries, outs):
            g = torch.from_numpy(np.asarray(r))
            if d.finish is not None:
                g = d.finish(g)
            key = (task, id(d.param))
            self._reduced[key] = (d.param, self._reduced[key][1] + g) if key in self._reduced else (d.param, g)

    def _hand_over(self, task: int, params: Optional[Iterable[torch.Tensor]]) -> list:
        self._reduce_waiting()
        ids = None if params is None else {id(p) for p in params}
        mine = [key for key in self._reduced if key[0] == task and (ids is None or key[1] in ids)]
        out = [self._reduced.pop(key) for key in mine]
        for p, g in out:
            for fn in list(self._listeners.values()):
                fn(p, g)
        return out

    def _end_of_backward(self, task: int) -> None:
        # (a pass that raised never gets here: what it left waiting is never handed over)
        self._awaited.discard(task)
        for param, grad in self._hand_over(task, None):
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
        """The reduced gradients of those of ``params`` whose reductions waited in this backward
        pass, as (parameter, gradient to add to what its gradient holds) pairs: what a DDP
        bucket's hook calls. Every reduction waiting is finished here (its collectives are in
        flight already); the other parameters' gradients are handed over by their own bucket or
        at the end of the backward pass."""
        return self._hand_over(torch._C._current_graph_task_id(), params)

    def __repr__(self) -> str:
        return f"SharedBatch(world_size={dist.get_world_size(self.group)}, defer_gradients={self.defer_gradients})"
