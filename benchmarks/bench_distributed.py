"""Data-parallel LeNet steps on 1, 2 and 3 Gloo processes (MNIST-5k, global batch 100 split
evenly): torch's DistributedDataParallel against the reproducible model with SharedBatch and
exact_allreduce_hook.

Checked first, in every process count: the reproducible gradients equal one process's on the whole
batch, bit for bit. Then per step: the bytes each process sends (torch: its float32 gradient in
DDP's all-reduce; exactforge: the packed integer levels, the scales' exponents and the lengths of
every shared reduction) and the time the step spends in collectives, measured the same way for
both: each collective's call to its return (torch: DDP's all-reduce of its bucket, made by a
comm hook that times the default all-reduce; exactforge: every collective of the step, the
loss's values and count in the forward pass included; also with ``SharedBatch(overlap=True)``,
whose collectives run during the backward pass and whose time is the calls and the waits), and
the whole step's time. Best of --repeats, the steps alternating; processes use 2 // world threads
each (2 cores).

    python benchmarks/bench_distributed.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GLOBAL_BATCH = 100


def _worker(rank: int, world: int, init: str, out: str, repeats: int) -> None:
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    import exactforge
    import exactforge.nn as xnn
    from exactforge.data import load_dataset
    from exactforge.distributed import SharedBatch, exact_allreduce_hook
    from exactforge.models.zoo import build_model

    threads = max(1, 2 // world)
    torch.set_num_threads(threads)
    exactforge.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    data = load_dataset("mnist-5k")
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:GLOBAL_BATCH].numpy()
    X = torch.from_numpy(data.X[idx]).reshape(GLOBAL_BATCH, *data.shape)
    y = torch.from_numpy(data.y[idx])
    lo, hi = rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world
    net = build_model("lenet", data.shape, data.num_classes, seed=0)

    shared = SharedBatch()
    rep = DistributedDataParallel(xnn.reproducible(copy.deepcopy(net), mode=shared))
    rep.register_comm_hook(shared, exact_allreduce_hook)
    # the same with each layer's collectives launched during the backward pass
    lapped = SharedBatch(overlap=True)
    rep_lapped = DistributedDataParallel(xnn.reproducible(copy.deepcopy(net), mode=lapped))
    rep_lapped.register_comm_hook(lapped, exact_allreduce_hook)
    plain = DistributedDataParallel(copy.deepcopy(net))
    torch_clock = [0.0]

    def timed_allreduce(clock: list, bucket):
        # DDP's default: the bucket summed over the processes and divided by their number
        buf = bucket.buffer()
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        clock[0] += time.perf_counter() - t0
        fut = torch.futures.Future()
        fut.set_result(buf.div_(world))
        return fut

    plain.register_comm_hook(torch_clock, timed_allreduce)

    def step(model, loss_fn) -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(X[lo:hi]), y[lo:hi]).backward()

    # the bits: this process's gradients against one process's on the whole batch (rank 0 checks)
    step(rep, lambda o, t: xnn.cross_entropy(o, t, mode=shared))
    step(rep_lapped, lambda o, t: xnn.cross_entropy(o, t, mode=lapped))
    grads = [p.grad.clone() for p in rep.parameters()] + [p.grad.clone() for p in rep_lapped.parameters()]
    same = True
    if rank == 0:
        alone = xnn.reproducible(copy.deepcopy(net))
        xnn.cross_entropy(alone(X), y).backward()
        same = all(torch.equal(a, p.grad) for a, p in zip(grads, 2 * list(alone.parameters())))

    t_plain, t_rep, comm_plain, comm_rep, comm_lapped = [], [], [], [], []
    for _ in range(repeats):
        dist.barrier()
        before = torch_clock[0]
        t0 = time.perf_counter()
        step(plain, F.cross_entropy)
        t_plain.append(time.perf_counter() - t0)
        comm_plain.append(torch_clock[0] - before)
        dist.barrier()
        before = shared.traffic.seconds
        t0 = time.perf_counter()
        step(rep, lambda o, t: xnn.cross_entropy(o, t, mode=shared))
        t_rep.append(time.perf_counter() - t0)
        comm_rep.append(shared.traffic.seconds - before)
        dist.barrier()
        before = lapped.traffic.seconds
        step(rep_lapped, lambda o, t: xnn.cross_entropy(o, t, mode=lapped))
        comm_lapped.append(lapped.traffic.seconds - before)
    per_step = {k: v // (repeats + 1) for k, v in shared.traffic.to_json().items() if k != "seconds"}
    n_params = sum(p.numel() for p in net.parameters())
    # The floor: one all-reduce of the step's packed levels alone, against one of DDP's float32
    # gradient alone, each after a barrier (no waiting for a late process, no other collective)
    alone_torch, alone_levels = [], []
    for _ in range(repeats):
        for buf, times in (
            (torch.zeros(n_params, dtype=torch.float32), alone_torch),
            (torch.zeros(per_step["levels"] // 4, dtype=torch.int32), alone_levels),
        ):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            times.append(time.perf_counter() - t0)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(
                {
                    "world": world,
                    "threads": threads,
                    "same_bits": bool(same),
                    "torch_step": min(t_plain),
                    "exact_step": min(t_rep),
                    "torch_bytes": 4 * n_params,
                    "exact_bytes": per_step["total"],
                    "exact_levels_bytes": per_step["levels"],
                    "exact_reductions": per_step["calls"],
                    "exact_collectives": per_step["collectives"],
                    "torch_comm": min(comm_plain),
                    "exact_comm": min(comm_rep),
                    "overlap_comm": min(comm_lapped),
                    "floor_torch": min(alone_torch),
                    "floor_levels": min(alone_levels),
                },
                f,
            )
    # DDP's reducers go before the process group they use (one that outlives it aborts at exit)
    dist.barrier()
    del rep, rep_lapped, plain
    gc.collect()
    dist.destroy_process_group()


def main() -> None:
    from exactforge.report.machine import cpu_name

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    print(
        f"# LeNet on MNIST-5k, global batch {GLOBAL_BATCH} split among Gloo processes; best of {args.repeats}; "
        f"{cpu_name()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}\n"
    )
    print(
        "| processes | threads each | same bits as one process | torch DDP step | reproducible step | step ratio | "
        "bytes sent per step: torch, exactforge | bytes ratio | exact reductions, collectives per step | "
        "time in collectives: torch, exactforge | ratio | exactforge with overlap=True | ratio | "
        "one all-reduce alone: torch's gradient, the packed levels | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for world in (1, 2, 3):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "result.json")
            mp.spawn(_worker, args=(world, f"file://{tmp}/store", out, args.repeats), nprocs=world, join=True)
            with open(out) as f:
                r = json.load(f)
        if not r["same_bits"]:
            raise SystemExit(f"{world} processes: the gradients differ from one process's; not reporting times")
        print(
            f"| {world} | {r['threads']} | yes | {1e3 * r['torch_step']:.1f} ms | {1e3 * r['exact_step']:.1f} ms | "
            f"{r['exact_step'] / r['torch_step']:.2f}x | {r['torch_bytes']:,}, {r['exact_bytes']:,} | "
            f"{r['exact_bytes'] / r['torch_bytes']:.2f}x | {r['exact_reductions']}, {r['exact_collectives']} | "
            f"{1e3 * r['torch_comm']:.2f} ms, {1e3 * r['exact_comm']:.2f} ms | {r['exact_comm'] / r['torch_comm']:.1f}x | "
            f"{1e3 * r['overlap_comm']:.2f} ms | {r['overlap_comm'] / r['torch_comm']:.1f}x | "
            f"{1e3 * r['floor_torch']:.2f} ms, {1e3 * r['floor_levels']:.2f} ms | "
            f"{r['floor_levels'] / r['floor_torch']:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
