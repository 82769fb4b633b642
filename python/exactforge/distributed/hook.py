"""The DistributedDataParallel communication hook for models whose batch is a SharedBatch."""

# No postponed annotations here: DistributedDataParallel checks the hook's annotations as objects.
import torch
import torch.distributed as dist

from .shared import SharedBatch

__all__ = ["exact_allreduce_hook"]


def exact_allreduce_hook(state: SharedBatch, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A ``DistributedDataParallel`` communication hook for a model made reproducible with
    ``mode=SharedBatch(group)``::

        shared = SharedBatch()
        model = DistributedDataParallel(exactforge.nn.reproducible(net, mode=shared))
        model.register_comm_hook(shared, exact_allreduce_hook)

    DDP's own hook would all-reduce each process's rounded gradient and divide by the world
    size: a float sum whose grouping follows the world size and the buckets. Here the all-reduce
    has already happened where it can be exact: inside each layer's backward, over integer
    levels with scales agreed by every process (``SharedBatch``), so every process holds the
    one-process gradient of the whole batch. The hook hands DDP that gradient as it is."""
    if not isinstance(state, SharedBatch):
        raise TypeError(
            "state: expected the SharedBatch the model was made reproducible with "
            f"(model.register_comm_hook(shared, exact_allreduce_hook)), got {type(state).__name__}"
        )
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut
