"""Proof-of-Learning reference proofs: ResNet-20's reproducible step, importing a proof, and
the two verdicts side by side.

1. One SGD step of ResNet-20 (b = 128, 3 x 32 x 32 images on CIFAR-10's pixel grid): torch's
   against exactforge.nn's reproducible one. Checked first: float64 gradients equal autograd's
   to 1e-10 and a permuted batch gives the same float32 bits.
2. Importing a 1,000-step proof with 11 checkpoints (LeNet on digits, written as the
   reference's train.py writes them): the time to read its files alone, and the whole import.
3. The verdicts on the imported trace and on copies with one checkpoint moved by a small
   amount: exactforge's at epsilon = 0 and the reference's (its thresholds, every segment).
4. With --ray: the imported trace verified on local Ray workers gives the serial report's
   errors and reference distances, bit for bit.

    python benchmarks/bench_pol.py [--repeats 10] [--ray]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import tempfile
import time

import numpy as np
import torch

import exactforge
import exactforge.nn as xnn
from exactforge.data import Dataset, load_dataset
from exactforge.models.zoo import build_model
from exactforge.pol import (
    TrainingArgs,
    checkpoint_steps,
    import_proof,
    read_checkpoint,
    read_proof,
    write_reference_proof,
)
from exactforge.verify import verify_trace

from _common import cpu_name, interleaved_min


def resnet_step(args) -> None:
    rng = np.random.default_rng(0)
    X = (rng.integers(0, 256, (args.batch, 3, 32, 32)) / 255.0).astype(np.float32)
    x, y = torch.from_numpy(X), torch.from_numpy(rng.integers(0, 10, args.batch))
    net = build_model("resnet20", (3, 32, 32), 10, seed=0)
    rep = xnn.reproducible(copy.deepcopy(net))

    def grads(m, loss, xs, ys):
        m.zero_grad()
        loss(m(xs), ys).backward()
        return [p.grad.clone() for p in m.parameters()]

    g64 = grads(xnn.reproducible(copy.deepcopy(net).double()), xnn.cross_entropy, x.double(), y)
    t64 = grads(copy.deepcopy(net).double(), torch.nn.functional.cross_entropy, x.double(), y)
    rel64 = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g64, t64))
    state = copy.deepcopy(rep.state_dict())
    g = grads(rep, xnn.cross_entropy, x, y)
    perm = torch.randperm(args.batch, generator=torch.Generator().manual_seed(1))
    rep.load_state_dict(state)
    same = all(torch.equal(a, b) for a, b in zip(g, grads(rep, xnn.cross_entropy, x[perm], y[perm])))
    if rel64 > 1e-10 or not same:
        raise SystemExit(f"resnet20: wrong gradients (float64 rel {rel64:.2g}, permutation-invariant {same})")

    def step(m, loss):
        m.zero_grad()
        loss(m(x), y).backward()
        with torch.no_grad():
            for p in m.parameters():
                p.add_(p.grad, alpha=-0.1)

    t_torch, t_rep = interleaved_min(
        [lambda: step(net, torch.nn.functional.cross_entropy), lambda: step(rep, xnn.cross_entropy)], args.repeats
    )
    print(
        "| model | batch | float64 rel. gradient diff | permuted batch: same bits | torch step | reproducible | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| ResNet-20 (269,722 parameters) | {args.batch} | {rel64:.2g} | yes | {1e3 * t_torch:.0f} ms | "
        f"{1e3 * t_rep:.0f} ms | {t_rep / t_torch:.2f}x |\n",
        flush=True,
    )


def import_timing(folder: str, data: Dataset) -> str:
    proof = os.path.join(folder, "proof")
    t0 = time.perf_counter()
    write_reference_proof(
        proof, build_model("lenet", data.shape, 10), data, steps=1000, batch_size=32, save_freq=100,
        lr=0.05, momentum=0.9, milestones=[500], normalize=[[0.5], [0.5]],
    )  # fmt: skip
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = read_proof(proof)
    for s in checkpoint_steps(p.steps, 100):
        read_checkpoint(proof, s)
    t_read = time.perf_counter() - t0
    out = os.path.join(folder, "trace")
    args = TrainingArgs(lr=0.05, momentum=0.9, save_freq=100, milestones=[500], normalize=[[0.5], [0.5]])
    t0 = time.perf_counter()
    rep = import_proof(proof, out, model="lenet", data=data, args=args)
    t_import = time.perf_counter() - t0
    print(
        "| proof | checkpoints | written by the plain loop | reading its files | whole import | import less reading |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| LeNet, digits, {rep.steps} steps of {rep.batch_size} | {rep.checkpoints} | {t_train:.1f} s | "
        f"{t_read:.2f} s | {t_import:.2f} s | {t_import - t_read:.2f} s |\n",
        flush=True,
    )
    return out


def verdicts(folder: str, trace: str) -> None:
    from exactforge.trace import Trace

    print(
        "| trace | exactforge (epsilon = 0) | max l2 error | the reference (every segment) | its max l2 | agreement |"
    )
    print("|---|---|---|---|---|---|")
    last = Trace.open(trace).checkpoint_steps[len(Trace.open(trace).checkpoint_steps) // 2]
    for delta in (0.0, 1e-7, 1e-5, 1e-3):
        d = trace
        if delta:
            d = os.path.join(folder, f"moved-{delta:g}")
            shutil.copytree(trace, d)
            _move(d, last, delta)
        v = verify_trace(d)
        ref = v.reference
        name = "imported as it is" if not delta else f"checkpoint {last} moved by {delta:g} per weight"
        print(
            f"| {name} | {'ACCEPTED' if v.accepted else 'REJECTED' if v.valid else 'INVALID'} | {v.max_error:.3g} | "
            f"{'ACCEPTS' if ref['accepted'] else 'REJECTS'} | {ref['max_distance']['l2']:.3g} | {ref['agreement']} |",
            flush=True,
        )
    print()


def _move(d: str, step: int, delta: float) -> None:
    """Adds delta to every float weight of one checkpoint and rebuilds every hash, as a prover
    who moved it would: the trace is intact, its arithmetic is not."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from safetensors.numpy import load_file, save_file

    from hostile import rechain  # the tests' honest rewriter of hashes

    path = os.path.join(d, "checkpoints", f"{step:08d}.safetensors")
    t = load_file(path)
    t = {k: (v + np.asarray(delta, v.dtype)) if v.dtype.kind == "f" and not k.startswith("optimizer.") else v
         for k, v in t.items()}  # fmt: skip
    save_file(t, path, metadata={"exactforge_step": str(step)})
    rechain(d)


def on_ray(trace: str) -> None:
    from exactforge.verify.ray import RayExecutor

    serial = verify_trace(trace)
    ray = verify_trace(trace, executor=RayExecutor(address="local", num_cpus=2))
    same = [a.error == b.error and a.reference == b.reference for a, b in zip(serial.steps, ray.steps)]
    print(f"Ray (local, 2 CPUs): {len(ray.steps)} segments, the serial report's errors and reference distances "
          f"in every one: {'yes' if all(same) and len(same) == len(serial.steps) else 'NO'}\n")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ray", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    exactforge.set_num_threads(args.threads)
    print(
        f"# Proof-of-Learning proofs; {args.threads} thread(s), best of {args.repeats}; {cpu_name()}, "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    resnet_step(args)
    data = load_dataset("digits")
    with tempfile.TemporaryDirectory() as folder:
        trace = import_timing(folder, data)
        verdicts(folder, trace)
        if args.ray:
            on_ray(trace)


if __name__ == "__main__":
    main()
