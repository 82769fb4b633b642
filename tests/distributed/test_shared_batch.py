"""A reproducible model whose batch is split among processes (SharedBatch) computes the loss and
the gradients one process computes on the whole batch, bit for bit: convolution, BatchNorm in
training mode (its statistics and running averages), ReLU, pooling, Linear and LayerNorm, for
1, 2 and 3 Gloo processes and uneven splits, alone and under DistributedDataParallel."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

import exactforge.nn as xnn

from conftest import spawn_group

GLOBAL_BATCH = 11


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 12),
        nn.LayerNorm(12),
        nn.Tanh(),
        nn.Linear(12, 5),
    )


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, 2, 8, 8, generator=g), torch.randint(0, 5, (GLOBAL_BATCH,), generator=g)


def _step(model, x, y, mode):
    out = model(x)
    loss = xnn.cross_entropy(out, y, mode=mode)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(rank, world, out, ddp=False):
    from torch.nn.parallel import DistributedDataParallel

    from exactforge.distributed import SharedBatch, exact_allreduce_hook

    x, y = _data()
    cuts = [0, 2, 7, GLOBAL_BATCH][:world] + [GLOBAL_BATCH] if world > 1 else [0, GLOBAL_BATCH]
    cuts = sorted(set(cuts))[: world + 1]
    lo, hi = cuts[rank], cuts[rank + 1]
    # "overlap": the gradients' collectives launched during the backward pass, between
    # BatchNorm's, which its backward waits for
    shared = SharedBatch(overlap=ddp == "overlap")
    model = xnn.reproducible(_model(), mode=shared)
    assert xnn.mode_of(model) == "exact"
    net = model
    if ddp:
        net = DistributedDataParallel(model)
        net.register_comm_hook(shared, exact_allreduce_hook)
    loss, grads = _step(net, x[lo:hi], y[lo:hi], shared)
    grads = {k.removeprefix("module."): v for k, v in grads.items()}
    bn = model[1]
    res = {"loss": loss.numpy(), "rm": bn.running_mean.numpy(), "rv": bn.running_var.numpy()}
    res.update({f"g_{k}": v.numpy() for k, v in grads.items()})
    np.savez(os.path.join(out, f"rank{rank}.npz"), **res)


@pytest.mark.slow
@pytest.mark.parametrize("world, ddp", [(1, False), (2, False), (3, False), (2, True), (3, True), (3, "overlap")])
def test_a_shared_batch_gives_one_processs_gradients(world, ddp, tmp_path):
    """Directly, and through DistributedDataParallel with exact_allreduce_hook."""
    spawn_group(world, tmp_path, _worker, str(tmp_path), ddp)
    x, y = _data()
    model = xnn.reproducible(copy.deepcopy(_model()))
    loss, grads = _step(model, x, y, "exact")
    bn = model[1]
    ref = {"loss": loss.numpy(), "rm": bn.running_mean.numpy(), "rv": bn.running_var.numpy()}
    ref.update({f"g_{k}": v.numpy() for k, v in grads.items()})
    for rank in range(world):
        got = np.load(tmp_path / f"rank{rank}.npz")
        for k, v in ref.items():
            assert np.array_equal(got[k].view(np.uint32), v.view(np.uint32)), (rank, k)
