"""A batch split among processes as a mode of the reproducible layers."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist

from .allreduce import ReductionBytes, exact_matmul, exact_sum

__all__ = ["SharedBatch"]


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

    ``name`` is ``"exact"``: what a trace records, since the bits are the exact mode's.
    ``traffic`` accumulates the bytes this process sent and its time in the collectives (of the
    weight-sized reductions: the gradients, the statistics), for measuring; ``rows`` is not
    counted (one integer)."""

    name = "exact"

    def __init__(self, group: Optional[Any] = None) -> None:
        self.traffic = ReductionBytes()
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "SharedBatch: torch.distributed has no process group; call "
                "torch.distributed.init_process_group (e.g. backend='gloo') first"
            )
        self.group = group

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a @ b`` over every process's part of the shared axis (a: m x k_p, b: k_p x n)."""
        return exact_matmul(a, b, self.group, stats=self.traffic)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over axis 0 of ``x`` and every other process's rows."""
        return exact_sum(x, self.group, stats=self.traffic)

    def rows(self, k: int) -> int:
        """k summed over the processes: the global count of examples (or terms)."""
        t = torch.tensor([int(k)], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return int(t.item())

    def __repr__(self) -> str:
        return f"SharedBatch(world_size={dist.get_world_size(self.group)})"
