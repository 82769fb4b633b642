"""Data-parallel training that verifies on one machine: run with

    python -m torch.distributed.run --nproc-per-node 2 -m exactforge.studies.data_parallel

Each process trains on its share of every batch of the embedded digits data, under
DistributedDataParallel with Gloo; at the end rank 0 checks that the model equals, bit for bit,
the same training done by one process on the whole batches."""

from __future__ import annotations

import copy
import gc

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import exactforge.nn as xnn
from exactforge.data import load_dataset
from exactforge.distributed import SharedBatch, exact_allreduce_hook

__all__ = ["main"]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def train(model, batches, X, y, mode, part=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for idx in batches:
        mine = idx if part is None else idx[part]
        opt.zero_grad()
        xnn.cross_entropy(model(X[mine]), y[mine], mode=mode).backward()
        opt.step()


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = load_dataset("digits")
    X, y = torch.from_numpy(data.X).reshape(len(data), -1), torch.from_numpy(data.y)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randperm(len(data), generator=g)[:60] for _ in range(5)]
    part = slice(rank * 60 // world, (rank + 1) * 60 // world)  # this process's share of a batch

    shared = SharedBatch()
    model = DistributedDataParallel(xnn.reproducible(net(), mode=shared))
    model.register_comm_hook(shared, exact_allreduce_hook)
    train(model, batches, X, y, shared, part)

    same = True
    if rank == 0:
        alone = xnn.reproducible(copy.deepcopy(net()))
        train(alone, batches, X, y, "exact")
        same = all(torch.equal(a, b) for a, b in zip(model.module.state_dict().values(), alone.state_dict().values()))
        print(f"{world} processes and one process: {'the same bits' if same else 'DIFFERENT'}")
    # every process finishes, and DDP's reducer goes before the process group it uses: a reducer
    # that outlives the group aborts its process at exit
    dist.barrier()
    del model
    gc.collect()
    dist.destroy_process_group()
    if rank == 0 and not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
