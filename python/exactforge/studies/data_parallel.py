"""Data-parallel training that verifies on one machine: run with torchrun,

    python -m torch.distributed.run --nproc-per-node 2 -m exactforge.studies.data_parallel

or with Ray Train's TorchTrainer (the extra exactforge[ray]),

    python -m exactforge.studies.data_parallel --ray --workers 2

Each process trains on its share of every batch of the embedded digits data, under
DistributedDataParallel with Gloo; at the end rank 0 checks that the model equals, bit for bit,
the same training done by one process on the whole batches."""

from __future__ import annotations

import argparse
import copy
import gc
import sys
from typing import List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import exactforge.nn as xnn
from exactforge.data import load_dataset
from exactforge.distributed import SharedBatch, exact_allreduce_hook

__all__ = ["main", "train_worker", "run_ray"]


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


def train_worker() -> bool:
    """One process's part, in a process group that exists (torchrun's or Ray Train's): trains,
    and on rank 0 compares with one process's training. Returns whether the bits are the same
    (True on the other ranks)."""
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
        print(f"{world} processes and one process: {'the same bits' if same else 'DIFFERENT'}", flush=True)
    # every process finishes, and DDP's reducer goes before the process group it uses: a reducer
    # that outlives the group aborts its process at exit
    dist.barrier()
    del model
    gc.collect()
    return same


def _ray_worker(config: dict) -> None:
    # a worker that raises fails the run: how the verdict reaches the driver
    if not train_worker():
        raise RuntimeError("the data-parallel model differs from one process's")


def run_ray(workers: int) -> bool:
    """The same training by Ray Train's TorchTrainer on ``workers`` CPU workers (Gloo): Ray
    starts the processes and their process group."""
    try:
        from ray.train import ScalingConfig, TrainingFailedError
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as e:
        raise SystemExit(f"--ray: Ray Train is not installed ({e}); pip install 'exactforge[ray]'") from e
    trainer = TorchTrainer(
        _ray_worker,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False),
        torch_config=TorchConfig(backend="gloo"),
    )
    try:
        trainer.fit()
    except TrainingFailedError:
        return False
    return True


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m exactforge.studies.data_parallel", description=__doc__)
    ap.add_argument("--ray", action="store_true", help="run under Ray Train's TorchTrainer instead of torchrun")
    ap.add_argument("--workers", type=int, default=2, help="Ray Train workers (with --ray)")
    args = ap.parse_args(argv)
    if args.ray:
        if args.workers < 1:
            ap.error(f"--workers: expected at least 1, got {args.workers}")
        same = run_ray(args.workers)
        print(f"Ray Train, {args.workers} workers, and one process: {'the same bits' if same else 'DIFFERENT'}")
    else:
        dist.init_process_group("gloo")
        same = train_worker()
        rank = dist.get_rank()
        dist.destroy_process_group()
        if rank != 0:
            return
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
