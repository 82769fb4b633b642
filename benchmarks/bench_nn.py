"""exactforge.nn vs torch: one SGD step of LeNet-5 on MNIST-5k and of VGGmini, b = 100.

Correctness first: in float64 the reproducible gradients must equal autograd's to 1e-10 (the
implementation), and in float32 they must be bitwise the same under a batch permutation. The
float32 difference from autograd is reported too. It is rounding, but a max-pooling whose two
largest inputs differ by an ulp can pick the other one and move that gradient to a neighbouring
position; this happens once in 3e5 windows on VGGmini. Then the time of a whole step (forward, backward,
SGD update), best of --repeats, torch's and the reproducible step alternating, in each of
--processes fresh processes: on a 2-vCPU machine a process measures in one of two modes (how
torch's and the core's OpenMP threads meet is settled per process), so one process is one sample.
The last column is a floor, not a measurement: the time the exact weight gradients of the Conv2d
and Linear layers would take at the measured float64 FMA peak (three FMAs per multiply-add), as a
multiple of torch's whole step.

    python benchmarks/bench_nn.py [--repeats 20] [--threads 1] [--models lenet,vggmini,transformer]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import exactforge
import exactforge.nn as xnn
from exactforge.data import load_dataset
from exactforge.models.zoo import build_model

from _common import (
    across_processes,
    cpu_name,
    fma_peak,
    grads,
    in_processes,
    interleaved,
    peaks_text,
    step_flops,
    weight_grad_floor,
    weight_grad_macs,
)
from _common import sgd_step as step


def measure(name: str, args) -> dict:
    """One process's measurement of one model: the correctness checks, then every alternating
    call's time (JSON-able)."""
    dataset = "synthetic-tokens" if name == "transformer" else "mnist-5k"
    data = load_dataset(dataset)
    net = build_model(name, data.shape, data.num_classes, vocab=data.vocab, seed=0)
    rep = xnn.reproducible(copy.deepcopy(net))
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data), generator=g)[: args.batch]
    x = torch.from_numpy(data.X[idx.numpy()]).reshape(args.batch, *data.shape)
    y = torch.from_numpy(data.y[idx.numpy()])

    x64 = x if data.vocab else x.double()  # token ids stay ids
    g64 = grads(xnn.reproducible(copy.deepcopy(net).double()), xnn.cross_entropy, x64, y)
    t64 = grads(copy.deepcopy(net).double(), torch.nn.functional.cross_entropy, x64, y)
    rel64 = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g64, t64))
    gr = grads(rep, xnn.cross_entropy, x, y)
    gt = grads(net, torch.nn.functional.cross_entropy, x, y)
    rel = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(gr, gt))
    perm = torch.randperm(args.batch, generator=g)
    same = all(torch.equal(a, b) for a, b in zip(gr, grads(rep, xnn.cross_entropy, x[perm], y[perm])))
    if rel64 > 1e-10 or not same:
        raise SystemExit(f"{name}: wrong gradients (float64 rel {rel64:.2g}, permutation-invariant {same}); not timing")
    times = interleaved(
        [lambda: step(net, torch.nn.functional.cross_entropy, x, y), lambda: step(rep, xnn.cross_entropy, x, y)],
        args.repeats,
    )
    return {
        "dataset": dataset,
        "parameters": sum(p.numel() for p in net.parameters()),
        "rel64": rel64,
        "rel": rel,
        "same": same,
        "torch": times[0],
        "reproducible": times[1],
        "flops": step_flops(net, torch.nn.functional.cross_entropy, x, y),
        "weight_grad_macs": weight_grad_macs(net, x),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--models", default="lenet,vggmini,transformer")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--processes", type=int, default=3, help="fresh processes per model (see in_processes)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # one model, measured in this process, as JSON
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    exactforge.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.child, args)))
        return
    print(
        f"# exactforge.nn vs torch, one SGD step, b = {args.batch}, {args.threads} thread(s); best of {args.repeats} "
        f"in each of {args.processes} fresh processes per model; {cpu_name()}, {time.strftime('%Y-%m-%d')}\n"
    )
    print(peaks_text(args.threads) + "\n")
    pk = fma_peak(args.threads)
    f32_peak = None if pk is None else (pk["avx512_f32_gflops"] or pk["avx2_f32_gflops"]) * 1e9
    print(
        "| model | data | parameters | max rel. gradient diff vs autograd, float64 / float32 | permuted batch: "
        "same bits | torch step | reproducible step | ratio, median of processes (their range) | "
        "ratio pair by pair, p25-p75 | torch, reproducible: % of float32 peak | "
        "exact weight gradients at the float64 peak, x torch's step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        runs = in_processes(args.processes, [__file__, *child_argv(args), "--child", name])
        r, t = runs[0], across_processes(runs)
        t_torch, t_rep = t["torch"], t["reproducible"]
        share = (
            "-"
            if f32_peak is None
            else f"{100 * r['flops'] / t_torch / f32_peak:.0f}%, {100 * r['flops'] / t_rep / f32_peak:.0f}%"
        )
        same = all(run["same"] for run in runs)
        print(
            f"| {name} | {r['dataset']} | {r['parameters']:,} | {r['rel64']:.2g} / {r['rel']:.2g} | "
            f"{'yes' if same else 'NO'} | {1e3 * t_torch:.1f} ms | {1e3 * t_rep:.1f} ms | "
            f"{t['ratio']} | {t['spread']} | {share} | {weight_grad_floor(args.threads, r['weight_grad_macs'], t_torch)} |",
            flush=True,
        )


def child_argv(args) -> list:
    return ["--repeats", str(args.repeats), "--threads", str(args.threads), "--batch", str(args.batch)]


if __name__ == "__main__":
    main()
