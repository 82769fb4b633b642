"""The gradients a SharedBatch reduces as the backward pass ends (defer_gradients=True, the
default) are the ones it reduces layer by layer, and one process's: with a parameter used twice
in one pass, gradients accumulated over two passes onto non-zero ones, under
DistributedDataParallel or not. The deferred reductions take two collectives in all."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

import exactforge.nn as xnn

from conftest import spawn_group

BATCH = 9


class _Tied(nn.Module):
    """A Linear applied twice (its weight and bias get two gradients in one pass)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(12, 12)
        self.norm = nn.LayerNorm(12)
        self.out = nn.Linear(12, 4)

    def forward(self, x):
        h = torch.tanh(self.conv(x)).flatten(1)
        return self.out(self.norm(self.fc(torch.tanh(self.fc(h)))))


def _data():
    g = torch.Generator().manual_seed(4)
    return torch.randn(2, BATCH, 1, 4, 4, generator=g), torch.randint(0, 4, (2, BATCH), generator=g)


def _start(model):
    g = torch.Generator().manual_seed(5)
    for p in model.parameters():  # gradients left from before: the two passes add onto them
        p.grad = torch.randn(p.shape, generator=g)


def _train(net, model, x, y, mode, parts):
    _start(model)
    for i in range(2):
        xnn.cross_entropy(net(x[i][parts]), y[i][parts], mode=mode).backward()
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters()}


def _worker(rank, world, out, ddp, defer):
    from torch.nn.parallel import DistributedDataParallel

    from exactforge.distributed import SharedBatch, exact_allreduce_hook

    x, y = _data()
    cuts = np.linspace(0, BATCH, world + 1).astype(int)
    # a group of its own, as a loop whose default group is NCCL's gives it (here DDP's is the default)
    group = dist.new_group(backend="gloo") if ddp is True else None
    shared = SharedBatch(group, defer_gradients=bool(defer), overlap=defer == "overlap")
    model = xnn.reproducible(_Tied(), mode=shared)
    net = model
    if ddp:
        # "buckets": a bucket per parameter or two, each reduced by the hook when it is ready
        caps = {"bucket_cap_mb": 1e-4, "static_graph": True} if ddp == "buckets" else {}
        net = DistributedDataParallel(model, **caps)
        net.register_comm_hook(shared, exact_allreduce_hook)
    before = shared.traffic.collectives
    grads = _train(net, model, x, y, shared, slice(cuts[rank], cuts[rank + 1]))
    grads["collectives"] = np.array(shared.traffic.collectives - before)
    np.savez(os.path.join(out, f"rank{rank}.npz"), **grads)


@pytest.mark.slow
@pytest.mark.parametrize(
    "world, ddp, defer",
    [(2, False, True), (2, True, True), (2, "buckets", True), (2, False, False), (3, True, True), (2, True, "overlap")],
)
def test_deferred_gradients_are_one_processs(world, ddp, defer, tmp_path):
    spawn_group(world, tmp_path, _worker, str(tmp_path), ddp, defer)
    x, y = _data()
    model = xnn.reproducible(_Tied())
    ref = _train(model, model, x, y, "exact", slice(None))
    for rank in range(world):
        got = np.load(tmp_path / f"rank{rank}.npz")
        for k, v in ref.items():
            assert np.array_equal(got[k].view(np.uint32), v.view(np.uint32)), (rank, k)
        # the loss: one all-gather of its per-example values and counts (two in the first pass,
        # which sets the capacity); the gradients: 2 collectives for all of them, or 2 for each of
        # the 10 reductions (the tied Linear runs twice) where they do not wait; with overlap, an
        # agreement for each of the 5 layers and 4 level sums (the last two layers share one)
        per_pass = {True: 2, False: 20, "overlap": 9}[defer]
        if ddp != "buckets":
            assert int(got["collectives"]) == 3 + 2 * per_pass, defer


def _grad_worker(rank, world, out):
    from exactforge.distributed import SharedBatch

    x, y = _data()
    shared = SharedBatch()
    model = xnn.reproducible(_Tied(), mode=shared)
    loss = xnn.cross_entropy(model(x[0]), y[0], mode=shared)
    try:
        torch.autograd.grad(loss, list(model.parameters()))
    except RuntimeError as e:
        with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
            f.write(str(e))


def _nccl_worker(rank, world, out):
    from unittest import mock

    from exactforge.distributed import SharedBatch

    with mock.patch.object(dist, "get_backend", return_value="nccl"):
        try:
            SharedBatch()
        except ValueError as e:
            with open(os.path.join(out, "nccl.txt"), "w") as f:
                f.write(str(e))


@pytest.mark.slow
def test_an_nccl_group_is_refused_with_the_fix(tmp_path):
    spawn_group(1, tmp_path, _nccl_worker, str(tmp_path))
    assert "new_group(backend='gloo')" in (tmp_path / "nccl.txt").read_text()


@pytest.mark.slow
def test_autograd_grad_is_refused_where_gradients_wait(tmp_path):
    spawn_group(1, tmp_path, _grad_worker, str(tmp_path))
    assert "defer_gradients=False" in (tmp_path / "rank0.txt").read_text()
