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
    size: a float sum whose grouping follows the world size and the buckets. Here the bucket's
    parameters' gradient reductions (waiting in the SharedBatch since their layers' backward)
    are done together, exactly: scales agreed by every process, integer levels all-reduced,
    rounded once, so every process holds the one-process gradient of the whole batch; each is
    added to what the bucket holds for its parameter (what ``param.grad`` held, plus the -0.0
    the layer left). Gradients reduced already (BatchNorm's, which its input gradient needs at
    once; every gradient with ``defer_gradients=False``) pass as they are."""
    if not isinstance(state, SharedBatch):
        raise TypeError(
            "state: expected the SharedBatch the model was made reproducible with "
            f"(model.register_comm_hook(shared, exact_allreduce_hook)), got {type(state).__name__}"
        )
    buffer = bucket.buffer()
    params = bucket.parameters()
    reduced = state.take_gradients(params)
    if reduced:
        offsets, off = {}, 0
        for p in params:
            offsets[id(p)] = off
            off += p.numel()
        for p, g in reduced:
            o = offsets[id(p)]
            buffer[o : o + p.numel()].add_(g.reshape(-1))
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(buffer)
    return fut
