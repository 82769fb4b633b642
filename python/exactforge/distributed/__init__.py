"""Data-parallel reductions with the bits of one process: a batch split among processes is
reduced as exact integer levels with scales agreed by all of them, the levels are added by an
all-reduce (integer sums do not depend on the split or on the order the processes add them), and
the sum is rounded once (``exact_matmul``, ``exact_sum``; ``reduce_all`` does a list of
reductions in two collectives). ``SharedBatch`` makes the reproducible
layers of ``exactforge.nn`` reduce that way over a global batch split among processes, and
``exact_allreduce_hook`` lets ``DistributedDataParallel`` train such a model."""

from __future__ import annotations

from .allreduce import Reduction, ReductionBytes, exact_matmul, exact_sum, reduce_all
from .hook import exact_allreduce_hook
from .shared import SharedBatch

__all__ = [
    "exact_matmul",
    "exact_sum",
    "reduce_all",
    "Reduction",
    "ReductionBytes",
    "SharedBatch",
    "exact_allreduce_hook",
]
